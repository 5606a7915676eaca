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
import numpy as np
import pytest

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


def _raw_state(step_dir) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(step_dir, 'state'))


def _leaves(tree) -> list:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_leaves(tree)


def _raw_params(step_dir) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  return {jax.tree_util.keystr(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(_raw_state(step_dir)['params'])[0]}


# ----------------------------------------------------------------------------- corrupt checkpoints


@pytest.mark.parametrize('damage', ['delete_array_data', 'truncate_array_data',
                                    'flip_a_bit_in_array_data', 'delete_input_position'])
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
      elif damage == 'flip_a_bit_in_array_data':
        break  # below: one bit of one stored parameter, found by its bytes
      else:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
  if damage == 'flip_a_bit_in_array_data':  # still decodes (to other values): checksums see it
    path = max(array_data_files(step8), key=os.path.getsize)  # the arrays' bytes, compressed
    original = open(path, 'rb').read()
    # Which array's bytes sit mid-file depends on the order Orbax's writer threads finished, and a
    # flipped bit there can decode to inf or NaN (then the finiteness check names it first): take
    # the first bit from the middle on that decodes to finite values Orbax reads without complaint.
    for offset in range(len(original) // 2, len(original) // 2 + 256):
      data = bytearray(original)
      data[offset] ^= 0x04
      open(path, 'wb').write(bytes(data))
      try:
        leaves = _leaves(_raw_state(step8))
      except Exception:  # pylint: disable=broad-except  (this bit broke the compressed framing)
        continue
      if all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in leaves):
        break
    else:
      pytest.fail('no flipped bit in 256 bytes decoded to finite values')
  # A leftover temporary directory from a save that never finished.
  os.makedirs(model_dir / 'checkpoints' / '12.orbax-checkpoint-tmp-1234' / 'state')
  capsys.readouterr()
  assert in_process(model_dir) == 0
  out = capsys.readouterr().out
  assert 'checkpoint step 8' in out and 'could not be restored' in out, out
  if damage == 'flip_a_bit_in_array_data':
    assert 'does not match the checksum saved with it' in out, out
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
def test_a_full_disk_during_save_keeps_the_previous_checkpoint(straight, at_step_4, tmp_path):
  """Every file over 8 MB fails: the input position (10.7 MB) and the embedding's array data
  (8.2 MB) both. A limit between them is not deterministic: Orbax batches arrays into OCDBT data
  files as their writes happen to finish (7.6 + 16.0 MB in one run, both under 12 MB in another)."""
  want, _ = straight
  model_dir = copy_of(at_step_4, tmp_path)
  before = tree_listing(model_dir / 'checkpoints' / '4')
  result = run(model_dir, '--gin.TRAIN_STEPS=8', preexec_fn=_file_size_limit(8_000_000))
  assert result.returncode == 2, result.stderr[-3000:]
  err = error_line(result.stderr)
  assert 'could not write a checkpoint' in err and 'File too large' in err, err
  assert 'the last complete checkpoint is step 4' in err, err
  assert tree_listing(model_dir / 'checkpoints' / '4') == before
  assert run(model_dir).returncode == 0  # space freed: the same command resumes from step 4
  assert losses(model_dir) == want


# ----------------------------------------------------------------------------- robustness cases
# Each case runs real processes and returns what it observed; its test asserts the claim, and
# `python tests/test_resume.py --cases` prints the observations as a table (the same file run in an
# older checkout gives the "before" column).

INF_LR = ("--gin.learning_rate_schedule.kind='constant'",
          '--gin.learning_rate_schedule.base_learning_rate=1e39')  # inf in float32


def saved_steps(model_dir) -> list[int]:
  root = os.path.join(model_dir, 'checkpoints')
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def finite_steps(model_dir) -> dict[int, bool]:
  """{step: every param and optimizer-state value finite} for each committed step."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  out = {}
  for step in saved_steps(model_dir):
    tree = _raw_state(os.path.join(model_dir, 'checkpoints', str(step)))
    out[step] = all(bool(np.all(np.isfinite(x))) for x in _leaves(tree)
                    if np.issubdtype(np.asarray(x).dtype, np.floating))
  return out


def last_line(result: subprocess.CompletedProcess) -> str:
  """The `error:` line, else the exception of a traceback, else the last line printed."""
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  if errors:
    return errors[-1]
  if 'Traceback' in result.stderr:
    return 'TRACEBACK: ' + [l for l in result.stderr.splitlines() if l.strip()][-1]
  return ([l for l in result.stdout.splitlines() if l.strip()] or [''])[-1]


def case_rsqrt_without_warmup(tmp_path) -> dict:
  """T5's rsqrt schedule with warmup_steps=0 (lr = 1/sqrt(max(step, 0)) is inf at step 0)."""
  result = run(tmp_path, '--gin.learning_rate_schedule.warmup_steps=0', '--gin.TRAIN_STEPS=3',
               '--gin.CHECKPOINT_PERIOD=1')
  rerun = run(tmp_path, '--gin.learning_rate_schedule.warmup_steps=0', '--gin.TRAIN_STEPS=4')
  return {'exit': result.returncode, 'last line': last_line(result)[:160],
          'finite checkpoints': finite_steps(tmp_path), 'rerun exit': rerun.returncode,
          'rerun last line': last_line(rerun)[:160]}


def case_infinite_learning_rate_skip_mode(tmp_path) -> dict:
  """on_nonfinite='skip', keep 3, a checkpoint every step, a learning rate that is inf in f32."""
  result = run(tmp_path, *INF_LR, "--gin.train.on_nonfinite='skip'", '--gin.TRAIN_STEPS=5',
               '--gin.CHECKPOINT_PERIOD=1', '--gin.train.keep_checkpoints=3')
  return {'exit': result.returncode, 'finite checkpoints': finite_steps(tmp_path)}


def case_infinite_learning_rate_after_a_checkpoint(at_step_4, tmp_path) -> dict:
  """From a run checkpointed at step 4: an infinite learning rate, then the fix and a rerun."""
  model_dir = copy_of(at_step_4, tmp_path)
  result = run(model_dir, *INF_LR)
  finite = finite_steps(model_dir)
  rerun = run(model_dir)
  return {'exit': result.returncode, 'last line': last_line(result)[:320],
          'finite checkpoints': finite, 'rerun exit': rerun.returncode,
          'rerun losses': losses(model_dir) if rerun.returncode == 0 else None}


def signal_storm(model_dir, start_line: str, *flags, period_s: float = 0.05) -> dict:
  """Starts the run and, from the line starting with `start_line` on, sends SIGTERM every
  `period_s` until the run prints that it saved (or exits)."""
  import threading  # pylint: disable=import-outside-toplevel
  proc = subprocess.Popen(command(model_dir, *flags), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  lines, started, saved = [], threading.Event(), threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      started.set() if line.startswith(start_line) else None
      saved.set() if ('Saved checkpoint step' in line or 'stopped after step' in line) else None
    started.set()
    saved.set()

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  started.wait(600)
  sent = 0
  while proc.poll() is None and not saved.is_set():
    proc.send_signal(signal.SIGTERM)
    sent += 1
    time.sleep(period_s)
  proc.wait(600)
  reader.join(60)
  leftovers = [d for d in os.listdir(os.path.join(model_dir, 'checkpoints')) if 'tmp' in d] \
      if os.path.isdir(os.path.join(model_dir, 'checkpoints')) else []
  return {'exit': proc.returncode, 'SIGTERMs sent': sent, 'saved steps': saved_steps(model_dir),
          'unfinished saves': leftovers}


def case_sigterms_during_the_final_save(straight, tmp_path) -> dict:
  """SIGTERM every 50 ms from the last step's log line until the run says it saved."""
  out = signal_storm(tmp_path, f'step {STEPS:>6d}/')
  rerun = run(tmp_path)
  out['rerun losses equal'] = rerun.returncode == 0 and losses(tmp_path) == straight[0]
  return out


def case_repeated_sigterms_mid_run(straight, tmp_path) -> dict:
  """SIGTERM every 50 ms from step 6 on: the first stops the run, the rest must not cut its save."""
  out = signal_storm(tmp_path, 'step      6/')
  rerun = run(tmp_path)
  out['rerun losses equal'] = rerun.returncode == 0 and losses(tmp_path) == straight[0]
  return out


def case_readers_after_a_damaged_newest_step(at_step_4, tmp_path) -> dict:
  """A MODEL_DIR at step 8 whose step-8 arrays are gone: infer, convert --to_hf and a fine-tuning
  run's INITIAL_CHECKPOINT_PATH read it."""
  model_dir = copy_of(at_step_4, tmp_path)
  assert run(model_dir, '--gin.TRAIN_STEPS=8').returncode == 0
  for path in array_data_files(model_dir / 'checkpoints' / '8'):
    os.remove(path)
  (tmp_path / 'in.jsonl').write_text('{"inputs": "The cat sat on the"}\n')
  model_flags = [f for f in MICRO if 'T5Config' in f or f.startswith('--gin_file')]
  infer = subprocess.run(
      [sys.executable, '-m', 't5x_lite.infer', '--mode=predict', *model_flags,
       f'--checkpoint_dir={model_dir}', f'--input_file={tmp_path / "in.jsonl"}',
       f'--output_file={tmp_path / "out.jsonl"}', '--max_decode_length=4'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  to_hf = subprocess.run(
      [sys.executable, '-m', 't5x_lite.convert', f'--to_hf={model_dir}', *model_flags,
       f'--out_dir={tmp_path / "hf"}'], cwd=REPO, capture_output=True, text=True, timeout=600)
  finetune = run(tmp_path / 'finetune', f"--gin.train.initial_checkpoint_path='{model_dir}'",
                 '--gin.TRAIN_STEPS=1')
  used = lambda r: ('step 4' if 'checkpoints/4' in r.stdout else
                    'step 8' if 'checkpoints/8' in r.stdout else '-')
  return {'infer exit': infer.returncode, 'convert exit': to_hf.returncode,
          'fine-tune exit': finetune.returncode, 'fine-tune started from': used(finetune),
          'warned': sum('checkpoints/8 could not be read' in r.stdout
                        for r in (infer, to_hf, finetune)),
          'step 8 still in place': os.path.isdir(model_dir / 'checkpoints' / '8'),
          'tracebacks printed': sum(r.stderr.count('Traceback') for r in (infer, to_hf, finetune)),
          'last lines': [last_line(r)[:100] for r in (infer, to_hf, finetune)]}


def test_rsqrt_without_warmup_trains_with_finite_state(tmp_path):
  got = case_rsqrt_without_warmup(tmp_path)
  assert got['exit'] == 0 and got['rerun exit'] == 0, got
  assert got['finite checkpoints'] == {2: True, 3: True, 4: True}, got


@pytest.mark.slow
def test_skip_mode_with_an_infinite_learning_rate_keeps_only_finite_checkpoints(tmp_path):
  got = case_infinite_learning_rate_skip_mode(tmp_path)
  assert got == {'exit': 0, 'finite checkpoints': {3: True, 4: True, 5: True}}, got


def test_an_infinite_learning_rate_stops_before_it_is_applied(straight, at_step_4, tmp_path):
  got = case_infinite_learning_rate_after_a_checkpoint(at_step_4, tmp_path)
  assert got['exit'] == 2, got
  assert 'learning rate 1e+39 (the update is not finite) at step 5' \
      in got['last line'] and 'last good checkpoint is step 4' in got['last line'], got
  assert got['finite checkpoints'] == {4: True}, got
  assert got['rerun exit'] == 0 and got['rerun losses'] == straight[0], got


@pytest.mark.slow
def test_sigterms_during_the_final_save_never_cut_it(straight, tmp_path):
  got = case_sigterms_during_the_final_save(straight, tmp_path)
  assert got['exit'] == 0 and got['SIGTERMs sent'] >= 1, got
  assert STEPS in got['saved steps'] and got['unfinished saves'] == [], got
  assert got['rerun losses equal'], got


@pytest.mark.slow
def test_repeated_sigterms_mid_run_save_once_and_exit_zero(straight, tmp_path):
  got = case_repeated_sigterms_mid_run(straight, tmp_path)
  assert got['exit'] == 0 and got['SIGTERMs sent'] >= 2, got
  assert max(got['saved steps']) >= 6 and got['unfinished saves'] == [], got
  assert got['rerun losses equal'], got


@pytest.mark.slow
def test_every_checkpoint_reader_falls_back_past_a_damaged_step(at_step_4, tmp_path):
  got = case_readers_after_a_damaged_newest_step(at_step_4, tmp_path)
  assert (got['infer exit'], got['convert exit'], got['fine-tune exit']) == (0, 0, 0), got
  assert got['fine-tune started from'] == 'step 4' and got['warned'] == 3, got
  assert got['step 8 still in place'], got  # readers leave the directory as they found it
  assert got['tracebacks printed'] == 0, got


# ----------------------------------------------------------------------------- table


CASES = (case_rsqrt_without_warmup, case_infinite_learning_rate_skip_mode,
         case_infinite_learning_rate_after_a_checkpoint, case_sigterms_during_the_final_save,
         case_repeated_sigterms_mid_run, case_readers_after_a_damaged_newest_step)


def cases_table() -> None:
  """Runs every robustness case in this checkout and prints what each observed."""
  import inspect  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    assert run(tmp / 'straight').returncode == 0
    assert run(tmp / 'at4', '--gin.TRAIN_STEPS=4').returncode == 0
    fixtures = {'straight': (losses(tmp / 'straight'), tmp / 'straight'), 'at_step_4': tmp / 'at4'}
    print('| case | what happened |\n|---|---|')
    for case in CASES:
      (tmp / case.__name__).mkdir()
      args = [fixtures[name] for name in inspect.signature(case).parameters if name in fixtures]
      got = case(*args, tmp / case.__name__)
      got.pop('rerun losses', None)
      shown = '; '.join(f'{k}: {v}' for k, v in got.items()).replace('|', '\\|')
      print(f'| {case.__doc__.strip().splitlines()[0]} | {shown} |', flush=True)


def main(argv: list[str]) -> None:
  """Runs the kill trials and prints a markdown table (the issue's must-show)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  if '--cases' in argv:
    cases_table()
    return
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
