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


# Worker-seconds per module, largest first (`make test ARGS=--durations=0`, 2026-12-06, 2 cores):
# `make test` hands whole modules to its two workers (`--dist loadscope`, so each module's fixtures
# are built once) in this order, longest first, so that no long module starts last while the
# other worker idles. Modules not listed take a few seconds to a minute; they follow in file order.
MODULE_SECONDS = {
    'test_resume': 585, 'test_sharding': 260, 'test_plan': 190, 'test_train': 185,
    'test_models': 170, 'test_distributed': 135, 'test_scaling': 120, 'test_bucket': 120,
    'test_vocab': 95, 'test_scan': 90, 'test_bad_input': 85, 'test_pipeline': 70,
    'test_decoding': 47, 'test_trainer': 45, 'test_infer': 40,
}


def pytest_collection_modifyitems(items):
  """Modules longest first (MODULE_SECONDS); each module's tests stay together in file order."""
  items.sort(key=lambda item: -MODULE_SECONDS.get(item.module.__name__, 0))
