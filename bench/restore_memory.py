"""Peak host memory while a train state restores into its shards, as a multiple of the state.

  python bench/restore_memory.py [--gin_file=gin/models/t5_1_1/large.gin] [--devices=8] \
      [--out=bench/results/restore_memory.md]

One process initialises the model's train state (FSDP over 8 simulated CPU devices) and saves it
with the trainer's Checkpointer; fresh processes then restore it: `Checkpointer.restore` (resume)
and `checkpoints.load_params` onto the params' shardings (fine-tuning, evaluation), each measuring
its peak resident memory (`ru_maxrss`) above what it held before the restore. On CPU the
"devices" live in host memory, so a restore that lands straight in its shards peaks at about
1x the state; a copy through numpy, or a whole-array read before sharding, shows as 2x or more.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_peak_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _setup(gin_file: str):
  """(setup, mesh, rules) for the model of `gin_file` under FSDP over every device."""
  import gin  # pylint: disable=import-outside-toplevel
  from t5x_lite import gin_utils, optimizer, partitioning, trainer  # pylint: disable=import-outside-toplevel
  gin.parse_config_files_and_bindings([os.path.join(REPO, gin_file)], [])
  config = gin_utils.query_macro('MODEL_CONFIG')
  mesh = partitioning.create_mesh({'data': -1})
  rules = partitioning.FSDP_RULES
  setup = trainer.setup_train_state(config, optimizer.make_optimizer(0.01), 0, mesh, rules)
  return setup, mesh, rules


def child(mode: str, gin_file: str, directory: str) -> dict:
  """Runs in a fresh process: 'save' writes the state, the others restore it and measure."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from t5x_lite import checkpoints  # pylint: disable=import-outside-toplevel
  setup, mesh, rules = _setup(gin_file)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state))
  params_bytes = sum(x.size * x.dtype.itemsize
                     for x in jax.tree.leaves(setup.abstract_state['params']))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    if mode == 'save':
      state = setup.init()
      jax.block_until_ready(state)
      ckpt = checkpoints.Checkpointer(directory, async_save=False)
      ckpt.save(0, state, {'batch': 0})
      ckpt.close()
      return {'state_bytes': state_bytes, 'params_bytes': params_bytes}
    before, peak_before = _rss_now_bytes(), _rss_peak_bytes()
    t = time.perf_counter()
    if mode == 'resume':
      restored = checkpoints.Checkpointer(directory).restore(setup.abstract_state).state
      size = state_bytes
    else:  # 'params'
      restored = checkpoints.load_params(directory, setup.abstract_state['params'])[0]
      size = params_bytes
    jax.block_until_ready(restored)
    seconds = time.perf_counter() - t
    held = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(restored))
    on_devices = all(isinstance(x, jax.Array) and len(x.sharding.device_set) == len(jax.devices())
                     or x.ndim == 0 or x.size < 1024 for x in jax.tree.leaves(restored))
  peak = _rss_peak_bytes()
  return {'mode': mode, 'restored_bytes': held, 'expected_bytes': size,
          'rss_before': before, 'peak_above_before': max(peak, peak_before) - before,
          'peak_ratio': (max(peak, peak_before) - before) / size, 'seconds': seconds,
          'sharded_on_every_device': on_devices}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--gin_file', default='gin/models/t5_1_1/large.gin')
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'restore_memory.md'))
  p.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child[0], args.gin_file, args.child[1])))
    return 0
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={args.devices}',
             JAX_PLATFORMS='cpu')
  rows = []
  with tempfile.TemporaryDirectory(prefix='restore_memory_') as directory:
    for mode in ('save', 'resume', 'params'):
      print(f'{mode} ...', flush=True)
      proc = subprocess.run([sys.executable, __file__, f'--gin_file={args.gin_file}',
                             '--child', mode, directory], env=env, cwd=REPO,
                            capture_output=True, text=True)
      if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return 1
      rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  saved, restores = rows[0], rows[1:]
  gib = lambda n: f'{n / 2**30:.2f}'
  lines = [f'# Restoring into shards: {args.gin_file}, FSDP over {args.devices} simulated CPU '
           'devices', '',
           f"State {gib(saved['state_bytes'])} GiB (params {gib(saved['params_bytes'])} GiB). "
           'Peak: the most resident memory the restoring process held above what it held just '
           'before (ru_maxrss); on CPU the devices are host memory, so 1.0x is the floor.', '',
           '| restore | restored GiB | peak above before GiB | peak / restored | seconds | '
           'sharded over every device |', '|---|---|---|---|---|---|']
  for r in restores:
    what = {'resume': 'Checkpointer.restore (train state)',
            'params': 'checkpoints.load_params (params)'}[r['mode']]
    lines.append(f"| {what} | {gib(r['restored_bytes'])} | {gib(r['peak_above_before'])} | "
                 f"{r['peak_ratio']:.2f}x | {r['seconds']:.1f} | {r['sharded_on_every_device']} |")
  text = '\n'.join(lines) + '\n'
  print(text)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    f.write(text)
  with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
    json.dump({'saved': saved, 'restores': restores}, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
