"""Decoding: the KV cache reproduces the teacher-forced pass, and each search method does what it
claims (greedy, sampling filters, beam search = exhaustive search, EOS handling, one compile).

References are independent of decoding.py: teacher-forced logits of the model, numpy softmax and
log-softmax, and brute-force enumeration of every sequence of a tiny vocabulary.
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_lite import decoding
from t5x_lite.models import T5Config, build_model, eager_rngs
from t5x_lite.models import layers
from references import random_model

# One decoder layer keeps each decode's compile short; the cache test uses two (per-layer caches).
TINY = T5Config(vocab_size=97, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=1,
                num_decoder_layers=1, relative_attention_num_buckets=8,
                relative_attention_max_distance=16)
ARCHITECTURES = ('encoder_decoder', 'decoder_only', 'prefix_lm')
LENGTH = 8  # new tokens


def config_for(architecture, **changes):
  encoder_layers = TINY.num_encoder_layers if architecture == 'encoder_decoder' else 0
  return dataclasses.replace(TINY, architecture=architecture, num_encoder_layers=encoder_layers,
                             **changes)


def prompt_batch(architecture, seed=0, vocab_size=TINY.vocab_size):
  """Three unpacked rows with inputs of different lengths, laid out as the feature converters
  do: encoder inputs, or BOS + inputs marked by decoder_causal_attention."""
  rng = np.random.default_rng(seed)
  lengths = [5, 2, 7]
  if architecture == 'encoder_decoder':
    tokens = np.zeros((3, 7), np.int32)
    for row, n in enumerate(lengths):
      tokens[row, :n] = rng.integers(2, vocab_size, n)
    return {'encoder_input_tokens': tokens}
  tokens = np.zeros((3, 8), np.int32)
  for row, n in enumerate(lengths):
    tokens[row, 1:n + 1] = rng.integers(2, vocab_size, n)
  causal_attention = (np.arange(8)[None] <= np.array(lengths)[:, None]).astype(np.int32)
  return {'decoder_input_tokens': tokens, 'decoder_causal_attention': causal_attention}


# Decoding each family with and without the cache compiles twice per family; the prefix LM
# (prefill, bidirectional prompt, rows of different prompt lengths) runs in the quick set.
ARCHITECTURE_PARAMS = [pytest.param('encoder_decoder', marks=pytest.mark.slow),
                       pytest.param('decoder_only', marks=pytest.mark.slow), 'prefix_lm']


def log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


_encdec_logits = nnx.jit(lambda model, encoder_tokens, decoder_inputs:
                         model(encoder_tokens, decoder_inputs))
_lm_logits = nnx.jit(lambda model, tokens, prefix: model(tokens, None, prefix))


def teacher_forced(model, batch, tokens):
  """[b, len, vocab] numpy log-probabilities of position t of `tokens` given the prompt and
  tokens[:, :t], from one teacher-forced pass."""
  arch = model.config.architecture
  if arch == 'encoder_decoder':
    decoder_inputs = np.pad(tokens[:, :-1], ((0, 0), (1, 0)))
    return log_softmax(_encdec_logits(model, batch['encoder_input_tokens'], decoder_inputs))
  prompt_length = batch['decoder_causal_attention'].sum(1)
  width = batch['decoder_input_tokens'].shape[1]
  full = np.zeros((len(tokens), width + tokens.shape[1]), np.int32)
  for row, n in enumerate(prompt_length):
    full[row, :n] = batch['decoder_input_tokens'][row, :n]
    full[row, n:n + tokens.shape[1] - 1] = tokens[row, :-1]
  prefix = (np.arange(full.shape[1])[None] < prompt_length[:, None]).astype(np.int32)
  log_probs = log_softmax(_lm_logits(model, full, prefix if arch == 'prefix_lm' else None))
  return np.stack([log_probs[row, n - 1:n - 1 + tokens.shape[1]]
                   for row, n in enumerate(prompt_length)])


def until_eos(tokens, eos=decoding.EOS_ID):
  """[b, len] bool: positions up to and including each row's first EOS."""
  return np.cumsum(tokens == eos, axis=1) - (tokens == eos) == 0


def chosen(log_probs, tokens):
  return np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------------------------
