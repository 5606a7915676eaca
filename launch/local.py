"""Runs one multi-process job on this machine: N processes on 127.0.0.1 that train as one.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \
        --gin_file=gin/runs/pretrain_tiny.gin --gin.MODEL_DIR=/tmp/t5x_lite/two_procs

Each process gets the launcher contract of t5x_lite.distributed (T5X_LITE_COORDINATOR_ADDRESS,
_NUM_PROCESSES, _PROCESS_ID) and its own devices: K simulated CPU devices
(--xla_force_host_platform_device_count), or with --platform=gpu K GPUs through
CUDA_VISIBLE_DEVICES. This is how multi-host code paths (jax.distributed, per-host data shards,
make_array_from_process_local_data, multi-process Orbax saves) are exercised without a cluster.

Output lines are prefixed with the process id. The job is one unit: when a process exits with an
error or is killed, the others are stopped and the launcher exits with that status, naming the
process; --timeout_s bounds the whole job. Ctrl-C / SIGTERM are passed on to every process.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from t5x_lite.launch.common import (UsageError, check_at_least, check_choice, split_argv,
                                    usage_error)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEVICE_COUNT_FLAG = re.compile(r'--xla_force_host_platform_device_count=\d+')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_env(base: dict, *, process_id: int, num_processes: int, devices_per_process: int,
                port: int, platform: str) -> dict:
  """The environment of process `process_id`: coordinates and its share of the devices."""
  env = dict(base)
  env.update(T5X_LITE_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
             T5X_LITE_NUM_PROCESSES=str(num_processes),
             T5X_LITE_PROCESS_ID=str(process_id))
  if platform == 'cpu':
    flags = _DEVICE_COUNT_FLAG.sub('', env.get('XLA_FLAGS', '')).split()
    env['XLA_FLAGS'] = ' '.join(
        flags + [f'--xla_force_host_platform_device_count={devices_per_process}'])
    env['JAX_PLATFORMS'] = 'cpu'
  else:
    first = process_id * devices_per_process
    env['CUDA_VISIBLE_DEVICES'] = ','.join(str(first + i) for i in range(devices_per_process))
  return env


def _pump(stream, prefix: str, tail: list[str]) -> None:
  for line in iter(stream.readline, ''):
    sys.stdout.write(prefix + line)
    sys.stdout.flush()
    tail.append(line)
    del tail[:-20]


def run(num_processes: int, devices_per_process: int, command: Sequence[str], *,
        port: int = 0, platform: str = 'cpu', timeout_s: float | None = None,
        grace_s: float = 10.0) -> int:
  """Starts the processes, relays their output, and returns the job's exit status."""
  check_at_least('--num_processes', num_processes)
  check_at_least('--devices_per_process', devices_per_process)
  check_choice('--platform', platform, ('cpu', 'gpu'))
  port = port or free_port()
  procs, tails, pumps = [], [], []
  for i in range(num_processes):
    env = process_env(os.environ, process_id=i, num_processes=num_processes,
                      devices_per_process=devices_per_process, port=port, platform=platform)
    p = subprocess.Popen(list(command), cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    tail: list[str] = []
    t = threading.Thread(target=_pump, args=(p.stdout, f'[{i}] ', tail), daemon=True)
    t.start()
    procs.append(p)
    tails.append(tail)
    pumps.append(t)
  _say(f'started {num_processes} processes (pids {[p.pid for p in procs]}), '
       f'{devices_per_process} {platform} device(s) each, coordinator 127.0.0.1:{port}')

  def stop_all(sig=signal.SIGTERM):
    for p in procs:
      if p.poll() is None:
        _signal_group(p, sig)

  def forward(signum, _frame):
    _say(f'received signal {signum}; passing it to every process')
    stop_all(signum)

  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  deadline = None if timeout_s is None else time.monotonic() + timeout_s
  status = 0
  try:
    while True:
      codes = [p.poll() for p in procs]  # poll every process: a dead one must be seen at once
      failed = [(i, c) for i, c in enumerate(codes) if c]
      if failed:
        i, code = failed[0]
        how = f'was killed by signal {-code}' if code < 0 else f'exited with status {code}'
        others = '; stopping the other processes' if None in codes else ''
        _say(f'process {i} {how}{others}. Its last output:\n'
             + ''.join('    ' + line for line in tails[i][-8:]))
        status = code if code > 0 else 128 - code
        break
      if None not in codes:
        break
      if deadline is not None and time.monotonic() > deadline:
        _say(f'the job ran past --timeout_s={timeout_s:g}; stopping every process.')
        status = 124
        break
      time.sleep(0.2)
    if status:
      stop_all(signal.SIGTERM)
      _wait(procs, grace_s)
      stop_all(signal.SIGKILL)
    for p in procs:
      p.wait()
    for t in pumps:
      t.join(timeout=5)
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
  if not status:
    _say(f'all {num_processes} processes finished.')
  return status


def _signal_group(p: subprocess.Popen, sig) -> None:
  try:
    os.killpg(p.pid, sig)
  except ProcessLookupError:
    pass


def _wait(procs, seconds: float) -> None:
  end = time.monotonic() + seconds
  while time.monotonic() < end and any(p.poll() is None for p in procs):
    time.sleep(0.1)


def _say(message: str) -> None:
  print(f'launch/local.py: {message}', file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  ours, rest = split_argv(argv)
  p = argparse.ArgumentParser(prog='launch/local.py', description=__doc__.split('\n')[0])
  p.add_argument('--num_processes', type=int, required=True)
  p.add_argument('--devices_per_process', type=int, default=1)
  p.add_argument('--platform', default='cpu', help="'cpu' (simulated devices) or 'gpu'")
  p.add_argument('--port', type=int, default=0, help='coordinator port (default: a free one)')
  p.add_argument('--timeout_s', type=float, default=None, help='bound on the whole job')
  p.add_argument('--module', default='t5x_lite.train', help='the entry point every process runs')
  try:
    args = p.parse_args(ours)
  except SystemExit as e:
    return int(e.code or 0)
  command = [sys.executable, '-m', args.module, *rest]
  try:
    return run(args.num_processes, args.devices_per_process, command, port=args.port,
               platform=args.platform, timeout_s=args.timeout_s)
  except UsageError as e:
    return usage_error('launch/local.py', e)


if __name__ == '__main__':
  sys.exit(main())
