"""Loss, schedule and optimizer against independent computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import trainer


def _numpy_loss(logits, targets, weights, z_loss, label_smoothing):
  logits = logits.astype(np.float64)
  v = logits.shape[-1]
  m = logits.max(-1, keepdims=True)
  log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  logp = logits - log_z[..., None]
  q = np.full(logits.shape, label_smoothing / (v - 1))
  np.put_along_axis(q, targets[..., None], 1 - label_smoothing, -1)
  entropy = -(q * np.log(np.where(q > 0, q, 1))).sum(-1)
  ce = -(q * logp).sum(-1) - entropy
  return (ce * weights).sum(), (z_loss * log_z**2 * weights).sum()


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_cross_entropy_with_z_loss_matches_numpy(label_smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
  targets = rng.integers(0, 11, size=(2, 5))
  weights = (rng.random((2, 5)) > 0.3).astype(np.float32)
  out = trainer.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                                   z_loss=1e-4, label_smoothing=label_smoothing)
  ce, zl = _numpy_loss(logits, targets, weights, 1e-4, label_smoothing)
  np.testing.assert_allclose(out['cross_ent_sum'], ce, rtol=1e-5)
  np.testing.assert_allclose(out['z_loss_sum'], zl, rtol=1e-5)
  assert out['weight_sum'] == weights.sum()
  correct = ((logits.argmax(-1) == targets) * weights).sum()
  assert out['correct_sum'] == correct


def test_rsqrt_schedule_is_flat_then_decays():
  s = trainer.learning_rate_schedule(kind='rsqrt', base_learning_rate=1.0, warmup_steps=10_000)
  assert float(s(0)) == pytest.approx(0.01)
  assert float(s(9_999)) == pytest.approx(0.01)
  assert float(s(40_000)) == pytest.approx(1 / math.sqrt(40_000))


def test_unknown_optimizer_and_schedule_are_clear_errors():
  with pytest.raises(ValueError, match="choose 'adafactor' or 'adamw'"):
    trainer.make_optimizer(trainer.learning_rate_schedule(), name='sgd')
  with pytest.raises(ValueError, match='total_steps must be set'):
    trainer.learning_rate_schedule(kind='linear_warmup_cosine')


def test_format_seconds():
  assert trainer.format_seconds(59) == '0:59'
  assert trainer.format_seconds(3725) == '1:02:05'
