"""Joins this process to a multi-process JAX job (`jax.distributed.initialize`), or does nothing.

Where the coordinates come from, first match wins:
  1. flags: --coordinator_address=HOST:PORT --num_processes=N --process_id=I
  2. our launchers' environment: T5X_LITE_COORDINATOR_ADDRESS / _NUM_PROCESSES / _PROCESS_ID
     (written by launch/local.py and launch/slurm.py)
  3. --distributed=auto, or a SLURM step with more than one task: JAX's own cluster detection
     (Cloud TPU VM metadata, SLURM, Open MPI), as launch/tpu.py asks for on multi-host slices
  4. otherwise a single process, nothing to do.
Start-up is bounded by `timeout_s`: a peer that never arrives ends the job with an error naming the
coordinator, instead of a hang.
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping

import jax

from t5x_lite import gin_utils

ENV = ('T5X_LITE_COORDINATOR_ADDRESS', 'T5X_LITE_NUM_PROCESSES', 'T5X_LITE_PROCESS_ID')


class DistributedError(gin_utils.UsageError):
  """Inconsistent or failed multi-process set-up (the entry point reports it on one line)."""


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> dict | None:
  """The keyword arguments for jax.distributed.initialize, or None for a single process."""
  explicit = (args.coordinator_address, args.num_processes, args.process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise DistributedError('--coordinator_address, --num_processes and --process_id go together; '
                             f'got {explicit}.')
    return _checked(*explicit, source='flags')
  from_env = tuple(environ.get(k) for k in ENV)
  if any(v is not None for v in from_env):
    if any(v is None for v in from_env):
      missing = [k for k, v in zip(ENV, from_env) if v is None]
      raise DistributedError(f'{", ".join(missing)} not set; the launcher sets all of {ENV}.')
    try:
      num, pid = int(from_env[1]), int(from_env[2])
    except ValueError as e:
      raise DistributedError(f'{ENV[1]} and {ENV[2]} must be integers; got {from_env[1:]}') from e
    return _checked(from_env[0], num, pid, source='environment')
  if args.distributed == 'auto' or (args.distributed != 'off'
                                    and int(environ.get('SLURM_NTASKS', '1')) > 1):
    return {}
  return None


def _checked(address: str, num_processes: int, process_id: int, *, source: str) -> dict:
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise DistributedError(f'coordinator address {address!r} (from {source}) must be HOST:PORT.')
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise DistributedError(f'process_id {process_id} must be in [0, {num_processes}) '
                           f'(from {source}).')
  return dict(coordinator_address=address, num_processes=num_processes, process_id=process_id)


def initialize(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> None:
  kwargs = resolve(args, environ)
  if kwargs is None or kwargs.get('num_processes') == 1:
    return
  try:
    jax.distributed.initialize(initialization_timeout=args.distributed_timeout_s, **kwargs)
  except Exception as e:  # jax raises RuntimeError/XlaRuntimeError with a long status dump
    where = kwargs.get('coordinator_address', 'the auto-detected coordinator')
    raise DistributedError(
        f'could not join the job at {where} within {args.distributed_timeout_s}s '
        f'({type(e).__name__}: {str(e).splitlines()[0][:300]}). Check that every process was '
        'started with the same coordinator address and process count, and that the port is '
        'reachable.') from e
  print(f'process {jax.process_index()} of {jax.process_count()}: '
        f'{jax.local_device_count()} local / {jax.device_count()} global devices', flush=True)
