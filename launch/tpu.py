"""Prints (or runs) the `gcloud compute tpus tpu-vm` commands for one training run on a TPU slice.

    python launch/tpu.py --tpu_name=t5-base --accelerator_type=v5p-64 --zone=us-east5-a \
        --project=my-proj [--repo_url=https://...git] [--runtime_version=V] [--dry_run] \
        -- --gin_file=gin/runs/pretrain_base.gin

Four steps, in order: create the slice, install the repo on every host (git clone of --repo_url,
or, without --repo_url, an archive of the local checkout's tracked files packed here and copied
over, then `make install EXTRAS=tpu`), run the trainer on every host, delete the slice. On a
multi-host slice the trainer gets `--distributed=auto`: JAX finds its peers from the TPU VM
metadata, so no T5X_LITE_* variables are exported here (those are the launcher contract of
launch/local.py and launch/slurm.py; see t5x_lite/distributed.py).

Accelerator types, as gcloud names them (the suffix means different things per generation):
  generation  name         suffix counts   per chip    chips/host  default --runtime_version
  v4          v4-N         TensorCores     2 cores     4           tpu-ubuntu2204-base
  v5p         v5p-N        TensorCores     2 cores     4           v2-alpha-tpuv5
  v5e         v5litepod-N  chips           1           N<=8: N     v2-alpha-tpuv5-lite
                                                       else 4
So v4-8 and v5p-8 are one host of 4 chips, v5p-64 is 32 chips on 8 hosts, v5litepod-8 is one host of
8 chips and v5litepod-16 is 4 hosts of 4 chips.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
from typing import Sequence

from t5x_lite.launch.common import UsageError, split_argv, usage_error


@dataclasses.dataclass(frozen=True)
class Generation:
  suffix_counts_cores: bool  # True: the -N suffix counts TensorCores (2 per chip), else chips
  chips_per_host: int
  runtime_version: str
  valid_sizes: frozenset[int] | None = None  # None: any positive multiple of 8


GENERATIONS = {
    'v4': Generation(True, 4, 'tpu-ubuntu2204-base'),
    'v5p': Generation(True, 4, 'v2-alpha-tpuv5'),
    'v5litepod': Generation(False, 4, 'v2-alpha-tpuv5-lite',
                            frozenset({1, 4, 8, 16, 32, 64, 128, 256})),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  generation: str
  chips: int
  hosts: int
  runtime_version: str


def parse_accelerator_type(accelerator_type: str) -> Slice:
  """`v5p-64` -> Slice('v5p', chips=32, hosts=8, ...); UsageError on an unknown form or size."""
  m = re.fullmatch(r'(v4|v5p|v5litepod)-(\d+)', accelerator_type)
  if not m:
    raise UsageError(f'unknown --accelerator_type {accelerator_type!r}; expected v4-N, v5p-N or '
                     'v5litepod-N (e.g. v5p-64).')
  gen_name, n = m.group(1), int(m.group(2))
  gen = GENERATIONS[gen_name]
  if gen.valid_sizes is not None:
    if n not in gen.valid_sizes:
      raise UsageError(f'{accelerator_type}: {gen_name} sizes are '
                       f'{sorted(gen.valid_sizes)}.')
  elif n < 8 or n % 8:
    raise UsageError(f'{accelerator_type}: {gen_name}-N counts TensorCores and N must be a '
                     'multiple of 8 (one host of 4 chips).')
  chips = n // 2 if gen.suffix_counts_cores else n
  hosts = 1 if (not gen.suffix_counts_cores and chips <= 8) else max(1, chips // gen.chips_per_host)
  return Slice(gen_name, chips, hosts, gen.runtime_version)


SOURCE_ARCHIVE = 't5x_lite-src.tgz'  # in each host's home directory


def tpu_commands(*, tpu_name: str, accelerator_type: str, zone: str, project: str,
                 train_flags: Sequence[str] = (), runtime_version: str | None = None,
                 repo_url: str | None = None, local_repo: str = '.',
                 repo_dir: str = 't5x_lite') -> list[str]:
  """Returns the create, install (1 command, or pack + copy + install), run and delete commands,
  in order."""
  if not re.fullmatch(r'[a-z]([-a-z0-9]*[a-z0-9])?', tpu_name or ''):
    raise UsageError(f'--tpu_name must be lower-case letters, digits and "-", got {tpu_name!r}.')
  for name, value in (('--zone', zone), ('--project', project)):
    if not value:
      raise UsageError(f'{name} is required.')
  slice_ = parse_accelerator_type(accelerator_type)
  version = runtime_version or slice_.runtime_version
  q = shlex.quote
  where = f'--zone={q(zone)} --project={q(project)}'
  base = 'gcloud compute tpus tpu-vm'
  ssh = f'{base} ssh {q(tpu_name)} {where} --worker=all --command='

  commands = [f'{base} create {q(tpu_name)} {where} '
              f'--accelerator-type={q(accelerator_type)} --version={q(version)}']
  if repo_url:
    install = (f'([ -d {q(repo_dir)} ] || git clone {q(repo_url)} {q(repo_dir)}) '
               f'&& cd {q(repo_dir)} && make install EXTRAS=tpu')
  else:
    # Only the tracked files, as they are in the working tree (edits included): not .venv (GBs
    # after `make pretrain`), build outputs or local data.
    archive = f'/tmp/{tpu_name}-src.tgz'
    commands.append('bash -c ' + q(f'git -C {q(local_repo)} ls-files -z | tar -C {q(local_repo)} '
                                   f'--null -T - -czf {q(archive)}'))
    commands.append(f'{base} scp {q(archive)} {q(tpu_name)}:{SOURCE_ARCHIVE} {where} --worker=all')
    install = (f'mkdir -p {q(repo_dir)} && tar -xzf {SOURCE_ARCHIVE} -C {q(repo_dir)} '
               f'&& cd {q(repo_dir)} && make install EXTRAS=tpu')
  commands.append(ssh + q(install))
  multihost = ['--distributed=auto'] if slice_.hosts > 1 else []
  run = ' '.join([f'cd {q(repo_dir)} &&', '.venv/bin/python -m t5x_lite.train',
                  *multihost, *(q(f) for f in train_flags)])
  commands.append(ssh + q(run))
  commands.append(f'{base} delete {q(tpu_name)} {where} --quiet')
  return commands


def main(argv: Sequence[str] | None = None) -> int:
  import argparse
  ours, train_flags = split_argv(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog='launch/tpu.py', description=__doc__.split('\n')[0])
  p.add_argument('--tpu_name', required=True)
  p.add_argument('--accelerator_type', required=True, help='v4-N, v5p-N or v5litepod-N')
  p.add_argument('--zone', required=True)
  p.add_argument('--project', required=True)
  p.add_argument('--runtime_version', help='default: per generation, see the module docstring')
  p.add_argument('--repo_url', help='git URL to clone on each host; default: scp the local repo')
  p.add_argument('--local_repo', default='.')
  p.add_argument('--repo_dir', default='t5x_lite')
  p.add_argument('--dry_run', action='store_true', help='print the commands; run nothing')
  try:
    args = p.parse_args(ours)
  except SystemExit as e:
    return int(e.code or 0)
  try:
    commands = tpu_commands(tpu_name=args.tpu_name, accelerator_type=args.accelerator_type,
                            zone=args.zone, project=args.project, train_flags=train_flags,
                            runtime_version=args.runtime_version, repo_url=args.repo_url,
                            local_repo=args.local_repo, repo_dir=args.repo_dir)
    slice_ = parse_accelerator_type(args.accelerator_type)
  except UsageError as e:
    return usage_error('launch/tpu.py', e)
  print(f'# {args.accelerator_type}: {slice_.chips} chips on {slice_.hosts} host(s)',
        file=sys.stderr)
  if args.dry_run:
    print('\n'.join(commands))
    return 0
  if shutil.which('gcloud') is None:
    print('launch/tpu.py: error: gcloud not found on PATH; install the Google Cloud CLI or rerun '
          'with --dry_run and run the commands elsewhere.', file=sys.stderr)
    return 1
  for cmd in commands:
    print(f'+ {cmd}', file=sys.stderr, flush=True)
    rc = subprocess.run(shlex.split(cmd), check=False).returncode
    if rc:
      print(f'launch/tpu.py: error: exit {rc}; the slice may still exist, delete it with: '
            f'{commands[-1]}', file=sys.stderr)
      return rc
  return 0


if __name__ == '__main__':
  sys.exit(main())
