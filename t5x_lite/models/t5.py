"""The T5 encoder-decoder (Raffel et al. 2020), wired from the blocks in layers.py.

Parameter tree (names follow T5X; an HF converter is a renaming table plus reshapes):

    token_embedder/embedding                              [vocab, d_model]   (shared enc/dec)
    encoder/relpos_bias/embedding                         [buckets, heads]
    encoder/layers/{i}/pre_attention_layer_norm/scale
    encoder/layers/{i}/attention/{query,key,value,out}/kernel
    encoder/layers/{i}/pre_mlp_layer_norm/scale
    encoder/layers/{i}/mlp/{wi | wi_0,wi_1}/kernel, mlp/wo/kernel
    encoder/encoder_norm/scale
    decoder/relpos_bias/embedding
    decoder/layers/{i}/pre_self_attention_layer_norm, self_attention,
                       pre_cross_attention_layer_norm, encoder_decoder_attention,
                       pre_mlp_layer_norm, mlp
    decoder/decoder_norm/scale
    lm_head/kernel                                        [d_model, vocab]   (T5.1.1 only)

Inputs are what seqio's EncDecFeatureConverter produces. With packing, `*_segment_ids` say which
example each token belongs to (0 = padding) and attention never crosses examples; without, padding
is `encoder_input_tokens == 0`, and the decoder needs no padding mask because it is causal and
padding only follows real tokens (its first input token, BOS, is also id 0).

With `shared_encoder_decoder` (T5 Table 2, "Enc-dec, shared") the decoder reuses the encoder's
layer weights (see `share_encoder_with_decoder`); each shared weight is stored once, under the
decoder's name, because NNX flattens a shared object at its first path in attribute order.

Dropout (T5X's placement): on the embedded inputs, on each sublayer's output before the residual
add, on the MLP hidden activations, and after each stack's final norm.

Rematerialisation (`config.remat_policy`) wraps each layer call of both stacks in `nnx.remat`.
Dropout keys are drawn from the `rngs` passed into the rematerialised call, so the recomputed
forward pass draws the same masks and gradients are unchanged.

Scanned layers (`config.scan_layers`): each stack holds one layer whose parameters carry a leading
'layers' axis (`encoder/layers/mlp/wo/kernel` is [layers, d_ff, d_model]) and runs it under
`jax.lax.scan`, so the traced and compiled program has one layer per stack whatever the depth.
`stack_layer_params` / `unstack_layer_params` convert between the two layouts (HF conversion
uses the unrolled names); decoding walks per-layer views of the stacked layer.

Decoding (t5x_lite/decoding.py) runs the same layers over a cache, a pytree of arrays:
`init_cache` encodes the inputs once and projects each layer's cross-attention keys/values;
`decode_step(cache, tokens, index)` embeds the new tokens, writes their self-attention keys/values
into per-layer buffers of max_len positions at `index` and attends over the buffers.
Row b's slot k holds decoder position k, so masks and relative positions are those of the
teacher-forced pass and the logits agree with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.config import T5Config
from t5x_lite.models.layers import (MLP, DenseGeneral, Embed, MultiHeadAttention,
                                    RelativePositionBias, RMSNorm, attention_mask,
                                    decoding_attention_mask, fan_in_init, kv_cache,
                                    read_kv_cache, write_kv_cache)
from t5x_lite.partitioning import with_logical_constraint

ACTIVATION_AXES = ('batch', 'length', 'embed')

# What a rematerialised layer keeps. 'minimal' keeps the matmuls without batch dimensions, i.e.
# the products with a weight (q/k/v/out projections, MLP wi/wo: linear in length), and recomputes
# the batched score and value einsums and every elementwise op. `dots_saveable` would also keep
# the [batch, heads, q_len, k_len] scores, the one residual that grows with length squared.
REMAT_POLICIES = {
    'minimal': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'full': jax.checkpoint_policies.nothing_saveable,
}


def remat(call, policy: str):
  """`call(layer, *args)` under nnx.remat with the named policy; 'none' returns it as is."""
  if policy == 'none':
    return call
  return nnx.remat(call, policy=REMAT_POLICIES[policy], prevent_cse=True)


def stack_layers(layers: list[nnx.Module]) -> nnx.Module:
  """One layer whose every parameter is its layers' parameters stacked on a new leading axis,
  named 'layers' (scan_layers). Built from the unrolled layers, so the same seed gives the same
  weights in both layouts."""
  stacked = layers[0]
  columns = zip(*(nnx.to_flat_state(nnx.state(layer, nnx.Param)) for layer in layers))
  for column in columns:
    (_, first), values = column[0], [var[...] for _, var in column]
    names = first.get_metadata().get('out_sharding')
    first.set_metadata('out_sharding', ('layers',) + tuple(names) if names else None)
    first.set_value(jnp.stack(values))
  return stacked


def run_layers(layers, num_layers: int, scanned: bool, policy: str, x, *args,
               deterministic: bool = True, rngs: nnx.Rngs | None = None):
  """x through every layer, `layer(x, *args, deterministic=..., rngs=...)`, under remat.

  Unrolled: a Python loop over the list. Scanned: `jax.lax.scan` over the stacked parameters,
  one traced layer whatever the depth; each layer draws dropout from its own key, split here
  (a scan body cannot advance an Rngs from outside it).
  """
  call = lambda layer, rngs, x, *a: layer(x, *a, deterministic=deterministic, rngs=rngs)
  if not scanned:
    call = remat(call, policy)
    for layer in layers:
      x = call(layer, rngs, x, *args)
    return x
  graphdef, params = nnx.split(layers)
  keys = (None if deterministic or rngs is None
          else jax.random.split(rngs.dropout(), num_layers))

  def body(x, per_layer):
    layer_params, key = per_layer
    layer_rngs = None if key is None else nnx.Rngs(dropout=key)
    return call(nnx.merge(graphdef, layer_params), layer_rngs, x, *args), None

  if policy != 'none':
    body = jax.checkpoint(body, policy=REMAT_POLICIES[policy], prevent_cse=False)
  return jax.lax.scan(body, x, (params, keys))[0]


def layer_list(layers, num_layers: int, scanned: bool) -> list:
  """The layers one by one (decoding walks them with a cache each): the list itself, or views of
  the stacked layer at each index."""
  if not scanned:
    return list(layers)
  graphdef, params = nnx.split(layers)
  return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], params))
          for i in range(num_layers)]


def stack_layer_params(params: dict) -> dict:
  """Unrolled params (a pure dict) in the scan_layers layout: each stack's {'layers': {0: tree,
  1: tree, ...}} becomes {'layers': tree of arrays stacked on a leading axis}."""
  def walk(node):
    if not isinstance(node, dict):
      return node
    out = {k: walk(v) for k, v in node.items()}
    layers = out.get('layers')
    if isinstance(layers, dict) and layers and all(isinstance(k, int) for k in layers):
      out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *(layers[i]
                                                                 for i in range(len(layers))))
    return out
  return walk(params)


def unstack_layer_params(params: dict) -> dict:
  """The inverse of `stack_layer_params`: scanned params (a pure dict) in the unrolled layout."""
  def walk(node):
    if not isinstance(node, dict):
      return node
    out = {k: walk(v) for k, v in node.items()}
    layers = out.get('layers')
    if isinstance(layers, dict) and layers and not any(isinstance(k, int) for k in layers):
      depth = jax.tree.leaves(layers)[0].shape[0]
      out['layers'] = {i: jax.tree.map(lambda a, i=i: a[i], layers) for i in range(depth)}
    return out
  return walk(params)


def make_layers(make, num_layers: int, scanned: bool):
  """`num_layers` layers from `make()`: an nnx.List, or one stacked layer (scan_layers)."""
  layers = [make() for _ in range(num_layers)]
  return stack_layers(layers) if scanned and layers else nnx.List(layers)


def _norm(cfg: T5Config, rngs: nnx.Rngs) -> RMSNorm:
  return RMSNorm(cfg.d_model, epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                 param_dtype=cfg.weight_dtype, rngs=rngs)


class EncoderLayer(nnx.Module):
  """Pre-norm self-attention then MLP, each added back to the residual stream."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.pre_attention_layer_norm = _norm(config, rngs)
    self.attention = MultiHeadAttention(config, rngs=rngs)
    self.pre_mlp_layer_norm = _norm(config, rngs)
    self.mlp = MLP(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)

  def __call__(self, x, mask, bias, *, deterministic=True, rngs=None):
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    h = self.pre_attention_layer_norm(x)
    x = x + drop(self.attention(h, h, mask, bias))
    h = self.pre_mlp_layer_norm(x)
    x = x + drop(self.mlp(h, deterministic=deterministic, rngs=rngs))
    return with_logical_constraint(x, ACTIVATION_AXES)


