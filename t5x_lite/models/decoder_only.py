"""Decoder-only language models: a causal LM (GPT-style) and a prefix LM (T5 Sec. 3.2.1).

Both are the T5 decoder stack of t5.py built without cross-attention, between the token embedding
and a tied (`logits_via_embedding`) or separate output layer. Parameter tree:

    token_embedder/embedding                              [vocab, d_model]
    decoder/relpos_bias/embedding                         [buckets, heads]
    decoder/layers/{i}/pre_self_attention_layer_norm, self_attention, pre_mlp_layer_norm, mlp
    decoder/decoder_norm/scale
    lm_head/kernel                                        [d_model, vocab]   (untied only)

Inputs are what seqio's DecoderFeatureConverter (causal LM) or PrefixLMFeatureConverter (prefix
LM) produces. The prefix LM reads `decoder_causal_attention` (1 on the inputs plus the first
target position, whose input token is the last input token): those positions attend to each
other bidirectionally, as T5X's `inputs_bidirectional_attention`; every other position is causal.
Packed examples (`decoder_segment_ids`) never attend to each other; `decoder_positions` is not
needed because the relative-position bias uses array offsets, equal to in-segment offsets.

Decoding (t5x_lite/decoding.py) uses `init_cache` and `decode_step`: a prompt of several tokens
is one `decode_step` call (the prefill), then one token per call. For the prefix LM the cache
holds each row's prompt length, the span that attends bidirectionally (`decoder_causal_attention`
in the teacher-forced pass).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.config import T5Config
from t5x_lite.models.t5 import (Decoder, decoder_segments, lm_head, output_logits,
                                token_embedder)


class DecoderOnly(nnx.Module):
  """Token embedding -> causal decoder stack (no cross-attention) -> logits.

  `config.architecture` picks the attention pattern: 'decoder_only' is causal everywhere,
  'prefix_lm' is bidirectional over the positions that `decoder_causal_attention` marks.
  """

  def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
    cfg = config
    if cfg.architecture not in ('decoder_only', 'prefix_lm'):
      raise ValueError(f'DecoderOnly needs architecture \'decoder_only\' or \'prefix_lm\', got '
                       f'{cfg.architecture!r}; use t5x_lite.models.build_model(config, rngs).')
    self.config = cfg
    self.token_embedder = token_embedder(cfg, rngs)
    self.decoder = Decoder(cfg, cross_attention=False, rngs=rngs)
    if not cfg.logits_via_embedding:
      self.lm_head = lm_head(cfg, rngs)

  def __call__(self, decoder_input_tokens, decoder_segment_ids=None,
               decoder_causal_attention=None, *, deterministic=True, rngs=None):
    """Teacher-forced float32 logits [b, len, vocab] for int32 tokens [b, len].

    `decoder_causal_attention` is required for a prefix LM and rejected for a causal LM, so a
    batch from the wrong feature converter fails loudly instead of training the wrong model.
    """
    prefix_lm = self.config.architecture == 'prefix_lm'
    if prefix_lm and decoder_causal_attention is None:
      raise ValueError('A prefix LM needs `decoder_causal_attention` (from seqio\'s '
                       'PrefixLMFeatureConverter); got None.')
    if not prefix_lm and decoder_causal_attention is not None:
      raise ValueError('`decoder_causal_attention` was given to a causal decoder-only LM; set '
                       'architecture=\'prefix_lm\' to attend bidirectionally over the inputs.')
    x = self.decoder(self.token_embedder(decoder_input_tokens),
                     decoder_segments(decoder_input_tokens, decoder_segment_ids),
                     decoder_causal_attention=decoder_causal_attention,
                     deterministic=deterministic, rngs=rngs)
    return self.logits(x)

  def logits(self, x):
    """Final decoder states -> float32 logits [b, len, vocab]."""
    return output_logits(self.config, self.token_embedder, getattr(self, 'lm_head', None), x)

  def init_cache(self, batch_size: int, max_length: int, prefix_lengths=None) -> dict:
    """Empty decoding state for `max_length` positions (prompt included).

    `prefix_lengths` [b] is required for a prefix LM and rejected otherwise: the number of
    leading positions (BOS + inputs) that attend to each other bidirectionally.
    """
    prefix_lm = self.config.architecture == 'prefix_lm'
    if prefix_lm != (prefix_lengths is not None):
      raise ValueError('init_cache needs `prefix_lengths` for a prefix LM and only then; got '
                       f'{"None" if prefix_lengths is None else "lengths"} for architecture '
                       f'{self.config.architecture!r}.')
    cache = {'layers': self.decoder.init_cache(batch_size, max_length)}
    if prefix_lm:
      cache['prefix_length'] = jnp.asarray(prefix_lengths, jnp.int32)
    return cache

  def decode_step(self, cache, decoder_input_tokens, index):
    """Logits [b, q, vocab] for tokens [b, q] at positions `index` + [0, q), index an int or
    [b]; the tokens' keys/values enter the returned cache."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), decoder_input_tokens.shape[:1])
    x, layers = self.decoder.step(self.token_embedder(decoder_input_tokens), cache['layers'],
                                  index, prefix_lengths=cache.get('prefix_length'))
    return self.logits(x), {**cache, 'layers': layers}

  def logits_for_batch(self, batch: Mapping[str, jax.Array], *, deterministic=True, rngs=None):
    """Logits for a batch as seqio's Decoder/PrefixLM feature converter emits it.

    Uses `decoder_input_tokens`, `decoder_segment_ids` (packed) and, for a prefix LM,
    `decoder_causal_attention`; other keys (targets, loss weights, positions) are the loss's.
    """
    causal_attention = (batch['decoder_causal_attention']
                        if self.config.architecture == 'prefix_lm' else None)
    return self(batch['decoder_input_tokens'], batch.get('decoder_segment_ids'),
                causal_attention, deterministic=deterministic, rngs=rngs)