# The cache.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ARCHITECTURES)
def test_cached_logits_equal_teacher_forced_logits_at_every_step(arch):
  """Prefill (prompts of different lengths) then one token per step, against one full pass."""
  model = random_model(config_for(arch, num_decoder_layers=2))
  batch = prompt_batch(arch)
  new = np.random.default_rng(1).integers(2, TINY.vocab_size, (3, 6)).astype(np.int32)

  def steps(model, cache, tokens, index):
    """decode_step at each position index, index + 1, ... of `tokens` [b, n] (one scan)."""
    def step(carry, token):
      cache, index = carry
      logits, cache = model.decode_step(cache, token[:, None], index)
      return (cache, index + 1), logits[:, 0]
    return jnp.swapaxes(jax.lax.scan(step, (cache, index), tokens.T)[1], 0, 1)

  if arch == 'encoder_decoder':
    decoder_inputs = np.pad(new[:, :-1], ((0, 0), (1, 0)))

    @nnx.jit
    def both(model, encoder_tokens, decoder_inputs):
      cache = model.init_cache(encoder_tokens, decoder_inputs.shape[1])
      return (model(encoder_tokens, decoder_inputs),
              steps(model, cache, decoder_inputs, jnp.zeros((3,), jnp.int32)))

    full, cached = both(model, batch['encoder_input_tokens'], decoder_inputs)
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)
    return

  prompt_length = batch['decoder_causal_attention'].sum(1)  # BOS + inputs: 6, 3, 8
  prompt = batch['decoder_input_tokens'] * batch['decoder_causal_attention']
  tokens = np.zeros((3, prompt.shape[1] + new.shape[1]), np.int32)
  for row, n in enumerate(prompt_length):
    tokens[row, :n] = prompt[row, :n]
    tokens[row, n:n + new.shape[1]] = new[row]
  prefix = (np.arange(tokens.shape[1])[None] < prompt_length[:, None]).astype(np.int32)

  @nnx.jit
  def both(model, tokens, prefix, prompt, prompt_length):
    prefix_lm = arch == 'prefix_lm'
    full = model(tokens, None, prefix if prefix_lm else None)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1],
                             prompt_length if prefix_lm else None)
    prefill, cache = model.decode_step(cache, prompt, 0)
    return full, prefill, steps(model, cache, new[:, :-1], prompt_length)

  full, prefill, stepped = both(model, tokens, prefix, prompt, jnp.asarray(prompt_length))
  for row, n in enumerate(prompt_length):
    np.testing.assert_allclose(prefill[row, :n], full[row, :n], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stepped[row], full[row, n:n + new.shape[1] - 1], atol=1e-5,
                               rtol=1e-5)


def test_relative_position_bias_takes_one_offset_per_row():
  relpos = random_model(config_for('decoder_only')).decoder.relpos_bias

  @nnx.jit
  def biases(relpos):
    per_row = relpos(2, 16, query_offset=jnp.array([0, 3, 11]))
    return per_row, [relpos(2, 16, query_offset=o) for o in (0, 3, 11)], relpos(16, 16)

  per_row, one_by_one, square = biases(relpos)
  assert per_row.shape == (3, TINY.num_heads, 2, 16)
  for row, bias in enumerate(one_by_one):
    np.testing.assert_array_equal(per_row[row], bias[0])
  # Rows 0..1 of the 16x16 teacher-forced bias are the queries at offset 0.
  np.testing.assert_array_equal(per_row[0], square[0, :, :2])


def test_decoding_mask_over_a_full_cache_is_the_teacher_forced_mask():
  prefix_lengths = np.array([1, 4, 6])
  positions = np.broadcast_to(np.arange(6), (3, 6))
  ones = np.ones((3, 6), np.int32)
  prefix = (np.arange(6)[None] < prefix_lengths[:, None]).astype(np.int32)

  @jax.jit
  def masks(positions, prefix_lengths, prefix):
    return (layers.decoding_attention_mask(positions, 6, prefix_lengths),
            layers.attention_mask(ones, ones, causal=True, bidirectional_prefix=prefix),
            layers.decoding_attention_mask(positions[:, 2:3], 6, prefix_lengths))

  cached, expected, one = masks(positions, prefix_lengths, prefix)
  np.testing.assert_array_equal(cached, expected)
  # A single query at position 2 of a 6-slot cache sees slots 0..2 (and its prompt, if longer).
  np.testing.assert_array_equal(one[:, 0, 0], [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                                               [1, 1, 1, 1, 1, 1]])


def test_write_cache_writes_each_row_at_its_own_index():
  buffer = jnp.zeros((2, 5, 1), jnp.float32)
  out = layers.write_cache(buffer, jnp.array([[[1.0], [2.0]], [[3.0], [4.0]]]), jnp.array([0, 3]))
  np.testing.assert_array_equal(out[..., 0], [[1, 2, 0, 0, 0], [0, 0, 0, 3, 4]])


