"""Logical→mesh rules, mesh shapes and per-device shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from t5x_lite import optimizer, partitioning


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


def _state_names(name, axes, shapes):
  """{state path: logical names} of the real optimizer's state over params of `shapes`."""
  tx = optimizer.as_matrices(optimizer.make_optimizer(optax.constant_schedule(0.01), name=name),
                             axes)
  params = {k[0]: {k[1]: jax.ShapeDtypeStruct(v, jnp.float32)} for k, v in shapes.items()}
  names = optimizer.state_axes(axes, params)
  return {'/'.join(partitioning.path_key(p)): names(p, leaf)
          for p, leaf in jax.tree_util.tree_flatten_with_path(jax.eval_shape(tx.init, params))[0]}


def test_adafactor_declares_its_factored_rows_and_columns_names():
  """T5's Adafactor on [embed, heads·kv] views: each moment is split like its param. The out
  projection's view is square (heads·kv = embed = 128), where shapes cannot tell the row
  statistics from the column's: the optimizer's own rule (v_row drops the largest dimension,
  v_col the second; np.argsort order) names them."""
  axes = {('q', 'kernel'): ('embed', 'heads', 'kv'), ('o', 'kernel'): ('heads', 'kv', 'embed'),
          ('ln', 'scale'): ('embed',), ('bias', 'rel'): None}
  shapes = {('q', 'kernel'): (128, 4, 64), ('o', 'kernel'): (4, 32, 128), ('ln', 'scale'): (128,),
            ('bias', 'rel'): (32, 4)}
  got = {k.split('/', 1)[1]: v for k, v in _state_names('adafactor', axes, shapes).items()
         if k.split('/')[1] in ('v_row', 'v_col', 'v')}
  assert got == {
      'v_row/q/kernel': ('embed',), 'v_col/q/kernel': ('heads',), 'v/q/kernel': None,  # (1,)
      'v_row/o/kernel': ('heads',), 'v_col/o/kernel': ('embed',), 'v/o/kernel': None,
      'v_row/ln/scale': None, 'v_col/ln/scale': None, 'v/ln/scale': ('embed',),  # unfactored
      'v_row/bias/rel': None, 'v_col/bias/rel': None, 'v/bias/rel': None}  # no names: replicated


def test_adamw_moments_take_their_params_view_names():
  axes = {('q', 'kernel'): ('embed', 'heads', 'kv'), ('o', 'kernel'): ('heads', 'kv', 'embed')}
  shapes = {('q', 'kernel'): (64, 4, 16), ('o', 'kernel'): (4, 16, 32)}
  got = _state_names('adamw', axes, shapes)
  assert {k: v for k, v in got.items() if v} == {
      '0/mu/q/kernel': ('embed', 'heads'), '0/mu/o/kernel': ('heads', 'embed'),
      '0/nu/q/kernel': ('embed', 'heads'), '0/nu/o/kernel': ('heads', 'embed')}
  assert got['0/count'] is None


def test_an_optimizer_state_its_rule_does_not_explain_is_an_error():
  names = optimizer.state_axes({('w', 'kernel'): ('embed', 'mlp')},
                               {'w': {'kernel': jax.ShapeDtypeStruct((256, 512), jnp.float32)}})
  path = tuple(jax.tree_util.DictKey(k) for k in ('v_col', 'w', 'kernel'))
  assert names(path, np.zeros(512)) == ('mlp',) and names(path, np.zeros(1)) is None
  with pytest.raises(ValueError, match=r'expected \(512,\)'):
    names(path, np.zeros(256))  # v_col keeps the largest dimension, 512
  with pytest.raises(ValueError, match='matches neither'):
    names(tuple(jax.tree_util.DictKey(k) for k in ('mu', 'w', 'kernel')), np.zeros((3, 7)))


def test_a_2d_view_is_split_like_its_param():
  """as_matrices hands the optimizer [embed, heads·kv] views of attention kernels: the merged
  dimension takes its major axis's split."""
  mesh = {'data': 2, 'model': 4}
  spec = partitioning.logical_to_mesh_spec(('embed', 'heads'), partitioning.TWO_D_RULES)
  assert partitioning.shard_shape((64, 64), spec, mesh) == (64, 16)  # heads·kv split 4 ways
