"""Scanned layers (T5Config.scan_layers): the same model as the unrolled one, in one traced layer."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite import convert, decoding, optimizer, partitioning
from t5x_lite.models import T5Config, abstract_model, t5
from references import random_model

TINY = T5Config(vocab_size=97, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=3,
                num_decoder_layers=2, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)
FAMILIES = {
    'encoder_decoder': {},
    'shared': dict(shared_encoder_decoder=True, num_encoder_layers=2),
    'decoder_only': dict(architecture='decoder_only', num_encoder_layers=0),
    'prefix_lm': dict(architecture='prefix_lm', num_encoder_layers=0),
}


def scanned_twin(model):
  """The scan_layers model holding `model`'s weights, stacked."""
  config = dataclasses.replace(model.config, scan_layers=True)
  graphdef, state = nnx.split(abstract_model(config))
  nnx.replace_by_pure_dict(state, t5.stack_layer_params(nnx.to_pure_dict(nnx.state(model))))
  return nnx.merge(graphdef, state)


def batch_for(config, seed=0):
  rng = np.random.default_rng(seed)
  tokens = lambda n: rng.integers(1, config.vocab_size, (2, n)).astype(np.int32)
  if config.architecture == 'encoder_decoder':
    return {'encoder_input_tokens': tokens(12), 'decoder_input_tokens': tokens(8)}
  batch = {'decoder_input_tokens': tokens(8)}
  if config.architecture == 'prefix_lm':
    batch['decoder_causal_attention'] = (np.arange(8)[None] < [[3], [5]]).astype(np.int32)
  return batch


def loss_and_grads(model, batch, policy='none', dropout_key=None):
  config = dataclasses.replace(model.config, remat_policy=policy,
                               dropout_rate=0.0 if dropout_key is None else 0.3)
  graphdef = nnx.graphdef(abstract_model(config))

  def loss(params):
    m = nnx.merge(graphdef, params)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    logits = m.logits_for_batch(batch, deterministic=dropout_key is None, rngs=rngs)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  return jax.jit(jax.value_and_grad(loss))(nnx.state(model))


@pytest.mark.parametrize('family,policy', [('shared', 'none'), ('decoder_only', 'minimal'),
                                           ('prefix_lm', 'full')])
def test_scanned_model_has_the_unrolled_loss_and_gradients(family, policy):
  model = random_model(dataclasses.replace(TINY, **FAMILIES[family]))
  batch = batch_for(model.config)
  loss, grads = loss_and_grads(model, batch)
  scanned_loss, scanned_grads = loss_and_grads(scanned_twin(model), batch, policy)
  np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
  want = t5.stack_layer_params(nnx.to_pure_dict(grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               nnx.to_pure_dict(scanned_grads), want)


def test_scanned_dropout_draws_a_mask_per_layer_from_the_key():
  model = scanned_twin(random_model(TINY))
  batch = batch_for(model.config)
  a, b, c = (loss_and_grads(model, batch, 'full', jax.random.key(k))[0] for k in (1, 1, 2))
  assert a == b and a != c and a != loss_and_grads(model, batch)[0]


def test_layouts_convert_both_ways_and_name_the_layers_axis():
  model = random_model(TINY)
  unrolled = nnx.to_pure_dict(nnx.state(model))
  stacked = t5.stack_layer_params(unrolled)
  assert stacked['encoder']['layers']['mlp']['wo']['kernel'].shape == (3, 48, 32)
  jax.tree.map(np.testing.assert_array_equal, t5.unstack_layer_params(stacked), unrolled)
  scanned = abstract_model(dataclasses.replace(TINY, scan_layers=True))
  axes = partitioning.param_logical_axes(nnx.state(scanned))
  assert axes[('decoder', 'layers', 'self_attention', 'query', 'kernel')] == (
      'layers', 'embed', 'heads', 'kv')
  assert axes[('encoder', 'relpos_bias', 'embedding')] == ('relpos_buckets', 'heads')


def test_the_same_seed_gives_the_same_weights_in_both_layouts():
  from t5x_lite.models import build_model, eager_rngs  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(TINY, num_encoder_layers=1, num_decoder_layers=2)
  unrolled = nnx.to_pure_dict(nnx.state(build_model(config, eager_rngs(3))))
  scanned = build_model(dataclasses.replace(config, scan_layers=True), eager_rngs(3))
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(scanned)),
               t5.stack_layer_params(unrolled))