class DecoderLayer(nnx.Module):
  """Causal self-attention, cross-attention to the encoder (unless decoder-only), then MLP."""

  def __init__(self, config: T5Config, *, cross_attention: bool = True, rngs: nnx.Rngs):
    self.pre_self_attention_layer_norm = _norm(config, rngs)
    self.self_attention = MultiHeadAttention(config, rngs=rngs)
    self.cross_attention = cross_attention
    if cross_attention:
      self.pre_cross_attention_layer_norm = _norm(config, rngs)
      self.encoder_decoder_attention = MultiHeadAttention(config, rngs=rngs)
    self.pre_mlp_layer_norm = _norm(config, rngs)
    self.mlp = MLP(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)

  def __call__(self, x, encoded, self_mask, self_bias, cross_mask, *, deterministic=True,
               rngs=None, cache=None, cache_index=None):
    """x [b, len, d_model] -> [b, len, d_model].

    With `cache` (decoding; this layer's entry of `Decoder.init_cache`) the new positions' keys
    and values are written into the self-attention buffers at `cache_index` [b], attention reads
    the whole buffers, cross-attention reads the cached encoder projections (`encoded` is
    unused), and the result is `(x, updated cache)`.
    """
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    h = self.pre_self_attention_layer_norm(x)
    key, value = self.self_attention.project_kv(h)
    if cache is not None:
      entry = write_kv_cache(cache['self_attention'], key, value, cache_index)
      cache = {**cache, 'self_attention': entry}
      key, value = read_kv_cache(entry)
    x = x + drop(self.self_attention.attend(h, key, value, self_mask, self_bias))
    if self.cross_attention:
      h = self.pre_cross_attention_layer_norm(x)
      if cache is None:
        key, value = self.encoder_decoder_attention.project_kv(encoded)
      else:
        key, value = read_kv_cache(cache['encoder_decoder_attention'])
      x = x + drop(self.encoder_decoder_attention.attend(h, key, value, cross_mask))
    h = self.pre_mlp_layer_norm(x)
    x = x + drop(self.mlp(h, deterministic=deterministic, rngs=rngs))
    x = with_logical_constraint(x, ACTIVATION_AXES)
    return x if cache is None else (x, cache)


