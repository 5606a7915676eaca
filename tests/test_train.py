"""End to end: `python -m t5x_lite.train` on the bundled corpus — loss falls, checkpoints resume,
every model family trains. (Meshes and resharded restores: tests/test_sharding.py.)"""

import json
import os
import shutil

import gin
import numpy as np
import pytest

from micro import MICRO
from t5x_lite import curves, train


def _train(model_dir, *flags):
  gin.clear_config()
  try:
    code = train.main([*MICRO, f'--gin.MODEL_DIR={model_dir}', *flags])
  finally:
    gin.clear_config()
  assert code == 0
  return _metrics(model_dir)


def _metrics(model_dir):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """An uninterrupted 10-step run that the other tests compare against."""
  model_dir = tmp_path_factory.mktemp('straight')
  return model_dir, _train(model_dir, '--gin.TRAIN_STEPS=10', '--gin.CHECKPOINT_PERIOD=100',
                           '--gin.train.plot_loss=True')


def test_tiny_run_loss_falls_and_logs_every_step(straight_run):
  model_dir, rows = straight_run
  assert [r['step'] for r in rows] == list(range(1, 11))
  for key in ('loss', 'accuracy', 'learning_rate', 'tokens_per_s', 'mfu', 'z_loss', 'grad_norm'):
    assert all(np.isfinite(r[key]) for r in rows[1:]), key
  losses = [r['loss'] for r in rows]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses
  assert rows[-1]['mfu'] > 0 and rows[-1]['tokens_per_s'] > 0
  # The final step is checkpointed even though it is off-period.
  assert os.listdir(model_dir / 'checkpoints') == ['10']
  assert os.listdir(model_dir / 'train')  # TensorBoard event file
  # TensorBoard itself (the `tensorboard` extra) reads the events: every logged loss, in order.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  events = event_accumulator.EventAccumulator(str(model_dir / 'train'))
  events.Reload()
  scalars = events.Scalars('loss')
  assert [e.step for e in scalars] == [r['step'] for r in rows]
  np.testing.assert_allclose([e.value for e in scalars], [r['loss'] for r in rows], rtol=1e-6)
  # The loss curve drawn at the end holds every logged loss.
  assert (model_dir / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert curves.read_losses(str(model_dir)) == ([r['step'] for r in rows], losses)


def test_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, capsys, straight_run):
  _, straight = straight_run
  first = _train(tmp_path, '--gin.TRAIN_STEPS=5', '--gin.CHECKPOINT_PERIOD=100')
  assert [r['step'] for r in first] == [1, 2, 3, 4, 5]
  capsys.readouterr()
  both = _train(tmp_path, '--gin.TRAIN_STEPS=10', '--gin.CHECKPOINT_PERIOD=100')
  assert 'Resumed from step 5' in capsys.readouterr().out
  assert [r['step'] for r in both] == list(range(1, 11))
  # Params, optimizer state, RNG and data position all came back: later losses are the same.
  np.testing.assert_allclose([r['loss'] for r in both[5:]], [r['loss'] for r in straight[5:]],
                             rtol=1e-5)


def test_bad_mesh_is_a_one_line_error(tmp_path, capsys):
  gin.clear_config()
  try:
    code = train.main([*MICRO, f'--gin.MODEL_DIR={tmp_path}', "--gin.MESH_SHAPE={'data': 3}"])
  finally:
    gin.clear_config()
  assert code == 2
  err = capsys.readouterr().err
  assert 'MESH_SHAPE' in err and 'Traceback' not in err


def test_missing_gin_file_is_a_one_line_error(capsys):
  gin.clear_config()
  assert train.main(['--gin_file=gin/runs/no_such.gin']) == 2
  assert 'gin file not found' in capsys.readouterr().err


