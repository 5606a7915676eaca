"""`python -m t5x_lite.infer`: jsonl in, predictions or scores out, and one-line errors.

The model is a tiny random one saved as a real checkpoint with a model.gin beside it (what
t5x_lite.convert writes). References: `decoding.decode` on hand-built batches, a numpy
log-softmax over teacher-forced logits, and seqio's own feature converters for the batch layouts.
"""

import dataclasses
import json
import math

import gin
import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from t5x_lite import convert, decoding, infer, loading, vocab
from t5x_lite.data.pipeline import feature_converter
from t5x_lite.models import T5Config, build_model, eager_rngs

# Room for the default vocabulary (28,000 pieces + 100 sentinels), so text lines work.
TINY = T5Config(vocab_size=28160, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=1,
                num_decoder_layers=1, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)
LENGTH = 16


def random_params(config, seed=0):
  graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(config, eager_rngs(0))))
  rng = np.random.default_rng(seed)
  fill = lambda x: rng.normal(size=x.shape).astype(np.float32) / math.sqrt(
      math.prod(x.shape[:-1]))
  return jax.tree.map(fill, nnx.to_pure_dict(state))


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """MODEL_DIR with model.gin and checkpoints/0 of a random encoder-decoder."""
  root = tmp_path_factory.mktemp('infer')
  gin.clear_config()
  convert.save_train_state(str(root), TINY, random_params(TINY))
  (root / 'model.gin').write_text(convert.model_gin(TINY))
  return root


@pytest.fixture(scope='module')
def model(model_dir):
  return loading.load_model(TINY, str(model_dir), placement='host').model


