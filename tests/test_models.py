"""The T5 model: layer numerics against plain numpy, published sizes, masking, FLOP counts."""

import dataclasses
import functools
import glob
import math
import os
import types

import gin
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite import hardware, partitioning
from t5x_lite.models import (EncoderDecoder, T5Config, count_params, eager_rngs, flops,
                             forward_flops_per_example, training_flops_per_example)
from t5x_lite.models import layers
from references import jaxpr_matmul_flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = T5Config(vocab_size=97, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=2,
                num_decoder_layers=2, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)


# ---------------------------------------------------------------------------------------------
# Independent numpy references.
# ---------------------------------------------------------------------------------------------

def np_bucket(relative_position, bidirectional, num_buckets, max_distance):
  """T5 paper: buckets for relative offsets, exact for small ones, log-spaced up to max_distance.

  Written with integer arithmetic: offset n >= max_exact lands in bucket max_exact + j, where j
  counts the boundaries max_exact * (max_distance / max_exact) ** (k / m), k = 1, 2, ..., that n
  reaches (m = buckets left after the exact ones), capped at the last bucket.
  """
  out = np.zeros(np.shape(relative_position), np.int64)
  for idx, rel in np.ndenumerate(np.asarray(relative_position)):
    rel = int(rel)
    offset = 0
    if bidirectional:
      half = num_buckets // 2
      if rel > 0:        # Key after the query: second half of the table.
        offset = half
      distance, buckets = abs(rel), half
    else:
      distance, buckets = max(-rel, 0), num_buckets
    exact = buckets // 2
    if distance < exact:
      out[idx] = offset + distance
      continue
    m = buckets - exact
    j = 0
    # distance / exact >= (max_distance / exact) ** (k / m), raised to the m-th power.
    while (j + 1 <= m and
           distance ** m * exact ** (j + 1) >= max_distance ** (j + 1) * exact ** m):
      j += 1
    out[idx] = offset + min(exact + j, buckets - 1)
  return out


def np_rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def np_gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_attention(x_q, x_kv, wq, wk, wv, wo, bias, allowed):
  """One example. x [len, d]; w* [d, heads, d_kv], wo [heads, d_kv, d]; allowed [q, k] bool."""
  out = np.zeros((x_q.shape[0], wo.shape[-1]))
  for h in range(wq.shape[1]):
    q, k, v = x_q @ wq[:, h], x_kv @ wk[:, h], x_kv @ wv[:, h]
    for i in range(x_q.shape[0]):
      keys = np.flatnonzero(allowed[i])
      if not len(keys):
        continue   # A padding query: nothing to attend to.
      logits = q[i] @ k[keys].T + (0 if bias is None else bias[h, i, keys])
      p = np.exp(logits - logits.max())
      out[i] += (p / p.sum()) @ v[keys] @ wo[h]
  return out


def np_allowed(q_seg, k_seg, causal):
  allowed = (q_seg[:, None] == k_seg[None, :]) & (k_seg[None, :] > 0)
  if causal:
    allowed &= np.arange(len(q_seg))[:, None] >= np.arange(len(k_seg))[None, :]
  return allowed


def random_init(cls, *args, seed=0, **kwargs):
  """cls(*args) with numpy N(0, 1/prod(shape[:-1])) weights (about 1/fan_in).

  The real initialisers cost an XLA compile per random op on CPU (seconds per model); tests that
  are about the numerics of a forward pass don't need them. The `tiny` fixture uses the real ones.
  """
  abstract = nnx.eval_shape(lambda: cls(*args, rngs=eager_rngs(0), **kwargs))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  fill = lambda x: jnp.asarray(rng.normal(size=x.shape) / math.sqrt(math.prod(x.shape[:-1])),
                               x.dtype)
  return nnx.merge(graphdef, jax.tree.map(fill, state))


def apply(module, *args, method='__call__', **kwargs):
  """module.method(*args, **kwargs) under jit (one compile instead of one per op)."""
  return nnx.jit(lambda m, *a: getattr(m, method)(*a, **kwargs))(module, *args)


@functools.partial(jax.jit, static_argnames=('graphdef', 'deterministic'))
def run(graphdef, params, *batch, deterministic=True, dropout_key=None):
  """The model's forward pass from split state, as a trainer would call it."""
  rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
  return nnx.merge(graphdef, params)(*batch, deterministic=deterministic, rngs=rngs)


