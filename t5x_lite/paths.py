"""Where t5x_lite keeps what it builds once per machine: the prepared corpus and the vocabulary.

One environment variable, ``T5X_LITE_DATA_DIR``, moves all of it (a shared disk, a bucket mount);
without it everything lives under ``~/.cache/t5x_lite``. The corpus and the vocabulary are built
on first use, and pytest-xdist workers or several hosts may all be "first", so building goes through
`file_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

DATA_DIR_ENV = 'T5X_LITE_DATA_DIR'


def cache_dir() -> Path:
  """Root of everything t5x_lite builds: ``$T5X_LITE_DATA_DIR`` or ``~/.cache/t5x_lite``."""
  root = os.environ.get(DATA_DIR_ENV)
  return Path(root).expanduser() if root else Path.home() / '.cache' / 't5x_lite'


def tfds_data_dir() -> str:
  """The TFDS data dir for the bundled corpus and, unless configured otherwise, C4."""
  return str(cache_dir() / 'tensorflow_datasets')


def vocab_dir() -> Path:
  """Where the default SentencePiece model is trained and cached."""
  return cache_dir() / 'vocab'


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
  """Holds an exclusive advisory lock on `path` (created if needed) for the block.

  Used as check → lock → check again → build, so concurrent first users build once and the others
  wait and then find the result. The lock dies with its process, so a crash never leaves it stuck.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


class Locked(Exception):
  """`owner_lock` found the lock held; the message is what its holder wrote (who and where)."""


@contextlib.contextmanager
def owner_lock(path: str | os.PathLike, owner: str) -> Iterator[None]:
  """Holds an exclusive advisory lock on `path` for the block and writes `owner` into the file;
  raises Locked with the holder's text at once if another process holds it.

  An flock dies with its process, so a killed holder (kill -9, a lost host) leaves a file that
  no longer locks anything: a restart is never blocked by a stale lock.
  """
  f = open(path, 'a+')  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    raise Locked(holder) from None
  try:
    f.truncate(0)
    f.write(owner + '\n')
    f.flush()
    yield
  finally:
    f.truncate(0)
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()