@pytest.mark.parametrize('family', [
    ["--gin.t5x_lite.models.T5Config.shared_encoder_decoder=True"],
    ["--gin.t5x_lite.models.T5Config.architecture='decoder_only'",
     "--gin.MIXTURE_OR_TASK_NAME='wiki_full_lm'", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}"],
    ["--gin.t5x_lite.models.T5Config.architecture='prefix_lm'",
     "--gin.MIXTURE_OR_TASK_NAME='wiki_prefix_lm'",
     "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 32}"],
], ids=['shared_encoder_decoder', 'decoder_only', 'prefix_lm'])
def test_every_model_family_trains(tmp_path, family):
  """Same trainer, another architecture or objective: a gin choice, and its loss falls."""
  rows = _train(tmp_path, '--gin.TRAIN_STEPS=10', '--gin.CHECKPOINT_PERIOD=100',
                '--gin.learning_rate_schedule.warmup_steps=1000', *family)  # lr 0.03
  losses = [r['loss'] for r in rows]
  assert len(losses) == 10 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5, losses


def test_scanned_layers_save_and_resume_exactly(tmp_path, capsys):
  """scan_layers: a stacked parameter tree goes through Orbax and back like the unrolled one."""
  scan = ['--gin.t5x_lite.models.T5Config.scan_layers=True',
          '--gin.t5x_lite.models.T5Config.num_encoder_layers=2', '--gin.CHECKPOINT_PERIOD=3',
          '--gin.TRAIN_STEPS=6']
  straight = _train(tmp_path, *scan)  # checkpoints at steps 3 and 6
  shutil.rmtree(tmp_path / 'checkpoints' / '6')
  capsys.readouterr()
  resumed = _train(tmp_path, *scan)[3:]  # rows after the restored step are redone
  assert 'Resumed from step 3' in capsys.readouterr().out
  assert [r['step'] for r in resumed] == [4, 5, 6]
  np.testing.assert_allclose([r['loss'] for r in resumed], [r['loss'] for r in straight[3:]],
                             rtol=1e-5)


def test_one_trainer_per_model_dir_and_a_killed_one_never_blocks(tmp_path, capsys):
  """A second trainer on a MODEL_DIR in use exits 2 naming the first (host, pid); once the first
  is killed with SIGKILL (no clean-up at all), the same command trains."""
  import signal
  import subprocess
  import sys
  import time
  first = subprocess.Popen(
      [sys.executable, '-m', 't5x_lite.train', *MICRO, f'--gin.MODEL_DIR={tmp_path}',
       '--gin.TRAIN_STEPS=100000', '--gin.CHECKPOINT_PERIOD=100000'],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    for line in first.stdout:  # training has begun: the lock is held
      if line.startswith('step '):
        break
    gin.clear_config()
    try:
      code = train.main([*MICRO, f'--gin.MODEL_DIR={tmp_path}', '--gin.TRAIN_STEPS=1'])
    finally:
      gin.clear_config()
    err = capsys.readouterr().err
    assert code == 2
    assert f'MODEL_DIR {tmp_path} is in use by another trainer (host ' in err
    assert f'pid {first.pid},' in err and len(err.strip().splitlines()) == 1
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert (tmp_path / '.trainer.lock').exists()  # left behind, but it locks nothing now
  rows = _train(tmp_path, '--gin.TRAIN_STEPS=1')
  assert rows[-1]['step'] == 1
  assert (tmp_path / '.trainer.lock').read_text() == ''  # released


def test_a_run_prints_progress_and_no_start_up_noise(tmp_path):
  """TensorFlow/CUDA/absl/TFDS start-up lines are gone (t5x_lite/quiet.py, data/corpus.py) and
  TensorFlow sees no GPU (it only feeds the input pipeline)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k not in ('T5X_LITE_VERBOSE', 'JAX_PLATFORMS')}
  out = subprocess.run([sys.executable, '-m', 't5x_lite.train', *MICRO,
                        f'--gin.MODEL_DIR={tmp_path}', '--gin.TRAIN_STEPS=2'],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'step      2/2 | loss' in out.stdout and 'Saved checkpoint step 2' in out.stdout
  noise = ('cuInit', 'cudart_stub', 'cuda_platform', 'absl::InitializeLog', 'oneDNN',
           'has no dataset_info.json', 'Downloading and preparing')
  assert not [line for line in (out.stdout + out.stderr).splitlines()
              if any(n in line for n in noise)], out.stderr
  probe = subprocess.run([sys.executable, '-c', 'import t5x_lite, tensorflow as tf; '
                          "print(len(tf.config.get_visible_devices('GPU')))"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=120)
  assert probe.stdout.split() == ['0'] and not probe.stderr.strip(), probe.stderr
