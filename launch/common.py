"""What the launchers share: the usage error their `main()`s turn into one `error:` line and
exit 2, and the `--` that separates a launcher's own flags from the trainer's."""

from __future__ import annotations

import sys
from typing import Sequence

from t5x_lite.gin_utils import UsageError  # the one class every entry point reports as usage

__all__ = ['UsageError', 'split_argv', 'usage_error']


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits at the first `--`: launcher flags before, trainer flags after."""
  argv = list(argv)
  if '--' in argv:
    i = argv.index('--')
    return argv[:i], argv[i + 1:]
  return argv, []


def usage_error(prog: str, error: Exception) -> int:
  """Prints `PROG: error: ...` on one line to stderr; returns the exit status 2."""
  print(f'{prog}: error: {error}', file=sys.stderr, flush=True)
  return 2
