"""seqio Task registrations: importing this package registers every task (`tasks.pretraining`)."""

from tasks import pretraining  # noqa: F401  (registers the tasks)
