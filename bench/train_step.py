"""Times the jitted train step of an encoder-decoder on synthetic batches; the last line printed is one JSON object.

  python bench/train_step.py --gin_file=gin/models/t5_1_1/small.gin --batch_size=8 \
      --inputs_length=512 --targets_length=114 --steps=5 --dtype=float32

MFU is useful model FLOPs (per-layer count) / step time / peak, with the peak measured in the same
run by a large jitted matmul on CPU (published figures on TPU/GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from t5x_lite import gin_utils, hardware, partitioning, trainer
from t5x_lite import models


def synthetic_batch(rng, batch_size, inputs_length, targets_length, vocab_size):
  """Unpacked random tokens, every position real: the densest batch the step sees."""
  enc = rng.integers(2, vocab_size, (batch_size, inputs_length), dtype=np.int32)
  tgt = rng.integers(2, vocab_size, (batch_size, targets_length), dtype=np.int32)
  dec_in = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
          'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones_like(tgt, np.float32)}


def main(argv=None) -> int:
  def run(rest):
    p = argparse.ArgumentParser(prog='bench/train_step.py')
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--inputs_length', type=int, default=512)
    p.add_argument('--targets_length', type=int, default=114)
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    args = p.parse_args(rest)
    config = gin_utils.query_macro('MODEL_CONFIG')
    config = dataclasses.replace(config, dtype=args.dtype)
    mesh = partitioning.create_mesh({'data': -1})
    rules = partitioning.logical_axis_rules()
    tx = trainer.make_optimizer(trainer.learning_rate_schedule())
    setup = trainer.setup_train_state(config, tx, 0, mesh, rules)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      state = setup.init()
      step = jax.jit(trainer.make_train_step(setup.graphdef, setup.tx),
                     in_shardings=(setup.shardings, None), out_shardings=(setup.shardings, None),
                     donate_argnums=(0,))
      batch = jax.device_put(synthetic_batch(np.random.default_rng(0), args.batch_size,
                                             args.inputs_length, args.targets_length,
                                             config.vocab_size))
      t = time.perf_counter()
      state, m = step(state, batch)
      jax.block_until_ready(m)
      compile_s = time.perf_counter() - t
      times = []
      for _ in range(args.steps):
        t = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    model_flops = models.training_flops_per_example(
        config, {'inputs': args.inputs_length, 'targets': args.targets_length}) * args.batch_size
    peak = hardware.peak_flops_per_device() * jax.device_count()
    result = {
        'step_s': step_s,
        'compile_s': compile_s,
        'tokens_per_s': args.batch_size * (args.inputs_length + args.targets_length) / step_s,
        'model_tflops_per_step': model_flops / 1e12,
        'useful_gflops_per_s': model_flops / step_s / 1e9,
        'peak_gflops_per_s': peak / 1e9,
        'mfu': model_flops / step_s / peak,
        'device': jax.devices()[0].device_kind,
        'batch_size': args.batch_size, 'lengths': [args.inputs_length, args.targets_length],
        'dtype': args.dtype, 'loss': float(m['loss']),
    }
    print(json.dumps(result))
  return gin_utils.run_main(run, argv)


if __name__ == '__main__':
  sys.exit(main())