def params_of(module):
  return {'/'.join(map(str, path)): np.asarray(v[...], np.float64)
          for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


# ---------------------------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 16), (16, 100)])
def test_relative_position_buckets_match_the_paper(bidirectional, num_buckets, max_distance):
  rel = np.arange(-400, 401)
  got = layers.relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                        num_buckets=num_buckets, max_distance=max_distance)
  np.testing.assert_array_equal(np.asarray(got),
                                np_bucket(rel, bidirectional, num_buckets, max_distance))


def test_relative_position_bucket_landmarks():
  b = lambda r, bi: int(layers.relative_position_bucket(
      jnp.asarray(r), bidirectional=bi, num_buckets=32, max_distance=128))
  # Encoder: keys before (or at) the query use buckets 0..15, keys after use 16..31.
  assert [b(0, True), b(-1, True), b(1, True), b(-7, True), b(-8, True)] == [0, 1, 17, 7, 8]
  assert b(-128, True) == b(-10_000, True) == 15 and b(10_000, True) == 31
  # Decoder: the future collapses to bucket 0; the past has all 32 buckets.
  assert [b(5, False), b(-15, False), b(-16, False), b(-10_000, False)] == [0, 15, 16, 31]


KERNELS = ('cpu', 'xla')  # 'cudnn' needs a GPU to run; tests/test_aot.py compiles it


@pytest.mark.parametrize('kernels', KERNELS)
@pytest.mark.parametrize('num_in', [1, 2])
def test_dense_gradient_matches_numpy(num_in, kernels):
  """Both projections (the CPU one has a hand-written backward) against numpy."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, *(4, 5)[:num_in])).astype(np.float32)
  w = rng.standard_normal(((4, 5)[:num_in] + (6, 7))).astype(np.float32)
  g = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
  out, vjp = jax.vjp(lambda a, b: layers.dense(a, b, num_in, kernels=kernels), jnp.asarray(x),
                     jnp.asarray(w))
  k = x[0, 0].size
  rows, w2, g2 = x.reshape(-1, k), w.reshape(k, -1), g.reshape(6, -1)
  np.testing.assert_allclose(out, (rows @ w2).reshape(2, 3, 6, 7), rtol=1e-5, atol=1e-5)
  dx, dw = vjp(jnp.asarray(g))
  np.testing.assert_allclose(dx, (g2 @ w2.T).reshape(x.shape), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, (rows.T @ g2).reshape(w.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernels', KERNELS)
@pytest.mark.parametrize('batch_dims', [(), (3,)])
def test_relative_position_bias_gradient_is_a_per_bucket_sum(batch_dims, kernels):
  """bias_from_buckets (the CPU one has a hand-written backward) against numpy's scatter-add."""
  rng = np.random.default_rng(0)
  table = rng.standard_normal((8, 4)).astype(np.float32)  # [buckets, heads]
  buckets = rng.integers(0, 8, (*batch_dims, 5, 7))
  cotangent = rng.standard_normal((*batch_dims, 4, 5, 7)).astype(np.float32)
  out, vjp = jax.vjp(lambda t: layers.bias_from_buckets(t, jnp.asarray(buckets), kernels), table)
  np.testing.assert_array_equal(out, np.moveaxis(table[buckets], -1, -3))
  want = np.zeros_like(table)
  np.add.at(want, buckets.reshape(-1), np.moveaxis(cotangent, -3, -1).reshape(-1, 4))
  np.testing.assert_allclose(vjp(jnp.asarray(cotangent))[0], want, rtol=1e-5, atol=1e-5)


def np_attention_core(q, k, v, mask, bias):
  """float64 numpy, batched over projected heads: softmax over keys of q·k + bias (masked to
  -1e10; a query that sees no key gets a uniform softmax, as in the model), times v."""
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) + bias
  logits = np.where(mask, logits, -1e10)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum('bhqk,bkhd->bqhd', w / w.sum(-1, keepdims=True), v)


