"""Times the jitted train step on synthetic batches; the last line printed is one JSON object.

  python bench/train_step.py --gin_file=gin/models/t5_1_1/small.gin --batch_size=8 \
      --inputs_length=512 --targets_length=114 --steps=5 --dtype=float32 --compare=hf

MFU is useful model FLOPs (the per-layer count of models/flops.py, 3x forward) / median step time /
peak. On CPU the peak is measured in the same run by a large jitted matmul; on TPU/GPU it is the
published figure. `--compare=hf` then times Hugging Face `transformers` (PyTorch eager, AdamW) on the
same config, shapes, tokens and initial weights (ours, converted) in the same process, checks that
its first loss equals ours, and reports ours/theirs. Both sides use AdamW
unless `--optimizer` says otherwise (transformers has no T5X-style Adafactor). `--profile=DIR`
writes a `jax.profiler` trace of one step and prints the ops that took the most time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import glob
import json
import os
import re
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from t5x_lite import gin_utils, hardware, partitioning, trainer
from t5x_lite.optimizer import learning_rate_schedule, make_optimizer
from t5x_lite import models


# Both sides train with this constant rate, so their losses can be compared step for step.
LEARNING_RATE = 1e-3


def synthetic_batch(rng, batch_size, inputs_length, targets_length, vocab_size,
                    decoder_only: bool = False):
  """Unpacked random tokens, every position real: the densest batch the step sees. A
  decoder-only batch has the targets alone (inputs_length is ignored)."""
  enc = rng.integers(2, vocab_size, (batch_size, inputs_length), dtype=np.int32)
  tgt = rng.integers(2, vocab_size, (batch_size, targets_length), dtype=np.int32)
  dec_in = np.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  batch = {'decoder_input_tokens': dec_in, 'decoder_target_tokens': tgt,
           'decoder_loss_weights': np.ones_like(tgt, np.float32)}
  return batch if decoder_only else {'encoder_input_tokens': enc, **batch}


def time_calls(call, steps: int, warmup: int) -> tuple[list[float], float, object]:
  """(seconds per timed call, seconds of the first call, last result). `call` blocks."""
  t = time.perf_counter()
  out = call()
  first = time.perf_counter() - t
  for _ in range(warmup - 1):
    out = call()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t)
  return times, first, out


def cross_entropy(metrics) -> float:
  """Our step's loss without T5's z-loss: what transformers reports."""
  return float(metrics['loss']) - float(metrics['z_loss'])


def time_ours(config, batch, optimizer: str, steps: int, warmup: int, profile_dir: str | None,
              xla_defaults: bool = False) -> dict:
  """Times our jitted step; also returns the initial params and the first step's cross-entropy."""
  mesh = partitioning.create_mesh({'data': -1})
  rules = partitioning.logical_axis_rules()
  tx = make_optimizer(learning_rate_schedule('constant', LEARNING_RATE), name=optimizer)
  setup = trainer.setup_train_state(config, tx, 0, mesh, rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    box = {'state': setup.init()}
    init_params = jax.device_get(box['state']['params'])  # before the step donates them
    step = trainer.jit_train_step(setup, xla_defaults=xla_defaults)
    batch = jax.device_put(batch)

    def call():
      box['state'], metrics = step(box['state'], batch)
      metrics = jax.block_until_ready(metrics)
      if 'first_ce' not in box:  # once: not a host transfer inside every timed step
        box['first_ce'] = cross_entropy(metrics)
      return metrics

    times, first, metrics = time_calls(call, steps, warmup)
    if profile_dir:
      jax.profiler.start_trace(profile_dir)
      call()
      jax.profiler.stop_trace()
  return {'times': times, 'first_s': first, 'loss': float(metrics['loss']),
          'first_cross_entropy': box['first_ce'],
          'last_cross_entropy': cross_entropy(metrics),
          'init_params': init_params}


def time_hf(config, batch, init_params, optimizer: str, dtype: str, steps: int,
            warmup: int) -> dict:
  """transformers' T5ForConditionalGeneration from our initial params, eager, one optimizer step
  per call; its first loss must equal our first cross-entropy (same model, same batch)."""
  # pylint: disable=import-outside-toplevel
  import torch
  import transformers
  from t5x_lite import convert
  model = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**convert.ours_to_hf_config(config)))
  if not config.logits_via_embedding and model.lm_head.weight is model.shared.weight:
    # transformers >= 5 ties the head whatever the config says: give it its own weights.
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
  state = {k: torch.from_numpy(np.array(v))  # writable copies
           for k, v in convert.params_to_hf(init_params, config).items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  aliases = {'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'}  # = shared.weight
  if config.logits_via_embedding:
    aliases.add('lm_head.weight')
  if unexpected or set(missing) - aliases:
    raise RuntimeError(f'HF state dict mismatch: missing {missing}, unexpected {unexpected}')
  model = model.to(getattr(torch, dtype)).train()
  if optimizer == 'adamw':
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95),
                            weight_decay=0.0)
  else:
    opt = transformers.optimization.Adafactor(model.parameters(), lr=LEARNING_RATE,
                                              relative_step=False)
  tensors = {
      'input_ids': torch.from_numpy(batch['encoder_input_tokens']).long(),
      'decoder_input_ids': torch.from_numpy(batch['decoder_input_tokens']).long(),
      'labels': torch.from_numpy(batch['decoder_target_tokens']).long(),
  }
  losses = []

  def call():
    opt.zero_grad(set_to_none=True)
    loss = model(**tensors).loss
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))

  times, first, _ = time_calls(call, steps, warmup)
  return {'times': times, 'first_s': first, 'loss': losses[-1], 'first_loss': losses[0],
          'threads': torch.get_num_threads(),
          'params': sum(p.numel() for p in model.parameters())}


