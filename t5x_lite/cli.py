"""Every entry point's flags, as argparse parsers built without JAX or TensorFlow.

`python -m t5x_lite.X --help` and the console scripts come here before their module's imports
(seconds of JAX and TensorFlow), so help answers at once; the runs parse with the same parsers, so
a flag is defined in one place. Commands that read gin list the shipped gin files and key macros.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import glob
import importlib
import os
import re
import sys
import textwrap
from typing import Sequence

from t5x_lite import gin_utils

# The module each command runs (its `main(argv)`), and how the command is typed.
MODULES = {'train': 't5x_lite.train', 'eval': 't5x_lite.eval', 'plan': 't5x_lite.plan',
           'infer': 't5x_lite.infer', 'convert': 't5x_lite.convert', 'vocab': 't5x_lite.vocab',
           'tasks': 't5x_lite.tasks.show', 'curves': 't5x_lite.curves'}
PROGS = {'train': 'python -m t5x_lite.train (or t5x-train)',
         'plan': 'python -m t5x_lite.plan (or t5x-plan)', 'vocab': 't5x-vocab'}

# The macros the shipped gin files define; any of them is set with --gin.NAME=VALUE.
MACROS = {
    'MODEL_DIR': 'where checkpoints, metrics.jsonl, TensorBoard events and loss.png go',
    'MIXTURE_OR_TASK_NAME': "seqio task or mixture, e.g. 'wiki_span_corruption' (see tasks/)",
    'TASK_FEATURE_LENGTHS': "token lengths, e.g. {'inputs': 512, 'targets': 114}",
    'TRAIN_STEPS': 'the step training ends at (counting from step 0, resumes included)',
    'BATCH_SIZE': 'global batch, split over every process and device',
    'CHECKPOINT_PERIOD': 'steps between checkpoints',
    'EVAL_PERIOD': 'steps between validation passes',
    'INITIAL_CHECKPOINT_PATH': 'fine-tuning: the checkpoint whose params start the run',
    'MODEL_CONFIG': 'the model (set by gin/models/*/*.gin)',
    'MESH_SHAPE': "device mesh, e.g. {'data': -1, 'model': 1}",
    'DROPOUT_RATE': 'dropout in the model',
    'VOCAB_SIZE': 'embedding rows (the vocabulary padded, T5: 32128)',
}


class Parser(argparse.ArgumentParser):
  """A bad flag is a UsageError: one `error:` line and exit 2 (gin_utils.run_cli), no usage dump;
  an unknown flag close to a real one says which."""

  def error(self, message):
    unknown = re.match(r'unrecognized arguments: (.*)', message)
    flags = [o for action in self._actions for o in action.option_strings]
    for arg in unknown.group(1).split() if unknown else ():
      near = difflib.get_close_matches(arg.split('=')[0], flags, n=1)
      if near:
        message += f'; did you mean {near[0]}?'
        break
    raise gin_utils.UsageError(f"{message} (see {self.prog.split(' (')[0]} --help)")


def _gin_file_lines() -> list[str]:
  """The shipped gin files, each run file with the first line of its header comment."""
  root = gin_utils.REPO_ROOT
  lines = ['gin files shipped (give any path, or one relative to gin/):']
  for path in sorted(glob.glob(os.path.join(gin_utils.REPO_GIN_DIR, 'runs', '*.gin'))):
    with open(path, encoding='utf-8') as f:
      first = re.split(r' \(|[:;]|\. ', f.readline().lstrip('# ').strip())[0]
    lines.append(f'  {os.path.relpath(path, root):28s} {first}')
  for family in sorted(glob.glob(os.path.join(gin_utils.REPO_GIN_DIR, 'models', '*'))):
    sizes = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(family, '*.gin')))
    lines.append(f'  {os.path.relpath(family, root)}/{{{",".join(sizes)}}}.gin')
  return lines


def gin_epilog(example: str) -> str:
  macros = [f'  {name:24s} {text}' for name, text in MACROS.items()]
  return '\n'.join(['example:', f'  {example}', '', *_gin_file_lines(), '',
                    'key macros (--gin.NAME=VALUE; a name no binding uses is an error):', *macros])


def _add_gin_flags(parser: argparse.ArgumentParser) -> None:
  """Shown in help; gin_utils.split_flags takes them off argv before the parser sees the rest."""
  group = parser.add_argument_group('gin')
  group.add_argument('--gin_file', action='append', metavar='FILE',
                     help='a gin file; repeat to combine (later files and flags win)')
  group.add_argument('--gin.NAME=VALUE', dest='gin_bindings', action='append', metavar='',
                     help='override one binding or macro, e.g. --gin.TRAIN_STEPS=1000')
  _add_verbose(parser)


def _add_verbose(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--verbose', action='store_true',
                      help='on bad input, show the traceback instead of one error line')


def add_distributed_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Adds the multi-process flags (t5x_lite.distributed) to `parser` and returns it; without them
  JAX's cluster detection decides."""
  group = parser.add_argument_group('multi-process (all three together, or none)')
  group.add_argument('--coordinator_address', help='HOST:PORT of process 0')
  group.add_argument('--num_processes', type=int)
  group.add_argument('--process_id', type=int)
  group.add_argument('--distributed', choices=('off', 'auto'), default=None,
                     help="'auto': let JAX detect the cluster (Cloud TPU VM, SLURM, Open MPI)")
  group.add_argument('--distributed_timeout_s', type=int, default=300,
                     help='how long to wait for all processes to join (seconds)')
  return parser


