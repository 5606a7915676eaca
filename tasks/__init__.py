"""seqio Task registrations: importing this package registers every task (`tasks.pretraining`,
`tasks.finetuning`) with the default vocabulary; `register_all(vocabulary)` re-registers them with
the configured one (entry points call it after parsing gin)."""

from tasks import finetuning
from tasks import pretraining


def register_all(vocabulary=None) -> None:
  pretraining.register_all(vocabulary)
  finetuning.register_all(vocabulary)
