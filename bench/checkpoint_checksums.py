"""What checkpoint checksums cost: T5.1.1-small's train state (params + Adafactor state) on this
host's devices, timed in one process, alternating A/B so that machine drift hits both alike.

  python bench/checkpoint_checksums.py [--gin_file=gin/models/t5_1_1/small.gin] [--repeats=5] \
      [--out=bench/results/checkpoint_checksums.md]

A: `checkpoints.checksums(state)` alone (what each save adds before it starts, and each restore
after it reads). B: a synchronous save with the Checkpointer (checksums included), committed, for
scale. Figures are medians; the state's size says what was summed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--gin_file', default='gin/models/t5_1_1/small.gin')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default=os.path.join(REPO, 'bench/results/checkpoint_checksums.md'))
  args = parser.parse_args()

  import gin  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from t5x_lite import checkpoints, gin_utils, optimizer, partitioning, trainer  # pylint: disable=import-outside-toplevel
  gin.parse_config_files_and_bindings([os.path.join(REPO, args.gin_file)], [])
  config = gin_utils.query_macro('MODEL_CONFIG')
  mesh = partitioning.create_mesh({'data': -1})
  rules = partitioning.FSDP_RULES
  setup = trainer.setup_train_state(config, optimizer.make_optimizer(0.01), 0, mesh, rules)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state = setup.init()
    jax.block_until_ready(state)
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    checkpoints.checksums(state)  # compile the per-shape programs once, as a run's first save does
    sums, saves = [], []
    with tempfile.TemporaryDirectory() as d:
      ckpt = checkpoints.Checkpointer(d, keep=1, async_save=False)
      for i in range(args.repeats):
        t = time.perf_counter()
        checkpoints.checksums(state)
        sums.append(time.perf_counter() - t)
        t = time.perf_counter()
        ckpt.save(i, state, {'batch': i})
        ckpt.wait()
        saves.append(time.perf_counter() - t)
        print(f'{i + 1}/{args.repeats}: checksums {sums[-1]:.3f} s, save {saves[-1]:.3f} s',
              flush=True)
      ckpt.close()
  s, v = statistics.median(sums), statistics.median(saves)
  text = (f'# Checkpoint checksums: cost on {args.gin_file}\n\n'
          f'`python bench/checkpoint_checksums.py` on {jax.device_count()} '
          f'{jax.devices()[0].platform} device(s) of this host; state {size / 2**20:.0f} MiB '
          f'(params + optimizer), medians of {args.repeats} alternating runs.\n\n'
          '| what | seconds |\n|---|---|\n'
          f'| checksums of the whole state | {s:.3f} |\n'
          f'| synchronous save, checksums included, committed | {v:.3f} |\n'
          f'| checksums / save | {s / v:.1%} |\n')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
