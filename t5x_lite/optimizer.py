"""The optimizer and its learning-rate schedule, as T5/T5X configure them (gin: `make_optimizer.*`,
`learning_rate_schedule.*`), and the 2-D matrix view Adafactor factors each parameter by."""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
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


def as_matrices(tx: optax.GradientTransformation,
                param_axes: dict[tuple[str, ...], tuple | None]) -> optax.GradientTransformation:
  """Runs `tx` on each parameter viewed as the 2-D matrix T5X stores: 'embed' dims as rows, the
  rest merged as columns (attention kernels [embed, heads, kv] become [embed, heads·kv]).

  Adafactor factors a matrix's second moment into row and column statistics; on the 3-D view it
  would factor the wrong pair (and skip d_kv=64 < 128 entirely), so T5's optimizer needs this view.
  Elementwise optimizers (AdamW) are unchanged by it. A scanned parameter (leading 'layers' axis)
  is handed over as a list of its layers' matrices: Adafactor's parameter scale and update
  clipping are per-matrix RMS figures, so the optimizer then steps exactly as on unrolled layers.
  """

  def matrix(names, x):
    if x.ndim < 3 or 'embed' not in names:
      return x
    i = names.index('embed')
    return (x.reshape(x.shape[0], -1) if i == 0 else
            x.reshape(-1, x.shape[-1]) if i == x.ndim - 1 else x)

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
