"""Claims about T5 span corruption in t5x_lite.data.objectives.

Reference numbers come from hand arithmetic, brute force or combinatorics in
this file; the seqio tests run real seqio + TF on a SentencePiece model trained
here on generated text.
"""

import functools
import math

import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf

from t5x_lite.data import objectives

NUM_EXTRA_IDS = 100


# ---------------------------------------------------------------------------
# random_spans_helper
# ---------------------------------------------------------------------------


def test_helper_gives_t5_lengths_for_512_inputs():
  assert objectives.random_spans_helper(512, 0.15, 3.0, 1, 1) == (568, 114)


@pytest.mark.parametrize('args, expected', [
    # 10 raw: 2 noise (round 1.5), 1 span -> inputs 8+1+EOS = 10, targets 2+1+EOS = 4.
    # 11 raw: 2 noise, 1 span -> inputs 9+1+1 = 11 > 10.
    ((10, 0.15, 3.0, 1, 1), (10, 4)),
    # 141 raw: 21 noise (21.15), 7 spans -> inputs 120+7+1 = 128, targets 21+7+1 = 29.
    # 142 raw: 21 noise (21.3), 7 spans -> inputs 121+7+1 = 129 > 128.
    ((128, 0.15, 3.0, 1, 1), (141, 29)),
    # Density 0.5: 95 raw -> 48 noise (47.5 to even), 16 spans -> inputs 47+16+1 = 64 but
    # targets 48+16+1 = 65 > 64, so T5 drops one raw token: 94 raw, targets 47+16+1 = 64.
    ((64, 0.5, 3.0, 1, 1), (94, 64)),
])
def test_helper_matches_hand_arithmetic(args, expected):
  assert objectives.random_spans_helper(*args) == expected


@pytest.mark.parametrize('inputs_length', [64, 128, 256, 512, 1024])
def test_helper_picks_longest_chunk_that_fits(inputs_length):
  """Brute force over raw lengths: the longest one whose inputs fit, EOS included."""
  def corrupted(raw):
    noise = round(raw * 0.15)
    spans = round(noise / 3.0)
    return raw - noise + spans + 1, noise + spans + 1

  best = max(raw for raw in range(1, 2 * inputs_length) if corrupted(raw)[0] <= inputs_length)
  expected = (best, corrupted(best)[1])
  assert objectives.random_spans_helper(inputs_length, 0.15, 3.0, 1, 1) == expected
  assert corrupted(best)[0] == inputs_length  # no padding left


# ---------------------------------------------------------------------------
# Noise masks, numpy and TF
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tf_mask_fn(noise_density, mean_noise_span_length):
  return tf.function(
      lambda length, seed: objectives.random_spans_noise_mask_tf(
          length, noise_density, mean_noise_span_length, seed),
      input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int64)])


def _mask(backend, length, seed, noise_density=0.15, mean_noise_span_length=3.0):
  if backend == 'numpy':
    return objectives.random_spans_noise_mask(length, noise_density, mean_noise_span_length, seed)
  fn = _tf_mask_fn(noise_density, mean_noise_span_length)
  return fn(tf.constant(length, tf.int32), tf.constant([seed, 7], tf.int64)).numpy()


def _spans(mask):
  """Lengths of the runs of True in a bool vector."""
  runs, current = [], 0
  for is_noise in mask:
    if is_noise:
      current += 1
    elif current:
      runs.append(current)
      current = 0
  return runs + ([current] if current else [])


