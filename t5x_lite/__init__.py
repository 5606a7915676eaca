"""t5x_lite: a lean JAX/Flax pretraining stack for T5-style text-to-text Transformers."""

import glob as _glob
import os as _os
import sys as _sys


def _has_accelerator() -> bool:
  """A TPU VM (/dev/accel*, /dev/vfio/N), an NVIDIA (/dev/nvidia*) or AMD (/dev/kfd) GPU host."""
  vfio = [p for p in _glob.glob('/dev/vfio/*') if _os.path.basename(p) != 'vfio']
  return bool(_glob.glob('/dev/accel*') or vfio or _glob.glob('/dev/nvidia[0-9]*')
              or _os.path.exists('/dev/kfd'))


# The compile-only TPU and GPU compilers (libtpu, the CUDA plugin: `plan --target`) are installed
# everywhere; on a host with neither chip, JAX would still try to start both on first use (6 s and
# two tracebacks per command). Such a host runs on CPU unless JAX_PLATFORMS says otherwise.
if 'JAX_PLATFORMS' not in _os.environ and not _has_accelerator():
  _os.environ['JAX_PLATFORMS'] = 'cpu'
  if 'jax' in _sys.modules:  # imported first: its config has read the environment already
    _sys.modules['jax'].config.update('jax_platforms', 'cpu')

from t5x_lite import quiet as _quiet  # noqa: E402  (before anything imports TensorFlow)

_quiet.install()
