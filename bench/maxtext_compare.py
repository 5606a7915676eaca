"""Side by side with MaxText, the closest JAX peer (optional, not CI; `make maxtext` first):

  python bench/maxtext_compare.py [--target=v5p-8] [--skip_tpu] [--skip_cpu] [--rounds=3]

(a) The same decoder-only model (GPT-3 1.3B's shapes: d_model 2048, 16 heads x 128, non-gated
    GELU MLP 8192, 24 layers, tied embeddings, vocabulary 50,304, length 2048), the same global
    batch, AdamW, float32 and full remat on both sides, compiled for the same TPU slice: MaxText
    through its `train_compile` (in .venv-maxtext, jax 0.11.1), ours through `t5x_lite.plan
    --target --json`. Memory per chip and XLA:TPU's `optimal_seconds` for each; MaxText's defaults
    (bfloat16 activations) as a third row.
(b) On this CPU, a small model of the same family and shapes on both sides, runs alternated
    (ours, MaxText, ours, ...), one FLOP count for both (models/flops.py): tokens/s and their ratio.

What differs between the two models, beyond the settings forced equal: MaxText's llama2 block has
rotary position embeddings where ours adds T5's relative-position bias; MaxText scans its layers
(ours are unrolled); MaxText's CPU default attention and ours are both plain dot-product attention.
Results go to bench/results/maxtext_compare.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAXTEXT_PY = os.path.join(REPO, '.venv-maxtext', 'bin', 'python')
OURS_PY = sys.executable

# GPT-3 1.3B's shapes (gin/models/decoder_only/1.3B.gin), vocabulary padded to a multiple of 128.
BIG = dict(d_model=2048, heads=16, head_dim=128, mlp=8192, layers=24, vocab=50304, length=2048)
SMALL = dict(d_model=256, heads=4, head_dim=64, mlp=1024, layers=4, vocab=8192, length=256)


def _maxtext_args(shape: dict, *, per_device_batch: float, dtype: str | None, remat: str | None,
                  attention: str | None = None) -> list[str]:
  args = [f"base_emb_dim={shape['d_model']}", f"base_num_query_heads={shape['heads']}",
          f"base_num_kv_heads={shape['heads']}", f"head_dim={shape['head_dim']}",
          f"base_mlp_dim={shape['mlp']}", f"base_num_decoder_layers={shape['layers']}",
          f"vocab_size={shape['vocab']}", f"max_target_length={shape['length']}",
          f'per_device_batch_size={per_device_batch}', 'mlp_activations=["gelu"]',
          'logits_via_embedding=true', 'enable_dropout=false', 'opt_type=adamw',
          'dataset_type=synthetic', 'enable_checkpointing=false']
  args += [f'dtype={dtype}'] if dtype else []
  args += [f'remat_policy={remat}'] if remat else []
  args += [f'attention={attention}'] if attention else []
  return args


def _our_gin(shape: dict, remat: str) -> list[str]:
  m = 't5x_lite.models.T5Config'
  return ['--gin_file=gin/models/decoder_only/1.3B.gin', f"--gin.VOCAB_SIZE={shape['vocab']}",
          f"--gin.{m}.d_model={shape['d_model']}", f"--gin.{m}.num_heads={shape['heads']}",
          f"--gin.{m}.d_kv={shape['head_dim']}", f"--gin.{m}.d_ff={shape['mlp']}",
          f"--gin.{m}.num_decoder_layers={shape['layers']}", f"--gin.{m}.remat_policy='{remat}'",
          "--gin.make_optimizer.name='adamw'"]


def _maxtext_config() -> str:
  out = subprocess.run([MAXTEXT_PY, '-c', 'import maxtext, os; print(os.path.dirname('
                        'maxtext.__file__))'], capture_output=True, text=True, check=True)
  return os.path.join(out.stdout.strip().splitlines()[-1], 'configs', 'base.yml')


def _run(cmd: list[str], timeout_s: int, env: dict | None = None) -> str:
  t = time.perf_counter()
  print('$ ' + ' '.join(cmd), flush=True)
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                        env={**os.environ, **(env or {})})
  if proc.returncode:
    raise RuntimeError(f'exit {proc.returncode} after {time.perf_counter() - t:.0f} s:\n'
                       + (proc.stdout + proc.stderr)[-3000:])
  return proc.stdout + proc.stderr


def maxtext_compile(target: str, shape: dict, batch: int, chips: int, dtype, remat,
                    attention=None) -> dict:
  """MaxText's train_compile for `target`: memory per chip and XLA:TPU's optimal_seconds."""
  t = time.perf_counter()
  out = _run([MAXTEXT_PY, '-m', 'maxtext.trainers.pre_train.train_compile', _maxtext_config(),
              f'run_name=compare_{int(t)}', 'base_output_directory=/tmp/maxtext_compare',
              f'compile_topology={target}', 'compile_topology_num_slices=1',
              *_maxtext_args(shape, per_device_batch=batch / chips, dtype=dtype, remat=remat,
                             attention=attention)],
             timeout_s=3600, env={'JAX_PLATFORMS': 'cpu'})
  wall = time.perf_counter() - t
  mem = {k: int(v) for k, v in re.findall(r'(\w+)_size_in_bytes=(\d+)',
                                          out.rsplit('Memory analysis:', 1)[1])}
  cost = re.search(r"'optimal_seconds': (?:np\.float\w*\()?([\d.e+-]+)",
                   out.rsplit('Cost analysis:', 1)[1])
  return {'memory_per_chip_bytes': mem['argument'] + mem['output'] - mem['alias'] + mem['temp'],
          'temp_bytes': mem['temp'], 'argument_bytes': mem['argument'],
          'optimal_seconds': float(cost.group(1)) if cost else None, 'wall_s': wall}


def ours_compile(target: str, shape: dict, batch: int, remat: str) -> dict:
  t = time.perf_counter()
  out = _run([OURS_PY, '-m', 't5x_lite.plan', *_our_gin(shape, remat), '--preset=fsdp',
              f'--target={target}', f'--batch_size={batch}',
              f"--gin.TASK_FEATURE_LENGTHS={{'targets': {shape['length']}}}",
              "--gin.MESH_SHAPE={'data': -1, 'model': 1}", '--json'], timeout_s=7200)
  got = json.loads(out.strip().splitlines()[-1])
  got['wall_s'] = time.perf_counter() - t
  return got


def model_flops_per_step(shape: dict, batch: int) -> float:
  """One count for both sides: ours (models/flops.py) for this shape."""
  code = ('import json, sys; from t5x_lite import models; from t5x_lite.models import T5Config; '
          's = json.loads(sys.argv[1]); c = T5Config(architecture="decoder_only", '
          'vocab_size=s["vocab"], d_model=s["d_model"], num_heads=s["heads"], d_kv=s["head_dim"], '
          'd_ff=s["mlp"], num_encoder_layers=0, num_decoder_layers=s["layers"], '
          'mlp_activations=("gelu",), logits_via_embedding=True); '
          'print(models.training_flops_per_example(c, {"targets": s["length"]}))')
  out = subprocess.run([OURS_PY, '-c', code, json.dumps(shape)], cwd=REPO, capture_output=True,
                       text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1]) * batch


def maxtext_cpu(shape: dict, batch: int, steps: int) -> list[float]:
  out = _run([MAXTEXT_PY, '-m', 'maxtext.trainers.pre_train.train', _maxtext_config(),
              f'run_name=cpu_{int(time.time())}', 'base_output_directory=/tmp/maxtext_compare',
              'hardware=cpu', 'skip_jax_distributed_system=true', f'steps={steps + 2}',
              *_maxtext_args(shape, per_device_batch=batch, dtype='float32', remat='minimal')],
             timeout_s=1800, env={'JAX_PLATFORMS': 'cpu'})
  times = [float(s) for n, s in re.findall(r'completed step: (\d+), seconds: ([\d.]+)', out)
           if int(n) >= 2]  # step 0 compiles, step 1 can still wait on it
  return times


def ours_cpu(shape: dict, batch: int, steps: int) -> list[float]:
  out = _run([OURS_PY, 'bench/train_step.py', *_our_gin(shape, 'none'),
              f'--batch_size={batch}', f"--targets_length={shape['length']}",
              f'--steps={steps}', '--warmup=2', '--optimizer=adamw'], timeout_s=1800)
  return json.loads(out.strip().splitlines()[-1])['step_times_s']


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python bench/maxtext_compare.py')
  p.add_argument('--target', default='v5p-8')
  p.add_argument('--batch_size', type=int, default=16, help='global batch of the TPU compile')
  p.add_argument('--cpu_batch_size', type=int, default=8)
  p.add_argument('--steps', type=int, default=10, help='timed CPU steps per run')
  p.add_argument('--rounds', type=int, default=3, help='alternated CPU runs per side')
  p.add_argument('--skip_tpu', action='store_true')
  p.add_argument('--skip_cpu', action='store_true')
  p.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'maxtext_compare.md'))
  args = p.parse_args(argv)
  if not os.path.exists(MAXTEXT_PY):
    print('error: .venv-maxtext is missing; run `make maxtext` first (Python 3.12 + maxtext '
          '0.2.5 in its own venv).', file=sys.stderr)
    return 2
  json_path = os.path.splitext(args.out)[0] + '.json'
  results = json.load(open(json_path)) if os.path.exists(json_path) else {}
  if not args.skip_tpu:
    sys.path.insert(0, REPO)
    from t5x_lite import hardware, targets  # pylint: disable=import-outside-toplevel
    target = targets.parse(args.target)
    chips = target.num_chips
    tpu = {'target': args.target, 'batch_size': args.batch_size, 'shape': BIG,
           'peak_flops_per_chip': hardware.CHIPS[target.chip].peak_flops}
    tpu['maxtext_f32_full'] = maxtext_compile(args.target, BIG, args.batch_size, chips,
                                              'float32', 'full', 'dot_product')
    tpu['maxtext_defaults'] = maxtext_compile(args.target, BIG, args.batch_size, chips,
                                              None, None)
    tpu['ours_f32_full'] = ours_compile(args.target, BIG, args.batch_size, 'full')
    tpu['model_flops_per_step'] = model_flops_per_step(BIG, args.batch_size)
    results['tpu'] = tpu
    json.dump(results, open(json_path, 'w'), indent=1)
  if not args.skip_cpu:
    runs = {'ours': [], 'maxtext': []}
    for r in range(args.rounds):
      for side, fn in (('ours', ours_cpu), ('maxtext', maxtext_cpu)):
        times = fn(SMALL, args.cpu_batch_size, args.steps)
        runs[side].append(statistics.median(times))
        print(f'round {r + 1} {side}: median {runs[side][-1]:.4f} s/step over {len(times)} steps',
              flush=True)
    results['cpu'] = {'shape': SMALL, 'batch_size': args.cpu_batch_size, 'runs_s': runs,
                      'model_flops_per_step': model_flops_per_step(SMALL, args.cpu_batch_size)}
    json.dump(results, open(json_path, 'w'), indent=1)
  with open(args.out, 'w') as f:
    f.write(report(results) + '\n')
  print(report(results))
  return 0


def report(results: dict) -> str:
  gib = lambda n: f'{n / 2**30:.2f}'
  lines = ['# t5x_lite beside MaxText 0.2.5', '',
           'Written by `python bench/maxtext_compare.py` (MaxText in `.venv-maxtext`, from '
           '`make maxtext`). ' + __doc__.split('What differs', 1)[1].split('Results go')[0]
           .replace('\n', ' ').strip().replace('between the two models, beyond the settings '
                                               'forced equal:', 'What differs:'), '']
  tpu = results.get('tpu')
  if tpu:
    flops = tpu['model_flops_per_step']
    lines += [f"## (a) One TPU program each: {tpu['target']}, GPT-3 1.3B shapes, global batch "
              f"{tpu['batch_size']}, length {tpu['shape']['length']}, AdamW", '',
              '| side | settings | memory/chip GiB | temp GiB | optimal_seconds ms | MFU (one FLOP '
              'count) | compile s |', '|---|---|---|---|---|---|---|']
    ours = tpu['ours_f32_full']
    n, peak = ours['num_chips'], tpu['peak_flops_per_chip']
    for name, label, r in (('t5x_lite', 'float32, remat full, unrolled', ours),
                           ('MaxText', 'float32, remat full, dot_product, scanned',
                            tpu['maxtext_f32_full']),
                           ('MaxText', 'defaults: bfloat16, remat full, autoselected attention',
                            tpu['maxtext_defaults'])):
      opt = r['optimal_seconds']
      mfu = f'{flops / n / peak / opt:.1%}' if opt else '-'
      temp = r.get('temp_bytes')
      lines.append(f"| {name} | {label} | {gib(r['memory_per_chip_bytes'])} | "
                   f"{gib(temp) if temp else '-'} | {opt * 1e3 if opt else float('nan'):,.1f} | "
                   f"{mfu} | {r.get('compile_s', r['wall_s']):.0f} |")
    lines.append('')
  cpu = results.get('cpu')
  if cpu:
    tokens = cpu['batch_size'] * cpu['shape']['length']
    ours, theirs = (statistics.median(cpu['runs_s'][k]) for k in ('ours', 'maxtext'))
    lines += [f"## (b) This CPU: {cpu['shape']}, batch {cpu['batch_size']}, float32, AdamW, "
              'runs alternated', '',
              '| side | s/step (median of run medians) | tokens/s | GFLOP/s (one count) |',
              '|---|---|---|---|']
    for name, s in (('t5x_lite (remat none)', ours), ('MaxText (remat minimal)', theirs)):
      lines.append(f"| {name} | {s:.4f} | {tokens / s:,.0f} | "
                   f"{cpu['model_flops_per_step'] / s / 1e9:.1f} |")
    lines += ['', f't5x_lite / MaxText tokens/s: {theirs / ours:.2f}x (runs: '
              f"{cpu['runs_s']})"]
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.exit(main())