class Encoder(nnx.Module):
  """Embedded tokens -> encoded sequence: bidirectional layers and a final norm."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    self.relpos_bias = RelativePositionBias(config, bidirectional=True, rngs=rngs)
    self.num_layers = config.num_encoder_layers
    self.scanned = config.scan_layers and self.num_layers > 0
    self.layers = make_layers(lambda: EncoderLayer(config, rngs=rngs), self.num_layers,
                              self.scanned)
    self.encoder_norm = _norm(config, rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)
    self.remat_policy = config.remat_policy

  def __call__(self, embedded, segment_ids, *, deterministic=True, rngs=None):
    """embedded [b, len, d_model], segment_ids [b, len] (0 = padding) -> [b, len, d_model]."""
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    length = embedded.shape[1]
    mask = attention_mask(segment_ids, segment_ids)
    bias = self.relpos_bias(length, length)
    x = with_logical_constraint(drop(embedded), ACTIVATION_AXES)
    x = run_layers(self.layers, self.num_layers, self.scanned, self.remat_policy, x, mask, bias,
                   deterministic=deterministic, rngs=rngs)
    return drop(self.encoder_norm(x))


class Decoder(nnx.Module):
  """Embedded targets (+ encoder output) -> final hidden states; logits are the caller's."""

  def __init__(self, config: T5Config, *, cross_attention: bool = True, rngs: nnx.Rngs):
    self.relpos_bias = RelativePositionBias(config, bidirectional=False, rngs=rngs)
    self.num_layers = config.num_decoder_layers
    self.scanned = config.scan_layers and self.num_layers > 0
    self.layers = make_layers(
        lambda: DecoderLayer(config, cross_attention=cross_attention, rngs=rngs),
        self.num_layers, self.scanned)
    self.decoder_norm = _norm(config, rngs)
    self.dropout = nnx.Dropout(config.dropout_rate)
    self.remat_policy = config.remat_policy

  def __call__(self, embedded, segment_ids, encoded=None, encoder_segment_ids=None, *,
               decoder_causal_attention=None, deterministic=True, rngs=None):
    """embedded [b, len, d]; segment_ids [b, len]; encoded [b, enc_len, d] for cross-attention.

    `decoder_causal_attention` [b, len] (prefix LM): positions marked 1 attend to each other
    bidirectionally; the relative-position table stays the causal one (future keys share bucket
    0), as in T5X.
    """
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    length = embedded.shape[1]
    self_mask = attention_mask(segment_ids, segment_ids, causal=True,
                               bidirectional_prefix=decoder_causal_attention)
    self_bias = self.relpos_bias(length, length)
    cross_mask = (None if encoded is None
                  else attention_mask(segment_ids, encoder_segment_ids))
    x = with_logical_constraint(drop(embedded), ACTIVATION_AXES)
    x = run_layers(self.layers, self.num_layers, self.scanned, self.remat_policy, x, encoded,
                   self_mask, self_bias, cross_mask, deterministic=deterministic, rngs=rngs)
    return drop(self.decoder_norm(x))

  def init_cache(self, batch_size: int, max_length: int, encoded=None) -> list[dict]:
    """Per layer: empty self-attention key/value buffers for `max_length` positions and, given
    the encoder output, its cross-attention keys/values (computed once here); see
    layers.kv_cache for the layout."""
    cache = []
    for layer in layer_list(self.layers, self.num_layers, self.scanned):
      attention = layer.self_attention
      empty = jnp.zeros((batch_size, max_length) + attention.key.kernel.shape[1:],
                        attention.key.dtype)
      entry = {'self_attention': kv_cache(empty, empty)}
      if layer.cross_attention:
        entry['encoder_decoder_attention'] = kv_cache(
            *layer.encoder_decoder_attention.project_kv(encoded))
      cache.append(entry)
    return cache

  def step(self, embedded, cache, cache_index, cross_mask=None, prefix_lengths=None):
    """Cached decoding of `embedded` [b, q, d] at positions `cache_index` [b] + [0, q).

    `cross_mask` [b, 1, 1, enc_len] hides encoder padding; `prefix_lengths` [b] (prefix LM) are
    the bidirectional prompt lengths. Returns (final hidden states [b, q, d], updated cache).
    """
    query_length = embedded.shape[1]
    max_length = read_kv_cache(cache[0]['self_attention'])[0].shape[1]
    positions = cache_index[:, None] + jnp.arange(query_length)
    self_mask = decoding_attention_mask(positions, max_length, prefix_lengths)
    self_bias = self.relpos_bias(query_length, max_length, query_offset=cache_index)
    x = with_logical_constraint(embedded, ACTIVATION_AXES)
    new_cache = []
    for layer, layer_cache in zip(layer_list(self.layers, self.num_layers, self.scanned), cache,
                                  strict=True):
      x, layer_cache = layer(x, None, self_mask, self_bias, cross_mask, cache=layer_cache,
                             cache_index=cache_index)
      new_cache.append(layer_cache)
    return self.decoder_norm(x), new_cache


