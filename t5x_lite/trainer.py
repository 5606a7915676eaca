"""Train state, loss, optimizer, the jitted train step, and per-step metrics.

The train state is a plain dict of arrays — ``{'step', 'params', 'opt_state', 'rng'}`` — so Orbax can
save and reshard it without knowing about Flax; the model graph (an ``nnx.GraphDef``) stays outside
the state and is merged with the params inside the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, NamedTuple

import gin
import jax
import jax.numpy as jnp
import optax
from etils import epath
from flax import nnx

from t5x_lite import checkpoints, gin_utils, hardware, models, partitioning, storage

TrainState = dict  # {'step': int32[], 'params': pytree, 'opt_state': pytree, 'rng': key data}


# ----------------------------------------------------------------------------- learning rate, optimizer


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


# ----------------------------------------------------------------------------- loss


@gin.configurable
def cross_entropy_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float = 1e-4, label_smoothing: float = 0.0):
  """Summed token cross-entropy with T5's z-loss (z_loss·log(Z)², keeps the softmax normaliser
  near 1) and optional label smoothing. Returns sums; the caller divides by the weight sum."""
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  ce = -jnp.sum(soft * log_probs, axis=-1)
  if label_smoothing:  # subtract the entropy of the smoothed labels so a perfect model scores 0
    ce -= -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low + 1e-20))
  zl = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {
      'cross_ent_sum': jnp.sum(ce * weights),
      'z_loss_sum': jnp.sum(zl * weights),
      'correct_sum': jnp.sum(correct * weights),
      'weight_sum': jnp.sum(weights),
  }


# ----------------------------------------------------------------------------- state and step


class StateSetup(NamedTuple):
  graphdef: Any
  tx: optax.GradientTransformation  # the optimizer, seeing params as T5X's 2-D matrices
  abstract_state: TrainState      # ShapeDtypeStructs carrying the target shardings
  shardings: TrainState           # NamedShardings, for jit in/out_shardings
  init: Callable[[], TrainState]  # allocates a fresh state directly in its shards

  def state_with_params(self, params: Any, seed: int) -> TrainState:
    """A step-0 state around `params` (already in their shards): a fresh optimizer state built in
    place, so starting from a checkpoint's weights never holds a second, initialised copy."""
    opt_state = jax.jit(self.tx.init, out_shardings=self.shardings['opt_state'])(params)
    return _step_zero(params, opt_state, seed)


def _step_zero(params: Any, opt_state: Any, seed: int) -> TrainState:
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': opt_state,
          'rng': jax.random.key_data(jax.random.key(seed))}


def setup_train_state(config: models.T5Config, tx: optax.GradientTransformation, seed: int,
                      mesh, rules) -> StateSetup:
  """Derives every array's sharding from the model's logical names and the rule table, then
  returns an init that builds params and optimizer state in place (no host copy of the weights)."""
  config = config.for_platform(mesh.devices.flat[0].platform)  # the mesh's, not the host's
  graphdef, abstract_params, param_axes = abstract_params_and_axes(config)
  tx = as_matrices(tx, param_axes)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  param_shapes = {partitioning.path_key(p): x.shape
                  for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  key = jax.random.key_data(jax.random.key(seed))
  abstract = {
      'step': jax.ShapeDtypeStruct((), jnp.int32),
      'params': abstract_params,
      'opt_state': abstract_opt,
      'rng': jax.ShapeDtypeStruct(key.shape, key.dtype),
  }
  follow = partitioning.follow_params(param_axes, param_shapes)
  shardings = {
      'step': partitioning.shardings_for(abstract['step'], lambda *_: None, mesh, rules),
      'params': partitioning.shardings_for(
          abstract_params, lambda path, _: param_axes[partitioning.path_key(path)], mesh, rules),
      'opt_state': partitioning.shardings_for(abstract_opt, follow, mesh, rules),
      'rng': partitioning.shardings_for(abstract['rng'], lambda *_: None, mesh, rules),
  }

  def init():
    model = models.build_model(config, models.eager_rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model))
    return _step_zero(params, tx.init(params), seed)

  abstract = checkpoints.abstract_with_shardings(abstract, shardings)
  return StateSetup(graphdef, tx, abstract, shardings, jax.jit(init, out_shardings=shardings))


