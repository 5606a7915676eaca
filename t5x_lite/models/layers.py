"""Building blocks of T5-style Transformers: norm, embedding, projections, MLP, attention.

Shared by the encoder-decoder in t5.py and the decoder-only / prefix-LM models built from the same
parts. Conventions, all as in T5X:

* Every parameter names its logical axes (`('embed', 'mlp')`, ...) via `nnx.with_partitioning`;
  a rule table in t5x_lite/partitioning.py maps them to mesh axes. Parameters are created
  unsharded (`eager_sharding=False`): the trainer decides the layout, the model only names axes.
* Parameters are stored in `param_dtype` and cast to the compute `dtype` where they are used;
  norms and softmax run in float32.
* No biases anywhere; no 1/sqrt(d_kv) in attention (folded into the query initialiser).
* Modules hold no RNG state: dropout takes `rngs` at call time (`deterministic=False`).

The numerics (bucketing, masks, attention) are pure functions so they can be tested alone.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.models import cpu_kernels
from t5x_lite.models.config import MASKED_LOGIT, T5Config
from t5x_lite.partitioning import with_logical_constraint

Initializer = Callable[..., jax.Array]

# Logical axes of per-head activations: queries, keys, values.
KV_AXES = ('batch', 'length', 'heads', 'kv')
# KV caches keep heads before length: a decode step's one-query attention then reads them without
# transposing the whole cache (XLA folds the swap in `read_kv_cache` into the dot), which on CPU
# makes cross-attention over a 512-token input about ten times faster.
KV_CACHE_AXES = ('batch', 'heads', 'length', 'kv')


ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': jax.nn.relu,
    'gelu': functools.partial(jax.nn.gelu, approximate=True),  # HF `gelu_new`, as in T5.1.1.
    'silu': jax.nn.silu,
    'linear': lambda x: x,
}

# T5X initialisers. fan_in is computed over the contracted axes of each (possibly 3-D) kernel.
embedding_init = nnx.initializers.normal(stddev=1.0)


def fan_in_init(num_in_axes: int, num_out_axes: int, distribution: str, scale: float = 1.0):
  """variance_scaling(scale, 'fan_in') where fan_in = product of the first `num_in_axes` dims."""
  return nnx.initializers.variance_scaling(
      scale, 'fan_in', distribution,
      in_axis=tuple(range(num_in_axes)),
      out_axis=tuple(range(num_in_axes, num_in_axes + num_out_axes)))


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
               logical_axes: Sequence[str], dtype) -> nnx.Param:
  """An nnx.Param initialised by `init` and annotated with its logical axis names."""
  # Draw the key eagerly when `rngs` is concrete. Inside a trace (eval_shape, jitted init) a
  # staged RNG-counter update makes flax read the tracer's `.sharding`, whose error message walks
  # the whole trace, so tracing the init would grow quadratically with depth.
  with jax.ensure_compile_time_eval():
    key = rngs.params()
  init = nnx.with_partitioning(init, tuple(logical_axes), eager_sharding=False)
  return nnx.Param(init(key, tuple(shape), dtype))


# ---------------------------------------------------------------------------------------------
# Pure numerics.
# ---------------------------------------------------------------------------------------------

def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's bucket index for `relative_position = key_position - query_position`.

  Bidirectional (encoder): half the buckets are for keys after the query, half for keys at or
  before it. Within a half, the first half of its buckets are exact offsets 0, 1, ...; the rest
  cover offsets up to `max_distance` with logarithmically growing widths, and every offset beyond
  `max_distance` shares the last bucket. Unidirectional (decoder): future keys map to bucket 0
  (they are masked anyway) and all buckets describe the past.
  """
  n = -relative_position  # How far the key lies in the past.
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # T5X adds float32 eps inside the log to guard exact powers against rounding down.
  log_ratio = jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
  log_bucket = max_exact + (log_ratio / np.log(max_distance / max_exact)
                            * (num_buckets - max_exact)).astype(n.dtype)
  log_bucket = jnp.minimum(log_bucket, num_buckets - 1)
  return bucket + jnp.where(is_small, n, log_bucket)


def attention_mask(query_segment_ids: jax.Array, key_segment_ids: jax.Array, *,
                   causal: bool = False,
                   bidirectional_prefix: jax.Array | None = None) -> jax.Array:
  """Boolean mask [batch, 1, q_len, k_len]: True where a query may attend to a key.

  A query sees keys of its own segment (packing: no attention across examples); segment id 0 is
  padding and is never seen. `causal` also hides keys after the query (positions are array
  indices, which within one packed segment orders tokens correctly). `bidirectional_prefix`
  [batch, len] (self-attention only; seqio's `decoder_causal_attention`) lifts causality between
  two positions that are both marked 1: the prefix-LM inputs see each other in full (T5X's
  `inputs_bidirectional_attention`), while the segment test still separates packed examples.
  """
  same_segment = ((query_segment_ids[:, :, None] == key_segment_ids[:, None, :])
                  & (key_segment_ids[:, None, :] > 0))
  mask = same_segment
  if causal:
    q_len, k_len = query_segment_ids.shape[1], key_segment_ids.shape[1]
    visible = jnp.arange(q_len)[:, None] >= jnp.arange(k_len)[None, :]
    if bidirectional_prefix is not None:
      prefix = bidirectional_prefix > 0
      visible = visible | (prefix[:, :, None] & prefix[:, None, :])
    mask = mask & visible
  return mask[:, None, :, :]


