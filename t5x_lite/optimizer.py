"""The optimizer and its learning-rate schedule, as T5/T5X configure them (gin: `make_optimizer.*`,
`learning_rate_schedule.*`), the 2-D matrix view Adafactor factors each parameter by, and the
logical axes of the optimizer's state, which it declares as T5X's Adafactor does."""

from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5x_lite import gin_utils, partitioning


@gin.configurable
def learning_rate_schedule(kind: str = 'rsqrt', base_learning_rate: float = 1.0,
                           warmup_steps: int = 10_000, total_steps: int | None = None,
                           final_fraction: float = 0.0) -> optax.Schedule:
  """T5's default is 'rsqrt': base / sqrt(max(step, warmup)), i.e. flat at 0.01 for 10k steps
  (warmup_steps=0 means no flat start: step 0 uses step 1's rate rather than an infinite one).

  'constant' is base; 'linear_warmup_cosine' (AdamW-style) warms up linearly then decays to
  final_fraction·base at total_steps.
  """
  gin_utils.check_number('learning_rate_schedule.base_learning_rate', base_learning_rate, minimum=0)
  gin_utils.check_int('learning_rate_schedule.warmup_steps', warmup_steps, minimum=0)
  if kind == 'rsqrt':
    return lambda step: base_learning_rate / jnp.sqrt(jnp.maximum(step, max(warmup_steps, 1)))
  if kind == 'constant':
    return optax.constant_schedule(base_learning_rate)
  if kind == 'linear_warmup_cosine':
    if not total_steps:
      raise gin_utils.UsageError(
          'learning_rate_schedule.total_steps must be set for linear_warmup_cosine '
          '(e.g. --gin.learning_rate_schedule.total_steps=%TRAIN_STEPS).')
    if total_steps <= warmup_steps:
      raise gin_utils.UsageError(
          f'learning_rate_schedule.total_steps ({total_steps}) must be larger than warmup_steps '
          f'({warmup_steps}) for linear_warmup_cosine; lower '
          '--gin.learning_rate_schedule.warmup_steps or train longer.')
    return optax.warmup_cosine_decay_schedule(0.0, base_learning_rate, warmup_steps, total_steps,
                                              base_learning_rate * final_fraction)
  raise gin_utils.UsageError(f"Unknown learning_rate_schedule.kind {kind!r}; choose 'rsqrt', "
                             "'constant' or 'linear_warmup_cosine'.")


@gin.configurable
def make_optimizer(schedule: optax.Schedule, name: str = 'adafactor',
                   weight_decay: float = 0.0, grad_clip_norm: float | None = None,
                   adafactor_decay_rate: float = 0.8, adam_b1: float = 0.9, adam_b2: float = 0.95,
                   ) -> optax.GradientTransformation:
  """Adafactor as T5/T5X configure it (factored, decay 0.8, update clipping 1.0, parameter-scaled
  updates), or AdamW. Optional global-norm gradient clipping."""
  if name == 'adafactor':
    tx = optax.adafactor(schedule, decay_rate=adafactor_decay_rate, clipping_threshold=1.0,
                         multiply_by_parameter_scale=True,
                         weight_decay_rate=weight_decay or None)
  elif name == 'adamw':
    tx = optax.adamw(schedule, b1=adam_b1, b2=adam_b2, weight_decay=weight_decay)
  else:
    raise gin_utils.UsageError(
        f"Unknown make_optimizer.name {name!r}; choose 'adafactor' or 'adamw'.")
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def matrix_view(names: tuple, shape: tuple) -> tuple[tuple, tuple]:
  """(names, shape) of the 2-D matrix T5X stores a parameter as: 'embed' dims as rows, the rest
  merged as columns (attention kernels [embed, heads, kv] become [embed, heads·kv]). A merged
  dimension takes its major dimension's name, which splits it into the same blocks."""
  if len(shape) < 3 or 'embed' not in names:
    return tuple(names), tuple(shape)
  i = names.index('embed')
  if i == 0:
    return (names[0], names[1]), (shape[0], math.prod(shape[1:]))
  if i == len(shape) - 1:
    return (names[0], names[-1]), (math.prod(shape[:-1]), shape[-1])
  return tuple(names), tuple(shape)


