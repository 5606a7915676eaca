"""Same steps, different meshes: does each sharding preset train like one device and shard?

  python bench/sharding_equivalence.py [--steps=4] [--out=F.json] [--model_dirs=DIR]

Trains the micro model of bench/micro.py (pretrain_tiny.gin, smaller) for `--steps` steps on one
device, then in this process on 8 simulated CPU devices for every sharding preset (data_parallel,
fsdp, 2d on a 2×4 and an 8×1 data × model mesh; fsdp_tp on 2×4; hsdp on 2 replicas × 4), each
through `t5x_lite.train.main` into its own model directory. It prints, per run: wall and compile seconds, the per-step losses, their
largest relative difference from one device, and the fraction of the train state's bytes that
one device holds, read from the shardings Orbax recorded when it saved the arrays (so the layout
the step really produced, not the rule table's intent). The last line printed is one JSON object.

Devices: unless XLA_FLAGS already sets --xla_force_host_platform_device_count, this script appends
`=8` to XLA_FLAGS (and defaults JAX_PLATFORMS to cpu) before jax is imported, because the device
count is fixed when jax starts. `partitioning.create_mesh` lays a mesh over *all* visible devices,
so the one-device reference runs in a subprocess without that flag (concurrently with the first
runs here: its time is shared with them).
"""

from __future__ import annotations

import os
import re
import sys

DEVICE_FLAG = '--xla_force_host_platform_device_count'
NUM_DEVICES = 8
if DEVICE_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_FLAG}={NUM_DEVICES}".strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=wrong-import-position
import argparse
import contextlib
import io
import json
import math
import shutil
import subprocess
import tempfile
import threading
import time

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from t5x_lite import partitioning, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from micro import MICRO  # noqa: E402  (bench/micro.py: the tests train the same model)

PRESETS = ('data_parallel', 'fsdp', '2d')
MESHES = ({'data': 2, 'model': 4}, {'data': 8, 'model': 1})
# (preset, mesh) pairs: every preset above on every mesh above, then the presets that need their
# own axes: FSDP × tensor parallel, and HSDP with 'replica' standing in for two slices.
RUNS = tuple((p, m) for m in MESHES for p in PRESETS) + (
    ('fsdp_tp', {'data': 2, 'model': 4}), ('hsdp', {'replica': 2, 'data': 4}))
REFERENCE_MESH = {'data': 1, 'model': 1}


def mesh_name(mesh: dict) -> str:
  return 'x'.join(str(v) for v in mesh.values())


def run_flags(model_dir: str, steps: int, mesh: dict, preset: str | None = None) -> list[str]:
  """`train.main` flags: the micro model for `steps` steps on `mesh`, checkpointed at the end."""
  flags = [*MICRO, f'--gin.MODEL_DIR={model_dir}', f'--gin.TRAIN_STEPS={steps}',
           '--gin.CHECKPOINT_PERIOD=100000', f'--gin.MESH_SHAPE={mesh!r}']
  if preset is not None:
    flags.append(f"--gin.logical_axis_rules.preset='{preset}'")
  return flags


def losses(model_dir: str) -> list[float]:
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f]


def max_relative_difference(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'different step counts: {a.shape} vs {b.shape}')
  return float(np.max(np.abs(a - b) / np.abs(b)))


def _compile_seconds(stdout: str) -> float | None:
  found = re.search(r'compiled in ([\d.]+)s', stdout)
  return float(found.group(1)) if found else None


def train_in_process(model_dir: str, flags: list[str]) -> dict:
  """One `train.main` run with a clean gin config; its stdout goes to model_dir/stdout.txt."""
  out = io.StringIO()
  gin.clear_config()
  start = time.perf_counter()
  try:
    with contextlib.redirect_stdout(out):
      code = train.main(flags)
  finally:
    gin.clear_config()
  seconds = time.perf_counter() - start
  with open(os.path.join(model_dir, 'stdout.txt'), 'w') as f:
    f.write(out.getvalue())
  if code:
    raise RuntimeError(f'train.main exited {code} for {model_dir} (its error is on stderr above)')
  return {'seconds': seconds, 'compile_s': _compile_seconds(out.getvalue())}


