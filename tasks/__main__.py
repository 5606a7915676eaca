"""`python -m tasks show TASK_NAME`; see `tasks.show`."""

import sys

from tasks import show

sys.exit(show.main())
