"""The planner: exact counts without allocating, FLOPs per token, bytes per device under a mesh."""

import gin
import pytest

from t5x_lite import partitioning, plan
from t5x_lite import models
from t5x_lite.models import T5Config


def test_plan_cli_prints_the_published_count(capsys):
  gin.clear_config()
  try:
    assert plan.main(['--gin_file=gin/models/t5_1_1/small.gin']) == 0
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  assert 'params: 76,961,152' in out
  assert 'training FLOPs per token' in out and 'params + optimizer per device' in out


def test_fsdp_over_8_devices_divides_param_bytes_by_8():
  cfg = T5Config()  # T5.1.1 small
  lengths = {'inputs': 512, 'targets': 114}
  one = plan.plan(cfg, {'data': -1}, 1, lengths, partitioning.FSDP_RULES)
  eight = plan.plan(cfg, {'data': -1}, 8, lengths, partitioning.FSDP_RULES)
  assert one['params_bytes_per_device'] == 4 * one['params']
  # Every T5 parameter but the two small relative-position tables has an 'embed' dimension.
  relpos_bytes = 2 * 32 * 6 * 4
  assert eight['params_bytes_per_device'] == (one['params_bytes_per_device'] - relpos_bytes) / 8 + relpos_bytes
  assert eight['optimizer_bytes_per_device'] < one['optimizer_bytes_per_device']
  assert one['training_flops_per_example'] == models.training_flops_per_example(cfg, lengths)


def test_mesh_that_does_not_fit_is_an_error():
  with pytest.raises(ValueError, match='needs 8 devices'):
    plan.plan(T5Config(), {'data': 2, 'model': 4}, 4, {'inputs': 8, 'targets': 8},
              partitioning.TWO_D_RULES)