@pytest.mark.parametrize('kernels', KERNELS)
def test_attention_gradients_match_numpy_finite_differences(kernels):
  """Every input's gradient of each attention (a fully masked padding query included) against
  central differences of a float64 numpy forward."""
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, n, 2, 3)) for n in (3, 4, 4))
  bias = rng.standard_normal((1, 2, 3, 4))  # shared over the batch, as the relative-position bias
  mask = rng.random((2, 1, 3, 4)) < 0.7
  mask[:, :, :, 0] = True
  mask[1, :, 2, :] = False  # a padding query: it sees no key
  g = rng.standard_normal((2, 3, 2, 3))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  out, vjp = jax.vjp(lambda *a: layers.dot_product_attention(
      a[0], a[1], a[2], jnp.asarray(mask), a[3], kernels), f32(q), f32(k), f32(v), f32(bias))
  np.testing.assert_allclose(out, np_attention_core(q, k, v, mask, bias), rtol=1e-5, atol=1e-5)
  grads = vjp(f32(g))
  inputs = [q, k, v, bias]
  for i, (x, got) in enumerate(zip(inputs, grads)):
    want = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      loss = []
      for eps in (1e-6, -1e-6):
        moved = [y.copy() for y in inputs]
        moved[i][idx] += eps
        loss.append(np.sum(np_attention_core(*moved[:3], mask, moved[3]) * g))
      want[idx] = (loss[0] - loss[1]) / 2e-6
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f'input {i}')
  hidden = ~mask.any(0)[0]  # (q, k) pairs no batch row sees get exactly no bias gradient
  assert hidden.any() and np.all(np.asarray(grads[3])[0][:, hidden] == 0)


def test_rms_norm_matches_numpy_and_has_no_mean_or_bias():
  norm = layers.RMSNorm(16, epsilon=1e-6, rngs=nnx.Rngs(0))
  assert set(params_of(norm)) == {'scale'}
  np.testing.assert_array_equal(norm.scale[...], np.ones(16))
  norm.scale[...] = jax.random.normal(jax.random.key(1), (16,))
  x = np.asarray(jax.random.normal(jax.random.key(2), (3, 5, 16))) * 3 + 2
  np.testing.assert_allclose(apply(norm, jnp.asarray(x)),
                             np_rms_norm(x, params_of(norm)['scale'], 1e-6), atol=1e-5)


def test_gated_gelu_mlp_matches_numpy():
  mlp = random_init(layers.MLP, TINY)
  p = params_of(mlp)
  assert set(p) == {'wi_0/kernel', 'wi_1/kernel', 'wo/kernel'}
  x = np.asarray(jax.random.normal(jax.random.key(3), (2, 7, TINY.d_model)))
  want = (np_gelu_tanh(x @ p['wi_0/kernel']) * (x @ p['wi_1/kernel'])) @ p['wo/kernel']
  np.testing.assert_allclose(apply(mlp, jnp.asarray(x)), want, atol=1e-5)


def test_relu_mlp_has_a_single_wi():
  mlp = random_init(layers.MLP, T5Config(d_model=8, d_ff=12, mlp_activations=('relu',)))
  p = params_of(mlp)
  assert set(p) == {'wi/kernel', 'wo/kernel'}
  x = np.asarray(jax.random.normal(jax.random.key(3), (1, 4, 8)))
  np.testing.assert_allclose(apply(mlp, jnp.asarray(x)),
                             np.maximum(x @ p['wi/kernel'], 0) @ p['wo/kernel'], atol=1e-5)


@pytest.mark.parametrize('kernels', KERNELS)
@pytest.mark.parametrize('causal,segments,prefix', [
    (False, [1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0], None),  # encoder: bidirectional, packed, padded
    (True, [1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0], None),   # decoder: causal, packed, padded
    (True, [1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0],          # prefix LM: each example's first tokens
     [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0]),               # see each other both ways
])
def test_attention_with_relative_bias_and_packing_matches_numpy(causal, segments, prefix, kernels):
  cfg = dataclasses.replace(TINY, kernels=kernels)
  attn = random_init(layers.MultiHeadAttention, cfg)
  relpos = random_init(layers.RelativePositionBias, cfg, bidirectional=not causal, seed=1)
  seg = np.asarray([segments])
  length = seg.shape[1]
  x = np.asarray(jax.random.normal(jax.random.key(4), (1, length, cfg.d_model)))

  mask = layers.attention_mask(jnp.asarray(seg), jnp.asarray(seg), causal=causal,
                               bidirectional_prefix=None if prefix is None
                               else jnp.asarray([prefix]))
  bias = nnx.jit(lambda r: r(length, length))(relpos)
  got = np.asarray(apply(attn, jnp.asarray(x), jnp.asarray(x), mask, bias))

  p, table = params_of(attn), params_of(relpos)['embedding']
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]      # key - query
  bias = table[np_bucket(rel, not causal, cfg.relative_attention_num_buckets,
                         cfg.relative_attention_max_distance)].transpose(2, 0, 1)
  allowed = np_allowed(seg[0], seg[0], causal)
  if prefix is not None:  # both in the prefix (and, as always, in the same example)
    both = np.outer(prefix, prefix).astype(bool)
    allowed |= both & (seg[0][:, None] == seg[0][None, :])
  want = np_attention(x[0], x[0], p['query/kernel'], p['key/kernel'], p['value/kernel'],
                      p['out/kernel'], bias, allowed)
  real = seg[0] > 0   # Padding queries see nothing; their output is unused.
  np.testing.assert_allclose(got[0][real], want[real], atol=1e-5)


