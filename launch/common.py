"""What the launchers share: the usage error their `main()`s turn into one `error:` line and
exit 2, and the `--` that separates a launcher's own flags from the trainer's."""

from __future__ import annotations

import sys
from typing import Sequence

from t5x_lite.gin_utils import UsageError  # the one class every entry point reports as usage

__all__ = ['UsageError', 'check_at_least', 'check_choice', 'split_argv', 'usage_error']


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits at the first `--`: launcher flags before, trainer flags after."""
  argv = list(argv)
  if '--' in argv:
    i = argv.index('--')
    return argv[:i], argv[i + 1:]
  return argv, []


def check_at_least(flag: str, value, minimum: int = 1) -> None:
  """A count flag the launcher cannot use below `minimum`: UsageError naming it."""
  if value is not None and value < minimum:
    raise UsageError(f'{flag} must be at least {minimum}, got {value}.')


def check_choice(flag: str, value, choices: Sequence) -> None:
  if value not in choices:
    raise UsageError(f"{flag} must be {' or '.join(map(repr, choices))}, got {value!r}.")


def usage_error(prog: str, error: Exception) -> int:
  """Prints `PROG: error: ...` on one line to stderr; returns the exit status 2."""
  print(f'{prog}: error: {error}', file=sys.stderr, flush=True)
  return 2