# ---------------------------------------------------------------------------------------------
# Search.
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch', ARCHITECTURE_PARAMS)
def test_greedy_with_cache_equals_greedy_without(arch):
  model = random_model(config_for(arch))
  batch = prompt_batch(arch)
  cached, cached_scores = decoding.decode(model, batch, max_decode_length=LENGTH)
  uncached, uncached_scores = decoding.decode(model, batch, max_decode_length=LENGTH,
                                              use_cache=False)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_allclose(cached_scores, uncached_scores, atol=1e-4, rtol=1e-5)
  # Each token is the argmax of the teacher-forced distribution after its prefix, and the score
  # is the sum of their log-probabilities up to EOS.
  tokens = np.asarray(cached)
  log_probs, live = teacher_forced(model, batch, tokens), until_eos(tokens)
  np.testing.assert_array_equal(np.where(live, tokens, 0),
                                np.where(live, log_probs.argmax(-1), 0))
  np.testing.assert_allclose(cached_scores, (chosen(log_probs, tokens) * live).sum(1),
                             atol=1e-4, rtol=1e-5)


def test_eos_stops_a_row_and_pads_it():
  model = random_model(config_for('encoder_decoder'))
  batch = prompt_batch('encoder_decoder')
  greedy = np.asarray(decoding.decode(model, batch, max_decode_length=LENGTH)[0])
  assert (greedy != decoding.EOS_ID).all()  # so the default EOS stops nothing here
  eos = int(greedy[0, 1])  # pretend row 0's second token is EOS
  tokens, scores = decoding.decode(model, batch, max_decode_length=LENGTH, eos_id=eos)
  tokens = np.asarray(tokens)
  for row in range(len(greedy)):
    hits = np.flatnonzero(greedy[row] == eos)
    stop = hits[0] + 1 if len(hits) else LENGTH
    np.testing.assert_array_equal(tokens[row, :stop], greedy[row, :stop])
    assert (tokens[row, stop:] == decoding.PAD_ID).all()
  assert tokens[0, 1] == eos and (tokens[0, 2:] == 0).all()
  live = until_eos(tokens, eos)
  expected = (chosen(teacher_forced(model, batch, tokens), tokens) * live).sum(1)
  np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize('options', [
    pytest.param(dict(top_k=1), id='top_k=1'),
    pytest.param(dict(top_p=1e-6), id='top_p=1e-6', marks=pytest.mark.slow),
    pytest.param(dict(temperature=1e-5), id='temperature=1e-5')])
def test_sampling_that_keeps_only_the_best_token_is_greedy(options):
  model = random_model(config_for('prefix_lm'))
  batch = prompt_batch('prefix_lm')
  greedy, greedy_scores = decoding.decode(model, batch, max_decode_length=LENGTH)
  sampled, scores = decoding.decode(model, batch, max_decode_length=LENGTH, method='sample',
                                    rng=jax.random.key(7), **options)
  np.testing.assert_array_equal(sampled, greedy)
  np.testing.assert_allclose(scores, greedy_scores, atol=1e-5)


def test_sampling_frequencies_follow_the_filtered_tempered_softmax():
  """One step, many identical rows: token counts against numpy's softmax(logits / T) restricted
  to the top-k, then to the top-p nucleus (a chi-square bound at about six sigma)."""
  temperature, top_k, top_p, rows = 0.7, 12, 0.8, 6000
  model = random_model(config_for('encoder_decoder'), seed=3)
  encoder_tokens = np.tile(prompt_batch('encoder_decoder')['encoder_input_tokens'][:1], (rows, 1))
  tokens, _ = decoding.decode(model, {'encoder_input_tokens': encoder_tokens},
                              max_decode_length=1, method='sample', temperature=temperature,
                              top_k=top_k, top_p=top_p, rng=jax.random.key(0))
  counts = np.bincount(np.asarray(tokens)[:, 0], minlength=TINY.vocab_size)

  logits = np.asarray(_encdec_logits(model, encoder_tokens[:1], np.zeros((1, 1), np.int32)))
  probs = np.exp(log_softmax(logits[0, 0] / temperature))
  order = np.argsort(-probs)
  keep = order[:top_k]
  kept = probs[keep] / probs[keep].sum()
  nucleus = keep[:np.searchsorted(np.cumsum(kept), top_p) + 1]
  expected = np.zeros_like(probs)
  expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
  assert 2 <= len(nucleus) < top_k  # both filters bite on this model

  assert counts[expected == 0].sum() == 0
  observed, expected_counts = counts[nucleus], rows * expected[nucleus]
  chi2 = ((observed - expected_counts) ** 2 / expected_counts).sum()
  dof = len(nucleus) - 1
  assert chi2 < dof + 6 * math.sqrt(2 * dof) + 10, (chi2, observed, expected_counts)


