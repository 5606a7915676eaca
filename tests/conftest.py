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