def decoding_attention_mask(query_positions: jax.Array, key_length: int,
                            prefix_lengths: jax.Array | None = None) -> jax.Array:
  """Boolean mask [batch, 1, q, key_length] for queries at `query_positions` [batch, q] over a
  KV cache whose slot k holds position k.

  The cached counterpart of `attention_mask(..., causal=True)` for one unpacked row per batch
  entry: a query sees the slots at or before its position (later slots are empty or stale).
  `prefix_lengths` [batch] (prefix LM) lifts causality between positions below it, which is what
  `bidirectional_prefix` = [1] * prefix_length + [0] * ... means in the uncached mask.
  """
  key_positions = jnp.arange(key_length)[None, :]
  visible = key_positions[:, None, :] <= query_positions[:, :, None]
  if prefix_lengths is not None:
    query_in_prefix = query_positions < prefix_lengths[:, None]  # [batch, q]
    key_in_prefix = key_positions < prefix_lengths[:, None]      # [batch, key_length]
    visible = visible | (query_in_prefix[:, :, None] & key_in_prefix[:, None, :])
  return visible[:, None, :, :]


def write_cache(buffer: jax.Array, update: jax.Array, index: jax.Array,
                axis: int = 1) -> jax.Array:
  """`buffer` [batch, ...] with `update` written along `axis` from row b's slot `index[b]` on
  (rows of a batch may stand at different positions)."""
  write = lambda buf, upd, i: jax.lax.dynamic_update_slice_in_dim(buf, upd, i, axis=axis - 1)
  return jax.vmap(write)(buffer, update.astype(buffer.dtype), index)


def kv_cache(key: jax.Array, value: jax.Array) -> dict[str, jax.Array]:
  """A cache entry {'key', 'value'} holding key/value [b, len, heads, d_kv] (stored heads-first)."""
  return {name: with_logical_constraint(jnp.swapaxes(x, 1, 2), KV_CACHE_AXES)
          for name, x in (('key', key), ('value', value))}