def _formatted(prog: str, description: str, epilog: str = '') -> Parser:
  return Parser(prog=prog, description=textwrap.fill(description, 100), epilog=epilog,
                allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)


def _gin_command(prog: str, description: str, example: str) -> Parser:
  """A command that reads gin: its flags, and the gin files and macros in the epilog."""
  p = _formatted(prog, description, gin_epilog(example))
  _add_gin_flags(p)
  return p


def _train() -> Parser:
  return add_distributed_flags(_gin_command(
      PROGS['train'], 'Train a model gin describes: joins a multi-process job if there is one, '
      'resumes from the newest checkpoint in MODEL_DIR, checkpoints every CHECKPOINT_PERIOD steps '
      'and at the end, and decodes a validation sample.',
      'python -m t5x_lite.train --gin_file=gin/runs/pretrain_tiny.gin --gin.TRAIN_STEPS=100'))


def _eval() -> Parser:
  p = _gin_command('python -m t5x_lite.eval', "Score a checkpoint on the task's validation "
                   'split with its seqio metrics; writes them to MODEL_DIR like training does.',
                   'python -m t5x_lite.eval --gin_file=gin/runs/finetune_tiny.gin')
  p.add_argument('--checkpoint_dir', default=None,
                 help="a MODEL_DIR, its checkpoints/ or one step's directory (default: the newest "
                      'checkpoint in MODEL_DIR)')
  return p


def _plan() -> Parser:
  p = _gin_command(PROGS['plan'], 'Say before launch whether a gin config fits a TPU slice or '
                   'GPU cluster and how fast it should run: a roofline, and with --aot or --target '
                   'the real XLA compiler for that platform, run on this host.',
                   'python -m t5x_lite.plan --gin_file=gin/models/t5_1_1/xl.gin '
                   '--gin_file=gin/runs/pretrain.gin --target=v5p-64')
  p.add_argument('--num_devices', type=int, default=None,
                 help='devices to plan for (default: those visible to JAX)')
  p.add_argument('--chip', default=None,
                 help='target chip, e.g. tpu_v5p, tpu_v5e, tpu_v6e, h100, a100 (an unknown one '
                      'lists them all)')
  p.add_argument('--batch_size', type=int, default=None,
                 help='global batch (default: BATCH_SIZE from gin, else 128)')
  p.add_argument('--preset', default=None,
                 help='sharding rules: data_parallel, fsdp, 2d, hsdp, fsdp_tp (default: '
                      'logical_axis_rules.preset, else 2d)')
  p.add_argument('--mesh', default=None,
                 help="mesh shape, e.g. \"{'data': 8, 'model': 8}\" (default: MESH_SHAPE)")
  p.add_argument('--nodes', type=int, default=None,
                 help='hosts/slices the devices span (default: fewest the chip allows)')
  p.add_argument('--aot', action='store_true',
                 help="also lower and compile the train step on JAX's devices")
  p.add_argument('--target', default=None,
                 help='compile for a TPU slice (v5p-64, v5e-16, v6e-8, 2xv5p-256) or a GPU '
                      'cluster (h100x8, a100x32, h200x8, b200x8) without one')
  p.add_argument('--json', action='store_true',
                 help='also print the figures as one JSON object, on the last line')
  return p


def _infer() -> Parser:
  p = _formatted('python -m t5x_lite.infer', 'Predict or score jsonl lines ({"inputs": ..., '
                 '"targets": ...}, text or token ids) with a checkpoint; reads the model from the '
                 "checkpoint's gin, or from --gin_file.")
  p.add_argument('--mode', choices=('predict', 'score'), required=True)
  p.add_argument('--checkpoint_dir', required=True,
                 help='a MODEL_DIR, its checkpoints/ or one step directory')
  p.add_argument('--input_file', required=True)
  p.add_argument('--output_file', required=True)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--inputs_length', type=int, default=None,
                 help='pad inputs to this many tokens (default: the longest line)')
  p.add_argument('--targets_length', type=int, default=None,
                 help='score: pad targets to this; predict: default --max_decode_length')
  p.add_argument('--truncate', action='store_true', help='cut longer lines instead of failing')
  p.add_argument('--max_decode_length', type=int, default=None,
                 help='tokens to generate at most (default --targets_length, else 128)')
  p.add_argument('--method', default='greedy', help='greedy (default), sample or beam')
  p.add_argument('--temperature', type=float, default=1.0)
  p.add_argument('--top_k', type=int, default=0)
  p.add_argument('--top_p', type=float, default=1.0)
  p.add_argument('--num_beams', type=int, default=4)
  p.add_argument('--alpha', type=float, default=0.6, help='beam length penalty exponent')
  p.add_argument('--seed', type=int, default=0, help='sampling seed')
  _add_gin_flags(p)
  return p


