"""Multi-process jobs: where the coordinates come from (t5x_lite.distributed), and launch/local.py
running 2 processes on 127.0.0.1 that train exactly like one process with the same devices."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from t5x_lite import cli, distributed, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from t5x_lite.launch import local
from micro import MICRO


def _resolve(argv=(), env=None):
  return distributed.resolve(cli.parser('train').parse_args(list(argv)), env or {})


def test_single_process_by_default():
  assert _resolve() is None
  assert _resolve(env={'SLURM_NTASKS': '1'}) is None


def test_flags_win_over_the_environment():
  env = {'T5X_LITE_COORDINATOR_ADDRESS': 'h:1', 'T5X_LITE_NUM_PROCESSES': '4',
         'T5X_LITE_PROCESS_ID': '3'}
  assert _resolve(env=env) == dict(coordinator_address='h:1', num_processes=4, process_id=3)
  flags = ['--coordinator_address=10.0.0.1:8476', '--num_processes=2', '--process_id=1']
  assert _resolve(flags, env) == dict(coordinator_address='10.0.0.1:8476', num_processes=2,
                                      process_id=1)


def test_slurm_steps_and_auto_use_jax_cluster_detection():
  assert _resolve(env={'SLURM_NTASKS': '8'}) == {}
  assert _resolve(['--distributed=auto']) == {}
  assert _resolve(['--distributed=off'], env={'SLURM_NTASKS': '8'}) is None


@pytest.mark.parametrize('argv, env, message', [
    (['--num_processes=2'], {}, 'go together'),
    (['--coordinator_address=nohost', '--num_processes=2', '--process_id=0'], {}, 'HOST:PORT'),
    (['--coordinator_address=h:1', '--num_processes=2', '--process_id=2'], {}, r'\[0, 2\)'),
    ([], {'T5X_LITE_COORDINATOR_ADDRESS': 'h:1'}, 'T5X_LITE_NUM_PROCESSES'),
    ([], {'T5X_LITE_COORDINATOR_ADDRESS': 'h:1', 'T5X_LITE_NUM_PROCESSES': 'two',
          'T5X_LITE_PROCESS_ID': '0'}, 'must be integers'),
])
def test_inconsistent_coordinates_are_usage_errors(argv, env, message):
  with pytest.raises(distributed.DistributedError, match=message):
    _resolve(argv, env)


def test_each_process_gets_its_own_simulated_devices():
  env = local.process_env({'XLA_FLAGS': '--xla_cpu_foo=1 --xla_force_host_platform_device_count=8'},
                          process_id=1, num_processes=2, devices_per_process=4, port=1234,
                          platform='cpu')
  assert env['XLA_FLAGS'].split() == ['--xla_cpu_foo=1',
                                      '--xla_force_host_platform_device_count=4']
  assert env['T5X_LITE_COORDINATOR_ADDRESS'] == '127.0.0.1:1234'
  assert (env['T5X_LITE_NUM_PROCESSES'], env['T5X_LITE_PROCESS_ID']) == ('2', '1')
  gpu = local.process_env({}, process_id=1, num_processes=2, devices_per_process=4, port=1,
                          platform='gpu')
  assert gpu['CUDA_VISIBLE_DEVICES'] == '4,5,6,7'


# --- end to end -------------------------------------------------------------------------------

RUN = [*MICRO, "--gin.MESH_SHAPE={'data': 2, 'model': 2}", '--gin.train.num_data_shards=2',
       '--gin.CHECKPOINT_PERIOD=100']


def _metrics(model_dir):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_on_one(tmp_path):
  """2 processes × 2 devices == 1 process × 4 devices (2×4... here 2×2 data × model), and the
  2-process checkpoint continues in this single-device process with the same losses."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  out = subprocess.run([sys.executable, '-m', 't5x_lite.train', *RUN, '--gin.TRAIN_STEPS=6',
                        f'--gin.MODEL_DIR={one}'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  out = subprocess.run([sys.executable, 'launch/local.py', '--num_processes=2',
                        '--devices_per_process=2', '--timeout_s=500', '--',
                        *RUN, '--gin.TRAIN_STEPS=4', f'--gin.MODEL_DIR={two}'],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
  assert '(4 devices, 2 processes), global batch 8 from 2 data shard(s)' in out.stdout
  assert 'all 2 processes finished' in out.stderr
  assert os.listdir(two / 'checkpoints') == ['4']  # one directory, written by both processes
  reference = [r['loss'] for r in _metrics(one)]
  np.testing.assert_allclose([r['loss'] for r in _metrics(two)], reference[:4], rtol=2e-3)

  gin.clear_config()
  try:
    assert train.main([*RUN, '--gin.TRAIN_STEPS=6', f'--gin.MODEL_DIR={two}',
                       "--gin.MESH_SHAPE={'data': 1, 'model': 1}",
                       '--gin.train.num_data_shards=None']) == 0
  finally:
    gin.clear_config()
  # The shard count came from the checkpoint, so the single process read the same examples.
  np.testing.assert_allclose([r['loss'] for r in _metrics(two)][4:], reference[4:], rtol=2e-3)


@pytest.mark.slow
def test_a_process_that_dies_takes_the_job_down(tmp_path):
  launcher = subprocess.Popen(
      [sys.executable, 'launch/local.py', '--num_processes=2', '--timeout_s=500', '--',
       *RUN, "--gin.MESH_SHAPE={'data': 2, 'model': 1}", '--gin.TRAIN_STEPS=100000',
       f'--gin.MODEL_DIR={tmp_path}'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  pids = None
  try:
    for line in launcher.stdout:
      lines.append(line)
      if pids is None and (m := re.search(r'pids \[(\d+), (\d+)\]', line)):
        pids = int(m.group(1)), int(m.group(2))
      if line.startswith('[0] step      2/'):  # training: process 1 is inside a collective
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        break
    rest, _ = launcher.communicate(timeout=120)
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert time.monotonic() - killed_at < 60
  assert launcher.returncode == 128 + signal.SIGKILL, ''.join(lines) + rest
  assert 'process 1 was killed by signal 9; stopping the other processes' in rest
