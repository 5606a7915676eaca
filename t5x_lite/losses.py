"""The training loss: token cross-entropy with T5's z-loss and label smoothing (gin:
`cross_entropy_loss.*`), as sums the train step normalises over all target tokens."""

from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp


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
