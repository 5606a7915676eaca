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


def pytest_collection_modifyitems(items):
  """Modules with slow tests run first (longest first, as a scheduler would): xdist hands tests
  out in this order, and a minutes-long test that starts last keeps one worker busy while the
  other idles. Each module stays in one piece, so its module-scoped fixtures are built once."""
  slow = {item.module.__name__ for item in items if item.get_closest_marker('slow')}
  items.sort(key=lambda item: item.module.__name__ not in slow)
