"""`python -m t5x_lite.tasks show TASK_NAME [--num=3] [--text=...] [--all]`.

A thin entry point: the tasks live in the top-level `tasks` package, the command in `tasks.show`.
"""

import sys

if __name__ == '__main__':
  from tasks import show
  sys.exit(show.main())