def _check_segment_ids(encoder_segment_ids, decoder_segment_ids):
  if (encoder_segment_ids is None) != (decoder_segment_ids is None):
    raise ValueError('Pass both encoder_segment_ids and decoder_segment_ids (packed data) or '
                     'neither (unpacked data); got only one.')


def encoder_segments(encoder_input_tokens, encoder_segment_ids=None):
  """Segment ids for the encoder: the packed ids, else 1 for real tokens and 0 for padding."""
  if encoder_segment_ids is not None:
    return encoder_segment_ids
  return (encoder_input_tokens > 0).astype(jnp.int32)


def decoder_segments(decoder_input_tokens, decoder_segment_ids=None):
  """Segment ids for the decoder: the packed ids, else all ones (causality hides the padding)."""
  if decoder_segment_ids is not None:
    return decoder_segment_ids
  return jnp.ones_like(decoder_input_tokens, dtype=jnp.int32)


def token_embedder(cfg: T5Config, rngs: nnx.Rngs) -> Embed:
  return Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
               param_dtype=cfg.weight_dtype, rngs=rngs)


def lm_head(cfg: T5Config, rngs: nnx.Rngs) -> DenseGeneral | None:
  """The separate output layer (T5.1.1), or None when logits reuse the embedding (T5 v1.0)."""
  if cfg.logits_via_embedding:
    return None
  return DenseGeneral((cfg.d_model,), (cfg.vocab_size,), ('embed', 'vocab'),
                      kernel_init=fan_in_init(1, 1, 'truncated_normal'),
                      dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                      kernels=cfg.dense_kernels, rngs=rngs)