def summarize_profile(profile_dir: str, top: int = 15) -> list[tuple[str, float]]:
  """(op, seconds) summed over XLA's worker threads, largest first, from the newest trace."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  path = sorted(glob.glob(os.path.join(profile_dir, 'plugins/profile/*/*.xplane.pb')))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  total = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith('tf_XLA'):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if not name.startswith(('ThunkExecutor', 'SlinkyThreadPool')):
          total[re.sub(r'\.\d+$', '', name)] += event.duration_ps / 1e12
  return total.most_common(top)


def main(argv=None) -> int:
  def run(rest):
    p = argparse.ArgumentParser(prog='bench/train_step.py')
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--inputs_length', type=int, default=512)
    p.add_argument('--targets_length', type=int, default=114)
    p.add_argument('--steps', type=int, default=5, help='timed steps (median reported)')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps first (1 = the compile)')
    p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
    p.add_argument('--optimizer', choices=('adamw', 'adafactor'), default='adamw')
    p.add_argument('--compare', choices=('hf',), default=None)
    p.add_argument('--profile', default=None, metavar='DIR', help='trace one more step into DIR')
    p.add_argument('--xla_defaults', action='store_true',
                   help="compile with XLA's defaults instead of hardware.compiler_options()")
    args = p.parse_args(rest)
    if args.steps < 1 or args.warmup < 1:
      raise gin_utils.UsageError('--steps and --warmup must be at least 1.')
    config = dataclasses.replace(gin_utils.query_macro('MODEL_CONFIG'), dtype=args.dtype)
    decoder_only = config.architecture == 'decoder_only'
    lengths = ({'targets': args.targets_length} if decoder_only else
               {'inputs': args.inputs_length, 'targets': args.targets_length})
    if config.architecture == 'prefix_lm':
      raise gin_utils.UsageError('bench/train_step.py times encoder-decoder and decoder-only '
                                 "configs, not 'prefix_lm'; use the decoder-only gin.")
    if decoder_only and args.compare:
      raise gin_utils.UsageError('--compare=hf times T5ForConditionalGeneration: give an '
                                 'encoder-decoder gin, or drop --compare.')
    batch = synthetic_batch(np.random.default_rng(0), args.batch_size, args.inputs_length,
                            args.targets_length, config.vocab_size, decoder_only)
    tokens = args.batch_size * sum(lengths.values())
    model_flops = models.training_flops_per_example(config, lengths) * args.batch_size
    peak = hardware.peak_flops_per_device(remeasure=True)
    if peak is None:
      raise gin_utils.UsageError(hardware.unknown_peak_message())
    peak *= jax.device_count()
    memory = hardware.measured_memory_bandwidth()
    print(f'peak {peak / 1e9:.1f} GFLOP/s ({jax.devices()[0].device_kind}, '
          f'{jax.device_count()} device(s)), memory {memory / 1e9:.1f} GB/s (elementwise pass '
          f'on one device); useful {model_flops / 1e12:.3f} TFLOP per step', flush=True)

    options = None if args.xla_defaults else hardware.compiler_options()
    ours = time_ours(config, batch, args.optimizer, args.steps, args.warmup, args.profile,
                     args.xla_defaults)
    step_s = statistics.median(ours['times'])
    result = {
        'step_s': step_s,
        'tokens_per_s': tokens / step_s,
        'mfu': model_flops / step_s / peak,
        'useful_gflops_per_s': model_flops / step_s / 1e9,
        'peak_gflops_per_s': peak / 1e9,
        'memory_gbytes_per_s': memory / 1e9,
        'compile_s': ours['first_s'],
        'step_times_s': ours['times'],
        'first_cross_entropy': ours['first_cross_entropy'],
        'loss': ours['loss'],
        'last_cross_entropy': ours['last_cross_entropy'],
        'model_tflops_per_step': model_flops / 1e12,
        'params': models.count_params(config),
        'device': jax.devices()[0].device_kind,
        'batch_size': args.batch_size, 'lengths': lengths,
        'dtype': args.dtype, 'optimizer': args.optimizer,
        'xla_flags': os.environ.get('XLA_FLAGS', ''), 'compiler_options': options,
    }
    print(f't5x_lite: {step_s:.3f} s/step, {tokens / step_s:,.0f} tokens/s, '
          f'{model_flops / step_s / 1e9:.1f} useful GFLOP/s, MFU {result["mfu"]:.1%} '
          f'(first call {ours["first_s"]:.1f} s)', flush=True)
    if args.profile:
      print(f'profile: {args.profile} (op, thread-seconds over one step)')
      for name, seconds in summarize_profile(args.profile):
        print(f'  {seconds:8.3f}  {name}')
    if args.compare == 'hf':
      init_params = ours.pop('init_params')
      del ours
      gc.collect()
      hf = time_hf(config, batch, init_params, args.optimizer, args.dtype, args.steps,
                   args.warmup)
      hf_step = statistics.median(hf['times'])
      result.update({
          'hf_step_s': hf_step,
          'hf_tokens_per_s': tokens / hf_step,
          'hf_mfu': model_flops / hf_step / peak,
          'hf_step_times_s': hf['times'],
          'hf_first_step_s': hf['first_s'],
          'hf_first_loss': hf['first_loss'],
          'hf_loss': hf['loss'],
          'hf_torch_threads': hf['threads'],
          'hf_params': hf['params'],
          'speedup_vs_hf': hf_step / step_s,
      })
      print(f'transformers: {hf_step:.3f} s/step, {tokens / hf_step:,.0f} tokens/s, MFU '
            f'{result["hf_mfu"]:.1%} ({hf["threads"]} torch threads); first-step loss '
            f'{hf["first_loss"]:.5f} vs ours {result["first_cross_entropy"]:.5f}, last '
            f'{hf["loss"]:.4f} vs ours {result["last_cross_entropy"]:.4f}; t5x_lite is '
            f'{hf_step / step_s:.2f}x its tokens/s', flush=True)
    print(json.dumps(result))
  return gin_utils.run_main(run, argv)


if __name__ == '__main__':
  sys.exit(main())
