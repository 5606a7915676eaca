"""Model families: decoder-only LM, prefix LM, shared encoder-decoder, GPT-3 sizes, FLOPs.

Batches come from seqio's real feature converters; masks are checked against a numpy rule
written from the definitions (T5 Sec. 3.2.1, Fig. 3).
"""

import dataclasses
import glob
import math
import os

import gin
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import nnx

from t5x_lite.data.pipeline import feature_converter
from t5x_lite.models import (DecoderOnly, EncoderDecoder, T5Config, build_model, count_params,
                             eager_rngs, forward_flops_per_example, training_flops_per_example)
from t5x_lite.models import layers
from references import jaxpr_matmul_flops, random_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = T5Config(vocab_size=97, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=1,
                num_decoder_layers=1, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)
CAUSAL_LM = dataclasses.replace(TINY, architecture='decoder_only', num_encoder_layers=0)
PREFIX_LM = dataclasses.replace(CAUSAL_LM, architecture='prefix_lm')


def logits_for_batch(model, batch):
  """model.logits_for_batch under one jit."""
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  return nnx.jit(lambda m, b: m.logits_for_batch(b))(model, batch)


def converted(config, examples, lengths, pack):
  """`examples` (dicts of int lists) through the model's seqio converter, stacked to a batch."""
  keys = list(examples[0])
  ds = tf.data.Dataset.from_generator(
      lambda: ({k: np.asarray(ex[k], np.int32) for k in keys} for ex in examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys})
  rows = list(feature_converter(config, pack=pack)(ds, lengths).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# ---------------------------------------------------------------------------------------------
# Masks against numpy.
# ---------------------------------------------------------------------------------------------

def np_self_attention_allowed(segment_ids, prefix=None):
  """Query i may see key j: same non-padding segment, and j <= i unless both are in the prefix."""
  n = len(segment_ids)
  allowed = np.zeros((n, n), bool)
  for i in range(n):
    for j in range(n):
      if segment_ids[j] == 0 or segment_ids[i] != segment_ids[j]:
        continue
      both_prefix = prefix is not None and prefix[i] and prefix[j]
      allowed[i, j] = j <= i or both_prefix
  return allowed


@pytest.mark.parametrize('segments, prefix', [
    ([1, 1, 1, 1, 1, 1, 0, 0], None),                          # causal, unpacked
    ([1, 1, 1, 2, 2, 2, 2, 0], None),                          # causal, packed
    ([1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]),      # prefix LM, unpacked
    ([1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 0, 1, 1, 1, 0, 0]),      # prefix LM, packed
])
def test_self_attention_masks_match_numpy(segments, prefix):
  seg = jnp.asarray([segments], jnp.int32)
  pre = None if prefix is None else jnp.asarray([prefix], jnp.int32)
  mask = layers.attention_mask(seg, seg, causal=True, bidirectional_prefix=pre)
  assert mask.shape == (1, 1, 8, 8)
  np.testing.assert_array_equal(np.asarray(mask[0, 0]),
                                np_self_attention_allowed(segments, prefix))


def test_prefix_positions_see_each_other_but_not_the_next_segments_prefix():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2]], jnp.int32)
  pre = jnp.asarray([[1, 1, 0, 1, 1, 0]], jnp.int32)
  mask = np.asarray(layers.attention_mask(seg, seg, causal=True, bidirectional_prefix=pre))[0, 0]
  assert mask[0, 1]          # first input token sees the second (bidirectional)
  assert not mask[2, 3]      # no attention across packed examples, even prefix to prefix
  assert not mask[1, 3] and not mask[3, 1]
  assert not mask[0, 2]      # an input position never sees a target position


# ---------------------------------------------------------------------------------------------
# Decoder-only and prefix LM on real seqio batches.
# ---------------------------------------------------------------------------------------------

LM_EXAMPLES = [{'targets': [5, 6, 7, 8, 1]}, {'targets': [9, 10, 11, 1]},
               {'targets': [12, 13, 14, 15, 16, 1]}]
PREFIX_EXAMPLES = [{'inputs': [5, 6, 7, 1], 'targets': [8, 9, 1]},
                   {'inputs': [10, 11, 1], 'targets': [12, 13, 14, 1]}]


