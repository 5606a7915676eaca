"""Quiet start-up: TensorFlow's C++ libraries log as they load (`cudart_stub.cc ... Could not find
cuda drivers`, `port.cc ... oneDNN custom operations are on`, `All log messages before
absl::InitializeLog()`), straight to file descriptor 2, where neither TF_CPP_MIN_LOG_LEVEL (TF 2.21
logs through absl) nor Python's logging reaches. So the first import of those packages runs with
descriptor 2 sent to a temporary file, which is replayed if the import fails. `--verbose` on the
command line (or T5X_LITE_VERBOSE=1) leaves stderr alone.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import tempfile
from typing import Iterator

# Modules whose import loads the noisy libraries -> their functions that load more when called
# (JAX's CUDA plugin opens the CUDA stubs again when JAX first starts its backends).
NOISY = {'jax': (), 'tensorflow': (), 'tensorflow_text': (),
         'jax_plugins.xla_cuda12': ('initialize',)}


def _tensorflow_without_gpus(tf) -> None:
  """TensorFlow only feeds the input pipeline: hidden from the GPUs (as T5X does), it neither
  takes their memory from JAX nor logs `failed call to cuInit` on a host without one."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # devices already initialised (TF used before us): leave them be
    pass


# Run right after the module loads (quietly unless verbose, whatever the verbosity).
AFTER_IMPORT = {'tensorflow': _tensorflow_without_gpus}


@contextlib.contextmanager
def stderr_to_file() -> Iterator[None]:
  """Descriptor 2 goes to a temporary file inside; what was written there is shown if the body
  raises (a failed import keeps its explanation)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    failed = False
    try:
      yield
    except BaseException:
      failed = True
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if failed:
        sink.seek(0)
        os.write(2, sink.read())


def _quietly(fn):
  def call(*args, **kwargs):
    with stderr_to_file():
      return fn(*args, **kwargs)
  return call


class _QuietImport(importlib.abc.MetaPathFinder):
  """Finds the NOISY modules with the other finders and runs their module code (and the
  functions named, and AFTER_IMPORT) under stderr_to_file, or plainly when `quiet` is False;
  every other import passes through untouched."""

  def __init__(self, quiet: bool = True):
    self.quiet = quiet

  def find_spec(self, name, path=None, target=None):
    if name not in NOISY:
      return None
    for finder in sys.meta_path:
      if finder is self or not hasattr(finder, 'find_spec'):
        continue
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        break
    else:
      return None
    exec_module = getattr(spec.loader, 'exec_module', None)
    if exec_module is not None:
      def quiet_exec(module):
        with stderr_to_file() if self.quiet else contextlib.nullcontext():
          exec_module(module)
          if name in AFTER_IMPORT:
            AFTER_IMPORT[name](module)
        for fn_name in NOISY[name] if self.quiet else ():
          fn = getattr(module, fn_name, None)
          if callable(fn):
            setattr(module, fn_name, _quietly(fn))
      spec.loader.exec_module = quiet_exec
    return spec


def verbose() -> bool:
  return '--verbose' in sys.argv or os.environ.get('T5X_LITE_VERBOSE', '') not in ('', '0')


def install() -> None:
  """Puts the importer first, once: quiet unless asked to be verbose."""
  if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietImport(quiet=not verbose()))