def _convert() -> Parser:
  p = _formatted('python -m t5x_lite.convert', 'Convert between Hugging Face T5 checkpoints and '
                 'ours: --from_hf writes OUT/model.gin and a step-0 checkpoint; --to_hf writes '
                 'config.json and model.safetensors.',
                 'examples:\n  python -m t5x_lite.convert --from_hf=HF_DIR --out_dir=OUT\n'
                 '  python -m t5x_lite.convert --to_hf=MODEL_DIR --gin_file=MODEL.gin '
                 '--out_dir=HF_OUT')
  direction = p.add_mutually_exclusive_group(required=True)
  direction.add_argument('--from_hf', metavar='HF_DIR', help='a Hugging Face T5 directory')
  direction.add_argument('--to_hf', metavar='MODEL_DIR', help='one of our MODEL_DIRs')
  p.add_argument('--out_dir', required=True, help='a new directory (nothing is overwritten)')
  _add_gin_flags(p)
  return p


def _vocab() -> Parser:
  p = _formatted(PROGS['vocab'], 'Train a SentencePiece unigram model with T5 ids (pad 0, eos 1, '
                 'unk 2, no bos, byte fallback). One sentence or paragraph per input line.')
  p.add_argument('--input', action='append', required=True, help='text file; repeat for several')
  p.add_argument('--model_prefix', required=True, help='writes PREFIX.model and PREFIX.vocab')
  p.add_argument('--vocab_size', type=int, default=None, help="pieces (default: T5's 32000)")
  p.add_argument('--character_coverage', type=float, default=0.9999)
  p.add_argument('--num_threads', type=int, default=1,
                 help='the result depends on this; keep it fixed to reproduce a model')
  _add_verbose(p)
  return p


def _tasks() -> Parser:
  p = _formatted('python -m t5x_lite.tasks', 'Inspect registered seqio tasks.')
  sub = p.add_subparsers(dest='command', required=True)
  show = sub.add_parser('show', help='print decoded examples of a task or mixture')
  show.add_argument('name', nargs='?', help='task or mixture name, e.g. wiki_prefix_lm')
  show.add_argument('--all', action='store_true', help='every wiki objective task')
  show.add_argument('--num', type=int, default=3)
  show.add_argument('--text', default=None, help='run the objective on this text only')
  show.add_argument('--inputs_length', type=int, default=None, help='(default 128)')
  show.add_argument('--targets_length', type=int, default=None, help='(default 128)')
  show.add_argument('--noise_density', type=float, default=None,
                    help="with --text: override the objective's noise density (where it has one)")
  show.add_argument('--split', default='validation')
  show.add_argument('--seed', type=int, default=0)
  return p


def _curves() -> Parser:
  p = _formatted('python -m t5x_lite.curves', "Redraw a run's loss curve, MODEL_DIR/loss.png, "
                 'from MODEL_DIR/metrics.jsonl (training draws it when it ends).')
  p.add_argument('model_dir', metavar='MODEL_DIR')
  _add_verbose(p)
  return p


PARSERS = {'train': _train, 'eval': _eval, 'plan': _plan, 'infer': _infer, 'convert': _convert,
           'vocab': _vocab, 'tasks': _tasks, 'curves': _curves}


def parser(command: str) -> Parser:
  """The argparse parser of `command` (a key of MODULES)."""
  return PARSERS[command]()


def wants_help(argv: Sequence[str]) -> bool:
  flags = list(argv)[:list(argv).index('--')] if '--' in argv else list(argv)
  return '-h' in flags or '--help' in flags


def main(command: str, argv: Sequence[str] | None = None) -> int:
  """Help without importing the command's module; otherwise the module's `main(argv)`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if wants_help(argv):
    try:
      parser(command).parse_args(argv)  # argparse prints help (a subcommand's too), exits 0
    except SystemExit as e:
      return int(e.code or 0)
    except gin_utils.UsageError:  # a bad flag value before --help: help all the same
      pass
    parser(command).print_help()
    return 0
  return importlib.import_module(MODULES[command]).main(argv) or 0


# Console scripts (setup.cfg): `t5x-train --help` answers before JAX loads.
train = functools.partial(main, 'train')
plan = functools.partial(main, 'plan')
vocab = functools.partial(main, 'vocab')
