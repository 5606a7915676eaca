"""Compiles the real train step of each model for each target with `t5x_lite.plan --target --json`
(one process per compile, so memory is returned between them) and writes a markdown table:

  python bench/aot_targets.py [--models=t5_1_1/small,t5_1_1/xl] [--targets=v5p-8,h100x32] \
      [--presets=fsdp,2d] [--batch_size=128] [--depth=full|2,4] [--refresh_estimates] \
      [--out=bench/results/aot_targets.md]

Defaults: T5.1.1 small → xxl and GPT-3 1.3B / 6.7B (decoder-only) on v5p-8, v5p-64, v5p-256,
h100x8 and h100x32, FSDP and 2-D (model axis 4, or 2 on 8 or fewer chips), batch 128, lengths
512/114 (decoder-only: 2048), bfloat16 as the model gins say.

The model gins scan layers from base up (compile time flat in depth, T5.1.1-XL on v5p-64 in under
a minute), but XLA's cost analysis counts a loop body once, so a scanned row has no FLOPs-based
MFU (its collectives are counted per iteration). `--depth=2,4` compiles each model unrolled with 2
and with 4 layers per stack (unrolled XL took half an hour) and extrapolates every
per-step figure (memory, FLOPs, collective bytes, optimal_seconds, the planner's estimate) linearly
to the real depth, which is exact for an unrolled stack up to XLA's scheduling; such rows say
"2,4→N" and their compile time is that of the two small compiles. Full and extrapolated rows of
the same cell are both kept, so the extrapolation can be checked where both exist.

Each finished row is also written to OUT's .jsonl, and cells already there are not compiled again
(rerun to resume). `--refresh_estimates` re-scores the stored rows with the planner as it is now,
without compiling, keeping the first estimate a row had as `estimate_before` (the recalibration's
before/after).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from t5x_lite import hardware, targets  # pylint: disable=wrong-import-position
MODELS = ('t5_1_1/small', 't5_1_1/base', 't5_1_1/large', 't5_1_1/xl', 't5_1_1/xxl',
          'decoder_only/1.3B', 'decoder_only/6.7B')
TARGETS = ('v5p-8', 'v5p-64', 'v5p-256', 'h100x8', 'h100x32')
# Per-step figures that scale with depth (extrapolated); everything else is taken as is.
LINEAR = ('memory_per_chip_bytes', 'argument_bytes', 'output_bytes', 'alias_bytes', 'temp_bytes',
          'estimated_memory_per_chip_bytes', 'compiled_flops_per_chip', 'model_flops_per_step',
          'model_flops_per_chip', 'collective_bytes_per_step', 'collective_bytes_minimum',
          'optimal_seconds')


def mesh_for(preset: str, target: str) -> dict:
  chips = targets.parse(target).num_chips
  model = 1 if preset != '2d' else (2 if chips <= 8 else 4)
  return {'data': chips // model, 'model': model}


def _model_flags(model: str, preset: str, target: str, batch_size: int) -> list[str]:
  lengths = ("{'targets': 2048}" if model.startswith('decoder_only')
             else "{'inputs': 512, 'targets': 114}")
  return [f'--gin_file=gin/models/{model}.gin', '--gin_file=gin/runs/pretrain.gin',
          f'--preset={preset}', f'--batch_size={batch_size}',
          f'--gin.TASK_FEATURE_LENGTHS={lengths}',
          f'--gin.MESH_SHAPE={mesh_for(preset, target)}']


def _depth_flags(model: str, layers: int | None) -> list[str]:
  if layers is None:
    return []
  m = 't5x_lite.models.T5Config'
  # Unrolled: XLA's cost analysis counts a scanned loop's body once, an unrolled stack in full.
  flags = [f'--gin.{m}.num_decoder_layers={layers}', f'--gin.{m}.scan_layers=False']
  return flags if model.startswith('decoder_only') else flags + [
      f'--gin.{m}.num_encoder_layers={layers}']


def _plan_json(flags: list[str], timeout_s: int) -> dict:
  proc = subprocess.run([sys.executable, '-m', 't5x_lite.plan', *flags, '--json'], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout_s)
  if proc.returncode != 0:
    raise RuntimeError((proc.stderr.strip().splitlines() or ['?'])[-1][:300])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def full_depth(model: str) -> int:
  with open(os.path.join(REPO, 'gin', 'models', f'{model}.gin')) as f:
    text = f.read()
  return int(re.search(r'num_decoder_layers\s*=\s*(\d+)', text).group(1))


def compile_one(model: str, target: str, preset: str, batch_size: int, depth: str,
                timeout_s: int) -> dict:
  """One table row: a full-depth compile, or two shallow ones extrapolated to full depth."""
  base = _model_flags(model, preset, target, batch_size) + [f'--target={target}']
  cell = {'model': model, 'target': target, 'preset': preset, 'depth': depth}
  t = time.perf_counter()
  try:
    if depth == 'full':
      row = _plan_json(base, timeout_s)
    else:
      a, b = (int(x) for x in depth.split(','))
      lo, hi = (_plan_json(base + _depth_flags(model, n), timeout_s) for n in (a, b))
      n = full_depth(model)
      row = dict(hi)
      for key in LINEAR:
        if lo.get(key) is not None:
          row[key] = lo[key] + (hi[key] - lo[key]) * (n - a) / (b - a)
      row['collectives'] = {
          k: {f: lo['collectives'][k][f] + (v[f] - lo['collectives'][k][f]) * (n - a) / (b - a)
              for f in ('count', 'bytes')} for k, v in hi['collectives'].items()}
      row['compile_s'] = lo['compile_s'] + hi['compile_s']
      peak = hardware.CHIPS[targets.parse(target).chip].peak_flops
      row['mfu_estimate'] = (row['model_flops_per_chip'] / peak / row['optimal_seconds']
                             if row.get('optimal_seconds') else None)
      row['collective_bytes_ratio'] = (row['collective_bytes_per_step']
                                       / row['collective_bytes_minimum']
                                       if row.get('collective_bytes_minimum') else None)
      row['hbm_free_fraction'] = 1 - row['memory_per_chip_bytes'] / row['hbm_bytes']
      row['fits'] = row['memory_per_chip_bytes'] <= row['hbm_bytes']
  except (RuntimeError, subprocess.TimeoutExpired) as e:
    return {**cell, 'error': str(e)[:300], 'wall_s': time.perf_counter() - t}
  return {**row, **cell, 'wall_s': time.perf_counter() - t}


def refresh_estimate(row: dict, timeout_s: int) -> dict:
  """The row with the planner's current estimate (no compile); the first one is kept."""
  flags = _model_flags(row['model'], row.get('preset', 'fsdp'), row['target'], row['batch_size'])
  target = targets.parse(row['target'])
  plan = _plan_json(flags + [
      f'--chip={target.chip}', f'--num_devices={target.num_chips}',
      f'--nodes={target.num_slices}'], timeout_s)
  new = plan['total_bytes_by_remat'][row['remat_policy']]
  if abs(new / row['estimated_memory_per_chip_bytes'] - 1) > 0.005:
    row.setdefault('estimate_before', row['estimated_memory_per_chip_bytes'])
  row['estimated_memory_per_chip_bytes'] = new
  return row