BACKENDS = ['numpy', 'tf']


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('length, num_noise, num_spans', [
    (1, 0, 0),      # treated as length 2, [non-noise, noise], cut back to 1 token
    (2, 1, 1),      # round(0.3) = 0, raised to 1
    (5, 1, 1),      # round(0.75) = 1; round(1/3) = 0, raised to 1
    (10, 2, 1),     # round(1.5) = 2; round(2/3) = 1
    (37, 6, 2),     # round(5.55) = 6; round(2) = 2
    (100, 15, 5),
    (568, 85, 28),  # round(85.2) = 85; round(28.33) = 28
    (1000, 150, 50),
])
def test_mask_has_exact_noise_and_span_counts(backend, length, num_noise, num_spans):
  for seed in range(5):
    mask = _mask(backend, length, seed)
    assert mask.shape == (length,) and mask.dtype == bool
    assert mask.sum() == num_noise
    assert len(_spans(mask)) == num_spans
    assert not mask[0]  # starts with a non-noise span
    if length >= 2:
      assert mask[-1]  # and, as in T5, ends with a noise span


@pytest.mark.parametrize('backend', BACKENDS)
def test_mask_is_deterministic_by_seed(backend):
  a, b, c = (_mask(backend, 568, seed) for seed in (3, 3, 4))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_zero_density_mask_is_all_clean():
  assert not objectives.random_spans_noise_mask(50, 0.0, 3.0, seed=0).any()
  seed = tf.constant([1, 2], tf.int64)
  assert not objectives.random_spans_noise_mask_tf(50, 0.0, 3.0, seed).numpy().any()


def test_degenerate_span_counts_still_give_a_mask():
  """T5 cannot build 2 non-empty non-noise spans from 1 token; the span count is capped."""
  mask = objectives.random_spans_noise_mask(3, 0.5, 1.0, seed=0)
  np.testing.assert_array_equal(mask, [False, True, True])


@pytest.mark.parametrize('backend', BACKENDS)
def test_realised_density_and_span_length_match_paper_defaults(backend):
  rng = np.random.default_rng(0)
  noise = spans = tokens = 0
  for seed in range(300):
    mask = _mask(backend, int(rng.integers(200, 1000)), seed)
    noise += mask.sum()
    spans += len(_spans(mask))
    tokens += mask.size
  assert noise / tokens == pytest.approx(0.15, abs=0.002)
  assert noise / spans == pytest.approx(3.0, abs=0.05)


def _composition_part_law(n, k):
  """P(a given part has length j) when n items are cut uniformly into k positive parts."""
  return np.array([math.comb(n - j - 1, k - 2) / math.comb(n - 1, k - 1)
                   for j in range(1, n - k + 2)])


@pytest.mark.parametrize('backend', BACKENDS)
def test_span_lengths_follow_uniform_random_partition(backend):
  """Length 100: 15 noise and 85 clean tokens, each cut into 5 spans, every way equally likely."""
  noise_lengths, clean_lengths = [], []
  for seed in range(400):
    mask = _mask(backend, 100, seed)
    noise_lengths += _spans(mask)
    clean_lengths += _spans(~mask)
  for lengths, n in ((noise_lengths, 15), (clean_lengths, 85)):
    law = _composition_part_law(n, 5)
    freq = np.bincount(lengths, minlength=law.size + 1)[1:] / len(lengths)
    assert freq.size == law.size
    assert np.abs(freq - law).max() < 0.04


# ---------------------------------------------------------------------------
# Transforms against a plain-python reference
# ---------------------------------------------------------------------------


def _reference_sentinel_spans(tokens, mask, first_sentinel):
  """Walk the runs: each run of masked tokens becomes one sentinel, counting down."""
  out, sentinel, prev = [], first_sentinel, False
  for token, masked in zip(tokens, mask):
    if masked and not prev:
      out.append(sentinel)
      sentinel -= 1
    elif not masked:
      out.append(token)
    prev = masked
  return out


@pytest.fixture(scope='module')
def toy_vocab():
  return seqio.PassThroughVocabulary(size=1000)