def output_logits(cfg: T5Config, embedder: Embed, head: DenseGeneral | None, x: jax.Array):
  """Final decoder states -> float32 logits; the tied head rescales by 1/sqrt(d_model) (T5)."""
  if head is None:
    logits = embedder.attend(x * (cfg.d_model ** -0.5))
  else:
    logits = head(x, out_dtype=jnp.float32)
  return with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))


def share_encoder_with_decoder(encoder: Encoder, decoder: Decoder) -> None:
  """Make `decoder` reuse `encoder`'s parameters wherever the two have a counterpart.

  T5 Table 2 "Enc-dec, shared". Shared: the relative-position table, the final norm, and per
  layer the self-attention, the MLP and their pre-norms. Not shared: cross-attention and its
  norm, which the encoder lacks (T5 counts the shared model as P params, ignoring them too).
  NNX keeps the objects shared through split/merge, so each shared parameter is one leaf of the
  state and its gradient sums both uses.
  """
  # Only the table: the module also holds the bucketing direction, which stays causal.
  decoder.relpos_bias.embedding = encoder.relpos_bias.embedding
  decoder.decoder_norm = encoder.encoder_norm
  pairs = ([(encoder.layers, decoder.layers)] if encoder.scanned
           else zip(encoder.layers, decoder.layers, strict=True))
  for enc, dec in pairs:
    dec.pre_self_attention_layer_norm = enc.pre_attention_layer_norm
    dec.self_attention = enc.attention
    dec.pre_mlp_layer_norm = enc.pre_mlp_layer_norm
    dec.mlp = enc.mlp