def read_kv_cache(cache: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(key, value) [b, len, heads, d_kv] of a cache entry, as attention takes them."""
  return jnp.swapaxes(cache['key'], 1, 2), jnp.swapaxes(cache['value'], 1, 2)


def write_kv_cache(cache: dict[str, jax.Array], key: jax.Array, value: jax.Array,
                   index: jax.Array) -> dict[str, jax.Array]:
  """The entry with key/value [b, q, heads, d_kv] written at positions index[b] + [0, q)."""
  new = kv_cache(key, value)
  return {name: with_logical_constraint(write_cache(cache[name], new[name], index, axis=2),
                                        KV_CACHE_AXES)
          for name in ('key', 'value')}


def dense(x: jax.Array, kernel: jax.Array, num_in: int, out_dtype=None,
          kernels: str = 'xla') -> jax.Array:
  """x [..., *in] · kernel [*in, *out] -> [..., *out], contracting the `num_in` trailing axes."""
  if kernels == 'cpu':
    return cpu_kernels.dense(x, kernel, num_in, out_dtype)
  contract = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))
  return jax.lax.dot_general(x, kernel, (contract, ((), ())), preferred_element_type=out_dtype)


def bias_from_buckets(table: jax.Array, buckets: jax.Array, kernels: str = 'xla') -> jax.Array:
  """table [num_buckets, heads] gathered at buckets [..., q, k] -> [..., heads, q, k]."""
  if kernels == 'cpu':
    return cpu_kernels.bias_from_buckets(table, buckets)
  return jnp.moveaxis(jnp.take(table, buckets, axis=0), -1, -3)


def cudnn_unsupported(query: jax.Array, key: jax.Array) -> str | None:
  """Why cuDNN's fused attention (as `jax.nn.dot_product_attention` calls it) cannot run this
  call, or None. Its limits: bfloat16/float16 inputs, head size a multiple of 8 up to 128 (256
  from Hopper on, which is only known on the GPU itself), and even lengths when there is a bias
  to differentiate (T5 always has one: the relative positions, or the mask turned into one)."""
  if query.dtype not in (jnp.bfloat16, jnp.float16):
    return f'{query.dtype} compute (cuDNN takes bfloat16 or float16)'
  if query.shape[-1] % 8 or query.shape[-1] > 128:
    return f'head size {query.shape[-1]} (cuDNN takes a multiple of 8, at most 128)'
  if query.shape[1] % 2 or key.shape[1] % 2:
    return f'odd length {query.shape[1]}x{key.shape[1]} (cuDNN takes even lengths with a bias)'
  return None


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None, bias: jax.Array | None = None,
                          kernels: str = 'xla') -> jax.Array:
  """softmax(q·k + bias, masked) · v, unscaled (T5), logits and softmax in float32.

  query [b, q, h, d], key/value [b, k, h, d], mask bool broadcastable to [b, 1, q, k], bias
  broadcastable to [b, h, q, k]. Returns [b, q, h, d] in the query's dtype.

  'cudnn' runs cuDNN's fused kernel (no [b, h, q, k] logits or weights kept for the backward
  pass); jax turns the mask into an additive bias of that size in the compute dtype first, so
  packed or padded batches still hold one such array (half the float32 logits' bytes).
  """
  if kernels == 'cpu':
    return cpu_kernels.dot_product_attention(query, key, value, mask, bias)
  if kernels == 'cudnn' and cudnn_unsupported(query, key) is None:
    return jax.nn.dot_product_attention(
        query, key, value, bias=None if bias is None else bias.astype(query.dtype), mask=mask,
        scale=1.0, implementation='cudnn')
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, MASKED_LOGIT)
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value).astype(query.dtype)

# ---------------------------------------------------------------------------------------------
# Modules.
# ---------------------------------------------------------------------------------------------

class RMSNorm(nnx.Module):
  """T5's layer norm: x / sqrt(mean(x²) + eps) * scale; no mean subtraction, no bias."""

  def __init__(self, features: int, *, epsilon: float = 1e-6, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.scale = make_param(rngs, nnx.initializers.ones, (features,), ('embed',), param_dtype)
    self.epsilon = epsilon
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return y.astype(self.dtype) * self.scale[...].astype(self.dtype)


class Embed(nnx.Module):
  """Token embedding [vocab, embed]; `attend` reuses it as a (tied) output layer."""

  def __init__(self, num_embeddings: int, features: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.embedding = make_param(rngs, embedding_init, (num_embeddings, features),
                                ('vocab', 'embed'), param_dtype)
    self.dtype = dtype

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """x @ embedding.T, accumulated and returned in float32."""
    return jnp.einsum('...d,vd->...v', x, self.embedding[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)


class DenseGeneral(nnx.Module):
  """Bias-free projection contracting the trailing `len(in_features)` axes of the input.

  The kernel is shaped `in_features + out_features` (e.g. [d_model, heads, d_kv] for a query),
  which keeps heads a named axis for sharding and makes HF conversion a reshape.
  """

  def __init__(self, in_features: Sequence[int], out_features: Sequence[int],
               logical_axes: Sequence[str], *, kernel_init: Initializer, dtype=jnp.float32,
               param_dtype=jnp.float32, kernels: str = 'xla', rngs: nnx.Rngs):
    self.kernel = make_param(rngs, kernel_init, tuple(in_features) + tuple(out_features),
                             logical_axes, param_dtype)
    self.num_in = len(in_features)
    self.dtype = dtype
    self.kernels = kernels

  def __call__(self, x: jax.Array, out_dtype=None) -> jax.Array:
    return dense(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.num_in,
                 None if out_dtype is None else jnp.dtype(out_dtype), self.kernels)


class MLP(nnx.Module):
  """T5 feed-forward: `wo(act(wi(x)))`, or gated `wo(act_0(wi_0 x) * act_1(wi_1 x))` (T5.1.1).

  Dropout (T5X's placement) is applied to the hidden activations, before `wo`.
  """

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    cfg = config
    self.activations = tuple(cfg.mlp_activations)
    kernel_init = fan_in_init(1, 1, 'truncated_normal')
    n = len(self.activations)
    self.wi_names = ('wi',) if n == 1 else tuple(f'wi_{i}' for i in range(n))
    for name in self.wi_names:
      setattr(self, name, DenseGeneral((cfg.d_model,), (cfg.d_ff,), ('embed', 'mlp'),
                                       kernel_init=kernel_init, dtype=cfg.compute_dtype,
                                       param_dtype=cfg.weight_dtype,
                                       kernels=cfg.dense_kernels, rngs=rngs))
    self.wo = DenseGeneral((cfg.d_ff,), (cfg.d_model,), ('mlp', 'embed'),
                           kernel_init=kernel_init, dtype=cfg.compute_dtype,
                           param_dtype=cfg.weight_dtype, kernels=cfg.dense_kernels, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    hidden = None
    for name, act in zip(self.wi_names, self.activations):
      h = ACTIVATION_FNS[act](getattr(self, name)(x))
      hidden = h if hidden is None else hidden * h
    hidden = with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    hidden = self.dropout(hidden, deterministic=deterministic, rngs=rngs)
    return self.wo(hidden)


class RelativePositionBias(nnx.Module):
  """T5's learned per-head scalar bias for each relative-position bucket, table [buckets, heads].

  One table per stack, shared by all its layers (T5 v1.0 and v1.1; HF stores it in block 0).
  Positions are array indices: with packing, the offset between two tokens of the same segment is
  the same as with their in-segment positions, and cross-segment pairs are masked anyway.
  """

  def __init__(self, config: T5Config, *, bidirectional: bool, rngs: nnx.Rngs):
    # T5X's default embed init on a [buckets, heads] table: stddev 1/sqrt(num_heads).
    init = nnx.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=1, out_axis=0)
    self.embedding = make_param(rngs, init,
                                (config.relative_attention_num_buckets, config.num_heads),
                                ('relpos_buckets', 'heads'), config.weight_dtype)
    self.bidirectional = bidirectional
    self.num_buckets = config.relative_attention_num_buckets
    self.max_distance = config.relative_attention_max_distance
    self.kernels = config.resolved_kernels

  def __call__(self, query_length: int, key_length: int,
               query_offset: int | jax.Array = 0) -> jax.Array:
    """Bias [1, heads, query_length, key_length] in float32.

    Decoding passes the position of the first query as `query_offset`: an int, or one per row
    [batch] (rows at different positions), which gives a bias [batch, heads, q, k].
    """
    offset = jnp.asarray(query_offset)
    query_position = jnp.arange(query_length)[:, None] + offset[..., None, None]
    key_position = jnp.arange(key_length)[None, :]
    buckets = relative_position_bucket(key_position - query_position,
                                       bidirectional=self.bidirectional,
                                       num_buckets=self.num_buckets,
                                       max_distance=self.max_distance)
    bias = bias_from_buckets(self.embedding[...].astype(jnp.float32), buckets, self.kernels)
    return bias if offset.ndim else bias[None]



class MultiHeadAttention(nnx.Module):
  """Multi-head attention with T5's projections `query, key, value, out` (no biases).

  The query kernel is initialised with variance 1/(d_model·d_kv) instead of 1/d_model: that folds
  the usual 1/sqrt(d_kv) logit scaling into the initialisation (T5/T5X), so the logits are never
  scaled at run time and pretrained T5 weights work unchanged.
  """

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    cfg = config
    common = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                  kernels=cfg.dense_kernels, rngs=rngs)
    self.kernels = cfg.resolved_kernels
    heads = (cfg.num_heads, cfg.d_kv)
    in_axes = ('embed', 'heads', 'kv')
    self.query = DenseGeneral((cfg.d_model,), heads, in_axes,
                              kernel_init=fan_in_init(1, 2, 'normal', 1.0 / cfg.d_kv), **common)
    self.key = DenseGeneral((cfg.d_model,), heads, in_axes,
                            kernel_init=fan_in_init(1, 2, 'normal'), **common)
    self.value = DenseGeneral((cfg.d_model,), heads, in_axes,
                              kernel_init=fan_in_init(1, 2, 'normal'), **common)
    self.out = DenseGeneral(heads, (cfg.d_model,), ('heads', 'kv', 'embed'),
                            kernel_init=fan_in_init(2, 1, 'normal'), **common)

  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, mask: jax.Array | None = None,
               bias: jax.Array | None = None) -> jax.Array:
    """inputs_q [b, q, d_model], inputs_kv [b, k, d_model] -> [b, q, d_model]."""
    key, value = self.project_kv(inputs_kv)
    return self.attend(inputs_q, key, value, mask, bias)

  # Decoding splits the call in two so that keys and values can be cached between steps: the
  # self-attention's go into a buffer one position at a time, the cross-attention's are computed
  # once from the encoder output.
  def project_kv(self, inputs_kv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """inputs_kv [b, k, d_model] -> (key, value), each [b, k, heads, d_kv]."""
    key = with_logical_constraint(self.key(inputs_kv), KV_AXES)
    value = with_logical_constraint(self.value(inputs_kv), KV_AXES)
    return key, value

  def attend(self, inputs_q: jax.Array, key: jax.Array, value: jax.Array,
             mask: jax.Array | None = None, bias: jax.Array | None = None) -> jax.Array:
    """inputs_q [b, q, d_model] over projected key, value [b, k, heads, d_kv] -> [b, q, d_model]."""
    query = with_logical_constraint(self.query(inputs_q), KV_AXES)
    x = dot_product_attention(query, key, value, mask, bias, self.kernels)
    x = with_logical_constraint(x, KV_AXES)
    return self.out(x)
