"""Sharding changes the layout, not the training: every preset on 8 simulated devices gives the
one-device losses and holds the share of the weights it promises, and a checkpoint written on a
2×4 mesh continues on 1, 2 or 4 devices with the losses of an uninterrupted run."""

import json
import os
import re
import shutil
import subprocess
import sys

import gin
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from micro import MICRO
from t5x_lite import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_FLAG = '--xla_force_host_platform_device_count'
# Subprocesses skip LLVM's optimisations: compiling is most of their time, and what is under test
# is how the program is partitioned, which this does not change.
FAST_COMPILE = '--xla_backend_optimization_level=0'
RTOL = 2e-3  # the bound on the relative loss difference in float32


def _env(num_devices=None):
  """This environment for a subprocess on `num_devices` simulated CPU devices (None: no device
  count, for bench/sharding_equivalence.py to set its own)."""
  env = dict(os.environ)
  flags = re.sub(rf'{DEVICE_FLAG}=\S+', '', env.get('XLA_FLAGS', '')).split()
  flags += [FAST_COMPILE] + ([f'{DEVICE_FLAG}={num_devices}'] if num_devices else [])
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _losses(model_dir):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f)}


def _train_here(model_dir, *flags):
  gin.clear_config()
  try:
    assert train.main([*MICRO, f'--gin.MODEL_DIR={model_dir}', '--gin.CHECKPOINT_PERIOD=100',
                       *flags]) == 0
  finally:
    gin.clear_config()


@pytest.fixture
def start_training():
  """Starts `python -m t5x_lite.train` on N simulated devices (output in model_dir/*.txt);
  whatever is still running when the test ends is killed."""
  procs = []

  def start(num_devices, model_dir, *flags):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, 'stdout.txt'), 'w') as out, \
         open(os.path.join(model_dir, 'stderr.txt'), 'w') as err:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 't5x_lite.train', *MICRO, f'--gin.MODEL_DIR={model_dir}',
           '--gin.CHECKPOINT_PERIOD=100', *flags],
          cwd=REPO, env=_env(num_devices), stdout=out, stderr=err))
    return procs[-1]

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _finish(proc, model_dir, timeout=600):
  """Waits for `proc`; returns its stdout, failing with its stderr's tail."""
  code = proc.wait(timeout=timeout)
  with open(os.path.join(model_dir, 'stdout.txt')) as f:
    stdout = f.read()
  with open(os.path.join(model_dir, 'stderr.txt')) as f:
    assert code == 0, f.read()[-3000:]
  return stdout


def _saved_mesh(model_dir, step):
  """The mesh the parameters lay on when checkpoint `step` was saved (Orbax records it)."""
  tree = ocp.StandardCheckpointHandler().metadata(
      epath.Path(model_dir) / 'checkpoints' / str(step) / 'state').tree
  sharding = tree['params']['token_embedder']['embedding'].sharding
  return dict(zip(sharding.axis_names, np.asarray(sharding.shape).tolist()))


