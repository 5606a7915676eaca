"""Shared test hygiene."""

import gin
import pytest


@pytest.fixture(autouse=True)
def _fresh_gin():
  """Entry points (train/infer/plan main) leave their gin bindings behind, as in T5X; clear them
  after each test so a later test's `T5Config()` is the dataclass default, whatever ran before it
  in the same xdist worker."""
  yield
  gin.clear_config()


# The modules that hold the multi-minute tests (`make test ARGS=--durations=30`: the sharding
# equivalence bench 185 s, two-process training 150 s, kill-and-rerun 137 s, a real sweep 121 s).
LONGEST_FIRST = ('test_sharding', 'test_distributed', 'test_resume', 'test_scaling')


def pytest_collection_modifyitems(items):
  """The modules with the longest tests run first, then the other modules with slow tests, then the
  rest (longest first, as a scheduler would): xdist hands tests out in this order, and a
  minutes-long test that starts last keeps one worker busy while the other idles. Each module
  stays in one piece, so its module-scoped fixtures are built once."""
  slow = {item.module.__name__ for item in items if item.get_closest_marker('slow')}

  def rank(item):
    name = item.module.__name__
    return (LONGEST_FIRST.index(name) if name in LONGEST_FIRST
            else len(LONGEST_FIRST) + (name not in slow))

  items.sort(key=rank)
