"""Kill it anywhere, rerun the same command, lose nothing, change nothing.

Each claim is checked against one uninterrupted run of the micro model: a run killed with SIGKILL
at a random moment, stopped by SIGTERM, stopped by a NaN, resumed past a corrupt checkpoint or
failing on a full disk must, once rerun, log the same loss at every step, bit for bit.

`python tests/test_resume.py [--trials=10]` runs the kill-at-random-time trials and prints a table.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import gin
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from micro import MICRO  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
FLAGS = [*MICRO, f'--gin.TRAIN_STEPS={STEPS}', '--gin.CHECKPOINT_PERIOD=4']


def command(model_dir, *flags) -> list[str]:
  return [sys.executable, '-m', 't5x_lite.train', *FLAGS, f'--gin.MODEL_DIR={model_dir}', *flags]


def run(model_dir, *flags, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(command(model_dir, *flags), cwd=REPO, capture_output=True, text=True,
                        timeout=600, **kwargs)


def in_process(model_dir, *flags) -> int:
  from t5x_lite import train  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  try:
    return train.main([*FLAGS, f'--gin.MODEL_DIR={model_dir}', *flags])
  finally:
    gin.clear_config()


def losses(model_dir) -> dict[int, float]:
  """{step: loss} from metrics.jsonl; fails if a step was logged twice."""
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if '"loss"' in line]
  steps = [r['step'] for r in rows]
  assert len(steps) == len(set(steps)), f'steps logged twice: {steps}'
  return {r['step']: r['loss'] for r in rows}


def error_line(stderr: str) -> str:
  lines = [l for l in stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def tree_listing(path) -> dict[str, int]:
  """Every file under `path` with its size: what 'nothing was lost' compares."""
  out = {}
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      out[os.path.relpath(full, path)] = os.path.getsize(full)
  return out


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The uninterrupted run (a subprocess, like every rerun): {step: loss} and its MODEL_DIR."""
  model_dir = tmp_path_factory.mktemp('straight')
  result = run(model_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  got = losses(model_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  return got, model_dir


@pytest.fixture(scope='module')
def at_step_4(tmp_path_factory):
  """A MODEL_DIR whose run stopped at its step-4 checkpoint (copied by each test)."""
  model_dir = tmp_path_factory.mktemp('at4')
  result = run(model_dir, '--gin.TRAIN_STEPS=4')
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir


def array_data_files(step_dir) -> list[str]:
  """The files holding a step's array bytes (OCDBT data files, in directories named `d`)."""
  found = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(step_dir, 'state'))
           for f in files if os.path.basename(root) == 'd']
  assert found, step_dir
  return found


def copy_of(model_dir, tmp_path):
  dst = tmp_path / 'model'
  shutil.copytree(model_dir, dst)
  return dst


# ----------------------------------------------------------------------------- kill and preemption