class EncoderDecoder(nnx.Module):
  """T5: shared token embedding, encoder, decoder and a tied (v1.0) or separate (v1.1) head."""

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    cfg = config
    if cfg.architecture != 'encoder_decoder':
      raise ValueError(f'EncoderDecoder needs architecture=\'encoder_decoder\', got '
                       f'{cfg.architecture!r}; use t5x_lite.models.build_model(config, rngs).')
    self.config = cfg
    self.token_embedder = token_embedder(cfg, rngs)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, cross_attention=True, rngs=rngs)
    if cfg.shared_encoder_decoder:
      share_encoder_with_decoder(self.encoder, self.decoder)
    if not cfg.logits_via_embedding:
      self.lm_head = lm_head(cfg, rngs)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, deterministic=True,
             rngs=None):
    """int32 tokens [b, enc_len] -> encoded [b, enc_len, d_model] in the compute dtype."""
    segments = encoder_segments(encoder_input_tokens, encoder_segment_ids)
    return self.encoder(self.token_embedder(encoder_input_tokens), segments,
                        deterministic=deterministic, rngs=rngs)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, *, deterministic=True,
             rngs=None):
    """Encoder output + shifted targets [b, dec_len] -> float32 logits [b, dec_len, vocab]."""
    _check_segment_ids(encoder_segment_ids, decoder_segment_ids)
    x = self.decoder(self.token_embedder(decoder_input_tokens),
                     decoder_segments(decoder_input_tokens, decoder_segment_ids),
                     encoded, encoder_segments(encoder_input_tokens, encoder_segment_ids),
                     deterministic=deterministic, rngs=rngs)
    return self.logits(x)

  def logits(self, x):
    """Final decoder states -> float32 logits [b, len, vocab]."""
    return output_logits(self.config, self.token_embedder, getattr(self, 'lm_head', None), x)

  def init_cache(self, encoder_input_tokens, max_decode_length: int) -> dict:
    """Decoding state for unpacked inputs [b, enc_len]: the encoder runs once here; see
    `decode_step`. A pytree of arrays with the batch first in every leaf."""
    segments = encoder_segments(encoder_input_tokens)
    encoded = self.encode(encoder_input_tokens)
    return {'layers': self.decoder.init_cache(encoder_input_tokens.shape[0], max_decode_length,
                                              encoded),
            'encoder_mask': (segments > 0)[:, None, None, :]}

  def decode_step(self, cache, decoder_input_tokens, index):
    """Logits [b, q, vocab] for decoder tokens [b, q] at positions `index` + [0, q), index an
    int or [b]; the tokens' keys/values enter the returned cache."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), decoder_input_tokens.shape[:1])
    x, layers = self.decoder.step(self.token_embedder(decoder_input_tokens), cache['layers'],
                                  index, cross_mask=cache['encoder_mask'])
    return self.logits(x), {**cache, 'layers': layers}

  def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, *, deterministic=True, rngs=None):
    """Teacher-forced logits [b, dec_len, vocab] (float32) for a batch of token ids."""
    _check_segment_ids(encoder_segment_ids, decoder_segment_ids)
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids,
                          deterministic=deterministic, rngs=rngs)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       encoder_segment_ids, decoder_segment_ids,
                       deterministic=deterministic, rngs=rngs)

  def logits_for_batch(self, batch, *, deterministic=True, rngs=None):
    """Logits for a batch as seqio's EncDecFeatureConverter emits it; other keys are ignored."""
    return self(batch['encoder_input_tokens'], batch['decoder_input_tokens'],
                batch.get('encoder_segment_ids'), batch.get('decoder_segment_ids'),
                deterministic=deterministic, rngs=rngs)


def eager_rngs(seed: int) -> nnx.Rngs:
  """`nnx.Rngs(params=seed)` with concrete keys even when built inside jit or eval_shape.

  Build the model's init Rngs with this inside a jitted/abstract init: keys are then drawn
  eagerly (see layers.make_param) and tracing the init stays linear in depth.
  """
  with jax.ensure_compile_time_eval():
    return nnx.Rngs(params=seed)

