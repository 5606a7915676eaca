"""`python -m t5x_lite.tasks show TASK_NAME [--num=3] [--text=...] [--all]`; see `show`."""

import sys

from t5x_lite import cli  # `--help` answers before seqio and TensorFlow load

sys.exit(cli.main('tasks'))
