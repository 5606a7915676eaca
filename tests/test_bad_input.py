"""Bad input to `python -m t5x_lite.train` (and to `infer` and `convert`) gets one line naming the cause and what to do, exit
status 2, no traceback (`--verbose` shows it), and loses no data: each case in `CASES` is a claim.

A case is flags + an optional setup that makes files under the case's own directory + what the one
line must say, so adding one is adding a record. `python tests/test_bad_input.py [NAME ...]` runs
the cases as real processes and prints a markdown table: flags, the line printed, the exit status,
whether every file that existed before is still there unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import pytest

from micro import MICRO, TRAIN_FLAGS  # pylint: disable=wrong-import-position

REPO = Path(__file__).resolve().parent.parent
# Every case's flags come after these. TRAIN_STEPS=1: a case that is wrongly accepted ends soon.
RUN = (*MICRO, '--gin.TRAIN_STEPS=1', '--gin.MODEL_DIR={tmp}/model_dir')


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input.

  `flags` follow `base`; '{tmp}' in either is the case's own directory, which holds model_dir/ (with
  a file of the user's in it) and whatever `setup(tmp)` makes. `setup` may return environment
  variables for the run (PYTHONPATH entries are put first on the import path). `message` is a
  regex the single `error: ` line must match.
  """
  name: str
  flags: tuple[str, ...]
  message: str
  setup: Callable[[Path], Mapping[str, str] | None] | None = None
  status: int = 2
  base: tuple[str, ...] = RUN
  xfail: str = ''  # why the case cannot pass yet: it is not run (it may train) until removed
  module: str = 't5x_lite.train'  # the entry point run as `python -m MODULE`


# ---------------------------------------------------------------------------------- setups


def _writes(name: str, text: str) -> Callable[[Path], None]:
  """A setup that writes `text` to the file `name` in the case's directory."""
  def setup(tmp: Path) -> None:
    (tmp / name).write_text(text)
  return setup


def _spm_model_with_other_ids(tmp: Path) -> None:
  """A real SentencePiece model with its library's default ids (unk 0, bos 1, eos 2, no pad)."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  (tmp / 'text.txt').write_text(''.join(f'the quick brown fox {i} jumps over the lazy dog\n'
                                        for i in range(200)))
  spm.SentencePieceTrainer.train(input=str(tmp / 'text.txt'), model_prefix=str(tmp / 'other_ids'),
                                 vocab_size=40, minloglevel=2)


def _data_dir(tmp: Path) -> dict[str, str]:
  """A T5X_LITE_DATA_DIR of the case's own holding the default vocabulary (so nothing retrains)."""
  from t5x_lite import vocab  # pylint: disable=import-outside-toplevel
  spm = Path(vocab.ensure_default_spm())
  (tmp / 'data' / 'vocab').mkdir(parents=True)
  shutil.copy(spm, tmp / 'data' / 'vocab' / spm.name)
  return {'T5X_LITE_DATA_DIR': str(tmp / 'data')}


def _prepared_corpus(tmp: Path) -> tuple[dict[str, str], Path]:
  """`_data_dir` plus a copy of the prepared bundled corpus; returns (env, its version dir)."""
  from t5x_lite.data import corpus  # pylint: disable=import-outside-toplevel
  env = _data_dir(tmp)
  source = Path(corpus.prepare_corpus().data_dir)  # the machine's copy, prepared once
  copy = tmp / 'data' / 'tensorflow_datasets' / source.relative_to(source.parent.parent)
  shutil.copytree(source, copy)
  return env, copy


def _truncated_corpus_shard(tmp: Path) -> dict[str, str]:
  env, copy = _prepared_corpus(tmp)
  shard = next(copy.glob('wiki_sample-train.tfrecord-*'))
  shard.write_bytes(shard.read_bytes()[:100_000])  # a copy cut short (full disk, killed rsync)
  return env


def _flipped_byte_in_corpus_shard(tmp: Path) -> dict[str, str]:
  """One bit flipped inside a record's text: the framing still adds up, the record's CRC does
  not (tf.data would stop mid-training with a DataLossError)."""
  env, copy = _prepared_corpus(tmp)
  shard = next(copy.glob('wiki_sample-train.tfrecord-*'))
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0x20
  shard.write_bytes(bytes(data))
  return env


