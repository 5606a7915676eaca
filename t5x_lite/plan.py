"""`python -m t5x_lite.plan --gin_file=MODEL.gin [--gin_file=RUN.gin] [--num_devices=N]`

Says what a configuration costs before a job is launched: exact parameter count (from
`nnx.eval_shape`, so an 11B model is planned without allocating it), training FLOPs per token, and
bytes per device of params + optimizer state under the configured mesh and sharding rules. Devices
need not exist: the mesh is abstract.
"""

from __future__ import annotations

if __name__ == '__main__':
  # Run the importable module rather than this copy under __main__, so gin registers one `train`.
  import sys
  from t5x_lite import plan as _module
  sys.exit(_module.main())

import argparse
import math
import sys
from typing import Mapping

import gin
import jax
from jax.sharding import AbstractMesh, AxisType

from t5x_lite import gin_utils, partitioning, trainer
from t5x_lite import models
from t5x_lite.models import T5Config


def plan(model_config: T5Config, mesh_shape: Mapping[str, int], num_devices: int,
         task_feature_lengths: Mapping[str, int], rules) -> dict:
  """The planner's figures as a dict (also used by tests)."""
  shape = partitioning.resolve_mesh_shape(mesh_shape, num_devices)
  mesh = AbstractMesh(tuple(shape.values()), tuple(shape), axis_types=(AxisType.Auto,) * len(shape))
  tx = trainer.make_optimizer(trainer.learning_rate_schedule())
  _, abstract_params, param_axes = trainer.abstract_params_and_axes(model_config)
  abstract_opt = jax.eval_shape(trainer.as_matrices(tx, param_axes).init, abstract_params)
  param_shapes = {partitioning.path_key(p): x.shape
                  for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}

  def per_device_bytes(tree, names_fn):
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      spec = partitioning.logical_to_mesh_spec(names_fn(path, leaf), rules, mesh)
      total += math.prod(partitioning.shard_shape(leaf.shape, spec, shape)) * leaf.dtype.itemsize
    return total

  params_bytes = per_device_bytes(
      abstract_params, lambda path, _: param_axes[partitioning.path_key(path)])
  opt_bytes = per_device_bytes(abstract_opt, partitioning.follow_params(param_axes, param_shapes))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params))
  per_example = models.training_flops_per_example(model_config, task_feature_lengths)
  tokens = sum(task_feature_lengths.values())
  return {
      'params': n_params,
      'mesh': shape,
      'training_flops_per_example': per_example,
      'training_flops_per_token': per_example / tokens,
      'training_flops_per_target_token': per_example / task_feature_lengths['targets'],
      'params_bytes_per_device': params_bytes,
      'optimizer_bytes_per_device': opt_bytes,
  }


def _gib(n: float) -> str:
  return f'{n / 2**30:,.3f} GiB'


def _macro_or(name, default):
  try:
    return gin_utils.query_macro(name)
  except gin_utils.UsageError:
    return default


def main(argv=None) -> int:
  def run(rest):
    parser = argparse.ArgumentParser(prog='python -m t5x_lite.plan')
    parser.add_argument('--num_devices', type=int, default=None,
                        help='devices to plan for (default: those visible to JAX)')
    args = parser.parse_args(rest)
    config = gin_utils.query_macro('MODEL_CONFIG')
    mesh_shape = _macro_or('MESH_SHAPE', {'data': -1, 'model': 1})
    default_lengths = {'encoder_decoder': {'inputs': 512, 'targets': 114},
                       'prefix_lm': {'inputs': 1024, 'targets': 1024}}.get(
                           config.architecture, {'targets': 2048})
    lengths = _macro_or('TASK_FEATURE_LENGTHS', default_lengths)
    num_devices = args.num_devices or jax.device_count()
    try:
      p = plan(config, mesh_shape, num_devices, lengths, partitioning.logical_axis_rules())
    except ValueError as e:
      raise gin_utils.UsageError(str(e)) from e
    print(f"params: {p['params']:,}")
    print(f"mesh: {p['mesh']} ({num_devices} devices), rules: "
          f"{gin.query_parameter('logical_axis_rules.preset') if _bound('logical_axis_rules.preset') else '2d'}")
    print(f"lengths: {dict(lengths)}")
    print(f"training FLOPs per token: {p['training_flops_per_token']:.4g} "
          f"(per example {p['training_flops_per_example']:.4g}, per target token "
          f"{p['training_flops_per_target_token']:.4g})")
    print(f"params per device: {_gib(p['params_bytes_per_device'])}")
    print(f"optimizer state per device: {_gib(p['optimizer_bytes_per_device'])}")
    print(f"params + optimizer per device: "
          f"{_gib(p['params_bytes_per_device'] + p['optimizer_bytes_per_device'])}")
  return gin_utils.run_main(run, argv)


def _bound(name: str) -> bool:
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False