def _gib(n) -> str:
  return '-' if n is None else f'{n / 2**30:.2f}'


def table(rows: list[dict]) -> str:
  lines = ['| model | target | preset | layers | memory/chip GiB (HBM free) | planner GiB '
           '(planner/compiler; before recalibration) | collective GiB/step (ratio to FSDP '
           'reference) | compile s | TPU optimal_seconds MFU | fused attention |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    depth = 'all' if r.get('depth', 'full') == 'full' else f"{r['depth']}→{full_depth(r['model'])}"
    head = f"| {r['model']} | {r['target']} | {r.get('preset', 'fsdp')} | {depth} |"
    if 'error' in r:
      lines.append(f"{head} failed: {r['error']} | | | | | |")
      continue
    ratio = r['collective_bytes_ratio']
    mfu = '-' if r['mfu_estimate'] is None else f"{r['mfu_estimate']:.1%}"
    mem, est = r['memory_per_chip_bytes'], r['estimated_memory_per_chip_bytes']
    before = f"; {r['estimate_before'] / mem:.2f}" if 'estimate_before' in r else ''
    free = f"{r['hbm_free_fraction']:.0%}" if r['fits'] else 'over HBM'
    lines.append(
        f"{head} {_gib(mem)} ({free}) | {_gib(est)} ({est / mem:.2f}"
        f"{before}) | {_gib(r['collective_bytes_per_step'])} "
        f"({'-' if ratio is None else f'{ratio:.2f}'}) | {r['compile_s']:.0f} | {mfu} | "
        f"{'-' if r['fused_attention'] is None else r['fused_attention']} |")
  return '\n'.join(lines)


def _key(r: dict) -> tuple:
  return r['model'], r['target'], r.get('preset', 'fsdp'), r.get('depth', 'full')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python bench/aot_targets.py')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--targets', default=','.join(TARGETS))
  parser.add_argument('--presets', default='fsdp,2d')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--depth', default='full', choices=('full', '2,4'),
                      help="'full', or '2,4': compile 2 and 4 layers per stack, extrapolate")
  parser.add_argument('--refresh_estimates', action='store_true',
                      help="re-score stored rows with the planner as it is now; no compiles")
  parser.add_argument('--report', action='store_true',
                      help='rewrite the table from the stored rows; no compiles')
  parser.add_argument('--timeout_s', type=int, default=7200)
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'aot_targets.md'))
  args = parser.parse_args(argv)
  done_path = os.path.splitext(args.out)[0] + '.jsonl'
  done = []
  if os.path.exists(done_path):
    with open(done_path) as f:
      done = [json.loads(line) for line in f if line.strip()]

  def save():
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(done_path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in done)

  if args.refresh_estimates:
    done = [refresh_estimate(r, args.timeout_s) if 'error' not in r else r for r in done]
    save()
  elif not args.report:
    grid = [(m, t, p, args.depth) for m in args.models.split(',')
            for t in args.targets.split(',') for p in args.presets.split(',')]
    have = {_key(r) for r in done if 'error' not in r}
    todo = [cell for cell in grid if cell not in have]
    print(f'{len(grid)} cells, {len(grid) - len(todo)} already in {done_path}', flush=True)
    for i, (model, target, preset, depth) in enumerate(todo, 1):
      print(f'[{i}/{len(todo)}] {model} on {target}, {preset}, layers {depth} ...', flush=True)
      row = compile_one(model, target, preset, args.batch_size, depth, args.timeout_s)
      print(f"    {'failed: ' + row['error'] if 'error' in row else 'ok'} "
            f"({row['wall_s']:.0f} s)", flush=True)
      done = [r for r in done if _key(r) != _key(row)] + [row]
      save()
  order = {m: i for i, m in enumerate(MODELS)}
  rows = sorted(done, key=lambda r: (order.get(r['model'], 99), r['target'],
                                     r.get('preset', 'fsdp'), r.get('depth', 'full')))
  with open(args.out, 'w') as f:
    f.write(f'# Train step compiled for real targets (batch {args.batch_size})\n\n'
            'Written by `python bench/aot_targets.py`; memory = arguments + outputs - aliased + '
            'temp per chip; "planner" is the analytic estimate (t5x_lite.plan) over the '
            "compiler's figure, now and, where the row predates it, before the recalibration; "
            'the reference volume of FSDP is params gathered twice (compute dtype) plus gradients '
            'reduce-scattered once; optimal_seconds is XLA:TPU\'s serial per-op estimate. '
            'Layers "2,4→N": figures extrapolated from 2- and 4-layer compiles.\n\n'
            + table(rows) + '\n')
  print(table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