class ReferenceRun(threading.Thread):
  """The one-device run, in a subprocess that sees a single CPU device."""

  def __init__(self, model_dir: str, steps: int):
    super().__init__(daemon=True)
    self.model_dir, self.steps = model_dir, steps
    self.result: dict | None = None

  def run(self):
    env = dict(os.environ)
    env['XLA_FLAGS'] = re.sub(rf'{DEVICE_FLAG}=\S+', '', env.get('XLA_FLAGS', '')).strip()
    os.makedirs(self.model_dir)
    start = time.perf_counter()
    with open(os.path.join(self.model_dir, 'stdout.txt'), 'w') as out, \
         open(os.path.join(self.model_dir, 'stderr.txt'), 'w') as err:
      code = subprocess.run(
          [sys.executable, '-m', 't5x_lite.train', *run_flags(self.model_dir, self.steps,
                                                                REFERENCE_MESH)],
          cwd=REPO, env=env, stdout=out, stderr=err, check=False).returncode
    with open(os.path.join(self.model_dir, 'stdout.txt')) as f:
      stdout = f.read()
    self.result = {'returncode': code, 'seconds': time.perf_counter() - start,
                   'compile_s': _compile_seconds(stdout),
                   'one_device': '(1 devices, 1 processes)' in stdout}


def per_device_fractions(model_dir: str) -> dict:
  """Bytes one device holds / bytes of the whole array, summed over `params` and over `opt_state`
  of the last checkpoint, from the sharding Orbax recorded for each array when saving it.

  Also names the parameters every device holds whole, and the optimizer-state arrays the size of
  their parameter (Adam/Adafactor moments) that are replicated although the parameter is sharded:
  memory that FSDP or 2-D sharding fails to save.
  """
  directory = os.path.join(model_dir, 'checkpoints')
  step = max(int(s) for s in os.listdir(directory) if s.isdigit())
  tree = ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) / 'state').tree
  out = {}
  held = {}  # (item, *path) -> (fraction one device holds, element count)
  for item in ('params', 'opt_state'):
    device_bytes = total_bytes = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree[item])[0]:
      nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
      fraction = _fraction_held(leaf.shape, leaf.sharding)
      held[(item, *partitioning.path_key(path))] = (fraction, math.prod(leaf.shape))
      device_bytes += fraction * nbytes
      total_bytes += nbytes
    out[f'{item}_per_device'] = device_bytes / total_bytes
  params = {k[1:]: v for k, v in held.items() if k[0] == 'params'}
  out['params_replicated'] = ['/'.join(k) for k, (fraction, _) in params.items() if fraction == 1]
  out['opt_state_replicated_but_param_sharded'] = []
  for key, (fraction, size) in held.items():
    if key[0] != 'opt_state' or fraction < 1:
      continue
    for start in range(1, len(key)):  # the longest path suffix that names a parameter
      if key[start:] in params:
        param_fraction, param_size = params[key[start:]]
        if param_size == size and param_fraction < 1:
          out['opt_state_replicated_but_param_sharded'].append('/'.join(key))
        break
  return out