def test_hf_export_and_import_read_the_scanned_layout():
  model = random_model(TINY)
  scanned = scanned_twin(model)
  hf = convert.params_to_hf(nnx.to_pure_dict(nnx.state(model)), model.config)
  hf_scanned = convert.params_to_hf(nnx.to_pure_dict(nnx.state(scanned)), scanned.config)
  assert hf.keys() == hf_scanned.keys()
  jax.tree.map(np.testing.assert_array_equal, hf_scanned, hf)
  back = convert.hf_to_params(hf, scanned.config)
  jax.tree.map(np.testing.assert_array_equal, back, nnx.to_pure_dict(nnx.state(scanned)))


@pytest.mark.parametrize('family', ['encoder_decoder', 'prefix_lm'])
def test_scanned_model_decodes_the_unrolled_tokens(family):
  model = random_model(dataclasses.replace(TINY, **FAMILIES[family]))
  batch = batch_for(model.config)
  if family == 'encoder_decoder':
    del batch['decoder_input_tokens']  # decoding starts from the encoder inputs alone
  want = decoding.decode(model, batch, max_decode_length=6)
  got = decoding.decode(scanned_twin(model), batch, max_decode_length=6)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)


def test_optimizer_sees_each_layers_matrix_and_its_state_keeps_the_names():
  """A scanned attention kernel reaches the optimizer as one [embed, heads·kv] matrix per layer;
  each layer's state (moments, Adafactor's factored rows and columns) takes the param's names
  without 'layers', so FSDP shards it as it shards the weight."""
  axes = {('layers', 'q', 'kernel'): ('layers', 'embed', 'heads', 'kv')}
  params = {'layers': {'q': {'kernel': np.zeros((3, 64, 4, 8))}}}
  seen = []
  probe = optax.GradientTransformation(
      lambda p: seen.extend(x.shape for x in jax.tree.leaves(p)) or (), None)
  optimizer.as_matrices(probe, axes).init(params)
  assert seen == [(64, 32)] * 3
  names = optimizer.state_axes(axes, params)
  path = lambda *p: tuple(jax.tree_util.DictKey(x) for x in p[:-1]) + (
      jax.tree_util.SequenceKey(p[-1]),)
  assert names(path('mu', 'layers', 'q', 'kernel', 2), np.zeros((64, 32))) == ('embed', 'heads')
  # Adafactor's rows drop the largest dimension (embed, 64), its columns the second (heads·kv).
  assert names(path('v_row', 'layers', 'q', 'kernel', 0), np.zeros((32,))) == ('heads',)
  assert names(path('v_col', 'layers', 'q', 'kernel', 1), np.zeros((64,))) == ('embed',)


def test_adafactor_steps_scanned_layers_exactly_as_unrolled_ones():
  """T5's optimizer (factored, parameter-scaled, update-clipped per matrix) with global-norm
  clipping: the scanned model's update is the unrolled model's, stacked."""
  model = random_model(dataclasses.replace(TINY, d_model=128, num_heads=4, d_kv=32, d_ff=256))
  batch = batch_for(model.config)

  def update(m):
    params = nnx.to_pure_dict(nnx.state(m))
    axes = partitioning.param_logical_axes(nnx.state(m))
    tx = optimizer.as_matrices(optimizer.make_optimizer(0.01, grad_clip_norm=0.5), axes)
    grads = nnx.to_pure_dict(loss_and_grads(m, batch)[1])
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)

  want = t5.stack_layer_params(update(model))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               update(scanned_twin(model)), want)


def test_compiled_program_size_does_not_grow_with_depth():
  """The point of scanning: the lowered train step for 2 and 8 layers has the same size."""
  def lowered_size(layers):
    config = dataclasses.replace(TINY, scan_layers=True, num_encoder_layers=layers,
                                 num_decoder_layers=layers)
    model = abstract_model(config)
    graphdef, state = nnx.split(model)
    batch = batch_for(config)
    fn = jax.jit(jax.grad(lambda s: jnp.mean(
        nnx.merge(graphdef, s).logits_for_batch(batch))))
    return len(fn.lower(state).as_text())

  small, deep = lowered_size(2), lowered_size(8)
  assert abs(deep - small) < 0.01 * small, (small, deep)


def test_a_checkpoint_in_the_other_layout_names_the_flag_that_reads_it():
  from t5x_lite import checkpoints, gin_utils  # pylint: disable=import-outside-toplevel
  tree = lambda scan: {'params': nnx.to_pure_dict(nnx.state(abstract_model(
      dataclasses.replace(TINY, scan_layers=scan))))}
  with pytest.raises(gin_utils.UsageError, match='unrolled layers.*scan_layers=False'):
    checkpoints._check_matches(tree(False), tree(True), 'step 5', 'Use a new MODEL_DIR.')
  with pytest.raises(gin_utils.UsageError, match='scanned layers.*scan_layers=True'):
    checkpoints._check_matches(tree(True), tree(False), 'step 5', 'Use a new MODEL_DIR.')