def test_query_init_folds_in_the_inverse_sqrt_d_kv_scaling():
  cfg = T5Config(d_model=256, num_heads=8, d_kv=64)
  attn = layers.MultiHeadAttention(cfg, rngs=nnx.Rngs(0))   # the real initialisers
  q_std, k_std = np.std(attn.query.kernel[...]), np.std(attn.key.kernel[...])
  np.testing.assert_allclose(k_std, 1 / math.sqrt(256), rtol=0.05)
  np.testing.assert_allclose(q_std, 1 / math.sqrt(256 * 64), rtol=0.05)


# ---------------------------------------------------------------------------------------------
# Published sizes, from the gin files.
# ---------------------------------------------------------------------------------------------

PUBLISHED = {
    't5_1_0/small': 60_506_624, 't5_1_0/base': 222_903_552, 't5_1_0/large': 737_668_096,
    't5_1_0/3B': 2_851_598_336, 't5_1_0/11B': 11_307_321_344,
    't5_1_1/small': 76_961_152, 't5_1_1/base': 247_577_856, 't5_1_1/large': 783_150_080,
    't5_1_1/xl': 2_849_757_184, 't5_1_1/xxl': 11_135_332_352,
}


def config_from_gin(name: str) -> T5Config:
  gin.clear_config()
  try:
    gin.parse_config_file(os.path.join(REPO, 'gin', 'models', name + '.gin'))
    return gin.query_parameter('%MODEL_CONFIG').scoped_configurable_fn()
  finally:
    gin.clear_config()


def test_every_model_gin_file_is_covered():
  files = glob.glob(os.path.join(REPO, 'gin', 'models', 't5_1_*', '*.gin'))
  assert sorted(os.path.relpath(f, os.path.join(REPO, 'gin', 'models'))[:-4]
                for f in files) == sorted(PUBLISHED)


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_param_count_matches_the_published_number(name):
  cfg = config_from_gin(name)
  assert cfg.vocab_size == 32128
  assert count_params(cfg) == PUBLISHED[name]


def test_every_param_names_its_logical_axes():
  allowed = {'vocab', 'embed', 'heads', 'kv', 'mlp', 'relpos_buckets'}
  state = nnx.state(nnx.eval_shape(lambda: EncoderDecoder(TINY, rngs=nnx.Rngs(0))))
  for path, var in nnx.to_flat_state(state):
    names = var.get_metadata().get('out_sharding')
    assert names is not None and len(names) == var.get_value().ndim, path
    assert set(names) <= allowed, (path, names)
  specs = dict(nnx.to_flat_state(nnx.get_partition_spec(state)))
  assert tuple(specs[('encoder', 'layers', 0, 'attention', 'query', 'kernel')].get_value()) == (
      'embed', 'heads', 'kv')


def test_tied_head_has_no_lm_head_and_scales_by_inverse_sqrt_d_model():
  tied = random_init(EncoderDecoder, dataclasses.replace(TINY, logits_via_embedding=True,
                                                         mlp_activations=('relu',)))
  untied = random_init(EncoderDecoder, TINY)
  assert not any('lm_head' in path for path in params_of(tied))
  assert params_of(untied)['lm_head/kernel'].shape == (TINY.d_model, TINY.vocab_size)

  x = np.asarray(jax.random.normal(jax.random.key(5), (2, 3, TINY.d_model)))
  embedding = params_of(tied)['token_embedder/embedding']
  np.testing.assert_allclose(apply(tied, jnp.asarray(x), method='logits'),
                             x @ embedding.T / math.sqrt(TINY.d_model), atol=1e-4)
  np.testing.assert_allclose(apply(untied, jnp.asarray(x), method='logits'),
                             x @ params_of(untied)['lm_head/kernel'], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The whole model.
# ---------------------------------------------------------------------------------------------

def packed_batch():
  """Two examples packed into one row of each feature, as EncDecFeatureConverter(pack=True)."""
  enc_tok = np.array([[5, 6, 7, 1, 8, 9, 10, 11, 1, 0, 0, 0]], np.int32)
  enc_seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0, 0]], np.int32)
  dec_tok = np.array([[0, 12, 13, 0, 14, 15, 16, 0]], np.int32)   # shifted targets, BOS = 0
  dec_seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32)
  return enc_tok, enc_seg, dec_tok, dec_seg


