"""Greedy decoding tokens/s with and without the KV cache; the last line printed is one JSON object.

  python bench/decode.py --gin_file=gin/models/t5_1_1/small.gin --batch_size=8 \
      --inputs_length=512 --new_tokens=128

Random weights and random full-length inputs. EOS is disabled (eos_id=-1), so both paths generate
exactly `new_tokens` per row. Each path is compiled and run once as a warm-up, then timed
`--repeats` times (median) in the same process. Tokens/s counts generated tokens
(batch_size * new_tokens) over the whole call: encoder, (prefill,) and every step; for an
encoder-decoder the encoder alone is timed too, and `*_steps_tokens_per_s` leaves it out. "Without
the cache" re-runs the decoder over the whole token buffer at each step and keeps the encoder
output, so the ratio is what the self-attention cache and cached cross-attention keys/values buy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from t5x_lite import decoding, gin_utils, models

DEFAULT_GIN_FILE = 'gin/models/t5_1_1/small.gin'


def random_model(config, seed=0):
  """The model with N(0, 1/fan_in) numpy weights (tokens/s does not depend on their values)."""
  graphdef, state = nnx.split(models.abstract_model(config))
  rng = np.random.default_rng(seed)
  fill = lambda x: (rng.standard_normal(x.shape, np.float32)
                    / np.sqrt(np.prod(x.shape[:-1]))).astype(x.dtype)
  return nnx.merge(graphdef, jax.tree.map(fill, state))


def prompt_batch(config, batch_size, inputs_length, rng):
  """Full-length random inputs laid out for the model's family (see decoding.py)."""
  tokens = rng.integers(2, config.vocab_size, (batch_size, inputs_length), dtype=np.int32)
  if config.architecture == 'encoder_decoder':
    return {'encoder_input_tokens': tokens}
  prompt = np.pad(tokens, ((0, 0), (1, 0)))  # BOS + inputs
  return {'decoder_input_tokens': prompt, 'decoder_causal_attention': np.ones_like(prompt)}


def time_decode(model, batch, new_tokens, use_cache, repeats):
  """(compile + first run seconds, median seconds per run, tokens)."""
  call = lambda: jax.block_until_ready(decoding.decode(
      model, batch, max_decode_length=new_tokens, eos_id=-1, use_cache=use_cache))
  t = time.perf_counter()
  tokens, _ = call()
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times), np.asarray(tokens)


def time_encoder(model, batch, repeats):
  """Median seconds of the jitted encoder on the batch (what both paths run once per decode)."""
  encode = nnx.jit(lambda model, tokens: model.encode(tokens))
  jax.block_until_ready(encode(model, batch['encoder_input_tokens']))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(encode(model, batch['encoder_input_tokens']))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None) -> int:
  def run(rest):
    p = argparse.ArgumentParser(prog='bench/decode.py')
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--inputs_length', type=int, default=512)
    p.add_argument('--new_tokens', type=int, default=128)
    p.add_argument('--repeats', type=int, default=1)
    args = p.parse_args(rest)
    config = gin_utils.query_macro('MODEL_CONFIG')
    model = random_model(config)
    batch = prompt_batch(config, args.batch_size, args.inputs_length, np.random.default_rng(0))
    generated = args.batch_size * args.new_tokens
    result = {'architecture': config.architecture, 'params': models.count_params(config),
              'batch_size': args.batch_size, 'inputs_length': args.inputs_length,
              'new_tokens': args.new_tokens, 'platform': jax.devices()[0].platform,
              'device_count': jax.device_count()}
    encoder_s = 0.0
    if config.architecture == 'encoder_decoder':
      encoder_s = result['encoder_s'] = time_encoder(model, batch, args.repeats)
      print(f' encoder: {encoder_s:.2f} s per batch', flush=True)
    tokens = {}
    for name, use_cache in (('cached', True), ('uncached', False)):
      first, seconds, tokens[name] = time_decode(model, batch, args.new_tokens, use_cache,
                                                 args.repeats)
      result[f'{name}_s'] = seconds
      result[f'{name}_compile_and_first_run_s'] = first
      result[f'{name}_tokens_per_s'] = generated / seconds
      result[f'{name}_steps_tokens_per_s'] = generated / (seconds - encoder_s)
      print(f'{name:>8}: {generated / seconds:10.1f} tokens/s  ({seconds:.2f} s per decode of '
            f'{generated} tokens; compile + first run {first:.1f} s)', flush=True)
    result['speedup'] = result['cached_tokens_per_s'] / result['uncached_tokens_per_s']
    result['steps_speedup'] = (result['cached_steps_tokens_per_s']
                               / result['uncached_steps_tokens_per_s'])
    result['same_tokens'] = bool((tokens['cached'] == tokens['uncached']).all())
    print(f'KV cache speed-up: {result["speedup"]:.1f}x overall, '
          f'{result["steps_speedup"]:.1f}x without the encoder; same greedy tokens: '
          f'{result["same_tokens"]}')
    print(json.dumps(result), flush=True)

  argv = list(sys.argv[1:] if argv is None else argv)
  if not any(a.startswith('--gin_file') for a in argv):
    argv.insert(0, f'--gin_file={DEFAULT_GIN_FILE}')
  return gin_utils.run_main(run, argv)


if __name__ == '__main__':
  sys.exit(main())
