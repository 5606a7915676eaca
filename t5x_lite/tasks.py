"""`python -m t5x_lite.tasks show TASK_NAME [--num=3] [--text=...] [--all]`.

A thin entry point: the tasks live in the top-level `tasks` package, the command in `tasks.show`.
"""

import sys

if __name__ == '__main__':
  from t5x_lite import cli  # `--help` answers before seqio and TensorFlow load
  sys.exit(cli.main('tasks'))