def _corrupt_corpus_info(tmp: Path) -> dict[str, str]:
  env, copy = _prepared_corpus(tmp)
  (copy / 'dataset_info.json').write_text('{"name": "wiki_sample", ')
  return env


def _missing_corpus_shard(tmp: Path) -> dict[str, str]:
  env, copy = _prepared_corpus(tmp)
  next(copy.glob('wiki_sample-validation.tfrecord-*')).rename(tmp / 'moved_away.tfrecord')
  return env


def _no_corpus_source(tmp: Path) -> dict[str, str]:
  """A fresh data dir and a gensim package whose test data (the corpus source) is gone."""
  env = _data_dir(tmp)
  (tmp / 'site' / 'gensim').mkdir(parents=True)
  (tmp / 'site' / 'gensim' / '__init__.py').write_text('')
  return {**env, 'PYTHONPATH': str(tmp / 'site')}


def _truncated_corpus_source(tmp: Path) -> dict[str, str]:
  """A fresh data dir and a gensim package whose corpus source is cut short."""
  from t5x_lite.data import corpus  # pylint: disable=import-outside-toplevel
  env = _no_corpus_source(tmp)
  sample = tmp / 'site' / 'gensim' / corpus.GENSIM_SAMPLE
  sample.parent.mkdir(parents=True)
  sample.write_bytes(corpus.gensim_sample_path().read_bytes()[:20_000])
  return env


_CHECKPOINTED: list[Path] = []  # a MODEL_DIR trained for one step by RUN, made once per process