@pytest.fixture(scope='module')
def tiny():
  """A TINY model from the real initialisers (jitted init), with jitted forward and encode."""
  model = nnx.jit(lambda: EncoderDecoder(TINY, rngs=eager_rngs(0)))()
  graphdef, params = nnx.split(model)
  forward = functools.partial(run, graphdef, params)
  encode = jax.jit(lambda *batch: nnx.merge(graphdef, params).encode(*batch))
  return types.SimpleNamespace(graphdef=graphdef, params=params, forward=forward, encode=encode)


def test_forward_gives_finite_float32_logits(tiny):
  enc_tok, enc_seg, dec_tok, dec_seg = packed_batch()
  logits = tiny.forward(enc_tok, dec_tok, enc_seg, dec_seg)
  assert logits.shape == (1, 8, TINY.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  unpacked = tiny.forward(enc_tok, dec_tok)   # padding from tokens == 0
  assert unpacked.shape == (1, 8, TINY.vocab_size) and np.isfinite(np.asarray(unpacked)).all()


def test_packed_examples_do_not_see_each_other(tiny):
  enc_tok, enc_seg, dec_tok, dec_seg = packed_batch()
  enc_tok2 = np.where(enc_seg == 2, enc_tok + 20, enc_tok)
  dec_tok2 = np.where(dec_seg == 2, dec_tok + 30, dec_tok)
  first_enc, first_dec = enc_seg[0] == 1, dec_seg[0] == 1

  encoded = tiny.encode(enc_tok, enc_seg)
  encoded2 = tiny.encode(enc_tok2, enc_seg)
  np.testing.assert_allclose(encoded[0][first_enc], encoded2[0][first_enc], atol=1e-6)
  assert not np.allclose(encoded[0][enc_seg[0] == 2], encoded2[0][enc_seg[0] == 2])

  logits = tiny.forward(enc_tok, dec_tok, enc_seg, dec_seg)
  logits2 = tiny.forward(enc_tok2, dec_tok2, enc_seg, dec_seg)
  np.testing.assert_allclose(logits[0][first_dec], logits2[0][first_dec], atol=1e-5)


def test_decoder_is_causal(tiny):
  enc_tok, _, dec_tok, _ = packed_batch()
  changed = dec_tok.copy()
  changed[0, 5:] += 40
  a, b = tiny.forward(enc_tok, dec_tok), tiny.forward(enc_tok, changed)
  np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-5)
  assert not np.allclose(a[0, 5:], b[0, 5:])


def test_unpacked_padding_is_ignored(tiny):
  enc_tok, _, dec_tok, _ = packed_batch()
  short, padded = enc_tok[:, :4], np.pad(enc_tok[:, :4], ((0, 0), (0, 5)))
  np.testing.assert_allclose(tiny.forward(short, dec_tok), tiny.forward(padded, dec_tok), atol=1e-5)


def test_segment_ids_must_come_in_pairs(tiny):
  enc_tok, enc_seg, dec_tok, _ = packed_batch()
  with pytest.raises(ValueError, match='both encoder_segment_ids and decoder_segment_ids'):
    tiny.forward(enc_tok, dec_tok, enc_seg, None)