def _param_of(param_axes: dict, keys: tuple) -> tuple[int, tuple, bool] | None:
  """(where it starts in `keys`, its path, whether `keys` is one layer of it) of the parameter an
  optimizer-state path ends in (as_matrices hands a scanned parameter over layer by layer: its
  path plus the layer's index), or None."""
  for start in range(len(keys)):
    if keys[start:] in param_axes:
      return start, keys[start:], False
    stacked = keys[start:-1]
    if keys[-1].isdigit() and (param_axes.get(stacked) or ())[:1] == ('layers',):
      return start, stacked, True
  return None


def as_matrices(tx: optax.GradientTransformation,
                param_axes: dict[tuple[str, ...], tuple | None]) -> optax.GradientTransformation:
  """Runs `tx` on each parameter viewed as `matrix_view` says.

  Adafactor factors a matrix's second moment into row and column statistics; on the 3-D view it
  would factor the wrong pair (and skip d_kv=64 < 128 entirely), so T5's optimizer needs this view.
  Elementwise optimizers (AdamW) are unchanged by it. A scanned parameter (leading 'layers' axis)
  is handed over as a list of its layers' matrices: Adafactor's parameter scale and update
  clipping are per-matrix RMS figures, so the optimizer then steps exactly as on unrolled layers.
  """

  def matrix(names, x):
    return x.reshape(matrix_view(names, x.shape)[1]) if names else x

  def view(path, x):
    names = param_axes.get(partitioning.path_key(path)) or ()
    if names[:1] == ('layers',):
      return [matrix(names[1:], layer) for layer in x]
    return matrix(names, x)

  def to_views(tree):
    return jax.tree_util.tree_map_with_path(view, tree)

  def init(params):
    return tx.init(to_views(params))

  def update(updates, state, params=None):
    new, state = tx.update(to_views(updates), state,
                           None if params is None else to_views(params))
    back = lambda u, n: (jnp.stack([m.reshape(u.shape[1:]) for m in n]) if isinstance(n, list)
                         else n.reshape(u.shape))
    return jax.tree.map(back, updates, new), state

  return optax.GradientTransformation(init, update)


def state_axes(param_axes: dict[tuple[str, ...], tuple | None], params):
  """`names(path, leaf)`: the logical axes of a leaf of `as_matrices(make_optimizer(...))`'s state
  over `params` (arrays or their abstract shapes).

  A leaf belongs to the parameter whose path ends its own; the field that holds it says which of
  that parameter's view dimensions it keeps. Moments (AdamW's mu and nu, Adafactor's unfactored
  v) keep all. Adafactor's factored second moment (optax's scale_by_factored_rms) keeps v_row =
  the view less its largest dimension and v_col = less its second largest, in np.argsort's order
  (so a square matrix's row statistics take the row's name, its column statistics the column's,
  which matching by shape cannot tell apart); both are (1,) placeholders when the parameter is
  not factored. Counters and placeholders are replicated. A leaf its field does not explain is an
  error, not a guess: an optax upgrade that changes the state fails here, not in the layout.
  """

  param_shapes = {partitioning.path_key(p): tuple(x.shape)
                  for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

  def names(path, leaf):
    keys = partitioning.path_key(path)
    found = _param_of(param_axes, keys)
    if found is None or not param_axes[found[1]]:
      return None  # the step count, a schedule's state; or a parameter without logical names
    start, param, layer = found
    skip = 1 if layer else 0  # one layer of a scanned parameter: its names less 'layers'
    view_names, view_shape = matrix_view(param_axes[param][skip:], param_shapes[param][skip:])
    field = keys[start - 1] if start else ''
    leaf_shape = tuple(leaf.shape)
    if field in ('v_row', 'v_col') and len(view_shape) >= 2 and leaf_shape != (1,):
      order = np.argsort(view_shape)
      drop = int(order[-1] if field == 'v_row' else order[-2])
      keep = view_shape[:drop] + view_shape[drop + 1:]
      if leaf_shape != keep:
        raise ValueError(f'optimizer state {"/".join(keys)}: shape {leaf_shape}, expected {keep} '
                         f'({field} of a {view_shape} matrix)')
      return view_names[:drop] + view_names[drop + 1:]
    if leaf_shape == view_shape:
      return view_names
    if leaf_shape in ((), (1,)):
      return None
    raise ValueError(f'optimizer state {"/".join(keys)}: shape {leaf_shape} matches neither its '
                     f'parameter\'s view {view_shape} nor a factored row or column of it')

  return names