def abstract_params_and_axes(config: models.T5Config):
  """(graphdef, abstract params as a pure dict, {path: logical names}) without allocating weights.

  Call it outside `jax.set_mesh`: under a mesh, nnx.eval_shape reads logical names as mesh axes."""
  graphdef, state = nnx.split(models.abstract_model(config))
  return graphdef, nnx.to_pure_dict(state), partitioning.param_logical_axes(state)


@gin.configurable
def make_train_step(graphdef, tx: optax.GradientTransformation, num_microbatches: int = 1,
                    loss_fn: Callable = cross_entropy_loss):
  """Returns `step(state, batch) -> (state, metrics)`; gradients are accumulated over
  `num_microbatches` slices of the batch and normalised by the total number of target tokens, so
  accumulation changes memory, not the result."""

  def summed_loss(params, batch, rng):
    model = nnx.merge(graphdef, params)
    logits = model.logits_for_batch(batch, deterministic=False, rngs=nnx.Rngs(dropout=rng))
    sums = loss_fn(logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'])
    return sums['cross_ent_sum'] + sums['z_loss_sum'], sums

  grad_fn = jax.grad(summed_loss, has_aux=True)

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
    params = state['params']
    if num_microbatches == 1:
      grads, sums = grad_fn(params, batch, rng)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]),
          batch)

      def body(carry, i):
        mb = jax.tree.map(lambda x: x[i], micro)
        g, s = grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zeros = jax.tree.map(jnp.zeros_like, (params, jax.eval_shape(
          lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng)[1])))
      (grads, sums), _ = jax.lax.scan(body, zeros, jnp.arange(num_microbatches))
    denom = jnp.maximum(sums['weight_sum'], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = (sums['cross_ent_sum'] + sums['z_loss_sum']) / denom
    grad_norm = optax.tree.norm(grads)
    # Nothing that is not finite reaches the state. A finite gradient times an infinite (or
    # overflowing) learning rate gives a finite loss and gradient norm but NaN params, so the
    # update's norm is checked too (finite => every |update| < 1.8e19, so params + update stays
    # finite; the optimizer state is finite whenever the gradients are). The update is computed
    # once for that check, fused into its reduction, and again inside the cond that applies it:
    # a cond (or select) between a materialised new state and the old one kept both alive, and
    # XLA copied every donated buffer (T5.1.1-small, AdamW, CPU: 6.80 -> 7.22 s per step).
    update_norm = optax.tree.norm(tx.update(grads, state['opt_state'], params)[0])
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)

    def apply_update(operands):
      params, opt_state, grads = operands
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, apply_update, lambda operands: operands[:2],
                                     (params, state['opt_state'], grads))
    new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state,
                 'rng': state['rng']}
    metrics = {
        'loss': loss,
        'cross_ent_loss': sums['cross_ent_sum'] / denom,
        'z_loss': sums['z_loss_sum'] / denom,
        'accuracy': sums['correct_sum'] / denom,
        'target_tokens': sums['weight_sum'],
        'grad_norm': grad_norm,
        'finite': finite,
    }
    return new_state, metrics

  return step


# ----------------------------------------------------------------------------- metrics


def jit_train_step(setup: StateSetup, batch_sharding=None, *, xla_defaults: bool = False,
                   compiler_options: dict | None = None):
  """The train step as every caller jits it: state sharded by `setup` and donated, metrics
  replicated, and the XLA options of the platform its mesh is on (`hardware.compiler_options`:
  a CPU host compiling for TPU devices must not hand them CPU flags) plus `compiler_options`,
  unless `xla_defaults`."""
  platform = setup.shardings['step'].mesh.devices.flat[0].platform
  options = None if xla_defaults else {**(hardware.compiler_options(platform) or {}),
                                       **(compiler_options or {})} or None
  return jax.jit(make_train_step(setup.graphdef, setup.tx),
                 in_shardings=(setup.shardings, batch_sharding),
                 out_shardings=(setup.shardings, None), donate_argnums=(0,),
                 compiler_options=options)