def test_filter_logits_keeps_the_top_k_then_the_nucleus():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.3, 0.2, 0.05]]))
  keep = lambda **kw: np.isfinite(np.asarray(decoding.filter_logits(logits, **kw)))[0].tolist()
  assert keep(top_k=2) == [False, True, True, False, False]
  assert keep(top_p=0.6) == [False, True, True, False, False]   # 0.4 < 0.6 <= 0.7
  assert keep(top_p=0.7) == [False, True, True, False, False]
  assert keep(top_p=0.71) == [False, True, True, True, False]
  assert keep(top_p=1e-9) == [False, True, False, False, False]
  assert keep(top_k=3, top_p=0.95) == [False, True, True, True, False]


@pytest.mark.parametrize('alpha', [pytest.param(0.0, marks=pytest.mark.slow), 3.0])
def test_beam_search_equals_exhaustive_search(alpha):
  """Every sequence of a 4-token vocabulary up to length 3 ending in EOS, scored by teacher
  forcing and T5X's length penalty: beam search with num_beams = V**L finds the best."""
  vocab, length = 4, 3
  config = dataclasses.replace(config_for('encoder_decoder'), vocab_size=vocab)
  model = random_model(config, seed=5)
  batch = prompt_batch('encoder_decoder', seed=2, vocab_size=vocab)
  tokens, scores = decoding.decode(model, batch, max_decode_length=length, method='beam',
                                   num_beams=vocab ** length, alpha=alpha)

  finished = [list(body) + [decoding.EOS_ID]
              for n in range(length)
              for body in itertools.product([t for t in range(vocab) if t != 1], repeat=n)]
  padded = np.array([s + [0] * (length - len(s)) for s in finished], np.int32)
  lengths = np.array([len(s) for s in finished])
  rows = len(tokens)
  # Every (row, sequence) pair in one teacher-forced batch.
  encoder_tokens = np.repeat(batch['encoder_input_tokens'], len(padded), axis=0)
  candidates = np.tile(padded, (rows, 1))
  log_probs = chosen(teacher_forced(model, {'encoder_input_tokens': encoder_tokens}, candidates),
                     candidates) * until_eos(candidates)
  seq_log_probs = log_probs.sum(1).reshape(rows, len(padded))
  penalised = seq_log_probs / ((5 + lengths) / 6) ** alpha
  for row in range(rows):
    best = int(np.argmax(penalised[row]))
    assert np.sort(penalised[row])[-1] - np.sort(penalised[row])[-2] > 1e-4  # a unique optimum
    np.testing.assert_array_equal(tokens[row], padded[best])
    np.testing.assert_allclose(scores[row], seq_log_probs[row, best], atol=1e-4)


@pytest.mark.slow
def test_beam_search_with_cache_equals_beam_search_without():
  model = random_model(config_for('prefix_lm'))
  batch = prompt_batch('prefix_lm')
  cached = decoding.decode(model, batch, max_decode_length=LENGTH, method='beam', num_beams=3)
  uncached = decoding.decode(model, batch, max_decode_length=LENGTH, method='beam', num_beams=3,
                             use_cache=False)
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[1], uncached[1], atol=1e-4, rtol=1e-5)


def test_decode_compiles_once_per_batch_shape_and_options():
  compiled = decoding._decode_jit._cache_size  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  sizes = [compiled()]
  for seed in range(3):  # new weights, inputs and rng each time; same shapes and options
    model = random_model(config_for('encoder_decoder'), seed=seed)
    batch = {'encoder_input_tokens': rng.integers(2, TINY.vocab_size, (3, 7))}
    decoding.decode(model, batch, max_decode_length=LENGTH, rng=jax.random.key(seed))
    sizes.append(compiled())
  assert sizes[1] - sizes[0] <= 1 and sizes[1] == sizes[2] == sizes[3]


@pytest.mark.parametrize('options, message', [
    (dict(method='nucleus'), 'method'), (dict(top_p=0.0), 'top_p'), (dict(top_k=1000), 'top_k'),
    (dict(temperature=-1.0), 'temperature'), (dict(max_decode_length=0), 'max_decode_length')])
def test_bad_options_are_rejected_before_compiling(options, message):
  model = random_model(config_for('encoder_decoder'))
  kwargs = {'max_decode_length': 4, **options}
  with pytest.raises(ValueError, match=message):
    decoding.decode(model, prompt_batch('encoder_decoder'), **kwargs)
