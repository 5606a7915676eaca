"""Decoding for encoder-decoder models.

For now: greedy decoding that re-runs the decoder over the whole prefix each step (no KV cache), as a
correctness baseline that cached decoding, sampling and beam search will be checked against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

EOS_ID = 1
PAD_ID = 0  # T5 starts the decoder with the pad id


def greedy_decode(model: nnx.Module, encoder_input_tokens: jax.Array, max_decode_length: int,
                  eos_id: int = EOS_ID) -> jax.Array:
  """Argmax tokens [batch, max_decode_length]; positions after EOS are PAD_ID."""
  graphdef, state = nnx.split(model)
  return _greedy(graphdef, state, encoder_input_tokens, max_decode_length, eos_id)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _greedy(graphdef, state, encoder_input_tokens, max_decode_length, eos_id):
  model = nnx.merge(graphdef, state)
  batch = encoder_input_tokens.shape[0]
  out = jnp.full((batch, max_decode_length), PAD_ID, jnp.int32)
  done = jnp.zeros((batch,), bool)

  def body(i, carry):
    out, done = carry
    decoder_inputs = jnp.pad(out[:, :-1], ((0, 0), (1, 0)), constant_values=PAD_ID)
    logits = model(encoder_input_tokens, decoder_inputs, deterministic=True)
    token = jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32)
    token = jnp.where(done, PAD_ID, token)
    out = out.at[:, i].set(token)
    return out, done | (token == eos_id)

  out, _ = jax.lax.fori_loop(0, max_decode_length, body, (out, done))
  return out