def test_transforms_match_python_reference(toy_vocab):
  rng = np.random.default_rng(1)
  for trial in range(20):
    length = int(rng.integers(1, 60))
    tokens = rng.integers(2, 900, size=length).astype(np.int32)
    # Arbitrary masks (i.i.d., may start or end either way) as well as span masks.
    mask = rng.random(length) < 0.4 if trial % 2 else objectives.random_spans_noise_mask(
        length, 0.3, 2.0, seed=trial)
    args = (tf.constant(tokens), tf.constant(mask), toy_vocab)
    assert objectives.noise_span_to_unique_sentinel(*args).numpy().tolist() == (
        _reference_sentinel_spans(tokens, mask, 999))
    assert objectives.nonnoise_span_to_unique_sentinel(*args).numpy().tolist() == (
        _reference_sentinel_spans(tokens, ~mask, 999))
    np.testing.assert_array_equal(objectives.drop_noise_tokens(*args), tokens[~mask])
    np.testing.assert_array_equal(objectives.drop_nonnoise_tokens(*args), tokens[mask])


# ---------------------------------------------------------------------------
# span_corruption through seqio
# ---------------------------------------------------------------------------

WORDS = ('the quick brown fox jumps over lazy dog model token span noise sentinel '
         'encoder decoder train data text mask input target paper corpus').split()


def _documents(num_docs, seed=0):
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, size=int(rng.integers(20, 200)))) + '.'
          for _ in range(num_docs)]


@pytest.fixture(scope='module')
def sp_vocab(tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp('spm') / 'toy')
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_documents(300, seed=1)), model_prefix=prefix, vocab_size=48,
      model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
  return seqio.SentencePieceVocabulary(prefix + '.model', extra_ids=NUM_EXTRA_IDS)


def _output_features(vocab):
  return {'inputs': seqio.Feature(vocab, add_eos=True, required=False),
          'targets': seqio.Feature(vocab, add_eos=True)}


def _task(vocab, docs, **span_kwargs):
  source = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices({'text': docs}),
      splits=['train'])
  return seqio.Task(
      'test_objectives_span_corruption', source=source, output_features=_output_features(vocab),
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
          seqio.preprocessors.tokenize,
          functools.partial(objectives.span_corruption, **span_kwargs),
          seqio.preprocessors.append_eos_after_trim,
      ])


SEQUENCE_LENGTH = {'inputs': 512, 'targets': 114}