def test_dropout_takes_rngs_at_call_time_and_modules_hold_no_rng_state(tiny):
  cfg = dataclasses.replace(TINY, dropout_rate=0.3)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=eager_rngs(0))))
  # The params are the whole state: nothing random to carry through nnx.split.
  assert jax.tree.structure(nnx.state(nnx.merge(graphdef, tiny.params))) == jax.tree.structure(
      tiny.params)
  enc_tok, enc_seg, dec_tok, dec_seg = packed_batch()
  forward = lambda **kw: np.asarray(run(graphdef, tiny.params, enc_tok, dec_tok, enc_seg,
                                        dec_seg, **kw))
  clean = forward(deterministic=True)   # no rngs needed
  np.testing.assert_allclose(clean, tiny.forward(enc_tok, dec_tok, enc_seg, dec_seg), atol=1e-6)
  noisy = forward(deterministic=False, dropout_key=jax.random.key(1))
  np.testing.assert_array_equal(noisy, forward(deterministic=False,
                                               dropout_key=jax.random.key(1)))
  assert not np.allclose(clean, noisy)
  with pytest.raises(ValueError, match='no `rngs`'):
    forward(deterministic=False)


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  cfg = dataclasses.replace(TINY, dtype='bfloat16')
  abstract = nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=eager_rngs(0)))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(abstract))} == {jnp.dtype('float32')}
  enc_tok, enc_seg, dec_tok, dec_seg = packed_batch()
  batch = (enc_tok, dec_tok, enc_seg, dec_seg)
  logits = run(nnx.graphdef(abstract), tiny.params, *batch)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, tiny.forward(*batch), atol=0.1)


def test_forward_runs_under_a_mesh_with_logical_axis_rules(tiny):
  enc_tok, enc_seg, dec_tok, dec_seg = packed_batch()
  batch = (enc_tok, dec_tok, enc_seg, dec_seg)
  mesh = partitioning.create_mesh({'data': -1, 'model': 1})
  with jax.set_mesh(mesh), nnx.logical_axis_rules(partitioning.TWO_D_RULES):
    logits = jax.jit(lambda p, *b: nnx.merge(tiny.graphdef, p)(*b))(tiny.params, *batch)
  np.testing.assert_allclose(logits, tiny.forward(*batch), atol=1e-6)


@pytest.mark.parametrize('field,value,needle', [
    ('mlp_activations', ('gelu', 'swiglu'), "allowed: \\['relu', 'gelu', 'silu', 'linear'\\]"),
    ('mlp_activations', (), 'empty'),
    ('d_model', 0, 'd_model must be a positive int'),
    ('dropout_rate', 1.0, 'dropout_rate'),
    ('dtype', 'float64', 'dtype must be one of'),
    ('relative_attention_num_buckets', 7, 'even'),
])
def test_config_rejects_bad_values_with_a_clear_message(field, value, needle):
  with pytest.raises(ValueError, match=needle):
    T5Config(**{field: value})


# ---------------------------------------------------------------------------------------------
# FLOPs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('tied', [False, True])
def test_forward_flops_equal_the_matmuls_in_the_traced_forward_pass(tied):
  cfg = dataclasses.replace(TINY, logits_via_embedding=tied, num_decoder_layers=3,
                            d_kv=12)   # inner dim != d_model
  graphdef, params = nnx.split(nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0))))
  inputs_length, targets_length = 12, 7
  forward = lambda p, e, d: nnx.merge(graphdef, p)(e, d)
  enc = jnp.ones((1, inputs_length), jnp.int32)
  dec = jnp.ones((1, targets_length), jnp.int32)
  traced = jaxpr_matmul_flops(jax.make_jaxpr(forward)(params, enc, dec).jaxpr)
  assert forward_flops_per_example(cfg, inputs_length, targets_length) == traced


def test_forward_and_training_flops_agree_with_xla_cost_analysis():
  cfg = T5Config(vocab_size=512, d_model=64, num_heads=4, d_kv=16, d_ff=256,
                 num_encoder_layers=2, num_decoder_layers=2)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0))))
  forward = lambda p, e, d: nnx.merge(graphdef, p)(e, d)
  enc, dec = jnp.ones((1, 32), jnp.int32), jnp.ones((1, 16), jnp.int32)
  xla_flops = lambda f: jax.jit(f).lower(params, enc, dec).compile().cost_analysis()['flops']
  # XLA also counts the elementwise work (norms, softmax, GELU) that we leave out.
  ours = forward_flops_per_example(cfg, 32, 16)
  assert ours <= xla_flops(forward) <= 1.15 * ours
  ours = training_flops_per_example(cfg, 32, 16)
  grads = jax.grad(lambda p, e, d: forward(p, e, d).sum())
  assert ours <= xla_flops(grads) <= 1.15 * ours