def kill_trial(model_dir, kill_after_s: float, *flags, after_line: str = '') -> dict:
  """Starts the run, SIGKILLs it `kill_after_s` after launch (or after it prints a line starting
  with `after_line`), then reruns the same command to the end."""
  proc = subprocess.Popen(command(model_dir, *flags), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  printed = []
  if after_line:
    for line in proc.stdout:
      printed.append(line)
      if line.startswith(after_line):
        break
  time.sleep(kill_after_s)
  proc.kill()
  out, _ = proc.communicate()
  printed = [l for l in printed + out.splitlines() if l.strip()]
  rerun = run(model_dir, *flags)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  resumed = [l for l in rerun.stdout.splitlines() if l.startswith('Resumed from step')]
  return {'killed_at_s': kill_after_s, 'killed_exit': proc.returncode,
          'last_line_before_kill': (printed[-1].split('|')[0].strip()[:60] if printed
                                    else '(nothing yet)'),
          'resumed_from': resumed[0].split()[3] if resumed else '0 (no checkpoint yet)',
          'losses': losses(model_dir)}


@pytest.mark.slow
def test_sigkill_at_random_times_then_rerun_is_bit_for_bit(straight, tmp_path):
  want, _ = straight
  rng = random.Random(0)
  # One kill while it trains (steps are milliseconds here), one anywhere from launch on.
  for i, (delay, after) in enumerate(((rng.random() * 0.5, 'step 1 (compiled'),
                                      (rng.random() * 20, ''))):
    trial = kill_trial(tmp_path / f'trial{i}', delay, after_line=after)
    assert trial['killed_exit'] == -signal.SIGKILL
    assert trial['losses'] == want, trial


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero(straight, tmp_path):
  want, _ = straight
  proc = subprocess.Popen(command(tmp_path), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:  # wait until training is under way, past the step-4 checkpoint
    if line.startswith('step      6/'):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out
  stopped = [l for l in out.splitlines() if 'SIGTERM received: stopped after step' in l]
  assert stopped, out
  step = int(stopped[0].split('stopped after step ')[1].split()[0])
  assert 6 <= step < STEPS
  assert str(step) in os.listdir(tmp_path / 'checkpoints')
  assert run(tmp_path).returncode == 0
  assert losses(tmp_path) == want


@pytest.mark.slow
def test_sigterm_to_a_two_process_job_stops_every_host_at_one_step(tmp_path):
  """JAX's preemption service agrees on the step; the launcher passes SIGTERM to every process."""
  cmd = [sys.executable, 'launch/local.py', '--num_processes=2', '--timeout_s=500', '--', *MICRO,
         f'--gin.MODEL_DIR={tmp_path}', '--gin.TRAIN_STEPS=60', '--gin.CHECKPOINT_PERIOD=100',
         "--gin.MESH_SHAPE={'data': 2}", '--gin.train.num_data_shards=2']
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  for line in proc.stdout:
    if 'step      3/' in line:
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-3000:]
  stopped = [l for l in out.splitlines() if 'stopped after step' in l]
  assert len(stopped) == 1, out[-3000:]  # printed once, by process 0
  step = stopped[0].split('stopped after step ')[1].split()[0]
  assert os.listdir(tmp_path / 'checkpoints') == [step] and int(step) < 60


# ----------------------------------------------------------------------------- non-finite values


def test_a_nan_loss_stops_before_it_is_applied_and_keeps_the_last_checkpoint(
    straight, at_step_4, tmp_path, capsys):
  want, _ = straight
  model_dir = copy_of(at_step_4, tmp_path)
  before = tree_listing(model_dir / 'checkpoints')
  # z_loss 1e300 overflows float32: every step's loss is inf.
  assert in_process(model_dir, '--gin.cross_entropy_loss.z_loss=1e300') == 2
  err = error_line(capsys.readouterr().err)
  assert 'at step 5' in err and 'last good checkpoint is step 4' in err, err
  assert tree_listing(model_dir / 'checkpoints') == before
  # Fixed and rerun: the same losses as if nothing had happened.
  assert in_process(model_dir) == 0
  assert losses(model_dir) == want


def test_skip_mode_counts_non_finite_steps_and_leaves_params_alone(at_step_4, tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  model_dir = copy_of(at_step_4, tmp_path)
  assert in_process(model_dir, '--gin.cross_entropy_loss.z_loss=1e300', '--gin.TRAIN_STEPS=7',
                    "--gin.train.on_nonfinite='skip'") == 0
  rows = [json.loads(l) for l in open(model_dir / 'metrics.jsonl')]
  assert [r['skipped_steps'] for r in rows if r['step'] > 4] == [1, 2, 3]
  p4 = _raw_params(model_dir / 'checkpoints' / '4')
  p7 = _raw_params(model_dir / 'checkpoints' / '7')
  assert p4.keys() == p7.keys()
  for k in p4:
    np.testing.assert_array_equal(p4[k], p7[k], err_msg=k)


def _raw_params(step_dir) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.restore(os.path.join(step_dir, 'state'))
  return {jax.tree_util.keystr(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(tree['params'])[0]}


# ----------------------------------------------------------------------------- corrupt checkpoints


@pytest.mark.parametrize('damage', ['delete_array_data', 'truncate_array_data',
                                    'delete_input_position'])
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_used(
    straight, at_step_4, tmp_path, capsys, damage):
  want, _ = straight
  model_dir = copy_of(at_step_4, tmp_path)
  assert in_process(model_dir, '--gin.TRAIN_STEPS=8') == 0
  step8 = model_dir / 'checkpoints' / '8'
  if damage == 'delete_input_position':
    shutil.rmtree(step8 / 'iterator')
  else:
    for path in array_data_files(step8):
      if damage == 'delete_array_data':
        os.remove(path)
      else:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
  # A leftover temporary directory from a save that never finished.
  os.makedirs(model_dir / 'checkpoints' / '12.orbax-checkpoint-tmp-1234' / 'state')
  capsys.readouterr()
  assert in_process(model_dir) == 0
  out = capsys.readouterr().out
  assert 'checkpoint step 8' in out and 'could not be restored' in out, out
  assert 'Resumed from step 4' in out
  assert losses(model_dir) == want
  aside = os.listdir(model_dir / 'corrupt_checkpoints')
  assert len(aside) == 1 and aside[0].startswith('8.')  # kept for inspection, not deleted
  assert sorted(os.listdir(model_dir / 'checkpoints')) == ['12', '4', '8']


def test_when_no_checkpoint_restores_nothing_is_touched(at_step_4, tmp_path, capsys):
  model_dir = copy_of(at_step_4, tmp_path)
  for path in array_data_files(model_dir / 'checkpoints' / '4'):
    os.remove(path)
  shutil.rmtree(model_dir / 'checkpoints' / '4' / 'iterator')
  before = tree_listing(model_dir)
  assert in_process(model_dir) == 2
  err = error_line(capsys.readouterr().err)
  assert 'no checkpoint in' in err and 'step 4' in err and 'Nothing was changed' in err, err
  after = tree_listing(model_dir)
  assert {k: v for k, v in after.items() if not k.startswith('train/')} == \
      {k: v for k, v in before.items() if not k.startswith('train/')}


# ----------------------------------------------------------------------------- full disk


def _file_size_limit(limit_bytes):
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
  return apply


@pytest.mark.slow
@pytest.mark.parametrize('limit_mb', [8, 12])  # 8: the input position fails; 12: the arrays
def test_a_full_disk_during_save_keeps_the_previous_checkpoint(straight, at_step_4, tmp_path,
                                                              limit_mb):
  want, _ = straight
  model_dir = copy_of(at_step_4, tmp_path)
  before = tree_listing(model_dir / 'checkpoints' / '4')
  result = run(model_dir, '--gin.TRAIN_STEPS=8',
               preexec_fn=_file_size_limit(limit_mb * 1_000_000))
  assert result.returncode == 2, result.stderr[-3000:]
  err = error_line(result.stderr)
  assert 'could not write a checkpoint' in err and 'File too large' in err, err
  assert 'the last complete checkpoint is step 4' in err, err
  assert tree_listing(model_dir / 'checkpoints' / '4') == before
  assert run(model_dir).returncode == 0  # space freed: the same command resumes from step 4
  assert losses(model_dir) == want


# ----------------------------------------------------------------------------- table


def main(argv: list[str]) -> None:
  """Runs the kill trials and prints a markdown table (the issue's must-show)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  trials = int(next((a.split('=')[1] for a in argv if a.startswith('--trials=')), 10))
  rng = random.Random(int(next((a.split('=')[1] for a in argv if a.startswith('--seed=')), 0)))
  steps = 80
  flags = (f'--gin.TRAIN_STEPS={steps}', '--gin.CHECKPOINT_PERIOD=10')
  started = 'step 1 (compiled'
  with tempfile.TemporaryDirectory() as tmp:
    straight_dir = os.path.join(tmp, 'straight')
    proc = subprocess.Popen(command(straight_dir, *flags), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
      if line.startswith(started):
        t_first = time.perf_counter()
        break
    proc.communicate()
    train_s = time.perf_counter() - t_first
    assert proc.returncode == 0
    want = losses(straight_dir)
    print(f'Uninterrupted: {steps} steps, checkpoint every 10, {train_s:.1f}s from the first step '
          f'to exit; final loss {want[steps]!r}. Each trial: SIGKILL a random time after the first '
          'step, rerun the same command.\n')
    print('| trial | SIGKILL after step 1 (s) | last line before the kill | resumed from step | '
          'final loss | every step equal |')
    print('|---|---|---|---|---|---|')
    equal = 0
    for i in range(trials):
      trial = kill_trial(os.path.join(tmp, f'trial{i}'), round(rng.random() * train_s, 2), *flags,
                         after_line=started)
      same = trial['losses'] == want
      equal += same
      print(f"| {i + 1} | {trial['killed_at_s']} | {trial['last_line_before_kill']} | "
            f"{trial['resumed_from']} | {trial['losses'].get(steps)!r} | "
            f"{'yes' if same else 'NO'} |", flush=True)
    print(f'\n{equal}/{trials} trials equal to the uninterrupted run at every logged step.')


if __name__ == '__main__':
  main(sys.argv[1:])