@pytest.mark.slow
def test_every_preset_and_mesh_trains_like_one_device_and_shards_as_named(tmp_path):
  """bench/sharding_equivalence.py: 1 device vs {data_parallel, fsdp, 2d} × {2×4, 8×1}, fsdp_tp
  on 2×4 and hsdp on 2 replicas × 4."""
  figures_file = tmp_path / 'figures.json'
  out = subprocess.run(
      [sys.executable, 'bench/sharding_equivalence.py', '--steps=4', f'--out={figures_file}',
       f'--model_dirs={tmp_path / "runs"}'],
      cwd=REPO, env=_env(None), capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
  print(out.stdout)
  figures = json.loads(figures_file.read_text())
  assert json.loads(out.stdout.strip().splitlines()[-1]) == figures  # the last line is the JSON

  assert figures['devices'] == 8 and figures['reference']['one_device']
  reference = figures['reference']['losses']
  assert len(reference) == 4 and np.all(np.isfinite(reference))
  runs = {(r['preset'], tuple(r['mesh'].values())): r for r in figures['runs']}
  assert set(runs) == {(p, m) for p in ('data_parallel', 'fsdp', '2d') for m in ((2, 4), (8, 1))
                       } | {('fsdp_tp', (2, 4)), ('hsdp', (2, 4))}
  for (preset, (first, second)), run in runs.items():
    name = f'{preset} {first}x{second}'
    np.testing.assert_allclose(run['losses'], reference, rtol=RTOL, err_msg=name)
    assert run['max_rel_diff'] < RTOL
    # What one device holds of the weights: data parallel replicates them, FSDP splits them over
    # the data axis, 2-D over the model axis, FSDP × TP over both, HSDP over the data axis within
    # a replica (bar a few small vectors, below).
    expected = {'data_parallel': 1.0, 'fsdp': 1 / first, '2d': 1 / second,
                'fsdp_tp': 1 / (first * second), 'hsdp': 1 / second}[preset]
    assert run['params_per_device'] == pytest.approx(expected, rel=0.03), name
    # The weights every device holds whole are those without a dimension the preset splits.
    whole = {path.split('/')[-2] for path in run['params_replicated']}
    if preset in ('fsdp', 'hsdp'):  # everything with an embed dimension is split
      assert whole == {'relpos_bias'}, name
    elif preset == 'fsdp_tp':  # embed over data, heads over model: every weight is split
      assert not whole, name
    elif preset == '2d' and second > 1:  # everything with a vocab, mlp or heads dimension
      assert whole and all(w.endswith('norm') for w in whole), name


@pytest.mark.slow
def test_a_2x4_checkpoint_continues_on_1_2_and_4_devices(tmp_path, start_training):
  """Orbax restores the 2×4 (2-D rules) state onto each new mesh's shardings; training goes on
  with the losses an uninterrupted one-device run has at steps 5 and 6."""
  sharded = tmp_path / 'sharded_2x4'
  writer = start_training(8, sharded, '--gin.TRAIN_STEPS=4', "--gin.logical_axis_rules.preset='2d'",
                          "--gin.MESH_SHAPE={'data': 2, 'model': 4}")
  _train_here(tmp_path / 'straight', '--gin.TRAIN_STEPS=6',
              "--gin.MESH_SHAPE={'data': 1, 'model': 1}")  # meanwhile, in this 1-device process
  straight = _losses(tmp_path / 'straight')
  assert "mesh {'data': 2, 'model': 4} (8 devices" in _finish(writer, sharded)
  assert os.listdir(sharded / 'checkpoints') == ['4']
  assert _saved_mesh(sharded, 4) == {'data': 2, 'model': 4}
  np.testing.assert_allclose([_losses(sharded)[s] for s in (1, 2, 3, 4)],
                             [straight[s] for s in (1, 2, 3, 4)], rtol=RTOL)

  targets = {1: {'data': 1, 'model': 1}, 2: {'data': 2}, 4: {'data': 2, 'model': 2}}
  for n in targets:
    shutil.copytree(sharded / 'checkpoints', tmp_path / f'on_{n}' / 'checkpoints')
  procs = {n: start_training(n, tmp_path / f'on_{n}', '--gin.TRAIN_STEPS=6',
                             f'--gin.MESH_SHAPE={targets[n]!r}') for n in (2, 4)}
  _train_here(tmp_path / 'on_1', '--gin.TRAIN_STEPS=6', f'--gin.MESH_SHAPE={targets[1]!r}')
  for n, proc in procs.items():
    assert 'Resumed from step 4' in _finish(proc, tmp_path / f'on_{n}')
  print(f'uninterrupted 1 device, steps 5-6: {straight[5]:.6f} {straight[6]:.6f}')
  for n, mesh in targets.items():
    resumed = _losses(tmp_path / f'on_{n}')
    print(f'2x4 checkpoint resumed on {n} device(s) {mesh}: {resumed.get(5)} {resumed.get(6)}')
    assert sorted(resumed) == [5, 6], n
    np.testing.assert_allclose([resumed[5], resumed[6]], [straight[5], straight[6]], rtol=RTOL,
                               err_msg=f'resumed on {n} device(s)')
    # The continued state was laid out on the new mesh (axes of size 1 included).
    assert _saved_mesh(tmp_path / f'on_{n}', 6) == mesh, n