def _one_step_run() -> Path:
  if not _CHECKPOINTED:
    model_dir = Path(tempfile.mkdtemp(prefix='bad_input_ckpt_')) / 'model_dir'
    argv = [a.replace('{tmp}/model_dir', str(model_dir)) for a in RUN]
    proc = run_subprocess(argv, {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _CHECKPOINTED.append(model_dir)
  return _CHECKPOINTED[0]


def _checkpointed(tmp: Path) -> None:
  """model_dir holds a run checkpointed at step 1 (and the user's file)."""
  shutil.copytree(_one_step_run(), tmp / 'model_dir', dirs_exist_ok=True)


def _checkpoint_elsewhere(tmp: Path) -> None:
  shutil.copytree(_one_step_run(), tmp / 'pretrained')


def _every_checkpoint_corrupt(tmp: Path) -> None:
  _checkpointed(tmp)
  for data_file in (tmp / 'model_dir' / 'checkpoints' / '1' / 'state').rglob('d/*'):
    data_file.unlink()


def _damaged_newest_step_that_cannot_be_moved(tmp: Path) -> None:
  """Steps 1 and 2, step 2's arrays gone, and a file where corrupt_checkpoints/ would go."""
  _checkpointed(tmp)
  steps = tmp / 'model_dir' / 'checkpoints'
  shutil.copytree(steps / '1', steps / '2')
  for data_file in (steps / '2' / 'state').rglob('d/*'):
    data_file.unlink()
  (tmp / 'model_dir' / 'corrupt_checkpoints').write_text('a file of the user\'s\n')


def _infer_input(content: bytes) -> Callable[[Path], None]:
  """A checkpointed model_dir and the input file `content` for `infer`."""
  def setup(tmp: Path) -> None:
    _checkpointed(tmp)
    (tmp / 'in.jsonl').write_bytes(content)
  return setup


def _hf_dir(config: str | None = None, weights: Mapping[str, bytes] | None = None):
  """An HF model directory: `config` as config.json (default: a valid tiny T5's) and `weights`."""
  def setup(tmp: Path) -> None:
    import json  # pylint: disable=import-outside-toplevel
    from t5x_lite import convert, models  # pylint: disable=import-outside-toplevel
    (tmp / 'hf').mkdir()
    valid = convert.ours_to_hf_config(models.T5Config(
        vocab_size=128, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
        num_decoder_layers=1, mlp_activations=('gelu', 'linear'), logits_via_embedding=False))
    (tmp / 'hf' / 'config.json').write_text(json.dumps(valid) if config is None else config)
    for name, content in (weights or {}).items():
      (tmp / 'hf' / name).write_bytes(content)
  return setup


INFER = ('--mode=predict', *MICRO[:-TRAIN_FLAGS], '--checkpoint_dir={tmp}/model_dir',
         '--input_file={tmp}/in.jsonl', '--output_file={tmp}/out.jsonl')
CONVERT = ('--from_hf={tmp}/hf', '--out_dir={tmp}/out')
LONG_LINE = b'{"inputs": [' + b', '.join([b'5'] * 10_000) + b']}\n'

# ---------------------------------------------------------------------------------- the cases

CASES: list[Case] = [
    # gin files and bindings
    Case('missing_gin_file', ('--gin_file=gin/runs/no_such.gin',),
         r'gin file not found: gin/runs/no_such\.gin .*check the --gin_file path'),
    Case('gin_syntax_error', ('--gin_file={tmp}/bad.gin',),
         r'gin: .*bad\.gin.* check the gin files', _writes('bad.gin', 'train.batch_size = = 8\n')),
    Case('unknown_configurable', ('--gin.no_such_fn.x=1',),
         r"No configurable matching 'no_such_fn'.* check the gin files"),
    Case('unknown_parameter', ('--gin.train.no_such_param=1',),
         r"no_such_param.* check the gin files"),
    Case('undefined_macro', ('--gin.TRAIN_STEPS=%NOT_DEFINED',),
         r'gin macro NOT_DEFINED \(used by TRAIN_STEPS\) is never set.*--gin\.NOT_DEFINED='),
    Case('override_without_value', ('--gin.TRAIN_STEPS',), r'--gin\.NAME=VALUE'),
    Case('macro_typo', ('--gin.TRAIN_STEP=5',),
         r'--gin\.TRAIN_STEP: no gin binding uses the macro TRAIN_STEP, so it would change '
         r'nothing; did you mean TRAIN_STEPS\? Macros used here: .*MODEL_DIR'),
    Case('gin_include_missing', ('--gin_file={tmp}/includes.gin',),
         r'gin: Unable to open file: no_such_include\.gin.*check the gin files, their includes',
         _writes('includes.gin', "include 'no_such_include.gin'\n")),
    Case('required_value_not_given', (),
         r"MODEL_DIR is gin\.REQUIRED and no gin file or flag sets it; set it with "
         r"--gin\.MODEL_DIR=",
         base=('--gin_file=gin/runs/pretrain.gin', '--gin_file=gin/models/t5_1_1/small.gin')),
    Case('required_parameter_never_bound', (),
         r"train\.model_config, train\.mixture_or_task_name, .*: required \(gin\.REQUIRED\) but "
         r"bound by no gin file; .*--gin\.train\.model_config=VALUE",
         _writes('no_model.gin', 'import t5x_lite.train\n'),
         base=('--gin_file={tmp}/no_model.gin', '--gin.train.model_dir="{tmp}/model_dir"')),
    # task, steps, batch
    Case('unknown_task', ("--gin.MIXTURE_OR_TASK_NAME='wiki_span_corruptoin'",),
         r"No seqio task or mixture named 'wiki_span_corruptoin'\. Did you mean "
         r"\['wiki_span_corruption'"),
    Case('task_data_not_prepared', ("--gin.MIXTURE_OR_TASK_NAME='c4_v220_span_corruption'",),
         r"Task 'c4_v220_span_corruption' reads TFDS c4/en:3\.1\.0 from .*not prepared there.*"
         r"tfds build c4/en", _data_dir),
    Case('train_steps_zero', ('--gin.TRAIN_STEPS=0',), r'TRAIN_STEPS must be positive, got 0'),
    Case('train_steps_not_a_whole_number', ('--gin.TRAIN_STEPS=2.5',),
         r'TRAIN_STEPS must be an integer, got 2\.5 \(float\); set --gin\.TRAIN_STEPS=N'),
    Case('train_steps_text', ("--gin.TRAIN_STEPS='abc'",),
         r"TRAIN_STEPS must be an integer, got 'abc' \(str\)"),
    Case('batch_size_float', ('--gin.BATCH_SIZE=8.0',),
         r'BATCH_SIZE must be an integer, got 8\.0 \(float\)'),
    Case('checkpoint_period_zero', ('--gin.CHECKPOINT_PERIOD=0',),
         r'CHECKPOINT_PERIOD must be positive, got 0; set --gin\.CHECKPOINT_PERIOD=N'),
    Case('log_period_zero', ('--gin.train.log_period=0',),
         r'train\.log_period must be positive, got 0'),
    Case('train_steps_negative', ('--gin.TRAIN_STEPS=-5',),
         r'TRAIN_STEPS must be positive, got -5'),
    Case('batch_size_zero', ('--gin.BATCH_SIZE=0',), r'BATCH_SIZE must be positive, got 0'),
    Case('batch_not_multiple_of_data_shards', ('--gin.train.num_data_shards=3',),
         r'BATCH_SIZE 8 must be a multiple of .*num_data_shards.*3'),
    # mesh and sharding rules
    Case('mesh_larger_than_devices', ("--gin.MESH_SHAPE={'data': 1000}",),
         r"MESH_SHAPE \{'data': 1000\} needs 1000 devices but \d+ are available; "
         r"set --gin\.MESH_SHAPE"),
    Case('mesh_two_rest_axes', ("--gin.MESH_SHAPE={'data': -1, 'model': -1}",),
         r'MESH_SHAPE .* more than one -1 .*give all but one axis a size'),
    Case('mesh_zero_axis', ("--gin.MESH_SHAPE={'data': 0}",), r'MESH_SHAPE .* 0 or below -1'),
    Case('mesh_size_text', ("--gin.MESH_SHAPE={'data': 'all'}",),
         r"MESH_SHAPE\['data'\] must be an integer, got 'all' \(str\); e\.g\. \"--gin\.MESH_SHAPE="),
    Case('mesh_shape_unclosed', ("--gin.MESH_SHAPE={'data': 1",),
         r"--gin\.MESH_SHAPE=\{'data': 1: not a gin value \(EOF in multi-line statement\); close "
         r'every bracket and quote'),
    Case('mesh_axis_unknown_to_rules', ("--gin.MESH_SHAPE={'dta': -1}",),
         r"MESH_SHAPE axis 'dta' is not one logical_axis_rules shard over .* Fix its name"),
    Case('unknown_rules_preset', ("--gin.logical_axis_rules.preset='3d'",),
         r"Unknown sharding preset '3d'; choose one of \['2d', 'data_parallel', 'fsdp', "
         r"'fsdp_tp', 'hsdp'\]"),
    # sequence lengths
    Case('lengths_too_short_for_span_corruption',
         ("--gin.TASK_FEATURE_LENGTHS={'inputs': 4, 'targets': 2}",),
         r"inputs length 4 is too short for span corruption.* at least \d+"),
    Case('targets_too_short_for_span_corruption',
         ("--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 4}",),
         r"sequence_length\['targets'\] is 4; set it to at least \d+"),
    Case('lengths_missing_a_feature', ("--gin.TASK_FEATURE_LENGTHS={'inputs': 64}",),
         r"task_feature_lengths needs \['targets'\]"),
    Case('lengths_with_an_unknown_feature',
         ("--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16, 'labels': 8}",),
         r"task_feature_lengths has \['labels'\], which 'wiki_span_corruption' does not output"),
    # optimizer and schedule
    Case('unknown_optimizer', ("--gin.make_optimizer.name='sgd'",),
         r"Unknown make_optimizer\.name 'sgd'; choose 'adafactor' or 'adamw'"),
    Case('unknown_schedule', ("--gin.learning_rate_schedule.kind='cosine'",),
         r"Unknown learning_rate_schedule\.kind 'cosine'; choose"),
    Case('cosine_schedule_without_total_steps',
         ("--gin.learning_rate_schedule.kind='linear_warmup_cosine'",
          '--gin.learning_rate_schedule.total_steps=None'),
         r'total_steps must be set .*--gin\.learning_rate_schedule\.total_steps=%TRAIN_STEPS'),
    Case('cosine_schedule_shorter_than_its_warmup',
         ("--gin.learning_rate_schedule.kind='linear_warmup_cosine'",
          '--gin.learning_rate_schedule.total_steps=5', '--gin.learning_rate_schedule.warmup_steps=10'),
         r'total_steps \(5\) must be larger than warmup_steps \(10\).*warmup_steps or train longer'),
    # vocabulary
    Case('vocab_size_smaller_than_vocabulary', ('--gin.VOCAB_SIZE=1000',),
         r'vocab_size 1000 is smaller than the vocabulary \(28100 ids.*raise VOCAB_SIZE'),
    Case('spm_model_missing', ("--gin.get_vocabulary.spm_path='{tmp}/nope.model'",),
         r"SentencePiece model '.*nope\.model' does not exist.*t5x_lite\.vocab"),
    Case('spm_model_unreadable', ("--gin.get_vocabulary.spm_path='{tmp}/garbage.model'",),
         r"'.*garbage\.model' is not a SentencePiece model .*python -m t5x_lite\.vocab",
         _writes('garbage.model', 'this is not a SentencePiece model\n' * 8)),
    Case('spm_model_with_other_special_ids',
         ("--gin.get_vocabulary.spm_path='{tmp}/other_ids.model'",),
         r"SentencePiece model '.*other_ids\.model' has \d+ pieces with pad, eos, unk ids "
         r"\(-1, 2, 0\); T5 models need \(0, 1, 2\)", _spm_model_with_other_ids),
    # MODEL_DIR and checkpoints to start from
    Case('model_dir_under_a_regular_file', ("--gin.MODEL_DIR='{tmp}/not_a_dir/run'",),
         r'MODEL_DIR .*not_a_dir/run.* cannot be (created|written)',
         _writes('not_a_dir', 'a regular file\n')),
    Case('resume_with_a_different_model', ('--gin.t5x_lite.models.T5Config.d_ff=96',),
         r'MODEL_DIR checkpoint step 1 .* was written by a different model .*Use a new MODEL_DIR',
         _checkpointed),
    Case('resume_with_a_different_vocabulary', ('--gin.get_vocabulary.extra_ids=50',
                                               '--gin.TRAIN_STEPS=2'),
         r'holds a run with vocabulary .*extra_ids.: 100.*Use a new MODEL_DIR', _checkpointed),
    Case('resume_with_another_task', ("--gin.MIXTURE_OR_TASK_NAME='wiki_iid_drop'",
                                     '--gin.TRAIN_STEPS=2'),
         r'holds a run with task wiki_span_corruption.*INITIAL_CHECKPOINT_PATH', _checkpointed),
    Case('resume_with_another_batch_size', ('--gin.BATCH_SIZE=4', '--gin.TRAIN_STEPS=2'),
         r'holds a run with batch_size 8, and this config has 4', _checkpointed),
    Case('damaged_newest_step_cannot_be_moved_aside', ('--gin.TRAIN_STEPS=3',),
         r'checkpoint step 2 in .* could not be restored \(.*\) nor moved aside to '
         r'.*corrupt_checkpoints \(FileExistsError.*\); move .*checkpoints/2 out of the way yourself',
         _damaged_newest_step_that_cannot_be_moved),
    Case('every_checkpoint_corrupt', ('--gin.TRAIN_STEPS=2',),
         r'no checkpoint in .* could be restored \(step 1: .*\)\. Nothing was changed',
         _every_checkpoint_corrupt),
    Case('nan_loss', ('--gin.cross_entropy_loss.z_loss=1e300', '--gin.TRAIN_STEPS=2'),
         r'loss (inf|nan), grad norm \w+, learning rate 0\.01 at step 2: training stopped before '
         r'applying it\. The last good checkpoint is step 1 .*grad_clip_norm.*on_nonfinite', _checkpointed),
    Case('initial_checkpoint_of_another_model',
         ("--gin.train.initial_checkpoint_path='{tmp}/pretrained'",
          '--gin.t5x_lite.models.T5Config.d_ff=96'),
         r'INITIAL_CHECKPOINT_PATH: .* was written by a different model .*Check that the model gin',
         _checkpoint_elsewhere),
    Case('initial_checkpoint_missing', ("--gin.train.initial_checkpoint_path='{tmp}/no_ckpt'",),
         r'INITIAL_CHECKPOINT_PATH: no checkpoint at .*no_ckpt'),
    # infer
    Case('infer_input_not_utf8', (), r'in\.jsonl:2: not UTF-8 text \(byte 0xe9 at offset \d+\); '
         r'convert the file to UTF-8', _infer_input(b'{"inputs": "cafe"}\n{"inputs": "caf\xe9"}\n'),
         base=INFER, module='t5x_lite.infer'),
    Case('infer_lines_too_long_for_memory', (),
         r'32 line\(s\) padded to 10000 input tokens need about \d+\.\d GiB for attention scores, '
         r'more than half of the .* GiB free on cpu; lower --batch_size, or cut lines with '
         r'--inputs_length=N --truncate', _infer_input(LONG_LINE * 40), base=INFER,
         module='t5x_lite.infer'),
    # convert
    Case('convert_config_not_json', (), r'hf/config\.json cannot be read as JSON \(.*\); re-save',
         _hf_dir('{"d_model": 64,'), base=CONVERT, module='t5x_lite.convert'),
    Case('convert_config_is_a_list', (),
         r'hf/config\.json holds a JSON list, not an object of config fields',
         _hf_dir('[1, 2]'), base=CONVERT, module='t5x_lite.convert'),
    Case('convert_corrupt_safetensors', (),
         r'hf/model\.safetensors is not a readable safetensors file \(.*\); it is truncated or '
         r'corrupt', _hf_dir(weights={'model.safetensors': b'\x10\x00' + b'garbage' * 20}),
         base=CONVERT, module='t5x_lite.convert'),
    Case('convert_missing_shard', (),
         r'hf/model-00002-of-00002\.safetensors is missing \(.*index\.json lists it\)',
         _hf_dir(weights={'model.safetensors.index.json':
                          b'{"weight_map": {"shared.weight": "model-00002-of-00002.safetensors"}}'}),
         base=CONVERT, module='t5x_lite.convert'),
    # the bundled corpus
    Case('corpus_source_missing', (),
         r'bundled Wikipedia sample is missing: .*enwiki.*`pip install -e \.`', _no_corpus_source),
    Case('corpus_source_truncated', (),
         r'the Wikipedia dump .*enwiki.*\.bz2 cannot be read \(EOFError.*reinstall gensim',
         _truncated_corpus_source),
    Case('prepared_corpus_truncated', (),
         r'prepared corpus file .*wiki_sample-train\.tfrecord-00000-of-00001 is truncated or '
         r'corrupt .*'
         r'rm -r .*wiki_sample/1\.0\.0', _truncated_corpus_shard),
    Case('prepared_corpus_byte_flipped', (),
         r'prepared corpus file .*wiki_sample-train\.tfrecord-00000-of-00001 does not match the '
         r'checksum recorded when it was prepared.*`rm -r .*wiki_sample/1\.0\.0`',
         _flipped_byte_in_corpus_shard),
    Case('prepared_corpus_file_missing', (),
         r'prepared corpus file .*wiki_sample-validation\.tfrecord-00000-of-00001 is missing.*'
         r'rm -r .*wiki_sample/1\.0\.0', _missing_corpus_shard),
    Case('prepared_corpus_info_corrupt', (),
         r'prepared corpus file .*wiki_sample/1\.0\.0/dataset_info\.json cannot be read.*'
         r'rm -r .*wiki_sample/1\.0\.0` and rerun',
         _corrupt_corpus_info),
    # command line and distributed set-up
    Case('unknown_argument', ('--frobnicate=1',),
         r'unrecognized arguments: --frobnicate=1 \(see python -m t5x_lite\.train --help\)'),
    Case('abbreviated_flag_is_not_guessed', ('--num=2',), r'unrecognized arguments: --num=2 \('),
    # your own text (TEXT_FILES)
    Case('text_files_match_nothing',
         ("--gin.TEXT_FILES='{tmp}/notes*.txt'", "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'"),
         r"TEXT_FILES: no file matches '.*notes\*\.txt'"),
    Case('text_files_hold_no_text',
         ("--gin.TEXT_FILES='{tmp}/empty.txt'", "--gin.MIXTURE_OR_TASK_NAME='text_span_corruption'"),
         r'TEXT_FILES: .*empty\.txt holds no text; set TEXT_FILES', _writes('empty.txt', '\n\n')),
    Case('text_files_but_another_task', ("--gin.TEXT_FILES='{tmp}/a.txt'",),
         r"TEXT_FILES is set but the task is 'wiki_span_corruption', which does not read it; .*"
         r"text_span_corruption", _writes('a.txt', 'one\ntwo\n')),
    Case('text_task_without_text_files', ("--gin.MIXTURE_OR_TASK_NAME='text_prefix_lm'",),
         r"'text_prefix_lm' reads your own text, but TEXT_FILES is not set; add --gin\.TEXT_FILES="),
    Case('flag_typo', ('--num_proceses=2',),
         r'unrecognized arguments: --num_proceses=2; did you mean --num_processes\?'),
    Case('plan_flag_typo', ('--num_devics=8',),
         r'unrecognized arguments: --num_devics=8; did you mean --num_devices\? '
         r'\(see python -m t5x_lite\.plan --help\)', module='t5x_lite.plan'),
    Case('eval_flag_typo', ('--checkpoint={tmp}/model_dir',),
         r'unrecognized arguments: .*; did you mean --checkpoint_dir\?', module='t5x_lite.eval'),
    Case('distributed_flags_incomplete', ('--coordinator_address=localhost:1234',),
         r'--coordinator_address, --num_processes and --process_id go together'),
    Case('distributed_flag_not_an_int', ('--num_processes=two',),
         r"--num_processes: invalid int value: 'two'"),
    Case('distributed_process_id_out_of_range',
         ('--coordinator_address=localhost:1234', '--num_processes=2', '--process_id=2'),
         r'process_id 2 must be in \[0, 2\)'),
    Case('distributed_env_incomplete', (),
         r'T5X_LITE_COORDINATOR_ADDRESS, T5X_LITE_PROCESS_ID not set; the launcher sets all',
         lambda tmp: {'T5X_LITE_NUM_PROCESSES': '2'}),
]
CASES_BY_NAME = {case.name: case for case in CASES}


# ---------------------------------------------------------------------------------- the runner


def prepare(case: Case, tmp: Path) -> tuple[list[str], dict[str, str]]:
  """Makes the case's files under `tmp`; returns (argv, extra environment)."""
  (tmp / 'model_dir').mkdir(parents=True)
  (tmp / 'model_dir' / 'notes.txt').write_text('a file of the user\'s, which must survive\n')
  env = dict(case.setup(tmp) or {}) if case.setup else {}
  argv = [a.replace('{tmp}', str(tmp)) for a in (*case.base, *case.flags)]
  return argv, env


def snapshot(root: Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob('*')) if p.is_file()}


def lost(before: Mapping[str, str], root: Path) -> list[str]:
  """Files that existed before the run and are now gone or changed."""
  after = snapshot(root)
  return sorted(name for name, digest in before.items() if after.get(name) != digest)


def run_subprocess(argv: list[str], env: Mapping[str, str],
                   module: str = 't5x_lite.train') -> subprocess.CompletedProcess:
  full_env = dict(os.environ, **env)
  if 'PYTHONPATH' in env and os.environ.get('PYTHONPATH'):
    full_env['PYTHONPATH'] = env['PYTHONPATH'] + os.pathsep + os.environ['PYTHONPATH']
  return subprocess.run([sys.executable, '-m', module, *argv], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
  """The `error: ` lines (TF, absl and XLA print their own lines to stderr at import)."""
  return [line for line in stderr.splitlines() if line.startswith('error: ')]


# ---------------------------------------------------------------------------------- tests


def _params():
  xfail = lambda case: [pytest.mark.xfail(reason=case.xfail, run=False)] if case.xfail else []
  return [pytest.param(case, id=case.name, marks=xfail(case)) for case in CASES]


def _run_in_process(argv: list[str], module: str = 't5x_lite.train') -> int:
  import importlib  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    return importlib.import_module(module).main(argv)
  finally:
    gin.clear_config()
    if 't5x_lite.tasks' in sys.modules:  # a case may have registered the tasks on its own data dir
      sys.modules['t5x_lite.tasks'].register_all()


def _apply_env(env: Mapping[str, str], monkeypatch) -> None:
  for name, value in env.items():
    if name == 'PYTHONPATH':
      for entry in reversed(value.split(os.pathsep)):
        monkeypatch.syspath_prepend(entry)
    else:
      monkeypatch.setenv(name, value)


@pytest.mark.parametrize('case', _params())
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, tmp_path, monkeypatch, capsys):
  argv, env = prepare(case, tmp_path)
  before = snapshot(tmp_path)
  capsys.readouterr()
  with monkeypatch.context() as m:
    _apply_env(env, m)
    code = _run_in_process(argv, case.module)
    err = capsys.readouterr().err
  assert 'Traceback' not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert re.search(case.message, lines[0]), lines[0]
  assert code == case.status
  assert lost(before, tmp_path) == []


def test_verbose_shows_the_traceback(tmp_path):
  from t5x_lite import gin_utils  # pylint: disable=import-outside-toplevel
  argv, _ = prepare(CASES_BY_NAME['train_steps_zero'], tmp_path)
  with pytest.raises(gin_utils.UsageError, match='TRAIN_STEPS must be positive'):
    _run_in_process([*argv, '--verbose'])


# unknown_optimizer is raised inside `train`, where gin adds call sites; the other two once left
# Orbax's clean-up thread to die at exit with a traceback after the line.
@pytest.mark.parametrize('name', ['unknown_optimizer', 'unknown_task', 'task_data_not_prepared'])
def test_real_process_prints_only_the_line(name, tmp_path):
  """No start-up noise from TensorFlow, CUDA or absl before the line, nothing after it."""
  case = CASES_BY_NAME[name]
  argv, env = prepare(case, tmp_path)
  before = snapshot(tmp_path)
  proc = run_subprocess(argv, env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == error_lines(proc.stderr), proc.stderr[-3000:]
  assert re.search(case.message, error_lines(proc.stderr)[0])
  assert lost(before, tmp_path) == []


# ---------------------------------------------------------------------------------- the table


def table(cases: list[Case]) -> str:
  rows = ['| case | command-line flags | what it printed | exit status | data intact |',
          '|---|---|---|---|---|']
  for case in cases:
    with tempfile.TemporaryDirectory() as d:
      tmp = Path(d)
      argv, env = prepare(case, tmp)
      before = snapshot(tmp)
      proc = run_subprocess(argv, env, case.module)
      errors = error_lines(proc.stderr)
      printed = errors[-1] if errors else '(no error line)'
      if 'Traceback' in proc.stderr:  # the exception line: the last unindented one after it
        tail = proc.stderr.rsplit('Traceback', 1)[1].splitlines()[1:]
        exception = [line for line in tail if line and not line[0].isspace()]
        printed = 'TRACEBACK, ' + (exception[-1] if exception else '?')
      base = {RUN: (), INFER: ('(a checkpointed model_dir)',)}.get(case.base, case.base)
      shown = [*(f'{k}={v}' for k, v in env.items()),
               *([case.module] if case.module != 't5x_lite.train' else []), *base, *case.flags]
      flags = ' '.join(shown).replace('{tmp}', '$TMP').replace(str(tmp), '$TMP') or '(none)'
      gone = lost(before, tmp)
      intact = f'NO: {gone}' if gone else 'yes'
      cell = lambda s: s.replace(str(tmp), '$TMP').replace('|', '\\|')
      rows.append(f'| {case.name} | `{cell(flags)}` | {cell(printed)} | {proc.returncode} | '
                  f'{intact} |')
      print(rows[-1], file=sys.stderr, flush=True)
  return '\n'.join(rows)


if __name__ == '__main__':
  wanted = sys.argv[1:]
  print(table([c for c in CASES if not wanted or c.name in wanted]))