def write_jsonl(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return path


def read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def run_infer(model_dir, tmp_path, mode, rows, *flags):
  infile = write_jsonl(tmp_path / 'in.jsonl', rows)
  outfile = tmp_path / 'out.jsonl'
  rc = infer.main([f'--mode={mode}', f'--gin_file={model_dir / "model.gin"}',
                   f'--checkpoint_dir={model_dir}', f'--input_file={infile}',
                   f'--output_file={outfile}', *flags])
  return rc, outfile


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


TEXT = ['The cat sat on the mat.', 'A fairly long sentence about the history of Wikipedia.']
IDS = [[37, 2048, 9, 1], [5, 6, 7, 8, 9, 10, 1]]


def test_predict_writes_each_line_with_its_prediction_in_order(model_dir, model, tmp_path):
  rows = [{'inputs': TEXT[0], 'id': 'a'}, {'inputs': IDS[0]}, {'inputs': TEXT[1], 'id': 'c'},
          {'inputs': IDS[1]}]
  rc, outfile = run_infer(model_dir, tmp_path, 'predict', rows, '--batch_size=4',
                          f'--inputs_length={LENGTH}', '--max_decode_length=6')
  assert rc == 0
  out = read_jsonl(outfile)
  assert [{k: v for k, v in o.items() if k != 'prediction'} for o in out] == rows

  vocabulary = vocab.get_vocabulary()
  ids = [vocabulary.encode(TEXT[0]) + [1], IDS[0], vocabulary.encode(TEXT[1]) + [1], IDS[1]]
  encoder_tokens = np.zeros((4, LENGTH), np.int32)
  for row, x in enumerate(ids):
    encoder_tokens[row, :len(x)] = x
  tokens, _ = decoding.decode(model, {'encoder_input_tokens': encoder_tokens},
                              max_decode_length=6)
  expected = [list(t) for t in np.asarray(tokens)]
  expected = [t[:t.index(1)] if 1 in t else t for t in expected]
  assert out[1]['prediction'] == expected[1] and out[3]['prediction'] == expected[3]
  assert out[0]['prediction'] == vocabulary.decode(expected[0])
  assert out[2]['prediction'] == vocabulary.decode(expected[2])


def test_score_is_the_target_log_likelihood(model_dir, model, tmp_path):
  rows = [{'inputs': TEXT[0], 'targets': 'a mat'}, {'inputs': IDS[1], 'targets': [55, 66, 1]},
          {'inputs': IDS[0], 'targets': TEXT[1]}]
  rc, outfile = run_infer(model_dir, tmp_path, 'score', rows, '--batch_size=2')
  assert rc == 0
  out = read_jsonl(outfile)
  assert [{k: v for k, v in o.items() if k != 'score'} for o in out] == rows

  vocabulary = vocab.get_vocabulary()
  tokenize = lambda v: vocabulary.encode(v) + [1] if isinstance(v, str) else v
  forward = nnx.jit(lambda m, e, d: m(e, d))
  for row, o in zip(rows, out):
    inputs, targets = tokenize(row['inputs']), tokenize(row['targets'])
    logits = forward(model, np.array([inputs]), np.array([[0] + targets[:-1]]))
    log_probs = log_softmax(logits)[0]
    expected = log_probs[np.arange(len(targets)), targets].sum()
    np.testing.assert_allclose(o['score'], expected, rtol=1e-5, atol=1e-4)


def test_prefix_lm_predicts_after_its_prompt_and_scores_its_targets(tmp_path):
  config = dataclasses.replace(TINY, architecture='prefix_lm', num_encoder_layers=0)
  model_dir = tmp_path / 'prefix_lm'
  gin.clear_config()
  convert.save_train_state(str(model_dir), config, random_params(config, seed=1))
  (model_dir / 'model.gin').write_text(convert.model_gin(config))
  model = loading.load_model(config, str(model_dir), placement='host').model
  rows = [{'inputs': IDS[0], 'targets': [55, 66, 1]}, {'inputs': IDS[1], 'targets': [77, 1]}]

  rc, outfile = run_infer(model_dir, tmp_path, 'predict', rows, '--max_decode_length=5')
  assert rc == 0
  prompts = np.zeros((2, 8), np.int32)  # BOS + inputs, the span that attends bidirectionally
  for row, x in enumerate(IDS):
    prompts[row, 1:len(x) + 1] = x
  tokens, _ = decoding.decode(model, {'decoder_input_tokens': prompts,
                                      'decoder_causal_attention': (prompts > 0) | (
                                          np.arange(8) == 0)}, max_decode_length=5)
  for o, t in zip(read_jsonl(outfile), np.asarray(tokens).tolist()):
    assert o['prediction'] == (t[:t.index(1)] if 1 in t else t)

  rc, outfile = run_infer(model_dir, tmp_path, 'score', rows)
  assert rc == 0
  forward = nnx.jit(lambda m, t, p: m(t, None, p))
  for row, o in zip(rows, read_jsonl(outfile)):
    sequence = row['inputs'] + row['targets']
    prefix = (np.arange(len(sequence)) <= len(row['inputs'])).astype(np.int32)
    logits = forward(model, np.array([[0] + sequence[:-1]]), prefix[None])
    log_probs = log_softmax(logits)[0]
    n = len(row['inputs'])
    expected = log_probs[np.arange(n, len(sequence)), row['targets']].sum()
    np.testing.assert_allclose(o['score'], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('architecture', ['encoder_decoder', 'decoder_only', 'prefix_lm'])
def test_batches_are_laid_out_as_seqio_feature_converters_do(architecture):
  config = dataclasses.replace(TINY, architecture=architecture)
  inputs, targets = [[7, 8, 5, 1], [9, 1], []], [[3, 9, 1], [4, 4, 4, 4, 1], [6, 1]]
  lengths = {'inputs': 6, 'targets': 5}
  ds = tf.data.Dataset.from_generator(
      lambda: iter({'inputs': i, 'targets': t} for i, t in zip(inputs, targets)),
      output_signature={'inputs': tf.TensorSpec([None], tf.int32),
                        'targets': tf.TensorSpec([None], tf.int32)})
  converted = feature_converter(config, pack=False)(ds, lengths).batch(3)
  expected = next(iter(converted.as_numpy_iterator()))
  ours = infer.score_features(architecture, inputs, targets, lengths['inputs'],
                              lengths['targets'])
  assert set(ours) == set(expected)
  for name in ours:
    np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)

  prompt = infer.predict_features(architecture, inputs, lengths['inputs'])
  if architecture == 'encoder_decoder':
    np.testing.assert_array_equal(prompt['encoder_input_tokens'], expected['encoder_input_tokens'])
  else:  # the prompt is the converter's decoder_causal_attention span
    width = lengths['inputs'] + 1
    causal = expected['decoder_causal_attention'][:, :width]
    np.testing.assert_array_equal(prompt['decoder_causal_attention'], causal)
    np.testing.assert_array_equal(prompt['decoder_input_tokens'],
                                  expected['decoder_input_tokens'][:, :width] * causal)


def test_a_line_longer_than_allowed_fails_unless_truncated(model_dir, tmp_path, capsys):
  rows = [{'inputs': [5, 6, 1]}, {'inputs': [5, 6, 7, 8, 9, 1]}]
  rc, _ = run_infer(model_dir, tmp_path, 'predict', rows, '--inputs_length=4')
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1
  assert 'in.jsonl:2:' in err and '6 tokens' in err and '--truncate' in err
  rc, outfile = run_infer(model_dir, tmp_path, 'predict', rows, '--inputs_length=4',
                          '--truncate', '--max_decode_length=2', '--batch_size=2')
  assert rc == 0 and len(read_jsonl(outfile)) == 2


@pytest.mark.parametrize('mode, content, flags, message', [
    ('predict', None, (), 'cannot read --input_file'),
    ('predict', '{"inputs": [5, 1]}\n{"inputs": [5, 1\n', (), 'in.jsonl:2: not valid JSON'),
    ('predict', '{"text": "no inputs"}\n', (), "in.jsonl:1: 'inputs' must be text"),
    ('score', '{"inputs": "x"}\n', (), "in.jsonl:1: 'targets' must be text"),
    ('predict', '{"inputs": [5, 99999]}\n', (), 'token id 99999 outside'),
    ('predict', '{"inputs": [5, 1]}\n', ('--method=nucleus',),
     '--method=nucleus: choose one of greedy, sample, beam'),
    ('predict', '{"inputs": [5, 1]}\n', ('--method=sample', '--top_p=0'), 'top_p'),
    ('predict', '{"inputs": [5, 1]}\n', ('--checkpoint_dir=/nonexistent',), 'nonexistent'),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys, mode, content, flags,
                                          message):
  infile = tmp_path / 'in.jsonl'
  if content is not None:
    infile.write_text(content)
  rc = infer.main([f'--mode={mode}', f'--gin_file={model_dir / "model.gin"}',
                   f'--checkpoint_dir={model_dir}', f'--input_file={infile}',
                   f'--output_file={tmp_path / "out.jsonl"}', *flags])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and err.startswith('error: '), err
  assert message in err, err
  assert not (tmp_path / 'out.jsonl').exists()


def test_a_batch_whose_attention_scores_do_not_fit_is_refused_before_allocating(monkeypatch):
  """Scores [batch, heads, queries, keys] in float32, three copies, against half the free memory."""
  monkeypatch.setattr(infer, '_free_memory_bytes', lambda: 16 * 2**30)
  infer.check_fits(TINY, 1, 10_000, 128)  # one long line alone: about 4.5 GiB at 4 heads
  need = 3 * 4 * 32 * TINY.num_heads * (10_000 * 10_000 + 128 * (10_000 + 128)) / 2**30
  with pytest.raises(infer.UsageError, match=rf'32 line\(s\) padded to 10000 input tokens need '
                     rf'about {need:.1f} GiB .* of the 16\.0 GiB free'):
    infer.check_fits(TINY, 32, 10_000, 128)


def test_a_real_process_from_another_directory_prints_only_its_result(model_dir, tmp_path):
  """No start-up noise, no `Metadata file does not exist` per restored item, and no gin
  `ERROR:root:Path not found` for an include found on the repo's search path."""
  import subprocess
  import sys
  (tmp_path / 'run.gin').write_text(f"include '{model_dir / 'model.gin'}'\n"
                                    "include 'gin/runs/scaling.gin'\n")  # found via the repo root
  (tmp_path / 'model.gin').write_text(f"include '{tmp_path / 'run.gin'}'\n"
                                      f"include '{model_dir / 'model.gin'}'\n")
  infile = write_jsonl(tmp_path / 'in.jsonl', [{'inputs': TEXT[0]}])
  done = subprocess.run(
      [sys.executable, '-m', 't5x_lite.infer', '--mode=predict',
       f'--gin_file={tmp_path / "model.gin"}', f'--checkpoint_dir={model_dir}',
       f'--input_file={infile}', f'--output_file={tmp_path / "out.jsonl"}',
       f'--inputs_length={LENGTH}', '--max_decode_length=4'],
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr == ''
  assert done.stdout.strip().splitlines()[-1] == f'Wrote 1 predictions to {tmp_path / "out.jsonl"}.'
