"""seqio Task registrations, installed as `t5x_lite.tasks` (this folder stays at the repo's top).

`register_all(vocabulary)` (re)registers every task, `pretraining` and `finetuning`, with the
configured vocabulary (entry points call it after parsing gin); importing either submodule
registers its tasks with the default one. Submodules load on first use, so that
`python -m t5x_lite.tasks --help` answers before seqio and TensorFlow are imported.
"""

import importlib

_SUBMODULES = ('finetuning', 'pretraining', 'show')


def register_all(vocabulary=None) -> None:
  from t5x_lite.tasks import finetuning, pretraining  # pylint: disable=import-outside-toplevel
  pretraining.register_all(vocabulary)
  finetuning.register_all(vocabulary)


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