def _fraction_held(shape, sharding) -> float:
  """The fraction of an array of `shape` that one device holds under Orbax's recorded sharding."""
  sizes = dict(zip(sharding.axis_names, np.asarray(sharding.shape).tolist()))
  fraction = 1.0
  for dim, axes in zip(shape, tuple(sharding.partition_spec)):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    fraction *= -(-dim // math.prod(sizes[a] for a in axes)) / dim
  return fraction


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='bench/sharding_equivalence.py',
                              description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=4)
  p.add_argument('--out', help='also write the JSON figures to this file')
  p.add_argument('--model_dirs', help='keep the runs here (one subdirectory each); default: a '
                                      'temporary directory, removed at the end')
  args = p.parse_args(argv)
  if args.steps < 1:
    p.error('--steps must be positive')
  if jax.device_count() != NUM_DEVICES:
    p.error(f'needs {NUM_DEVICES} devices, jax sees {jax.device_count()}; drop {DEVICE_FLAG} '
            f'from XLA_FLAGS or set it to {NUM_DEVICES}')

  root = args.model_dirs or tempfile.mkdtemp(prefix='sharding_equivalence_')
  os.makedirs(root, exist_ok=True)
  if os.listdir(root):
    p.error(f'--model_dirs {root} is not empty; give an empty or new directory')
  try:
    reference = ReferenceRun(os.path.join(root, 'reference_1x1'), args.steps)
    reference.start()
    runs = []
    for preset, mesh in RUNS:
      model_dir = os.path.join(root, f'{preset}_{mesh_name(mesh)}')
      os.makedirs(model_dir)
      print(f'training {preset} on {mesh_name(mesh)} ...', flush=True)
      timing = train_in_process(model_dir, run_flags(model_dir, args.steps, mesh, preset))
      runs.append({'preset': preset, 'mesh': mesh, **timing, 'losses': losses(model_dir),
                   **per_device_fractions(model_dir)})
    reference.join()
    if reference.result is None or reference.result['returncode']:
      with open(os.path.join(reference.model_dir, 'stderr.txt')) as f:
        raise RuntimeError(f'the one-device reference failed:\n{f.read()[-3000:]}')
    ref_losses = losses(reference.model_dir)
    for run in runs:
      run['max_rel_diff'] = max_relative_difference(run['losses'], ref_losses)
  finally:
    if not args.model_dirs:
      shutil.rmtree(root, ignore_errors=True)

  figures = {
      'steps': args.steps,
      'devices': jax.device_count(),
      'reference': {'mesh': REFERENCE_MESH, 'losses': ref_losses,
                    'seconds': reference.result['seconds'],
                    'compile_s': reference.result['compile_s'],
                    'one_device': reference.result['one_device']},
      'runs': runs,
      'max_rel_diff': max(r['max_rel_diff'] for r in runs),
  }
  print_table(figures)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(figures, f, indent=1)
  print(json.dumps(figures), flush=True)
  return 0


def print_table(figures: dict) -> None:
  steps = figures['steps']
  header = (f"{'preset':<14}{'mesh':<6}{'wall s':>8}{'compile':>8}  "
            + ''.join(f'{f"loss@{i + 1}":>10}' for i in range(steps))
            + f"{'max rel diff':>14}{'params/dev':>12}{'opt/dev':>9}")
  print(header)
  ref = figures['reference']
  print(f"{'(1 device)':<14}{'1x1':<6}{ref['seconds']:>8.1f}{ref['compile_s'] or 0:>8.1f}  "
        + ''.join(f'{x:>10.5f}' for x in ref['losses'])
        + f"{'-':>14}{1.0:>12.4f}{1.0:>9.4f}")
  for run in figures['runs']:
    print(f"{run['preset']:<14}{mesh_name(run['mesh']):<6}{run['seconds']:>8.1f}"
          f"{run['compile_s'] or 0:>8.1f}  " + ''.join(f'{x:>10.5f}' for x in run['losses'])
          + f"{run['max_rel_diff']:>14.2e}{run['params_per_device']:>12.4f}"
          f"{run['opt_state_per_device']:>9.4f}")
  for run in figures['runs']:
    if run['opt_state_replicated_but_param_sharded']:
      print(f"{run['preset']} {mesh_name(run['mesh'])}: "
            f"{len(run['opt_state_replicated_but_param_sharded'])} optimizer-state arrays are "
            f"replicated although their parameter is sharded, e.g. "
            f"{run['opt_state_replicated_but_param_sharded'][0]}")


if __name__ == '__main__':
  sys.exit(main())