def test_build_model_and_feature_converter_dispatch_on_architecture():
  assert isinstance(nnx.eval_shape(lambda: build_model(TINY, eager_rngs(0))), EncoderDecoder)
  assert isinstance(nnx.eval_shape(lambda: build_model(CAUSAL_LM, eager_rngs(0))), DecoderOnly)
  assert isinstance(nnx.eval_shape(lambda: build_model(PREFIX_LM, eager_rngs(0))), DecoderOnly)
  assert isinstance(feature_converter(TINY), seqio.EncDecFeatureConverter)
  assert isinstance(feature_converter(CAUSAL_LM), seqio.DecoderFeatureConverter)
  assert isinstance(feature_converter(PREFIX_LM, pack=False), seqio.PrefixLMFeatureConverter)
  assert not feature_converter(PREFIX_LM, pack=False).pack


def test_decoder_only_has_no_cross_attention_or_encoder():
  state = nnx.state(nnx.eval_shape(lambda: build_model(CAUSAL_LM, eager_rngs(0))), nnx.Param)
  paths = {'/'.join(map(str, p)) for p, _ in nnx.to_flat_state(state)}
  assert not any('encoder' in p for p in paths), paths
  assert 'decoder/layers/0/self_attention/query/kernel' in paths
  assert 'lm_head/kernel' in paths
  tied = dataclasses.replace(CAUSAL_LM, logits_via_embedding=True)
  assert count_params(CAUSAL_LM) - count_params(tied) == 32 * 97


@pytest.mark.parametrize('config, examples, lengths', [
    (CAUSAL_LM, LM_EXAMPLES, {'targets': 16}),
    (PREFIX_LM, PREFIX_EXAMPLES, {'inputs': 8, 'targets': 8}),
])
def test_packed_logits_equal_each_example_alone(config, examples, lengths):
  model = random_model(config)
  packed = converted(config, examples, lengths, pack=True)
  assert packed['decoder_segment_ids'].shape[0] == 1        # all examples share one row
  alone = converted(config, examples, lengths, pack=False)
  logits_packed = np.asarray(logits_for_batch(model, packed))
  logits_alone = np.asarray(logits_for_batch(model, alone))
  assert logits_packed.dtype == np.float32 and np.isfinite(logits_packed).all()
  length = sum(lengths.values()) if config.architecture == 'prefix_lm' else lengths['targets']
  assert logits_packed.shape == (1, length, config.vocab_size)
  segments = packed['decoder_segment_ids'][0]
  for i in range(len(examples)):
    where = np.flatnonzero(segments == i + 1)
    np.testing.assert_allclose(logits_packed[0, where], logits_alone[i, :len(where)],
                               rtol=1e-5, atol=1e-5)


def test_prefix_lm_reads_its_inputs_bidirectionally_and_its_targets_causally():
  model = random_model(PREFIX_LM)
  batch = converted(PREFIX_LM, PREFIX_EXAMPLES[:1], {'inputs': 8, 'targets': 8}, pack=False)
  # [BOS, 5, 6, 7, 1, 8, 9, ...]: positions 0..4 hold the inputs (shifted), 0..4 are marked.
  np.testing.assert_array_equal(batch['decoder_causal_attention'][0, :6], [1, 1, 1, 1, 1, 0])
  base = np.asarray(logits_for_batch(model, batch))

  def changed_positions(position, token=40):
    edited = dict(batch, decoder_input_tokens=batch['decoder_input_tokens'].copy())
    edited['decoder_input_tokens'][0, position] = token
    diff = np.abs(np.asarray(logits_for_batch(model, edited)) - base).max(axis=-1)[0]
    return set(np.flatnonzero(diff > 1e-6).tolist())

  # Editing the last input token changes every position, earlier inputs included.
  assert changed_positions(3) >= {0, 1, 2, 3, 4, 5}
  # Editing a target token changes only that position and later ones.
  assert min(changed_positions(6)) == 6
  # The same edit in a causal LM never reaches back.
  causal = random_model(CAUSAL_LM)
  no_prefix = {k: v for k, v in batch.items() if k != 'decoder_causal_attention'}
  base_causal = np.asarray(logits_for_batch(causal, no_prefix))
  edited = dict(no_prefix, decoder_input_tokens=no_prefix['decoder_input_tokens'].copy())
  edited['decoder_input_tokens'][0, 3] = 40
  diff = np.abs(np.asarray(logits_for_batch(causal, edited)) - base_causal).max(axis=-1)[0]
  assert min(np.flatnonzero(diff > 1e-6)) == 3


def test_prefix_lm_needs_decoder_causal_attention_and_causal_lm_rejects_it():
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match='decoder_causal_attention'):
    random_model(PREFIX_LM)(tokens)
  with pytest.raises(ValueError, match='prefix_lm'):
    random_model(CAUSAL_LM)(tokens, None, jnp.ones((1, 4), jnp.int32))
  with pytest.raises(ValueError, match='build_model'):
    DecoderOnly(TINY, rngs=eager_rngs(0))


