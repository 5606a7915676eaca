"""Logical→mesh rules, mesh shapes and per-device shapes."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t5x_lite import partitioning


def test_mesh_shape_fills_the_rest():
  assert partitioning.resolve_mesh_shape({'data': -1, 'model': 4}, 8) == {'data': 2, 'model': 4}
  assert partitioning.resolve_mesh_shape({'data': 8}, 8) == {'data': 8}


@pytest.mark.parametrize('shape,n,needle', [
    ({'data': 3}, 8, 'needs 3 devices'),
    ({'data': -1, 'model': -1}, 8, 'more than one -1'),
    ({'data': -1, 'model': 3}, 8, 'not divisible'),
    ({'data': 0}, 8, '0 or below'),
])
def test_bad_mesh_shapes_name_the_fix(shape, n, needle):
  with pytest.raises(ValueError, match=needle):
    partitioning.resolve_mesh_shape(shape, n)


def test_rules_map_logical_names_and_use_each_mesh_axis_once():
  rules = partitioning.TWO_D_RULES
  assert partitioning.logical_to_mesh_spec(('embed', 'mlp'), rules) == P(None, 'model')
  # 'heads' and 'mlp' both map to 'model': only the first keeps it.
  assert partitioning.logical_to_mesh_spec(('heads', 'mlp'), rules) == P('model', None)
  assert partitioning.logical_to_mesh_spec(('batch', 'length', 'vocab'), rules) == P(
      'data', None, 'model')
  assert partitioning.logical_to_mesh_spec(None, rules) == P()


def test_fsdp_shards_embed_over_data_and_drops_size_one_axes():
  mesh = partitioning.create_mesh({'data': 1, 'model': 1})
  assert partitioning.logical_to_mesh_spec(('embed', 'mlp'), partitioning.FSDP_RULES) == P(
      'data', None)
  # On a 1×1 mesh every axis has size 1, so nothing is sharded.
  assert partitioning.logical_to_mesh_spec(('embed', 'mlp'), partitioning.FSDP_RULES, mesh) == P(
      None, None)


@pytest.mark.parametrize('shape, extra_rules, fine', [
    ({'data': 4, 'model': 2}, (), True),      # 'model' unused by data_parallel: replicated, allowed
    ({'dta': 1}, (), False),                  # a misspelt axis, even of size 1
    ({'data': 2, 'expert': 4}, (('mlp', 'expert'),), True),  # extra rules may name new axes
])
def test_mesh_axes_no_rule_knows_are_rejected(shape, extra_rules, fine):
  rules = partitioning.logical_axis_rules(preset='data_parallel', extra_rules=extra_rules)
  if fine:
    partitioning.check_mesh_axes(shape, rules)
  else:
    with pytest.raises(ValueError, match="MESH_SHAPE axis 'dta' is not one logical_axis_rules"):
      partitioning.check_mesh_axes(shape, rules)


def test_unknown_preset_is_a_clear_error():
  with pytest.raises(ValueError, match="choose one of"):
    partitioning.logical_axis_rules(preset='tensor')


def test_shard_shape_divides_sharded_dims():
  assert partitioning.shard_shape((512, 1024), P('data', 'model'), {'data': 2, 'model': 4}) == (
      256, 256)
  assert partitioning.shard_shape((10, 7), P(None, 'model'), {'model': 4}) == (10, 2)


def test_optimizer_state_follows_its_param():
  axes = {('enc', 'wi', 'kernel'): ('embed', 'mlp'), ('scale',): ('embed',)}
  shapes = {('enc', 'wi', 'kernel'): (8, 16), ('scale',): (8,)}
  names = partitioning.follow_params(axes, shapes)
  k = jax.tree_util.DictKey
  path = (jax.tree_util.SequenceKey(0), jax.tree_util.GetAttrKey('v_row'), k('enc'), k('wi'),
          k('kernel'))
  leaf = lambda *s: np.zeros(s)
  assert names(path, leaf(8, 16)) == ('embed', 'mlp')
  assert names(path, leaf(8)) == ('embed',)     # factored row: last dim dropped
  assert names(path, leaf(16)) == ('mlp',)      # factored column
  assert names(path, leaf(1)) is None           # placeholder
  assert names((k('count'),), leaf()) is None   # not a param


def test_optimizer_state_of_a_2d_view_is_sharded_like_its_param():
  """as_matrices hands the optimizer [embed, heads·kv] views of attention kernels: their moments
  must be split like the kernel (the merged dimension by its major axis), not replicated."""
  axes = {('q', 'kernel'): ('embed', 'heads', 'kv'), ('o', 'kernel'): ('heads', 'kv', 'embed')}
  shapes = {('q', 'kernel'): (64, 4, 16), ('o', 'kernel'): (4, 16, 32)}
  names = partitioning.follow_params(axes, shapes)
  k = jax.tree_util.DictKey
  leaf = lambda *s: np.zeros(s)
  assert names((k('mu'), k('q'), k('kernel')), leaf(64, 64)) == ('embed', 'heads')
  assert names((k('mu'), k('o'), k('kernel')), leaf(64, 32)) == ('heads', 'embed')
  assert names((k('v_col'), k('o'), k('kernel')), leaf(32)) == ('embed',)
  mesh = {'data': 2, 'model': 4}
  spec = partitioning.logical_to_mesh_spec(('embed', 'heads'), partitioning.TWO_D_RULES)
  assert partitioning.shard_shape((64, 64), spec, mesh) == (64, 16)  # heads·kv split 4 ways
