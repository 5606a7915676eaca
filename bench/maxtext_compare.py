"""Side by side with MaxText, the closest JAX peer (optional, not CI; `make maxtext` first):

  python bench/maxtext_compare.py [--target=v5p-8] [--skip_tpu] [--skip_cpu] [--rounds=3]

(a) The same decoder-only model (GPT-3 1.3B's shapes: d_model 2048, 16 heads x 128, non-gated
    GELU MLP 8192, 24 layers, tied embeddings, vocabulary 50,304, length 2048), the same global
    batch, AdamW, full remat, FSDP, compiled for the same TPU slice: MaxText through its
    `train_compile` (in .venv-maxtext, jax 0.11.1), ours through `t5x_lite.plan --target --json`,
    in float32 and in bfloat16. Memory per chip and XLA:TPU's `optimal_seconds` for each, with
    MaxText's layers unrolled as ours are (`optimal_seconds` counts a scanned body once); MaxText's
    defaults (scanned) for its memory and compile time.
(b) On this CPU, a small model of the same family and shapes on both sides, runs alternated
    (ours, MaxText, ours, ...), one FLOP count for both (models/flops.py): tokens/s and their ratio.

What differs between the two models, beyond the settings forced equal: MaxText's llama2 block has
rotary position embeddings where ours adds T5's relative-position bias; in bfloat16 MaxText's
autoselected attention on TPU is a Pallas (splash) kernel, ours is XLA's; MaxText scans its
layers by default (ours are unrolled); on CPU both run plain dot-product attention, MaxText with
its lightest remat ('minimal') and ours with none.
Results go to bench/results/maxtext_compare.md (+ .json).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from t5x_lite import hardware, models, targets
from t5x_lite.models import T5Config
# pylint: enable=wrong-import-position
MAXTEXT_PY = os.path.join(REPO, '.venv-maxtext', 'bin', 'python')
OURS_PY = sys.executable

# GPT-3 1.3B's shapes (gin/models/decoder_only/1.3B.gin), vocabulary padded to a multiple of 128.
BIG = dict(d_model=2048, heads=16, head_dim=128, mlp=8192, layers=24, vocab=50304, length=2048)
SMALL = dict(d_model=256, heads=4, head_dim=64, mlp=1024, layers=4, vocab=8192, length=256)


def _maxtext_args(shape: dict, *, per_device_batch: float, dtype: str | None, remat: str | None,
                  attention: str | None = None, scan: bool = True) -> list[str]:
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
  args += [] if scan else ['scan_layers=false']
  return args


def _our_gin(shape: dict, remat: str, dtype: str = 'float32') -> list[str]:
  m = 't5x_lite.models.T5Config'
  return ['--gin_file=gin/models/decoder_only/1.3B.gin', f"--gin.VOCAB_SIZE={shape['vocab']}",
          f"--gin.{m}.dtype='{dtype}'",
          f"--gin.{m}.d_model={shape['d_model']}", f"--gin.{m}.num_heads={shape['heads']}",
          f"--gin.{m}.d_kv={shape['head_dim']}", f"--gin.{m}.d_ff={shape['mlp']}",
          f"--gin.{m}.num_decoder_layers={shape['layers']}", f"--gin.{m}.remat_policy='{remat}'",
          "--gin.make_optimizer.name='adamw'"]


@functools.lru_cache(maxsize=None)
def _maxtext_config() -> str:
  out = subprocess.run([MAXTEXT_PY, '-c', 'import maxtext, os; print(os.path.dirname('
                        'maxtext.__file__))'], capture_output=True, text=True, check=True)
  return os.path.join(out.stdout.strip().splitlines()[-1], 'configs', 'base.yml')


def _run(cmd: list[str], timeout_s: int, env: dict | None = None) -> tuple[str, str]:
  """(stdout, stdout + stderr) of a command that must succeed."""
  t = time.perf_counter()
  print('$ ' + ' '.join(cmd), flush=True)
  # Not our libtpu: t5x_lite points TPU_LIBRARY_PATH at the one jax 0.10.2 pins, which cannot
  # read the Pallas kernels MaxText's jax 0.11.1 writes.
  base = {k: v for k, v in os.environ.items() if k != 'TPU_LIBRARY_PATH'}
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                        env={**base, **(env or {})})
  if proc.returncode:
    raise RuntimeError(f'exit {proc.returncode} after {time.perf_counter() - t:.0f} s:\n'
                       + (proc.stdout + proc.stderr)[-3000:])
  return proc.stdout, proc.stdout + proc.stderr


def maxtext_compile_cmd(target: str, shape: dict, batch: int, chips: int, dtype=None,
                        remat=None, attention=None, scan: bool = True) -> list[str]:
  return [MAXTEXT_PY, '-m', 'maxtext.trainers.pre_train.train_compile', _maxtext_config(),
          'run_name=compare', 'base_output_directory=/tmp/maxtext_compare',
          f'compile_topology={target}', 'compile_topology_num_slices=1',
          *_maxtext_args(shape, per_device_batch=batch / chips, dtype=dtype, remat=remat,
                         attention=attention, scan=scan)]


def maxtext_compile(*args, **kwargs) -> dict:
  """MaxText's train_compile for a target: memory per chip and XLA:TPU's optimal_seconds."""
  t = time.perf_counter()
  _, out = _run(maxtext_compile_cmd(*args, **kwargs), timeout_s=3600, env={'JAX_PLATFORMS': 'cpu'})
  wall = time.perf_counter() - t
  mem = {k: int(v) for k, v in re.findall(r'(\w+)_size_in_bytes=(\d+)',
                                          out.rsplit('Memory analysis:', 1)[1])}
  cost = re.search(r"'optimal_seconds': (?:np\.float\w*\()?([\d.e+-]+)",
                   out.rsplit('Cost analysis:', 1)[1])
  return {'memory_per_chip_bytes': mem['argument'] + mem['output'] - mem['alias'] + mem['temp'],
          'temp_bytes': mem['temp'], 'argument_bytes': mem['argument'],
          'optimal_seconds': float(cost.group(1)) if cost else None, 'wall_s': wall}


def ours_compile_cmd(target: str, shape: dict, batch: int, chips: int, dtype: str,
                     remat: str) -> list[str]:
  del chips  # the target says
  return [OURS_PY, '-m', 't5x_lite.plan', *_our_gin(shape, remat, dtype), '--preset=fsdp',
          f'--target={target}', f'--batch_size={batch}',
          f"--gin.TASK_FEATURE_LENGTHS={{'targets': {shape['length']}}}",
          "--gin.MESH_SHAPE={'data': -1, 'model': 1}", '--json']


def ours_compile(*args, **kwargs) -> dict:
  t = time.perf_counter()
  out, _ = _run(ours_compile_cmd(*args, **kwargs), timeout_s=7200)
  got = json.loads(out.strip().splitlines()[-1])
  got['wall_s'] = time.perf_counter() - t
  return got


# (results key, side, settings, compile function, its keyword arguments): one TPU row each.
TPU_ROWS = (
    ('ours_f32_full', 't5x_lite', 'float32, remat full, unrolled', 'ours',
     dict(dtype='float32', remat='full')),
    ('maxtext_f32_full_unscanned', 'MaxText', 'float32, remat full, dot_product, unrolled',
     'maxtext', dict(dtype='float32', remat='full', attention='dot_product', scan=False)),
    ('ours_bf16_full', 't5x_lite', 'bfloat16, remat full, unrolled', 'ours',
     dict(dtype='bfloat16', remat='full')),
    ('maxtext_bf16_full_unscanned', 'MaxText',
     'bfloat16, remat full, autoselected attention, unrolled', 'maxtext',
     dict(dtype='bfloat16', remat='full', scan=False)),
    ('maxtext_defaults', 'MaxText', 'defaults: bfloat16, remat full, autoselected attention, '
     'scanned (optimal_seconds counts the scan body once)', 'maxtext', {}),
)
_COMPILE = {'ours': (ours_compile, ours_compile_cmd),
            'maxtext': (maxtext_compile, maxtext_compile_cmd)}


def model_flops_per_step(shape: dict, batch: int) -> float:
  """One count for both sides: ours (models/flops.py) for this shape."""
  config = T5Config(architecture='decoder_only', vocab_size=shape['vocab'],
                    d_model=shape['d_model'], num_heads=shape['heads'], d_kv=shape['head_dim'],
                    d_ff=shape['mlp'], num_encoder_layers=0, num_decoder_layers=shape['layers'],
                    mlp_activations=('gelu',), logits_via_embedding=True)
  return models.training_flops_per_example(config, {'targets': shape['length']}) * batch


def maxtext_cpu_cmd(shape: dict, batch: int, steps: int) -> list[str]:
  return [MAXTEXT_PY, '-m', 'maxtext.trainers.pre_train.train', _maxtext_config(),
          'run_name=cpu', 'base_output_directory=/tmp/maxtext_compare', 'hardware=cpu',
          'skip_jax_distributed_system=true', f'steps={steps + 2}',
          *_maxtext_args(shape, per_device_batch=batch, dtype='float32', remat='minimal')]


def maxtext_cpu(shape: dict, batch: int, steps: int) -> list[float]:
  _, out = _run(maxtext_cpu_cmd(shape, batch, steps), timeout_s=1800,
                env={'JAX_PLATFORMS': 'cpu'})
  times = [float(s) for n, s in re.findall(r'completed step: (\d+), seconds: ([\d.]+)', out)
           if int(n) >= 2]  # step 0 compiles, step 1 can still wait on it
  return times


def ours_cpu_cmd(shape: dict, batch: int, steps: int) -> list[str]:
  return [OURS_PY, 'bench/train_step.py', *_our_gin(shape, 'none'), f'--batch_size={batch}',
          f"--targets_length={shape['length']}", f'--steps={steps}', '--warmup=2',
          '--optimizer=adamw']


def ours_cpu(shape: dict, batch: int, steps: int) -> list[float]:
  out, _ = _run(ours_cpu_cmd(shape, batch, steps), timeout_s=1800)
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
    target = targets.parse(args.target)
    chips = target.num_chips
    tpu = results.get('tpu', {})
    if (tpu.get('target'), tpu.get('batch_size')) != (args.target, args.batch_size):
      tpu = {'target': args.target, 'batch_size': args.batch_size, 'shape': BIG}
    tpu['peak_flops_per_chip'] = hardware.CHIPS[target.chip].peak_flops
    tpu['num_chips'] = chips
    rows = {key: functools.partial(_COMPILE[fn][0], args.target, BIG, args.batch_size, chips,
                                   **kwargs) for key, _, _, fn, kwargs in TPU_ROWS}
    rows['model_flops_per_step'] = lambda: model_flops_per_step(BIG, args.batch_size)
    for key, compute in rows.items():  # each figure is saved as it comes (rerun to resume)
      if key in tpu and 'error' not in (tpu[key] if isinstance(tpu[key], dict) else {}):
        continue
      try:
        tpu[key] = compute()
      except RuntimeError as e:  # say what failed in the table, go on with the rest
        tpu[key] = {'error': str(e).strip().splitlines()[-1][:300]}
      results['tpu'] = tpu
      with open(json_path, 'w') as f:
        json.dump(results, f, indent=1)
  if not args.skip_cpu:
    runs = {'ours': [], 'maxtext': []}
    for r in range(args.rounds):
      for side, fn in (('ours', ours_cpu), ('maxtext', maxtext_cpu)):
        times = fn(SMALL, args.cpu_batch_size, args.steps)
        runs[side].append(statistics.median(times))
        print(f'round {r + 1} {side}: median {runs[side][-1]:.4f} s/step over {len(times)} steps',
              flush=True)
    results['cpu'] = {'shape': SMALL, 'batch_size': args.cpu_batch_size, 'runs_s': runs,
                      'steps': args.steps,
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
    n, peak = tpu['num_chips'], tpu['peak_flops_per_chip']
    for key, name, label, _, _ in TPU_ROWS:
      r = tpu.get(key, {'error': 'not run'})
      if 'error' in r:
        lines.append(f"| {name} | {label} | failed: {r['error']} | | | | |")
        continue
      opt = r['optimal_seconds']
      mfu = f'{flops / n / peak / opt:.1%}' if opt and key != 'maxtext_defaults' else '-'
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
              f"{cpu['runs_s']})", '']
  lines += ['## Commands', '', '```bash']
  show = lambda cmd: ' '.join(shlex.quote(os.path.relpath(c, REPO) if c.startswith(REPO) else c)
                              for c in cmd)
  if tpu:
    for key, _, _, fn, kwargs in TPU_ROWS:
      lines.append(f'# {key}')
      lines.append(show(_COMPILE[fn][1](tpu['target'], tpu['shape'], tpu['batch_size'],
                                        tpu['num_chips'], **kwargs)))
  if cpu:
    steps = cpu.get('steps', 10)
    lines += ['# CPU, alternated', show(ours_cpu_cmd(cpu['shape'], cpu['batch_size'], steps)),
              show(maxtext_cpu_cmd(cpu['shape'], cpu['batch_size'], steps))]
  lines.append('```')
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.exit(main())
