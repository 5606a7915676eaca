"""Compiles the real train step of each model for each target with `t5x_lite.plan --target --json`
(one process per compile, so memory is returned between them) and writes a markdown table:

  python bench/aot_targets.py [--models=t5_1_1/small,t5_1_1/xl] [--targets=v5p-8,h100x32] \
      [--preset=fsdp] [--batch_size=128] [--out=bench/results/aot_targets.md]

Defaults: T5.1.1 small → xxl and GPT-3 1.3B / 6.7B (decoder-only) on v5p-8, v5p-64, v5p-256,
h100x8 and h100x32, FSDP, batch 128, lengths 512/114 (decoder-only: 2048). XL and larger take many
minutes and ~9 GB each here. Each finished row is also appended to OUT's .jsonl, and rows already
there are not compiled again (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('t5_1_1/small', 't5_1_1/base', 't5_1_1/large', 't5_1_1/xl', 't5_1_1/xxl',
          'decoder_only/1.3B', 'decoder_only/6.7B')
TARGETS = ('v5p-8', 'v5p-64', 'v5p-256', 'h100x8', 'h100x32')


def compile_one(model: str, target: str, preset: str, batch_size: int, timeout_s: int) -> dict:
  lengths = ("{'targets': 2048}" if model.startswith('decoder_only')
             else "{'inputs': 512, 'targets': 114}")
  cmd = [sys.executable, '-m', 't5x_lite.plan', f'--gin_file=gin/models/{model}.gin',
         '--gin_file=gin/runs/pretrain.gin', f'--preset={preset}', f'--target={target}',
         f'--batch_size={batch_size}', f'--gin.TASK_FEATURE_LENGTHS={lengths}',
         "--gin.MESH_SHAPE={'data': -1, 'model': 1}", '--json']
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
  wall = time.perf_counter() - t
  if proc.returncode != 0:
    error = (proc.stderr.strip().splitlines() or ['?'])[-1]
    return {'model': model, 'target': target, 'error': error[:300], 'wall_s': wall}
  return {'model': model, 'target': target, 'wall_s': wall,
          **json.loads(proc.stdout.strip().splitlines()[-1])}


def _gib(n) -> str:
  return '-' if n is None else f'{n / 2**30:.2f}'


def table(rows: list[dict]) -> str:
  lines = ['| model | target | memory/chip GiB (HBM free) | planner GiB (planner/compiler) | '
           'collective GiB/step (ratio to FSDP reference) | compile s | TPU optimal_seconds '
           'MFU | fused attention |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r['model']} | {r['target']} | failed: {r['error']} | | | | | |")
      continue
    ratio = r['collective_bytes_ratio']
    mfu = '-' if r['mfu_estimate'] is None else f"{r['mfu_estimate']:.1%}"
    lines.append(
        f"| {r['model']} | {r['target']} | {_gib(r['memory_per_chip_bytes'])} "
        f"({r['hbm_free_fraction']:.0%}) | {_gib(r['estimated_memory_per_chip_bytes'])} "
        f"({r['estimated_memory_per_chip_bytes'] / r['memory_per_chip_bytes']:.2f}) | "
        f"{_gib(r['collective_bytes_per_step'])} ({'-' if ratio is None else f'{ratio:.2f}'}) | "
        f"{r['compile_s']:.0f} | {mfu} | "
        f"{'-' if r['fused_attention'] is None else r['fused_attention']} |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python bench/aot_targets.py')
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--targets', default=','.join(TARGETS))
  parser.add_argument('--preset', default='fsdp')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--timeout_s', type=int, default=7200)
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'aot_targets.md'))
  args = parser.parse_args(argv)
  done_path = os.path.splitext(args.out)[0] + '.jsonl'
  done = []
  if os.path.exists(done_path):
    with open(done_path) as f:
      done = [json.loads(line) for line in f if line.strip()]
  grid = [(m, t) for m in args.models.split(',') for t in args.targets.split(',')]
  have = {(r['model'], r['target']) for r in done if 'error' not in r}
  todo = [cell for cell in grid if cell not in have]
  print(f'{len(grid)} compiles, {len(grid) - len(todo)} already in {done_path}', flush=True)
  for i, (model, target) in enumerate(todo, 1):
    print(f'[{i}/{len(todo)}] {model} on {target} ...', flush=True)
    row = compile_one(model, target, args.preset, args.batch_size, args.timeout_s)
    print(f"    {'failed: ' + row['error'] if 'error' in row else 'ok'} ({row['wall_s']:.0f} s)",
          flush=True)
    done = [r for r in done if (r['model'], r['target']) != (model, target)] + [row]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(done_path, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in done)
  rows = [r for cell in grid for r in done if (r['model'], r['target']) == cell]
  with open(args.out, 'w') as f:
    f.write(f'# Train step compiled for real targets ({args.preset}, batch {args.batch_size})\n\n'
            'Written by `python bench/aot_targets.py`; memory = arguments + outputs - aliased + '
            'temp per chip; the reference volume of FSDP is params gathered twice (compute dtype) '
            'plus gradients reduce-scattered once; optimal_seconds is XLA:TPU\'s serial per-op '
            'estimate.\n\n' + table(rows) + '\n')
  print(table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