def test_training_flops_are_three_forwards_and_not_six_n_t():
  cfg = T5Config()
  fwd = forward_flops_per_example(cfg, 512, 114)
  assert training_flops_per_example(cfg, 512, 114) == 3 * fwd
  # 6·N·T over all tokens would count every encoder weight on targets and vice versa.
  assert 3 * fwd < 6 * count_params(cfg) * (512 + 114)
  with pytest.raises(ValueError, match='positive'):
    flops.forward_flops_per_example(cfg, 0, 114)


# ---------------------------------------------------------------------------------------------
# Rematerialisation.
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _loss_and_grads_fn(cfg):
  """jit((params, batch, dropout key) -> (summed token cross-entropy, its gradient))."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=eager_rngs(0))))

  def loss(params, batch, key):
    enc, dec, targets = batch
    logits = nnx.merge(graphdef, params)(enc, dec, deterministic=False,
                                         rngs=nnx.Rngs(dropout=key))
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1).sum()

  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize('policy,shared', [('minimal', False), ('full', False), ('full', True)])
def test_remat_leaves_loss_and_gradients_unchanged_with_dropout(policy, shared):
  cfg = dataclasses.replace(TINY, dropout_rate=0.3, shared_encoder_decoder=shared,
                            num_encoder_layers=1, num_decoder_layers=1)
  params = nnx.state(random_init(EncoderDecoder, cfg))
  rng = np.random.default_rng(0)
  batch = tuple(rng.integers(1, 97, (2, n), dtype=np.int32) for n in (12, 8, 8))
  key = jax.random.key(5)
  loss, grads = _loss_and_grads_fn(cfg)(params, batch, key)
  assert not np.isclose(loss, _loss_and_grads_fn(cfg)(params, batch, jax.random.key(6))[0])
  remat_loss, remat_grads = _loss_and_grads_fn(dataclasses.replace(cfg, remat_policy=policy))(
      params, batch, key)
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               remat_grads, grads)


def test_config_rejects_an_unknown_remat_policy():
  with pytest.raises(ValueError, match=r"remat_policy must be one of \['none', 'minimal', 'full'\]"):
    T5Config(remat_policy='everything')


@pytest.mark.slow
@pytest.mark.parametrize('kernels,scan', [('cpu', False), ('xla', True)])
def test_remat_policies_trade_memory_for_flops_in_order(kernels, scan):
  """XLA's buffer assignment and FLOP count for the compiled train step, so they can be asserted:
  temp memory none > minimal > full, FLOPs none < minimal < full ≈ 4/3·none (the layers run
  forward twice; embedding, logits and optimizer once). Before the CPU projections' custom VJP
  was kept out of 'minimal', 'minimal' compiled exactly like 'full'. A scanned step's FLOPs
  count the loop body once, so only its memory is compared.

  XLA:CPU would drop the remat barriers and merge the recomputation back into the forward pass
  (see hardware.CPU_COMPILER_OPTIONS); TPU and GPU keep them, so the test keeps them too."""
  from t5x_lite import optimizer, trainer
  base = T5Config(vocab_size=128, d_model=128, num_heads=4, d_kv=32, d_ff=512,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16, kernels=kernels, scan_layers=scan)
  mesh = partitioning.create_mesh({'data': 1}, jax.devices()[:1])
  batch = {k: jax.ShapeDtypeStruct((8, 128 if k.startswith('encoder') else 32), jnp.int32)
           for k in ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                     'decoder_loss_weights')}

  def compiled(policy):
    cfg = dataclasses.replace(base, remat_policy=policy)
    tx = optimizer.make_optimizer(optimizer.learning_rate_schedule())
    setup = trainer.setup_train_state(cfg, tx, 0, mesh, partitioning.TWO_D_RULES)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(partitioning.TWO_D_RULES):
      lowered = jax.jit(trainer.make_train_step(setup.graphdef, setup.tx)).lower(
          setup.abstract_state, batch)
    c = lowered.compile(hardware.compiler_options('cpu'))
    return c.memory_analysis().temp_size_in_bytes, c.cost_analysis()['flops']

  (none_temp, none_flops), (min_temp, min_flops), (full_temp, full_flops) = map(
      compiled, ('none', 'minimal', 'full'))
  assert none_temp > min_temp > full_temp, (none_temp, min_temp, full_temp)
  if not scan:
    assert none_flops < min_flops < full_flops
    assert 1.15 < full_flops / none_flops < 4 / 3 + 0.01, full_flops / none_flops
