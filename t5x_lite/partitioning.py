"""Mesh creation and logical→mesh axis rules.

Model code only *names* axes (``('batch', 'length', 'embed')``); a short table of rules, bound in gin,
decides which mesh axis (if any) each logical axis is split over. Data parallel, FSDP, 2-D
(data × model) tensor parallelism, FSDP × TP and multi-slice HSDP are different tables, not
different model code (T5X's design).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import gin
import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from t5x_lite.gin_utils import UsageError

LogicalRules = Sequence[tuple[str, Any]]


# Each rule maps a logical axis to a mesh axis (a name, a tuple of names, or None = replicated).
# When two logical axes of one array map to the same mesh axis, the first wins and the second is
# replicated (a mesh axis can shard only one dimension of an array).
DATA_PARALLEL_RULES: LogicalRules = (
    ('batch', 'data'),
)
FSDP_RULES: LogicalRules = (
    ('batch', 'data'),
    ('embed', 'data'),
)
TWO_D_RULES: LogicalRules = (
    ('batch', 'data'),
    ('vocab', 'model'),
    ('mlp', 'model'),
    ('heads', 'model'),
)
# FSDP within each slice, data parallel across slices: the batch is split over both axes, weights
# only over 'data', so the one collective crossing the data-centre network ('replica', the slow
# axis) is the gradient all-reduce. Mesh e.g. {'replica': num_slices, 'data': -1}.
HSDP_RULES: LogicalRules = (
    ('batch', ('replica', 'data')),
    ('embed', 'data'),
)
# FSDP over 'data' times tensor parallelism over 'model' (MaxText's fsdp + tensor axes).
FSDP_TP_RULES: LogicalRules = (
    ('batch', 'data'),
    ('embed', 'data'),
    ('vocab', 'model'),
    ('mlp', 'model'),
    ('heads', 'model'),
)
PRESETS = {'data_parallel': DATA_PARALLEL_RULES, 'fsdp': FSDP_RULES, '2d': TWO_D_RULES,
           'hsdp': HSDP_RULES, 'fsdp_tp': FSDP_TP_RULES}


@gin.configurable
def logical_axis_rules(preset: str = '2d', extra_rules: LogicalRules = ()) -> tuple:
  """The rule table for `preset`, with `extra_rules` taking precedence."""
  if preset not in PRESETS:
    raise UsageError(
        f'Unknown sharding preset {preset!r}; choose one of {sorted(PRESETS)} '
        '(gin: logical_axis_rules.preset).')
  return tuple(extra_rules) + tuple(PRESETS[preset])


def resolve_mesh_shape(mesh_shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills a single -1 entry with "the rest of the devices" and checks the product."""
  shape = dict(mesh_shape)
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in shape.values()):
    raise ValueError(f'MESH_SHAPE {shape}: every size must be an int (-1 for the one axis that '
                     "takes the rest), e.g. {'data': -1, 'model': 2}.")
  unknown = [k for k, v in shape.items() if v == -1]
  if len(unknown) > 1:
    raise ValueError(f'MESH_SHAPE {shape} has more than one -1 entry; at most one axis can take '
                     '"the rest" of the devices: give all but one axis a size.')
  known = math.prod(v for v in shape.values() if v != -1)
  if any(v == 0 or v < -1 for v in shape.values()):
    raise ValueError(f'MESH_SHAPE {shape} has a size that is 0 or below -1; set --gin.MESH_SHAPE '
                     'with positive sizes, or -1 for the one axis that takes "the rest".')
  if unknown:
    if num_devices % known:
      raise ValueError(f'MESH_SHAPE {shape}: {num_devices} devices are not divisible by {known}.')
    shape[unknown[0]] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ValueError(
        f'MESH_SHAPE {dict(mesh_shape)} needs {math.prod(shape.values())} devices but '
        f'{num_devices} are available; set --gin.MESH_SHAPE so the sizes multiply to {num_devices} '
        "(use -1 for one axis to take the rest, e.g. {'data': -1, 'model': 1}).")
  return shape


