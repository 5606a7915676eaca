"""Inference: score and predict with a trained model, and the `python -m t5x_lite.infer` command.

    python -m t5x_lite.infer --mode=predict --gin_file=MODEL.gin --checkpoint_dir=MODEL_DIR \
        --input_file=in.jsonl --output_file=out.jsonl [--method=beam --num_beams=4 --alpha=0.6]
    python -m t5x_lite.infer --mode=score ...     # lines also need "targets"

Each input line is a JSON object with `inputs` (and, to score, `targets`), each either text,
tokenized with the configured vocabulary (`t5x_lite.vocab.get_vocabulary`) plus EOS as seqio
tasks do, or a list of token ids used as is. Each output line repeats the input object and adds
`prediction` (text for text inputs, ids up to EOS for id inputs) or `score`: log p(targets |
inputs), the sum of the target tokens' log-likelihoods in nats. Lines keep their order.
`--gin_file` gives the model config (a gin/models/ file, or the model.gin that t5x_lite.convert
writes); `--checkpoint_dir` a MODEL_DIR, its checkpoints/ or one step directory (newest step by
default). Sequences are padded to the longest in the file (one compile per run) or to
--inputs_length / --targets_length; a longer line is an error unless --truncate. A batch holds at
most as many rows as the file has lines, and one whose attention scores would not fit in memory is
refused before anything is allocated.

`score_batch` is what ranking evaluation, perplexity and the HF parity tests (tests/test_convert.py)
share, so it stays a pure function of a model and a batch. The batch builders lay rows out as
seqio's unpacked feature converters do, so the model sees what it was trained on.
"""

from __future__ import annotations

if __name__ == '__main__':
  # `--help` answers before the imports below (JAX, TensorFlow: seconds); a run goes to the
  # importable module rather than this copy under __main__, so gin registers each function once.
  import sys
  from t5x_lite import cli
  sys.exit(cli.main('infer'))

import functools
import json
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import cli, decoding, gin_utils, loading, vocab
from t5x_lite.gin_utils import UsageError