def test_encoder_decoder_logits_for_batch_on_a_seqio_batch():
  model = random_model(TINY)
  examples = [{'inputs': [5, 6, 7, 1], 'targets': [8, 9, 1]},
              {'inputs': [10, 11, 1], 'targets': [12, 13, 14, 1]}]
  batch = converted(TINY, examples, {'inputs': 8, 'targets': 8}, pack=True)
  logits = np.asarray(logits_for_batch(model, batch))
  assert logits.shape == (1, 8, 97) and np.isfinite(logits).all()
  direct = nnx.jit(lambda m, *a: m(*a))(
      model, *(jnp.asarray(batch[k]) for k in ('encoder_input_tokens', 'decoder_input_tokens',
                                                'encoder_segment_ids', 'decoder_segment_ids')))
  np.testing.assert_array_equal(logits, np.asarray(direct))


# ---------------------------------------------------------------------------------------------
# Shared encoder-decoder (T5 Table 2, "Enc-dec, shared").
# ---------------------------------------------------------------------------------------------

SHARED = dataclasses.replace(TINY, shared_encoder_decoder=True)


def test_shared_encoder_decoder_stores_each_shared_weight_once():
  model = nnx.eval_shape(lambda: build_model(SHARED, eager_rngs(0)))
  for enc, dec in zip(model.encoder.layers, model.decoder.layers):
    assert dec.self_attention is enc.attention and dec.mlp is enc.mlp
    assert dec.encoder_decoder_attention is not enc.attention
  assert model.decoder.relpos_bias.embedding is model.encoder.relpos_bias.embedding
  assert not model.decoder.relpos_bias.bidirectional   # the table is shared, not the bucketing
  # NNX flattens a shared object once, under its first path: the decoder's names.
  state = nnx.state(model, nnx.Param)
  assert not [p for p, _ in nnx.to_flat_state(state) if p[0] == 'encoder']
  # Saved: per layer the self-attention, MLP and two norms; the relpos table and final norm.
  d, i, f = TINY.d_model, TINY.inner_dim, TINY.d_ff
  per_layer = 4 * d * i + len(TINY.mlp_activations) * d * f + f * d + 2 * d
  saved = TINY.num_decoder_layers * per_layer + 8 * TINY.num_heads + d
  assert count_params(TINY) - count_params(SHARED) == saved


def test_shared_model_equals_an_unshared_one_with_tied_copies_and_sums_their_gradients():
  shared = random_model(SHARED)
  unshared = random_model(TINY, seed=1)
  pairs = [('relpos_bias', 'relpos_bias'), ('encoder_norm', 'decoder_norm')]
  layer_pairs = [('attention', 'self_attention'), ('mlp', 'mlp'),
                 ('pre_attention_layer_norm', 'pre_self_attention_layer_norm'),
                 ('pre_mlp_layer_norm', 'pre_mlp_layer_norm')]
  nnx.update(unshared.token_embedder, nnx.state(shared.token_embedder))
  nnx.update(unshared.lm_head, nnx.state(shared.lm_head))
  for enc_name, dec_name in pairs:
    nnx.update(getattr(unshared.encoder, enc_name), nnx.state(getattr(shared.encoder, enc_name)))
    nnx.update(getattr(unshared.decoder, dec_name), nnx.state(getattr(shared.encoder, enc_name)))
  for s_enc, s_dec, u_enc, u_dec in zip(shared.encoder.layers, shared.decoder.layers,
                                        unshared.encoder.layers, unshared.decoder.layers):
    for enc_name, dec_name in layer_pairs:
      nnx.update(getattr(u_enc, enc_name), nnx.state(getattr(s_enc, enc_name)))
      nnx.update(getattr(u_dec, dec_name), nnx.state(getattr(s_enc, enc_name)))
    for name in ('pre_cross_attention_layer_norm', 'encoder_decoder_attention'):
      nnx.update(getattr(u_dec, name), nnx.state(getattr(s_dec, name)))
  enc = jnp.asarray([[5, 6, 7, 1, 0]], jnp.int32)
  dec = jnp.asarray([[0, 8, 9, 1]], jnp.int32)

  def logits_and_grads(model):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: nnx.merge(graphdef, p)(enc, dec)
    out, grads = jax.jit(lambda p: (loss(p), jax.grad(lambda q: loss(q).sum())(p)))(params)
    return np.asarray(out), grads

  shared_logits, shared_grads = logits_and_grads(shared)
  unshared_logits, unshared_grads = logits_and_grads(unshared)
  assert shared_logits.shape == (1, 4, 97)
  np.testing.assert_allclose(shared_logits, unshared_logits, rtol=1e-5, atol=1e-5)
  # The shared leaf (stored under the decoder's name) gets both stacks' gradients.
  wo = lambda g, stack, name: np.asarray(g[stack]['layers'][0][name]['wo']['kernel'][...])
  np.testing.assert_allclose(wo(shared_grads, 'decoder', 'mlp'),
                             wo(unshared_grads, 'encoder', 'mlp')
                             + wo(unshared_grads, 'decoder', 'mlp'), rtol=1e-4, atol=1e-5)