def create_mesh(mesh_shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over `devices` (all by default) with Auto axes (Explicit breaks sharded contractions).

  Accelerators are laid out by `jax.experimental.mesh_utils` from their physical coordinates, so
  each mesh axis runs along torus / NVLink neighbours. Devices in several TPU slices (or GPU
  processes joined over the network) get a hybrid mesh: the slices split the 'replica' axis (hsdp),
  or the first axis when there is none, and every other axis stays within a slice.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  sizes = tuple(shape.values())
  slices = len({getattr(d, 'slice_index', 0) for d in devices})
  if devices[0].platform == 'cpu':
    device_array = np.asarray(devices).reshape(sizes)
  elif slices > 1:
    axis = list(shape).index('replica') if 'replica' in shape else 0
    if sizes[axis] % slices:
      raise UsageError(
          f'MESH_SHAPE {dict(mesh_shape)}: the devices span {slices} slices, which must split '
          f'axis {list(shape)[axis]!r} ({sizes[axis]}); make it a multiple of {slices}, e.g. '
          f"{{'replica': {slices}, 'data': -1}} with the hsdp preset.")
    dcn = tuple(slices if i == axis else 1 for i in range(len(sizes)))
    ici = tuple(n // m for n, m in zip(sizes, dcn))
    device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                        allow_split_physical_axes=True)
  else:
    device_array = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
  return Mesh(device_array, tuple(shape), axis_types=(AxisType.Auto,) * len(shape))


def check_mesh_axes(mesh_shape: Mapping[str, int], rules: LogicalRules) -> None:
  """Every mesh axis is one that `rules` or a preset names, or a UsageError says which is not.

  Model code never names mesh axes, so arrays are only copied across an axis no rule maps to: a
  misspelt axis ('dta') would silently train without the sharding it was meant for. An axis that a
  preset names but `rules` leave unused ('model' under 'data_parallel') is allowed: that
  replication is a layout one may want to compare against (bench/sharding_equivalence.py).
  """
  known = {a for table in (rules, *PRESETS.values()) for _, target in table
           for a in ((target,) if isinstance(target, str) else tuple(target or ()))}
  for axis in mesh_shape:
    if axis not in known:
      raise UsageError(
          f'MESH_SHAPE axis {axis!r} is not one logical_axis_rules shard over (they know '
          f'{sorted(known)}), so arrays would only be copied across it. Fix its name, or add rules '
          'for it (gin: logical_axis_rules.extra_rules).')


def logical_to_mesh_spec(logical_axes: Sequence[str | None] | None,
                         rules: LogicalRules | None = None,
                         mesh: Mesh | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec under `rules` (default: the active rules).

  Mesh axes of size 1 or absent from `mesh` are dropped, and a mesh axis is used at most once.
  """
  if logical_axes is None:
    return PartitionSpec()
  rules = flax_spmd.get_logical_axis_rules() if rules is None else rules
  table: dict[str, Any] = {}
  for name, target in rules:
    table.setdefault(name, target)
  mesh_sizes = dict(mesh.shape) if mesh is not None else None
  used: set[str] = set()
  spec = []
  for name in logical_axes:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    if mesh_sizes is not None:
      axes = tuple(a for a in axes if mesh_sizes.get(a, 1) > 1)
    if not axes or used.intersection(axes):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical names; a no-op without a mesh or rules."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = flax_spmd.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x
  spec = logical_to_mesh_spec(logical_axes, rules, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def path_key(path) -> tuple[str, ...]:
  """A pytree key path as plain strings, comparable across params and optimizer state."""
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      out.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(str(k.idx))
    else:
      out.append(str(k))
  return tuple(out)


def param_logical_axes(state: nnx.State) -> dict[tuple[str, ...], tuple | None]:
  """Each variable's logical axis names (from `nnx.with_partitioning`), keyed by its path."""
  out = {}
  for path, var in nnx.to_flat_state(state):
    meta = var.get_metadata() if isinstance(var, nnx.Variable) else {}
    names = meta.get('out_sharding') or meta.get('sharding_names')
    out[tuple(str(p) for p in path)] = tuple(names) if names else None
  return out


def shardings_for(abstract_tree: Any, names_fn, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for every leaf of `abstract_tree`; `names_fn(path, leaf)` gives logical names.

  A dimension that its mesh axes do not divide (2 heads over model=4, say) is replicated, with a
  warning, rather than failing inside jit.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree)
  out = []
  for path, leaf in leaves:
    spec = logical_to_mesh_spec(names_fn(path, leaf), rules, mesh)
    dims = list(spec) + [None] * (len(leaf.shape) - len(spec))
    for i, axes in enumerate(dims):
      size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
      if axes is not None and leaf.shape[i] % size:
        print(f'WARNING: {"/".join(path_key(path))} dim {i} ({leaf.shape[i]}) is not divisible '
              f'by mesh axes {axes} ({size}); replicating it.', flush=True)
        dims[i] = None
    out.append(NamedSharding(mesh, PartitionSpec(*dims)))
  return treedef.unflatten(out)


def shard_shape(shape: Sequence[int], spec: PartitionSpec, mesh_shape: Mapping[str, int]):
  """The per-device shape of an array of `shape` laid out by `spec` (ceil division)."""
  out = list(shape)
  for i, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      continue
    n = math.prod(mesh_shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    out[i] = -(-shape[i] // n)
  return tuple(out)


def process_batch_rows(sharding: NamedSharding, global_batch_size: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch laid out by `sharding` that this process's devices
  hold: what this host must load. Rows replicated across processes are loaded by each of them."""
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
    rows = index[0]
    starts.append(rows.start or 0)
    stops.append(global_batch_size if rows.stop is None else rows.stop)
  start, stop = min(starts), max(stops)
  held = set()
  for a, b in zip(starts, stops):
    held.update(range(a, b))
  if len(held) != stop - start:
    raise ValueError(f'this process holds non-contiguous batch rows {sorted(held)}; order the '
                     'mesh so that each process owns a contiguous block of the data axis.')
  return start, stop
