"""Loss, schedule and optimizer against independent computations."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_lite import losses, optimizer, progress, trainer


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
  out = losses.cross_entropy_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                                   z_loss=1e-4, label_smoothing=label_smoothing)
  ce, zl = _numpy_loss(logits, targets, weights, 1e-4, label_smoothing)
  np.testing.assert_allclose(out['cross_ent_sum'], ce, rtol=1e-5)
  np.testing.assert_allclose(out['z_loss_sum'], zl, rtol=1e-5)
  assert out['weight_sum'] == weights.sum()
  correct = ((logits.argmax(-1) == targets) * weights).sum()
  assert out['correct_sum'] == correct


def test_rsqrt_schedule_is_flat_then_decays():
  s = optimizer.learning_rate_schedule(kind='rsqrt', base_learning_rate=1.0, warmup_steps=10_000)
  assert float(s(0)) == pytest.approx(0.01)
  assert float(s(9_999)) == pytest.approx(0.01)
  assert float(s(40_000)) == pytest.approx(1 / math.sqrt(40_000))


def test_unknown_optimizer_and_schedule_are_clear_errors():
  with pytest.raises(ValueError, match="choose 'adafactor' or 'adamw'"):
    optimizer.make_optimizer(optimizer.learning_rate_schedule(), name='sgd')
  with pytest.raises(ValueError, match='total_steps must be set'):
    optimizer.learning_rate_schedule(kind='linear_warmup_cosine')


def test_format_seconds():
  assert progress.format_seconds(59) == '0:59'
  assert progress.format_seconds(3725) == '1:02:05'


def test_adafactor_factors_attention_kernels_as_t5x_2d_matrices():
  rng = np.random.default_rng(0)
  params = {'q': {'kernel': jnp.asarray(rng.normal(size=(256, 4, 64)), jnp.float32)},
            'o': {'kernel': jnp.asarray(rng.normal(size=(4, 64, 256)), jnp.float32)}}
  grads = jax.tree.map(lambda x: x * 0.1 + 0.01, params)
  axes = {('q', 'kernel'): ('embed', 'heads', 'kv'), ('o', 'kernel'): ('heads', 'kv', 'embed')}
  tx = optimizer.as_matrices(optax.adafactor(0.01), axes)
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  # Factored statistics: one row per d_model entry, one column per (head, kv) pair.
  shapes = sorted({tuple(x.shape) for x in jax.tree.leaves(state)})
  assert (256,) in shapes and not any(len(s) == 3 for s in shapes)
  # Reference: plain optax Adafactor on the 2-D matrices T5X would store.
  flat = {'q': params['q']['kernel'].reshape(256, 256), 'o': params['o']['kernel'].reshape(256, 256)}
  flat_g = {'q': grads['q']['kernel'].reshape(256, 256), 'o': grads['o']['kernel'].reshape(256, 256)}
  ref_tx = optax.adafactor(0.01)
  ref, _ = ref_tx.update(flat_g, ref_tx.init(flat), flat)
  np.testing.assert_allclose(updates['q']['kernel'], ref['q'].reshape(256, 4, 64), rtol=1e-6)
  np.testing.assert_allclose(updates['o']['kernel'], ref['o'].reshape(4, 64, 256), rtol=1e-6)


def test_gradient_accumulation_matches_one_big_batch():
  """Two microbatches give the same update and metrics as the whole batch at once."""
  from t5x_lite import partitioning
  from t5x_lite.models import T5Config
  cfg = T5Config(vocab_size=64, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                 num_decoder_layers=1)
  mesh = partitioning.create_mesh({'data': -1})
  tx = optimizer.make_optimizer(optimizer.learning_rate_schedule(kind='constant', base_learning_rate=0.1),
                              name='adamw')
  setup = trainer.setup_train_state(cfg, tx, 0, mesh, ())
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, 64, (4, 6)).astype(np.int32)
  weights = np.ones((4, 6), np.float32)
  weights[0, 3:] = 0  # unequal token counts per microbatch: normalisation must be global
  batch = {'encoder_input_tokens': rng.integers(2, 64, (4, 8)).astype(np.int32),
           'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
           'decoder_target_tokens': tgt, 'decoder_loss_weights': weights}
  out = {}
  for n in (1, 2):
    step = jax.jit(trainer.make_train_step(setup.graphdef, setup.tx, num_microbatches=n))
    out[n] = step(setup.init(), batch)
  (s1, m1), (s2, m2) = out[1], out[2]
  for k in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               s2['params'], s1['params'])


def test_metrics_writer_drops_redone_rows_on_resume_only(tmp_path):
  """A resumed run drops the rows it will redo; a standalone eval writer keeps every row."""
  def steps():
    return [json.loads(line)['step'] for line in open(tmp_path / 'metrics.jsonl')]

  writer = progress.MetricsWriter(str(tmp_path), 5, resume_step=0)
  for step in range(1, 6):
    writer.write(step, {'loss': 1.0, 'accuracy': 0.5, 'learning_rate': 1e-3})
  writer.close()
  evaluator = progress.MetricsWriter(str(tmp_path), 3)  # t5x_lite.eval on checkpoint 3
  evaluator.write(3, {'eval/task/loss': 2.0})
  evaluator.close()
  assert steps() == [1, 2, 3, 4, 5, 3]
  progress.MetricsWriter(str(tmp_path), 5, resume_step=2).close()
  assert steps() == [1, 2]


def test_rsqrt_without_warmup_starts_at_the_base_rate_not_infinity():
  s = optimizer.learning_rate_schedule(kind='rsqrt', base_learning_rate=1.0, warmup_steps=0)
  assert float(s(0)) == 1.0 and float(s(1)) == 1.0 and float(s(4)) == 0.5


def _micro_step_and_batch(learning_rate, name='adafactor'):
  from t5x_lite import partitioning  # pylint: disable=import-outside-toplevel
  from t5x_lite.models import T5Config  # pylint: disable=import-outside-toplevel
  cfg = T5Config(vocab_size=64, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                 num_decoder_layers=1)
  tx = optimizer.make_optimizer(
      optimizer.learning_rate_schedule(kind='constant', base_learning_rate=learning_rate), name=name)
  setup = trainer.setup_train_state(cfg, tx, 0, partitioning.create_mesh({'data': -1}), ())
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, 64, (2, 6)).astype(np.int32)
  batch = {'encoder_input_tokens': rng.integers(2, 64, (2, 8)).astype(np.int32),
           'decoder_input_tokens': np.pad(tgt[:, :-1], ((0, 0), (1, 0))),
           'decoder_target_tokens': tgt, 'decoder_loss_weights': np.ones((2, 6), np.float32)}
  return jax.jit(trainer.make_train_step(setup.graphdef, setup.tx)), setup.init, batch


@pytest.mark.parametrize('name', ['adafactor', 'adamw'])
def test_a_finite_gradient_times_an_infinite_learning_rate_is_not_applied(name):
  """Loss and gradient norm are finite, the update is not: the step keeps the old state."""
  step, init, batch = _micro_step_and_batch(1e39, name)  # inf in float32
  before = jax.device_get(init())
  after, metrics = step(init(), batch)
  assert np.isfinite(metrics['loss']) and np.isfinite(metrics['grad_norm'])
  assert not bool(metrics['finite'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['params']), before['params'])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after['opt_state']),
               before['opt_state'])
  assert int(after['step']) == 1  # the step is counted (and reported), not applied
  # The same step at a finite rate applies the update.
  step, init, batch = _micro_step_and_batch(1e-2, name)
  after, metrics = step(init(), batch)
  assert bool(metrics['finite'])
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(after['params']),
                         before['params'])
  assert all(jax.tree.leaves(changed))
