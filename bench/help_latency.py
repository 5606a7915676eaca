"""`--help` latency of every entry point, this checkout against another (the one before the change),
timed alternately in one process so that the machine's drift hits both alike.

  git worktree add --detach /tmp/before <rev>
  .venv/bin/python bench/help_latency.py --before=/tmp/before [--repeats=5] \
      [--out=bench/results/help_latency.md]

Each timing is one `python -m MODULE --help` process run from the checkout's root (so `-m` imports
that checkout's t5x_lite), wall clock from spawn to exit; the table gives medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ('t5x_lite.train', 't5x_lite.eval', 't5x_lite.plan', 't5x_lite.infer',
            't5x_lite.convert', 't5x_lite.vocab', 't5x_lite.tasks', 't5x_lite.curves')


def timed(root: str, module: str) -> tuple[float, int, str]:
  """(seconds, exit status, first output line) of `python -m module --help` run in `root`."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, '-m', module, '--help'], cwd=root, capture_output=True,
                        text=True, check=False)
  first = (done.stdout or done.stderr).strip().splitlines()[:1]
  return time.perf_counter() - start, done.returncode, first[0][:60] if first else ''


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--before', required=True, help='checkout to compare with')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'help_latency.md'))
  args = parser.parse_args()
  times = {(side, m): [] for side in ('before', 'after') for m in COMMANDS}
  outcome = {}
  for i in range(args.repeats):
    for module in COMMANDS:
      for side, root in (('before', args.before), ('after', REPO)):
        seconds, status, first = timed(root, module)
        times[side, module].append(seconds)
        outcome[side, module] = (status, first)
      print(f'[{i + 1}/{args.repeats}] {module}: before {times["before", module][-1]:.2f} s, '
            f'after {times["after", module][-1]:.2f} s', flush=True)
  rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=args.before,
                       capture_output=True, text=True, check=False).stdout.strip()
  lines = [f'# `--help` latency, before ({rev or args.before}) and after', '',
           f'`python bench/help_latency.py --before=... --repeats={args.repeats}` on '
           f'{os.cpu_count()} CPU cores, {time.strftime("%Y-%m-%d")}: median wall seconds of '
           f'{args.repeats} alternating runs per side; exit status and first line of each.', '',
           '| command | before (s) | before printed | after (s) | after printed |',
           '|---|---|---|---|---|']
  for module in COMMANDS:
    cells = []
    for side in ('before', 'after'):
      status, first = outcome[side, module]
      cells += [f'{statistics.median(times[side, module]):.2f}', f'exit {status}: `{first}`']
    lines.append(f'| `python -m {module} --help` | ' + ' | '.join(cells) + ' |')
  with open(args.out, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