def test_config_validates_architecture_and_sharing():
  with pytest.raises(ValueError, match='architecture'):
    dataclasses.replace(TINY, architecture='gpt')
  with pytest.raises(ValueError, match='num_encoder_layers must equal'):
    dataclasses.replace(TINY, shared_encoder_decoder=True, num_decoder_layers=2)
  with pytest.raises(ValueError, match='encoder_decoder'):
    dataclasses.replace(CAUSAL_LM, shared_encoder_decoder=True)
  with pytest.raises(ValueError, match='num_decoder_layers'):
    dataclasses.replace(CAUSAL_LM, num_decoder_layers=0)


# ---------------------------------------------------------------------------------------------
# GPT-3 sizes (Brown et al. 2020, Table 2.1).
# ---------------------------------------------------------------------------------------------

GPT3_PUBLISHED = {'125M': 125e6, '350M': 350e6, '760M': 760e6, '1.3B': 1.3e9, '2.7B': 2.7e9,
                  '6.7B': 6.7e9, '13B': 13e9, '175B': 175e9}


def config_from_gin(path):
  gin.clear_config()
  try:
    gin.parse_config_file(path)
    return gin.query_parameter('%MODEL_CONFIG').scoped_configurable_fn()
  finally:
    gin.clear_config()


def test_every_gpt3_gin_file_is_covered():
  files = glob.glob(os.path.join(REPO, 'gin', 'models', 'decoder_only', '*.gin'))
  assert sorted(os.path.basename(f)[:-4] for f in files) == sorted(GPT3_PUBLISHED)


@pytest.mark.parametrize('name', sorted(GPT3_PUBLISHED))
def test_gpt3_param_counts_are_within_3_percent_of_the_paper(name):
  cfg = config_from_gin(os.path.join(REPO, 'gin', 'models', 'decoder_only', name + '.gin'))
  assert cfg.architecture == 'decoder_only' and cfg.vocab_size == 50257
  assert cfg.d_ff == 4 * cfg.d_model and cfg.mlp_activations == ('gelu',)
  assert cfg.logits_via_embedding
  assert abs(count_params(cfg) / GPT3_PUBLISHED[name] - 1) < 0.03


# ---------------------------------------------------------------------------------------------
# FLOPs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('config', [CAUSAL_LM, PREFIX_LM,
                                    dataclasses.replace(PREFIX_LM, logits_via_embedding=True,
                                                        d_kv=12)])
def test_decoder_only_flops_equal_the_traced_matmuls(config):
  graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config, eager_rngs(0))))
  lengths = ({'targets': 11} if config.architecture == 'decoder_only'
             else {'inputs': 7, 'targets': 5})
  length = sum(lengths.values())
  batch = {'decoder_input_tokens': jnp.ones((1, length), jnp.int32),
           'decoder_causal_attention': jnp.ones((1, length), jnp.int32)}
  forward = lambda p, b: nnx.merge(graphdef, p).logits_for_batch(b)
  traced = jaxpr_matmul_flops(jax.make_jaxpr(forward)(params, batch).jaxpr)
  assert forward_flops_per_example(config, lengths) == traced
  assert training_flops_per_example(config, lengths) == 3 * traced


def test_flops_take_task_feature_lengths_for_every_family():
  assert (training_flops_per_example(TINY, {'inputs': 32, 'targets': 16})
          == training_flops_per_example(TINY, 32, 16))
  # A causal LM ignores 'inputs'; a prefix LM runs over inputs + targets.
  assert (training_flops_per_example(CAUSAL_LM, {'inputs': 99, 'targets': 24})
          == training_flops_per_example(PREFIX_LM, {'inputs': 8, 'targets': 16}))
  with pytest.raises(ValueError, match="'inputs'"):
    training_flops_per_example(PREFIX_LM, {'targets': 16})
  with pytest.raises(ValueError, match='positive'):
    training_flops_per_example(CAUSAL_LM, {'targets': 0})
