"""Files under MODEL_DIR, on a local disk or in a bucket (``gs://``, any fsspec/TF filesystem).

Everything goes through `etils.epath`, as Orbax does, so one code path serves both; what object
stores lack is done another way here: no append (a file is rewritten whole), no atomic rename of a
directory (its files are copied, then the source removed), no rename-over for atomic replacement
(an object write is already all-or-nothing). Libraries that only write local files (TensorFlow's
iterator checkpoints against a bucket emulator, TensorBoard's event files) write to a local staging
directory that is then copied up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
  """A bucket (or any other non-local) path such as gs://bucket/run."""
  return '://' in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
  """An absolute epath (epath's own absolute() makes gs://b/x into $PWD/gs:/b/x)."""
  return epath.Path(path) if is_url(path) else epath.Path(path).absolute()


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
  """Readers see the old content or the new, never half: a sibling then a rename locally, one
  object write in a bucket."""
  target = epath.Path(path)
  payload = data.encode('utf-8') if isinstance(data, str) else data
  if is_url(path):
    target.write_bytes(payload)
    return
  tmp = target.with_name(f'{target.name}.tmp{os.getpid()}')
  tmp.write_bytes(payload)
  os.replace(tmp, target)


def read_text(path: str | os.PathLike) -> str | None:
  """The file's text, or None when it does not exist."""
  target = epath.Path(path)
  return target.read_text() if target.exists() else None


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Every file under `src` to the same relative place under `dst` (either may be a bucket)."""
  src, dst = epath.Path(src), epath.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      (dst / child.name).write_bytes(child.read_bytes())


def move_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """A directory to a new place: a rename locally; in a bucket a copy, then the source removed."""
  src, dst = epath.Path(src), epath.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  if not is_url(src):
    src.rename(dst)
    return
  copy_tree(src, dst)
  src.rmtree()


@contextlib.contextmanager
def staged(directory: str | os.PathLike, upload: bool) -> Iterator[str]:
  """A local directory standing for `directory`: itself when local; for a bucket, a temporary
  copy of it (downloaded first unless `upload`), copied up on exit when `upload`."""
  if not is_url(directory):
    yield os.fspath(directory)
    return
  local = tempfile.mkdtemp(prefix='t5x_lite_staged_')
  try:
    if not upload and epath.Path(directory).exists():
      copy_tree(directory, local)
    yield local
    if upload:
      copy_tree(local, directory)
  finally:
    shutil.rmtree(local, ignore_errors=True)