EOS_ID = decoding.EOS_ID


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array,
                            weights: jax.Array) -> jax.Array:
  """Per-row sum of weighted target log-probabilities in nats: logits [b, len, vocab] -> [b].

  The log-softmax runs in float32 whatever the logits' dtype.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(token * weights.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _score(graphdef, state, batch):
  model = nnx.merge(graphdef, state)
  logits = model.logits_for_batch(batch, deterministic=True)
  return sequence_log_likelihood(logits, batch['decoder_target_tokens'],
                                 batch['decoder_loss_weights'])


def score_batch(model: nnx.Module, batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """log p(targets | inputs) per row of `batch`, float32 [batch], teacher-forced and jitted.

  `batch` is a feature converter's output for `model`'s family (targets in
  `decoder_target_tokens`, `decoder_loss_weights` 0 on padding). A packed row scores the sum of
  its examples, so score unpacked batches to get one number per example. Non-array entries are
  ignored; each new batch shape compiles once.
  """
  arrays = {k: jnp.asarray(v) for k, v in batch.items()
            if isinstance(v, (np.ndarray, jax.Array)) and np.issubdtype(v.dtype, np.number)}
  graphdef, state = nnx.split(model)
  return np.asarray(_score(graphdef, state, arrays))


# ---------------------------------------------------------------------------------------------
# Batches as the unpacked feature converters lay them out.
# ---------------------------------------------------------------------------------------------

def _pad(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
  out = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def predict_features(architecture: str, inputs: Sequence[Sequence[int]],
                     inputs_length: int) -> dict[str, np.ndarray]:
  """What `decoding.decode` reads: encoder inputs, or BOS + inputs as the prompt."""
  if architecture == 'encoder_decoder':
    return {'encoder_input_tokens': _pad(inputs, inputs_length)}
  prompts = [[decoding.PAD_ID, *row] for row in inputs]
  return {'decoder_input_tokens': _pad(prompts, inputs_length + 1),
          'decoder_causal_attention': _pad([[1] * len(p) for p in prompts], inputs_length + 1)}


def score_features(architecture: str, inputs: Sequence[Sequence[int]],
                   targets: Sequence[Sequence[int]], inputs_length: int,
                   targets_length: int) -> dict[str, np.ndarray]:
  """Teacher-forcing features (seqio's EncDec / PrefixLM converters, unpacked, loss on targets)."""
  if architecture == 'encoder_decoder':
    target_tokens = _pad(targets, targets_length)
    return {'encoder_input_tokens': _pad(inputs, inputs_length),
            'decoder_target_tokens': target_tokens,
            'decoder_input_tokens': np.pad(target_tokens[:, :-1], ((0, 0), (1, 0))),
            'decoder_loss_weights': _pad([[1] * len(t) for t in targets], targets_length)}
  # Decoder-only: one sequence, inputs then targets; the inputs plus the position that reads
  # their last token attend bidirectionally in a prefix LM (a causal LM ignores that feature).
  length = inputs_length + targets_length
  target_tokens = _pad([[*i, *t] for i, t in zip(inputs, targets)], length)
  return {'decoder_target_tokens': target_tokens,
          'decoder_input_tokens': np.pad(target_tokens[:, :-1], ((0, 0), (1, 0))),
          'decoder_causal_attention': _pad([[1] * (len(i) + 1) for i in inputs], length),
          'decoder_loss_weights': _pad([[0] * len(i) + [1] * len(t)
                                        for i, t in zip(inputs, targets)], length)}


# ---------------------------------------------------------------------------------------------
# Lines in, lines out.
# ---------------------------------------------------------------------------------------------

def read_lines(path: str, fields: Sequence[str]) -> list[dict[str, Any]]:
  """The JSON objects of a jsonl file (blank lines skipped), each with `fields`."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except OSError as e:
    raise UsageError(f'cannot read --input_file {path}: {e.strerror}.') from e
  except UnicodeDecodeError as e:
    line = e.object[:e.start].count(b'\n') + 1
    raise UsageError(f'{path}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset '
                     f'{e.start}); convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8).') from e
  lines = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise UsageError(f'{path}:{number}: not valid JSON ({e.msg}).') from e
    if not isinstance(obj, dict):
      raise UsageError(f'{path}:{number}: expected a JSON object with {list(fields)}, got '
                       f'{type(obj).__name__}.')
    for field in fields:
      value = obj.get(field)
      is_ids = isinstance(value, list) and all(
          isinstance(t, int) and not isinstance(t, bool) for t in value)
      if not (isinstance(value, str) or is_ids):
        raise UsageError(f'{path}:{number}: {field!r} must be text or a list of token ids, '
                         f'got {"nothing" if value is None else repr(value)[:60]}.')
    lines.append({'line': number, 'example': obj})
  if not lines:
    raise UsageError(f'{path} holds no examples.')
  return lines


class Tokenizer:
  """Text -> ids + EOS with the gin-configured vocabulary (built on first use); ids pass through
  after a range check against the model's vocabulary size."""

  def __init__(self, vocab_size: int, path: str):
    self.vocab_size = vocab_size
    self.path = path

  @functools.cached_property
  def vocabulary(self):
    return vocab.get_vocabulary()

  def ids(self, value, number: int, field: str) -> list[int]:
    if isinstance(value, str):
      return list(self.vocabulary.encode(value)) + [EOS_ID]
    bad = [t for t in value if not 0 <= t < self.vocab_size]
    if bad:
      raise UsageError(f'{self.path}:{number}: {field!r} has token id {bad[0]} outside the '
                       f'model vocabulary [0, {self.vocab_size}).')
    return list(value)

  def prediction(self, tokens: np.ndarray, text: bool):
    """Generated ids up to (not including) EOS, as text when the inputs were text."""
    ids = []
    for t in tokens.tolist():
      if t == EOS_ID:
        break
      ids.append(t)
    return self.vocabulary.decode(ids) if text else ids


def fit(rows: list[list[int]], numbers: list[int], length: int | None, field: str,
        truncate: bool, path: str) -> tuple[list[list[int]], int]:
  """(rows, padded length): the longest row's length if `length` is None; rows longer than
  `length` are cut with `truncate`, else a UsageError naming the first such line."""
  longest = max(len(r) for r in rows)
  if length is None:
    return rows, max(longest, 1)
  if longest > length and not truncate:
    number, n = next((num, len(r)) for num, r in zip(numbers, rows) if len(r) > length)
    raise UsageError(f'{path}:{number}: {field!r} is {n} tokens long, more than '
                     f'--{field}_length={length}; raise --{field}_length or pass --truncate.')
  return [r[:length] for r in rows], length


def check_fits(config, batch_size: int, inputs_length: int, targets_length: int) -> None:
  """Refuses a batch whose attention scores alone would not fit this device's memory.

  Scores are [batch, heads, queries, keys] in float32, held with their softmax and one temporary:
  a single long line padded into a full batch asked for 102 GB before this check."""
  if config.architecture == 'encoder_decoder':
    pairs = inputs_length * inputs_length + targets_length * (inputs_length + targets_length)
  else:
    pairs = (inputs_length + targets_length) ** 2
  need = 3 * 4 * batch_size * config.num_heads * pairs
  have = _free_memory_bytes()
  if need > have // 2:
    raise UsageError(
        f'{batch_size} line(s) padded to {inputs_length} input tokens need about '
        f'{need / 2**30:.1f} GiB for attention scores, more than half of the '
        f'{have / 2**30:.1f} GiB free on {jax.devices()[0].platform}; lower --batch_size, or cut '
        'lines with --inputs_length=N --truncate.')


def _free_memory_bytes() -> int:
  """Free memory of the first device: the accelerator's allocator limit, or the host's RAM."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  try:  # MemAvailable counts reclaimable page cache, which SC_AVPHYS_PAGES does not
    with open('/proc/meminfo') as f:
      return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
  except (OSError, StopIteration, ValueError):
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _full_batch(rows: Sequence, batch_size: int, filler) -> list:
  """The last batch padded with filler rows, so every batch has one shape (one compile)."""
  return list(rows) + [filler] * (batch_size - len(rows))


def predict(model: nnx.Module, inputs: list[list[int]], inputs_length: int, batch_size: int,
            **decode_options) -> list[np.ndarray]:
  """Generated tokens [max_decode_length] per input row, in order (`decoding.decode` options)."""
  out = []
  for start, stop in _batches(len(inputs), batch_size):
    rows = _full_batch(inputs[start:stop], batch_size, [])
    features = predict_features(model.config.architecture, rows, inputs_length)
    tokens, _ = decoding.decode(model, features, **decode_options)
    out.extend(np.asarray(tokens)[:stop - start])
  return out


def score(model: nnx.Module, inputs: list[list[int]], targets: list[list[int]],
          inputs_length: int, targets_length: int, batch_size: int) -> list[float]:
  """log p(targets | inputs) in nats per row, in order."""
  out = []
  for start, stop in _batches(len(inputs), batch_size):
    features = score_features(model.config.architecture,
                              _full_batch(inputs[start:stop], batch_size, []),
                              _full_batch(targets[start:stop], batch_size, []),
                              inputs_length, targets_length)
    out.extend(score_batch(model, features)[:stop - start].tolist())
  return out


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------

def run(argv: list[str]) -> int:
  gin_files, bindings, rest = gin_utils.split_flags(argv)
  args = cli.parser('infer').parse_args(rest)
  if args.method not in decoding.METHODS:
    raise UsageError(f'--method={args.method}: choose one of {", ".join(decoding.METHODS)}.')
  for name in ('batch_size', 'inputs_length', 'targets_length', 'max_decode_length'):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise UsageError(f'--{name} must be >= 1, got {value}.')
  if not gin_files:
    raise UsageError('--gin_file=MODEL.gin is required (a gin/models/ file or the model.gin '
                     'that python -m t5x_lite.convert writes).')
  config = loading.config_from_gin(gin_files, bindings)
  decode_options = dict(
      max_decode_length=args.max_decode_length or args.targets_length or 128,
      method=args.method, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
      num_beams=args.num_beams, alpha=args.alpha)
  try:
    decoding.DecodeOptions(**decode_options).validate(config.vocab_size)
  except ValueError as e:
    raise UsageError(str(e)) from e

  fields = ('inputs', 'targets') if args.mode == 'score' else ('inputs',)
  lines = read_lines(args.input_file, fields)
  tokenizer = Tokenizer(config.vocab_size, args.input_file)
  numbers = [line['line'] for line in lines]
  ids = {f: [tokenizer.ids(line['example'][f], line['line'], f) for line in lines]
         for f in fields}
  inputs, inputs_length = fit(ids['inputs'], numbers, args.inputs_length, 'inputs',
                              args.truncate, args.input_file)
  if args.mode == 'score':
    targets, targets_length = fit(ids['targets'], numbers, args.targets_length, 'targets',
                                  args.truncate, args.input_file)

  batch_size = min(args.batch_size, len(lines))  # no rows of padding beyond the file's own
  check_fits(config, batch_size, inputs_length,
             targets_length if args.mode == 'score' else decode_options['max_decode_length'])
  model = loading.load_model(config, args.checkpoint_dir).model
  if args.mode == 'score':
    results = score(model, inputs, targets, inputs_length, targets_length, batch_size)
  else:
    tokens = predict(model, inputs, inputs_length, batch_size,
                     rng=jax.random.key(args.seed), **decode_options)
    results = [tokenizer.prediction(t, isinstance(line['example']['inputs'], str))
               for t, line in zip(tokens, lines)]

  key = 'score' if args.mode == 'score' else 'prediction'
  try:
    with open(args.output_file, 'w', encoding='utf-8') as f:
      for line, result in zip(lines, results):
        f.write(json.dumps({**line['example'], key: result}, ensure_ascii=False) + '\n')
  except OSError as e:
    raise UsageError(f'cannot write --output_file {args.output_file}: {e.strerror}.') from e
  print(f'Wrote {len(lines)} {key}s to {args.output_file}.')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; bad input prints `error: ...` on one line and exits 2 (as train does)."""
  return gin_utils.run_cli(run, argv)