class MetricsWriter:
  """Writes each logged step to MODEL_DIR/metrics.jsonl and TensorBoard, and prints a progress line
  (step, loss, tokens/s, MFU, ETA). Only process 0 writes.

  A training run passes `resume_step` (0 when it starts fresh): rows after it belong to steps it
  will redo and are dropped. Other writers (standalone eval) leave every row in place.
  """

  def __init__(self, model_dir: str, total_steps: int, enabled: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self.total_steps = total_steps
    self._jsonl = None
    self._tb = None
    if enabled:
      epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
      self._path = os.path.join(model_dir, 'metrics.jsonl')
      if resume_step is not None:
        _drop_rows_after(self._path, resume_step)
      # A bucket has no append: its metrics.jsonl is rewritten whole, and the TensorBoard events
      # are written locally and copied up, at each logged step.
      self._rows = (storage.read_text(self._path) or '') if storage.is_url(model_dir) else None
      if self._rows is None:
        self._jsonl = open(self._path, 'a')
      self._events = contextlib.ExitStack()
      self._tb_dir = self._events.enter_context(
          storage.staged(os.path.join(model_dir, 'train'), upload=True))
      import tensorboardX  # pylint: disable=import-outside-toplevel  (it imports torch if present)
      self._tb = tensorboardX.SummaryWriter(self._tb_dir)
      self._tb_remote = os.path.join(model_dir, 'train') if self._rows is not None else None

  def write(self, step: int, metrics: Mapping[str, float], eta_s: float | None = None):
    """One row; training rows (with 'loss') also print the progress line."""
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    if self._jsonl is not None:
      self._jsonl.write(json.dumps(record) + '\n')
      self._jsonl.flush()
    else:
      self._rows += json.dumps(record) + '\n'
      storage.write_atomically(self._path, self._rows)
    for k, v in record.items():
      if k != 'step':
        self._tb.add_scalar(k, v, int(step))
    self._tb.flush()
    if self._tb_remote:
      storage.copy_tree(self._tb_dir, self._tb_remote)
    if 'loss' not in metrics:
      print(f'step {step:>6d}/{self.total_steps} | '
            + ' | '.join(f'{k} {v:.4g}' for k, v in metrics.items()), flush=True)
      return
    eta = '' if eta_s is None else f' | ETA {format_seconds(eta_s)}'
    mfu = f" | MFU {metrics['mfu']:.1%}" if 'mfu' in metrics else ''
    print(f"step {step:>6d}/{self.total_steps} | loss {metrics['loss']:.4f} | "
          f"acc {metrics['accuracy']:.3f} | lr {metrics['learning_rate']:.2e} | "
          f"{metrics.get('tokens_per_s', 0.0):,.0f} tokens/s{mfu}{eta}", flush=True)

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()
      self._events.close()  # a bucket's events: the last copy up


def _drop_rows_after(path: str, step: int) -> None:
  """Rows a killed run logged after its last checkpoint are logged again on resume: drop them
  first, so metrics.jsonl has one row per step."""
  text = storage.read_text(path)
  if text is None:
    return
  lines = text.splitlines(keepends=True)
  keep = [line for line in lines if line.strip() and _row_step(line) <= step]
  if len(keep) != len(lines):
    storage.write_atomically(path, ''.join(keep))


def _row_step(line: str) -> float:
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return float('inf')  # a torn last line from a killed writer


def format_seconds(s: float) -> str:
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f'{h}:{m:02d}:{sec:02d}' if h else f'{m}:{sec:02d}'


class StepTimer:
  """Throughput over the steps since the last report, excluding the first (compile) step."""

  def __init__(self):
    self._t = None
    self._steps = 0

  def start(self):
    self._t = time.perf_counter()
    self._steps = 0

  def tick(self):
    self._steps += 1

  def rate(self) -> tuple[float, int]:
    """(seconds per step, steps) since start; restarts the window."""
    if self._t is None or self._steps == 0:
      return float('nan'), 0
    now = time.perf_counter()
    out = ((now - self._t) / self._steps, self._steps)
    self._t, self._steps = now, 0
    return out