def _examples(task, seed):
  ds = task.get_dataset(SEQUENCE_LENGTH, split='train', use_cached=False, shuffle=False, seed=seed)
  return [{k: v.tolist() for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


@pytest.fixture(scope='module')
def corrupted(sp_vocab):
  docs = _documents(60)  # < 128 documents: one concatenated stream
  stream = [t for doc in docs for t in sp_vocab.encode(doc)]
  chunks = [stream[i:i + 568] for i in range(0, len(stream), 568)]
  return chunks, _examples(_task(sp_vocab, docs), seed=7)


def test_first_sentinel_is_extra_id_0_at_top_of_vocab(sp_vocab):
  assert objectives.sentinel_id(sp_vocab) == sp_vocab.vocab_size - 1
  assert sp_vocab.decode_tf(tf.constant([sp_vocab.vocab_size - 1])).numpy() == b'<extra_id_0>'
  assert sp_vocab.decode_tf(tf.constant([sp_vocab.vocab_size - 2])).numpy() == b'<extra_id_1>'


def test_full_chunks_give_exact_t5_lengths(corrupted):
  chunks, examples = corrupted
  assert len(chunks) >= 5 and len(examples) == len(chunks)
  for chunk, ex in zip(chunks, examples):
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1  # EOS from append_eos_after_trim
    if len(chunk) == 568:
      assert len(ex['inputs']) == 512
      assert len(ex['targets']) == 114
    else:
      assert len(ex['inputs']) < 512 and len(ex['targets']) <= 114


def _is_sentinel(vocab, token):
  return token >= vocab.vocab_size - NUM_EXTRA_IDS


def test_sentinels_count_down_from_extra_id_0(sp_vocab, corrupted):
  top = sp_vocab.vocab_size - 1
  for chunk, ex in zip(*corrupted):
    in_sentinels = [t for t in ex['inputs'] if _is_sentinel(sp_vocab, t)]
    out_sentinels = [t for t in ex['targets'] if _is_sentinel(sp_vocab, t)]
    assert in_sentinels == list(range(top, top - len(in_sentinels), -1))
    assert out_sentinels == in_sentinels
    assert ex['targets'][0] == top
    if len(chunk) == 568:
      assert len(in_sentinels) == 28
    # T5's mask ends on a noise span: the inputs end with a sentinel and the
    # targets end with that span's last token, with no closing sentinel.
    assert _is_sentinel(sp_vocab, ex['inputs'][-2])
    assert not _is_sentinel(sp_vocab, ex['targets'][-2])


def _restore(vocab, example):
  """Put back each sentinel of the inputs the span that follows it in the targets."""
  inputs, targets = example['inputs'][:-1], example['targets'][:-1]  # drop EOS
  spans, current = {}, None
  for t in targets:
    if _is_sentinel(vocab, t):
      current = spans.setdefault(t, [])
    else:
      current.append(t)
  return [u for t in inputs for u in (spans[t] if _is_sentinel(vocab, t) else [t])]


def test_filling_sentinels_with_target_spans_restores_the_text(sp_vocab, corrupted):
  for chunk, ex in zip(*corrupted):
    assert _restore(sp_vocab, ex) == chunk


def test_without_merging_each_document_is_chunked_on_its_own(sp_vocab):
  docs = _documents(6) + [' '.join(['span'] * 700)]  # one document longer than a chunk
  chunks = [tokens[i:i + 568]
            for tokens in (sp_vocab.encode(doc) for doc in docs)
            for i in range(0, len(tokens), 568)]
  examples = _examples(_task(sp_vocab, docs, merge_examples_to_reduce_padding=False), seed=0)
  assert [_restore(sp_vocab, ex) for ex in examples] == chunks


def test_seqio_seed_makes_corruption_reproducible(sp_vocab, corrupted):
  docs = _documents(60)
  again = _examples(_task(sp_vocab, docs), seed=7)
  other = _examples(_task(sp_vocab, docs), seed=8)
  assert again == corrupted[1]
  assert other != corrupted[1]


def test_reserved_for_packing_shortens_the_chunks(sp_vocab):
  docs = _documents(30)
  examples = _examples(_task(sp_vocab, docs, reserved_for_packing=12), seed=0)
  assert max(len(ex['inputs']) for ex in examples) == 500


def test_inputs_too_short_for_one_noise_span_are_rejected(sp_vocab):
  # 4 -> 4-token chunks, 1 noise token (0.6), round(1/3) = 0 spans; 10 is the first length whose
  # chunks (10 tokens) get 2 noise tokens (1.5 rounds to even) in round(2/3) = 1 span.
  ds = tf.data.Dataset.from_tensor_slices({'targets': tf.ragged.constant([[5, 6, 7]])})
  with pytest.raises(ValueError, match='inputs length 4 is too short .* at least 10 '):
    objectives.span_corruption(ds, {'inputs': 4, 'targets': 2}, _output_features(sp_vocab))


def _span_count_by_hand(inputs_length):
  """T5's length arithmetic re-done in plain Python: the chunk that corrupts to `inputs_length`
  (kept tokens + one sentinel per span + EOS), then its spans, round(round(L * 0.15) / 3)."""
  def spans(n):
    return round(round(n * 0.15) / 3)
  n = inputs_length
  while (n + 1) - round((n + 1) * 0.15) + spans(n + 1) + 1 <= inputs_length:
    n += 1
  return spans(n)


def test_more_noise_spans_than_sentinels_are_rejected_with_the_numbers(sp_vocab):
  ds = tf.data.Dataset.from_tensor_slices({'targets': tf.ragged.constant([[5, 6, 7]])})
  assert _span_count_by_hand(2048) == 114 and _span_count_by_hand(1790) <= NUM_EXTRA_IDS
  with pytest.raises(ValueError, match=r'makes 114 noise spans, but the vocabulary has 100 '
                     r"sentinels .*extra_ids >= 114.*sequence_length\['inputs'\] <= 18\d\d, or "
                     r'mean_noise_span_length >= 3\.5\.'):  # 3.4 lengthens the chunk to 101
    objectives.span_corruption(ds, {'inputs': 2048, 'targets': 512}, _output_features(sp_vocab))
  objectives.span_corruption(ds, {'inputs': 1790, 'targets': 512}, _output_features(sp_vocab))
  more = seqio.SentencePieceVocabulary(sp_vocab.sentencepiece_model_file, extra_ids=128)
  objectives.span_corruption(ds, {'inputs': 2048, 'targets': 512}, _output_features(more))


def test_too_short_targets_length_is_rejected(sp_vocab):
  ds = tf.data.Dataset.from_tensor_slices({'targets': tf.ragged.constant([[5, 6, 7]])})
  with pytest.raises(ValueError, match='at least 114'):
    objectives.span_corruption(ds, {'inputs': 512, 'targets': 100}, _output_features(sp_vocab))


# ---------------------------------------------------------------------------
# The other T5-study objectives (Raffel et al. 2020, Table 3): masks and transforms
# ---------------------------------------------------------------------------


def _seed(i):
  return tf.constant([i, 11], tf.int64)


def test_iid_mask_realises_the_noise_density():
  """200 x 1000 Bernoulli(0.15) draws: the mean is 0.15 within 6 standard errors (0.0048)."""
  masks = np.stack([objectives.iid_noise_mask_tf(1000, 0.15, _seed(i)).numpy()
                    for i in range(200)])
  assert abs(masks.mean() - 0.15) < 6 * math.sqrt(0.15 * 0.85 / masks.size)
  # Independent tokens: per-mask counts spread as a Binomial(1000, 0.15) (sd 11.3), not fixed.
  assert 8 < masks.sum(axis=1).std() < 15
  assert objectives.iid_noise_mask_tf(50, 1.0, _seed(0)).numpy().all()


def test_iid_mask_is_deterministic_by_seed():
  a, b, c = (objectives.iid_noise_mask_tf(300, 0.15, _seed(s)).numpy() for s in (3, 3, 4))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_bert_transform_splits_noise_80_10_10(toy_vocab):
  """All-noise mask over 100k distinct-looking tokens: mask / random / kept within 5 SE."""
  n = 100_000
  tokens = tf.constant(np.full(n, 500, np.int32))
  mask = tf.ones([n], tf.bool)
  out = objectives.noise_token_to_random_token_or_sentinel(tokens, mask, toy_vocab, _seed(1)).numpy()
  masked = out == 999
  kept = out == 500
  random = ~masked & ~kept
  for observed, p in ((masked, 0.8), (random, 0.1 * (1 - 1 / 996)), (kept, 0.1 + 0.1 / 996)):
    assert abs(observed.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
  # Random tokens are regular ids: never pad/eos/unk nor the mask id; they cover the range.
  assert out[random].min() >= 3 and out[random].max() < 999
  assert out[random].max() > 990 and out[random].min() < 10


def test_bert_transform_leaves_clean_tokens_alone(toy_vocab):
  tokens = tf.range(10, 1010)
  mask = tf.constant(np.arange(1000) % 2 == 0)
  out = objectives.noise_token_to_random_token_or_sentinel(tokens, mask, toy_vocab, _seed(2))
  np.testing.assert_array_equal(out.numpy()[1::2], np.arange(11, 1010, 2))


def test_mask_tokens_transform_puts_extra_id_0_on_every_noise_token(toy_vocab):
  tokens = np.arange(5, 25)
  mask = np.arange(20) % 3 == 0
  out = objectives.noise_token_to_sentinel(tf.constant(tokens), tf.constant(mask), toy_vocab)
  np.testing.assert_array_equal(out.numpy(), np.where(mask, 999, tokens))


def test_permute_noise_tokens_is_a_permutation_of_the_noise_only(toy_vocab):
  rng = np.random.default_rng(0)
  tokens = rng.permutation(np.arange(100, 400)).astype(np.int32)
  mask = rng.random(300) < 0.5
  out = objectives.permute_noise_tokens(tf.constant(tokens), tf.constant(mask), toy_vocab,
                                        _seed(5)).numpy()
  np.testing.assert_array_equal(out[~mask], tokens[~mask])
  assert sorted(out[mask]) == sorted(tokens[mask]) and (out[mask] != tokens[mask]).mean() > 0.9


def test_permute_all_tokens_gives_uniform_positions(toy_vocab):
  """Deshuffling: over 3000 shuffles of 6 tokens each lands in each slot about 1/6 of the time."""
  shuffle = tf.function(
      lambda seed: objectives.permute_noise_tokens(tf.range(6), tf.ones([6], tf.bool), toy_vocab,
                                                   seed),
      input_signature=[tf.TensorSpec([2], tf.int64)])
  counts = np.zeros((6, 6))
  for i in range(3000):
    out = shuffle(_seed(i)).numpy()
    counts[out, np.arange(6)] += 1
  assert np.abs(counts / 3000 - 1 / 6).max() < 5 * math.sqrt((1 / 6) * (5 / 6) / 3000)


def test_prefix_mask_splits_once_at_a_uniform_point():
  length = 11
  prefix_mask = tf.function(lambda seed: objectives.random_prefix_noise_mask_tf(length, 0.5, seed),
                            input_signature=[tf.TensorSpec([2], tf.int64)])
  prefixes = []
  for i in range(4000):
    mask = prefix_mask(_seed(i)).numpy()
    prefix = int((~mask).sum())
    assert not mask[:prefix].any() and mask[prefix:].all()   # one clean prefix, then noise
    prefixes.append(prefix)
  counts = np.bincount(prefixes, minlength=length)
  assert len(counts) == length and counts[0] == 0             # prefix in 1..length-1
  freq = counts[1:length] / 4000                               # uniform over 1..10
  assert np.abs(freq - 0.1).max() < 5 * math.sqrt(0.1 * 0.9 / 4000)
  # A one-token text stays whole (all prefix).
  assert not objectives.random_prefix_noise_mask_tf(1, 0.5, _seed(0)).numpy().any()


def _reference_replace_spans_targets(tokens, mask, first_sentinel):
  out, sentinel, prev = [], first_sentinel, False
  for token, masked in zip(tokens, mask):
    if masked and not prev:
      out.append(sentinel)
      sentinel -= 1
    if masked:
      out.append(token)
    prev = masked
  return out


def test_replace_spans_targets_put_a_sentinel_before_every_noise_run(toy_vocab):
  rng = np.random.default_rng(3)
  for trial in range(30):
    length = int(rng.integers(1, 60))
    tokens = rng.integers(3, 900, size=length).astype(np.int32)
    mask = rng.random(length) < 0.3
    got = objectives.noise_span_to_unique_sentinel_and_span(
        tf.constant(tokens), tf.constant(mask), toy_vocab).numpy().tolist()
    assert got == _reference_replace_spans_targets(tokens, mask, 999)
    if trial % 2 == 0:  # span-corruption masks: same as the T5 targets transform
      span_mask = objectives.random_spans_noise_mask(length, 0.3, 2.0, seed=trial)
      args = (tf.constant(tokens), tf.constant(span_mask), toy_vocab)
      assert (objectives.noise_span_to_unique_sentinel_and_span(*args).numpy().tolist()
              == objectives.nonnoise_span_to_unique_sentinel(*args).numpy().tolist())
