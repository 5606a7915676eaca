"""Inference on batches from the feature converters: scoring, for now.

`score_batch` is what ranking evaluation, perplexity and the HF parity tests (tests/test_convert.py)
share, so it stays a pure function of a model and a batch.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array,
                            weights: jax.Array) -> jax.Array:
  """Per-row sum of weighted target log-probabilities in nats: logits [b, len, vocab] -> [b].

  The log-softmax runs in float32 whatever the logits' dtype.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return jnp.sum(token * weights.astype(jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _score(graphdef, state, batch):
  model = nnx.merge(graphdef, state)
  logits = model.logits_for_batch(batch, deterministic=True)
  return sequence_log_likelihood(logits, batch['decoder_target_tokens'],
                                 batch['decoder_loss_weights'])


def score_batch(model: nnx.Module, batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """log p(targets | inputs) per row of `batch`, float32 [batch], teacher-forced and jitted.

  `batch` is a feature converter's output for `model`'s family (targets in
  `decoder_target_tokens`, `decoder_loss_weights` 0 on padding). A packed row scores the sum of
  its examples, so score unpacked batches to get one number per example. Non-array entries are
  ignored; each new batch shape compiles once.
  """
  arrays = {k: jnp.asarray(v) for k, v in batch.items()
            if isinstance(v, (np.ndarray, jax.Array)) and np.issubdtype(v.dtype, np.number)}
  graphdef, state = nnx.split(model)
  return np.asarray(_score(graphdef, state, arrays))
