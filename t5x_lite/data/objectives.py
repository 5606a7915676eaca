"""Self-supervised denoising objectives, starting with T5 span corruption.

The shape follows the T5 paper (Raffel et al. 2020, sec. 3.1.4 and 3.3): an
objective is a *noise mask* over the tokens of a text plus two *transforms*,
one that builds the inputs and one that builds the targets from the tokens and
the mask. Span corruption is

    mask    = random_spans_noise_mask(...)        (15% noise, mean span 3)
    inputs  = noise_span_to_unique_sentinel(...)  (each noise span -> <extra_id_i>)
    targets = nonnoise_span_to_unique_sentinel(...)

so other objectives (prefix LM, BERT-style, deshuffling, i.i.d. noise) are new
masks or transforms fed to the same `denoise`.

Everything that runs inside tf.data takes a stateless seed (an int tensor of
shape [2], as `seqio.map_over_dataset(num_seeds=1)` passes it), so a seqio Task
is reproducible given the seed of `Task.get_dataset` / `seqio.map_seed_manager`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

# T5 paper, sec. 3.1.4 ("Unsupervised objective") and the span-length sweep of
# sec. 3.3.4: corrupt 15% of tokens in spans of mean length 3.
DEFAULT_NOISE_DENSITY = 0.15
DEFAULT_MEAN_NOISE_SPAN_LENGTH = 3.0
# T5 picks one window of at most this many tokens from each document before
# concatenating, so a single huge document cannot dominate a batch of chunks.
MAX_DOCUMENT_CHUNK_LENGTH = 65536
# Documents concatenated at a time before splitting into chunks (T5's value).
CONCAT_BATCH_SIZE = 128

# A transform maps (tokens, noise_mask, vocabulary, seed) to a new 1-D tokens
# tensor; `seed` is a [2] stateless seed for transforms that draw (None if unused).
Transform = Callable[[tf.Tensor, tf.Tensor, seqio.Vocabulary, Optional[tf.Tensor]], tf.Tensor]


# ---------------------------------------------------------------------------
# Lengths.
# ---------------------------------------------------------------------------


def _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length,
                       extra_tokens_per_span_inputs, extra_tokens_per_span_targets):
  """(inputs, targets) lengths, EOS included, of a `tokens_length` chunk."""
  num_noise_tokens = int(round(tokens_length * noise_density))
  num_nonnoise_tokens = tokens_length - num_noise_tokens
  num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
  inputs = num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1
  targets = num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1
  return inputs, targets


def random_spans_helper(inputs_length, noise_density, mean_noise_span_length,
                        extra_tokens_per_span_inputs, extra_tokens_per_span_targets):
  """Raw chunk length that corrupts to exactly `inputs_length` (EOS included).

  Chunks of this many tokens leave no padding in the inputs, which is why T5
  splits text into 568-token chunks for 512-token inputs (noise 0.15, spans of
  mean 3, one sentinel per span: 568 -> 483 kept + 28 sentinels + EOS = 512,
  targets 85 + 28 + EOS = 114). The inputs length grows by at most one per raw
  token, so the largest length that still fits is found by stepping up.

  Returns:
    (tokens_length, targets_length), the targets length including EOS. As in
    T5, when noise_density is 0.5 and targets would come out longer than
    inputs, one raw token is dropped so targets match the (round) inputs length.
  """
  if inputs_length < 2:
    raise ValueError(f'inputs_length must be >= 2 (room for a token and EOS), got {inputs_length}.')
  _check_noise(noise_density, mean_noise_span_length)
  lengths = lambda n: _corrupted_lengths(n, noise_density, mean_noise_span_length,
                                         extra_tokens_per_span_inputs,
                                         extra_tokens_per_span_targets)
  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  corrupted_inputs_length, targets_length = lengths(tokens_length)
  if noise_density == 0.5 and targets_length > corrupted_inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _has_a_noise_span(tokens_length, noise_density, mean_noise_span_length) -> bool:
  """Whether T5's length arithmetic (`_corrupted_lengths`) gives a chunk at least one noise span."""
  num_noise_tokens = int(round(tokens_length * noise_density))
  return int(round(num_noise_tokens / mean_noise_span_length)) >= 1


def _check_noise(noise_density, mean_noise_span_length):
  if not 0.0 <= noise_density < 1.0:
    raise ValueError(f'noise_density must be in [0, 1), got {noise_density}.')
  if mean_noise_span_length <= 0:
    raise ValueError(f'mean_noise_span_length must be > 0, got {mean_noise_span_length}.')


# ---------------------------------------------------------------------------
# Noise masks.
# ---------------------------------------------------------------------------


def _span_counts_np(length, noise_density, mean_noise_span_length):
  """Step 1 of `random_spans_noise_mask` (float32 arithmetic, as in TF)."""
  num_noise_tokens = int(np.round(np.float32(length) * np.float32(noise_density)))
  num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
  num_noise_spans = int(np.round(np.float32(num_noise_tokens) / np.float32(mean_noise_span_length)))
  num_noise_spans = min(max(num_noise_spans, 1), num_noise_tokens, length - num_noise_tokens)
  return num_noise_tokens, num_noise_spans


def _random_segmentation_np(num_items, num_segments, rng):
  """Step 2 of `random_spans_noise_mask`: [num_segments] lengths of a random composition."""
  cuts = np.sort(rng.permutation(num_items - 1)[:num_segments - 1]) + 1
  return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask(length, noise_density=DEFAULT_NOISE_DENSITY,
                            mean_noise_span_length=DEFAULT_MEAN_NOISE_SPAN_LENGTH, seed=0):
  """T5's span-corruption noise mask in numpy, deterministic by `seed`.

  Defaults are the T5 paper's (Raffel et al. 2020, sec. 3.1.4): 15% of tokens,
  spans of mean length 3. This and `random_spans_noise_mask_tf` run one
  algorithm (T5's); they draw different masks for a seed, from one distribution:

  1. The counts depend on the length only, computed in float32 as T5 does:
       num_noise_tokens = round(length * noise_density), clipped to [1, length-1]
       num_noise_spans  = round(num_noise_tokens / mean_noise_span_length), >= 1
     (round half to even). Lengths below 2 count as 2 and the mask is cut
     back, so a 1-token text is one non-noise token. We also cap the spans at
     the number of noise and of non-noise tokens; that only changes cases where
     T5 fails (it cannot make that many non-empty spans).
  2. The noise tokens are cut into num_noise_spans non-empty spans, and the
     non-noise tokens into as many, independently: choose num_spans - 1 of the
     num_items - 1 gaps between items uniformly without replacement and cut
     there, so every composition into positive parts is equally likely.
  3. The spans interleave non-noise, noise, non-noise, noise, ...: the mask
     starts with non-noise and, as T5's does, always ends on a noise span.

  Returns:
    bool array of shape [length], True where a token is noise.
  """
  _check_noise(noise_density, mean_noise_span_length)
  if noise_density == 0.0 or length == 0:
    return np.zeros([length], bool)
  padded_length = max(length, 2)
  num_noise_tokens, num_noise_spans = _span_counts_np(padded_length, noise_density,
                                                      mean_noise_span_length)
  rng = np.random.default_rng(seed)
  noise_spans = _random_segmentation_np(num_noise_tokens, num_noise_spans, rng)
  nonnoise_spans = _random_segmentation_np(padded_length - num_noise_tokens, num_noise_spans, rng)
  span_lengths = np.stack([nonnoise_spans, noise_spans], axis=1).reshape(-1)
  is_noise = np.tile([False, True], num_noise_spans)
  return np.repeat(is_noise, span_lengths)[:length]


def _as_seed(seed):
  """A [2] int stateless seed from a tensor or the pair of scalars seqio zips in."""
  seed = tf.convert_to_tensor(seed)
  return seed if seed.dtype in (tf.int32, tf.int64) else tf.cast(seed, tf.int64)


def _random_segmentation_tf(num_items, num_segments, seed):
  """Step 2 of `random_spans_noise_mask` in TF: cut at the first gaps of a random permutation."""
  gaps = tf.argsort(tf.random.stateless_uniform([num_items - 1], seed=seed))
  cuts = tf.sort(gaps[:num_segments - 1]) + 1
  bounds = tf.concat([[0], cuts, [num_items]], axis=0)
  return bounds[1:] - bounds[:-1]


def random_spans_noise_mask_tf(length, noise_density=DEFAULT_NOISE_DENSITY,
                               mean_noise_span_length=DEFAULT_MEAN_NOISE_SPAN_LENGTH,
                               seeds=None):
  """`random_spans_noise_mask` for tf.data: stateless, `length` may be a tensor.

  Same algorithm and distribution as the numpy version (see its docstring).

  Args:
    length: int32 scalar (python int or tensor), the number of tokens.
    noise_density: fraction of tokens to corrupt (T5 paper: 0.15).
    mean_noise_span_length: mean noise span length (T5 paper: 3.0).
    seeds: int tensor of shape [2], a stateless seed; it is split into one
      seed for the noise spans and one for the non-noise spans.

  Returns:
    bool tensor of shape [length].
  """
  _check_noise(noise_density, mean_noise_span_length)
  if seeds is None:
    raise ValueError('random_spans_noise_mask_tf needs a stateless seed of shape [2].')
  length = tf.cast(length, tf.int32)
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  padded_length = tf.maximum(length, 2)
  num_noise_tokens = tf.cast(tf.round(tf.cast(padded_length, tf.float32) * noise_density), tf.int32)
  num_noise_tokens = tf.clip_by_value(num_noise_tokens, 1, padded_length - 1)
  num_nonnoise_tokens = padded_length - num_noise_tokens
  num_noise_spans = tf.cast(
      tf.round(tf.cast(num_noise_tokens, tf.float32) / mean_noise_span_length), tf.int32)
  num_noise_spans = tf.minimum(tf.maximum(num_noise_spans, 1),
                               tf.minimum(num_noise_tokens, num_nonnoise_tokens))
  noise_seed, nonnoise_seed = tf.unstack(tf.random.experimental.stateless_split(_as_seed(seeds), 2))
  noise_spans = _random_segmentation_tf(num_noise_tokens, num_noise_spans, noise_seed)
  nonnoise_spans = _random_segmentation_tf(num_nonnoise_tokens, num_noise_spans, nonnoise_seed)
  span_lengths = tf.reshape(tf.stack([nonnoise_spans, noise_spans], axis=1), [-1])
  is_noise = tf.tile([False, True], [num_noise_spans])
  return tf.repeat(is_noise, span_lengths)[:length]


# ---------------------------------------------------------------------------
# Transforms (tokens, noise_mask, vocabulary, seed) -> tokens.
# ---------------------------------------------------------------------------


def sentinel_id(vocabulary: seqio.Vocabulary) -> int:
  """The first sentinel, `<extra_id_0>`: the last id of the vocabulary.

  seqio places a SentencePieceVocabulary's extra ids at the top, counting
  down, so sentinel i is vocab_size - 1 - i.
  """
  return vocabulary.vocab_size - 1


def noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary, seed=None):
  """Replace the i-th run of noise tokens by the single sentinel <extra_id_i>.

  Sentinels count down from `sentinel_id(vocabulary)`, in order of the runs,
  so the dropped spans line up with the markers of the other side.
  """
  del seed
  prev_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first_of_span = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  rest_of_span = tf.logical_and(noise_mask, prev_is_noise)
  span_index = tf.cumsum(tf.cast(first_of_span, tokens.dtype)) - 1
  sentinels = tf.cast(sentinel_id(vocabulary), tokens.dtype) - span_index
  tokens = tf.where(first_of_span, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(rest_of_span))


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary, seed=None):
  """Targets of span corruption: each non-noise run becomes <extra_id_i>.

  The mask starts with non-noise, so the targets read <extra_id_0> span_0
  <extra_id_1> span_1 ... As in T5 no sentinel follows the last span, because
  random_spans_noise_mask always ends on a noise span.
  """
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary, seed)


def drop_noise_tokens(tokens, noise_mask, vocabulary, seed=None):
  """Keep only the non-noise tokens (no sentinel)."""
  del vocabulary, seed
  return tf.boolean_mask(tokens, tf.logical_not(noise_mask))


def drop_nonnoise_tokens(tokens, noise_mask, vocabulary, seed=None):
  """Keep only the noise tokens (no sentinel)."""
  del vocabulary, seed
  return tf.boolean_mask(tokens, noise_mask)


# ---------------------------------------------------------------------------
# seqio preprocessors.
# ---------------------------------------------------------------------------


def select_random_chunk(dataset, max_length=MAX_DOCUMENT_CHUNK_LENGTH, feature_key='targets'):
  """Keep one random aligned window of at most `max_length` tokens per document.

  Empty documents are dropped. Only `feature_key` is kept.
  """
  @seqio.map_over_dataset(num_seeds=1)
  def chunk(features, seed):
    tokens = features[feature_key]
    n = tf.shape(tokens)[0]
    num_windows = (n + max_length - 1) // max_length
    start = max_length * tf.random.stateless_uniform([], seed=_as_seed(seed), maxval=num_windows,
                                                     dtype=tf.int32)
    return {feature_key: tokens[start:tf.minimum(start + max_length, n)]}

  return chunk(dataset.filter(lambda x: tf.size(x[feature_key]) > 0))


def reduce_concat_tokens(dataset, feature_key='targets', batch_size=CONCAT_BATCH_SIZE):
  """Concatenate each run of `batch_size` documents into one token stream."""
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]},
                        num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.ragged_batch(batch_size).map(
      lambda x: {feature_key: x[feature_key].flat_values}, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset, max_tokens_per_segment, feature_key='targets'):
  """Cut each example into consecutive segments of `max_tokens_per_segment`.

  Only the last segment of an example may be shorter; empty examples vanish.
  """
  def segments(features):
    tokens = features[feature_key]
    starts = tf.data.Dataset.range(0, tf.size(tokens, out_type=tf.int64), max_tokens_per_segment)
    return starts.map(lambda start: {feature_key: tokens[start:start + max_tokens_per_segment]})

  return dataset.flat_map(segments)


def denoise(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
            noise_density: float, noise_mask_fn: Callable[..., tf.Tensor], inputs_fn: Transform,
            targets_fn: Optional[Transform] = None,
            input_feature_key: str = 'inputs') -> tf.data.Dataset:
  """Build inputs/targets from the 'targets' tokens with a mask and transforms.

  Args:
    dataset: examples with a 1-D int 'targets' feature (the clean text).
    output_features: seqio features; the 'targets' vocabulary sets the sentinels.
    noise_density: passed to `noise_mask_fn(length, noise_density, seeds=...)`.
    noise_mask_fn: e.g. `random_spans_noise_mask_tf` (with its span length bound).
    inputs_fn, targets_fn: transforms; targets are the clean tokens if None.
    input_feature_key: name of the corrupted feature.
  """
  vocabulary = output_features['targets'].vocabulary
  if (input_feature_key in output_features
      and output_features[input_feature_key].vocabulary != vocabulary):
    raise ValueError(f'denoise builds {input_feature_key!r} from the targets tokens, so both '
                     'output features must share one vocabulary.')

  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(features, seed):
    mask_seed, inputs_seed, targets_seed = tf.unstack(
        tf.random.experimental.stateless_split(_as_seed(seed), 3))
    tokens = features['targets']
    noise_mask = noise_mask_fn(tf.size(tokens), noise_density, seeds=mask_seed)
    inputs = inputs_fn(tokens, noise_mask, vocabulary, inputs_seed)
    targets = targets_fn(tokens, noise_mask, vocabulary, targets_seed) if targets_fn else tokens
    return {input_feature_key: inputs, 'targets': targets}

  return corrupt(dataset)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
                    noise_density: float = DEFAULT_NOISE_DENSITY,
                    input_feature_key: str = 'inputs',
                    merge_examples_to_reduce_padding: bool = True,
                    reserved_for_packing: Optional[int] = None) -> tf.data.Dataset:
  """T5's pretraining objective (Raffel et al. 2020, sec. 3.1.4), a seqio preprocessor.

  Takes tokenized text in 'targets' and, as T5 does: picks one window of up to
  65536 tokens per document, concatenates documents (if
  `merge_examples_to_reduce_padding`), splits the stream into chunks of the
  length `random_spans_helper` gives for `sequence_length[input_feature_key]`,
  masks 15% of each chunk in spans of mean 3 and writes

    inputs  = the chunk with each noise span replaced by <extra_id_i>
    targets = <extra_id_0> span_0 <extra_id_1> span_1 ...

  EOS is not added here; put `seqio.preprocessors.append_eos_after_trim` after
  this in the Task. Full chunks then give inputs of exactly
  `sequence_length[input_feature_key]` (512 -> 568 raw tokens) and targets of
  the helper's targets length (114).

  Args:
    reserved_for_packing: tokens of the inputs length to leave free, so that
      several examples can later be packed into one sequence.
  """
  inputs_length = sequence_length[input_feature_key]
  if reserved_for_packing:
    inputs_length -= reserved_for_packing
  helper = functools.partial(random_spans_helper, noise_density=noise_density,
                             mean_noise_span_length=mean_noise_span_length,
                             extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1)
  tokens_length, targets_length = helper(inputs_length)
  if not _has_a_noise_span(tokens_length, noise_density, mean_noise_span_length):
    # The helper's lengths assume no span, but the mask always makes one: every example would be
    # trimmed, and the model would see almost nothing to predict.
    shortest = next((n for n in range(inputs_length + 1, MAX_DOCUMENT_CHUNK_LENGTH) if
                     _has_a_noise_span(helper(n)[0], noise_density, mean_noise_span_length)), None)
    raise ValueError(
        f'inputs length {inputs_length} is too short for span corruption (noise density '
        f'{noise_density}, mean span {mean_noise_span_length}): its {tokens_length}-token chunks '
        f"get no noise span. Set sequence_length['{input_feature_key}'] to at least {shortest} "
        '(T5 uses 512).')
  _check_sentinels(inputs_length, noise_density, mean_noise_span_length,
                   output_features['targets'].vocabulary, input_feature_key)
  if sequence_length['targets'] < targets_length:
    raise ValueError(
        f"span corruption of {tokens_length}-token chunks makes targets of {targets_length} "
        f"tokens but sequence_length['targets'] is {sequence_length['targets']}; "
        f'set it to at least {targets_length}.')

  dataset = select_random_chunk(dataset, feature_key='targets')
  if merge_examples_to_reduce_padding:
    dataset = reduce_concat_tokens(dataset, feature_key='targets')
  dataset = split_tokens(dataset, tokens_length, feature_key='targets')
  noise_mask_fn = functools.partial(random_spans_noise_mask_tf,
                                    mean_noise_span_length=mean_noise_span_length)
  return denoise(dataset, output_features, noise_density, noise_mask_fn,
                 inputs_fn=noise_span_to_unique_sentinel,
                 targets_fn=nonnoise_span_to_unique_sentinel,
                 input_feature_key=input_feature_key)


def _check_sentinels(inputs_length, noise_density, mean_noise_span_length, vocabulary,
                     input_feature_key) -> None:
  """Every noise span of a full chunk gets its own sentinel, counting down from the last id: past
  the vocabulary's extra ids they would become ordinary pieces (T5's package lets them)."""
  extra_ids = getattr(vocabulary, 'extra_ids', None)
  if not extra_ids:
    return  # a vocabulary without extra ids (PassThroughVocabulary): its ids are all sentinels

  def chunk_and_spans(length, mean):  # a longer span also lengthens the chunk `length` holds
    chunk = random_spans_helper(length, noise_density, mean, 1, 1)[0]
    return chunk, _span_counts_np(chunk, noise_density, mean)[1]

  tokens_length, spans = chunk_and_spans(inputs_length, mean_noise_span_length)
  if spans <= extra_ids:
    return
  longest = next(n for n in range(inputs_length - 1, 1, -1)
                 if chunk_and_spans(n, mean_noise_span_length)[1] <= extra_ids)
  mean_span = next(m / 10 for m in range(math.ceil(10 * mean_noise_span_length), 10 * inputs_length)
                   if chunk_and_spans(inputs_length, m / 10)[1] <= extra_ids)
  raise ValueError(
      f'span corruption of {tokens_length}-token chunks (inputs {inputs_length}, noise density '
      f'{noise_density}, mean span {mean_noise_span_length}) makes {spans} noise spans, but the '
      f'vocabulary has {extra_ids} sentinels (extra ids): the rest would be ordinary pieces. Use '
      f'more extra ids (get_vocabulary.extra_ids >= {spans} and a VOCAB_SIZE that holds them), '
      f"sequence_length['{input_feature_key}'] <= {longest}, or mean_noise_span_length >= "
      f'{mean_span:g}.')


# ---------------------------------------------------------------------------
# The other objectives of the T5 study (Raffel et al. 2020, sec. 3.3, Table 3).
#
# Each is a noise mask and two transforms for `denoise`, run on chunks of the
# concatenated token stream as `span_corruption` is. Lengths: chunks are cut so
# the inputs never need trimming (they are never longer than the chunk); targets
# that hold only the corrupted part may be trimmed by `append_eos_after_trim`.
# ---------------------------------------------------------------------------

# T5 draws the prefix LM split point so that on average half the chunk is
# targets (its `prefix_lm` uses noise_density 0.5).
PREFIX_LM_NOISE_DENSITY = 0.5
# BERT (Devlin et al. 2019, sec. 3.1): of the corrupted tokens 80% become the
# mask token, 10% a random token, 10% stay as they are. (The T5 paper's variant
# used 90% mask / 10% random: `mask_prob=0.9, random_prob=0.1`.)
BERT_MASK_PROB = 0.8
BERT_RANDOM_PROB = 0.1
# Ids 0..2 are pad, eos and unk (t5x_lite.vocab); random replacement tokens skip them.
NUM_RESERVED_IDS = 3


def iid_noise_mask_tf(length, noise_density=DEFAULT_NOISE_DENSITY, seeds=None):
  """Each token is noise independently with probability `noise_density` (T5's i.i.d. noise).

  Unlike `random_spans_noise_mask_tf` the count is random, Binomial(length,
  noise_density); density 1.0 makes every token noise (used for deshuffling).
  """
  if not 0.0 <= noise_density <= 1.0:
    raise ValueError(f'noise_density must be in [0, 1], got {noise_density}.')
  if seeds is None:
    raise ValueError('iid_noise_mask_tf needs a stateless seed of shape [2].')
  return tf.random.stateless_uniform([tf.cast(length, tf.int32)], seed=_as_seed(seeds)) < noise_density


def random_prefix_noise_mask_tf(length, noise_density=PREFIX_LM_NOISE_DENSITY, seeds=None):
  """Noise = every token after a random split point: a prefix-LM mask.

  The prefix keeps between 1 and length-1 tokens, drawn uniformly from
  [round((1 - 2 * noise_density) * (length - 1)), length - 1] (at least 1), so
  the expected noise fraction is about `noise_density`; 0.5 (T5's prefix LM)
  makes the split point uniform. Texts of one token are all prefix.
  """
  if not 0.0 < noise_density <= 0.5:
    raise ValueError(f'prefix LM noise_density must be in (0, 0.5], got {noise_density}.')
  if seeds is None:
    raise ValueError('random_prefix_noise_mask_tf needs a stateless seed of shape [2].')
  length = tf.cast(length, tf.int32)
  max_prefix = tf.maximum(length - 1, 1)
  min_prefix = tf.cast(tf.round((1.0 - 2.0 * noise_density) * tf.cast(max_prefix, tf.float32)),
                       tf.int32)
  min_prefix = tf.clip_by_value(min_prefix, 1, max_prefix)
  prefix = tf.random.stateless_uniform([], seed=_as_seed(seeds), minval=min_prefix,
                                       maxval=max_prefix + 1, dtype=tf.int32)
  return tf.range(length) >= prefix


def noise_token_to_sentinel(tokens, noise_mask, vocabulary, seed=None):
  """Replace every noise token by the mask token <extra_id_0> (T5's `sentinel_id`)."""
  del seed
  return tf.where(noise_mask, tf.cast(sentinel_id(vocabulary), tokens.dtype), tokens)


def _random_regular_tokens(shape, vocabulary, seed, dtype):
  """Uniform ids that are neither pad/eos/unk nor an extra id (sentinel)."""
  num_extra = max(getattr(vocabulary, 'extra_ids', 0) or 0, 1)
  maxval = vocabulary.vocab_size - num_extra
  return tf.cast(tf.random.stateless_uniform(shape, seed=seed, minval=NUM_RESERVED_IDS,
                                             maxval=maxval, dtype=tf.int32), dtype)


def noise_token_to_random_token_or_sentinel(tokens, noise_mask, vocabulary, seed=None,
                                            mask_prob=BERT_MASK_PROB,
                                            random_prob=BERT_RANDOM_PROB):
  """BERT-style corruption of the noise tokens: mask / random token / unchanged.

  Each noise token independently becomes <extra_id_0> with `mask_prob`, a
  uniform regular token with `random_prob`, and stays itself otherwise.
  """
  if seed is None:
    raise ValueError('noise_token_to_random_token_or_sentinel needs a stateless seed.')
  if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1:
    raise ValueError(f'need mask_prob, random_prob >= 0 with sum <= 1, got {mask_prob}, '
                     f'{random_prob}.')
  choice_seed, token_seed = tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), 2))
  u = tf.random.stateless_uniform(tf.shape(tokens), seed=choice_seed)
  random_tokens = _random_regular_tokens(tf.shape(tokens), vocabulary, token_seed, tokens.dtype)
  mask_token = tf.cast(sentinel_id(vocabulary), tokens.dtype)
  corrupted = tf.where(u < mask_prob, mask_token,
                       tf.where(u < mask_prob + random_prob, random_tokens, tokens))
  return tf.where(noise_mask, corrupted, tokens)


def permute_noise_tokens(tokens, noise_mask, vocabulary, seed=None):
  """Shuffle the noise tokens among the noise positions; others stay in place.

  With an all-noise mask this is T5's deshuffling input (a uniform permutation).
  """
  del vocabulary
  if seed is None:
    raise ValueError('permute_noise_tokens needs a stateless seed.')
  noise_positions = tf.where(noise_mask)
  noise_tokens = tf.boolean_mask(tokens, noise_mask)
  order = tf.argsort(tf.random.stateless_uniform(tf.shape(noise_tokens), seed=_as_seed(seed)))
  return tf.tensor_scatter_nd_update(tokens, noise_positions, tf.gather(noise_tokens, order))


def noise_span_to_unique_sentinel_and_span(tokens, noise_mask, vocabulary, seed=None):
  """Targets of replace-spans: <extra_id_i> followed by the i-th noise run, for every run.

  The counterpart of `noise_span_to_unique_sentinel` on the inputs side. For span-corruption masks
  (which start clean and end noisy) it equals `nonnoise_span_to_unique_sentinel`; for i.i.d. masks,
  which may start with noise or end clean, that one would put a sentinel after a span or one for
  the trailing clean run, so this keeps "sentinel, then its span" for every mask.
  """
  del seed
  prev_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first_of_span = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  span_index = tf.cumsum(tf.cast(first_of_span, tokens.dtype)) - 1
  sentinels = tf.cast(sentinel_id(vocabulary), tokens.dtype) - span_index
  # Each position contributes [its sentinel if a run starts there, its token if noise].
  values = tf.reshape(tf.stack([sentinels, tokens], axis=1), [-1])
  keep = tf.reshape(tf.stack([first_of_span, noise_mask], axis=1), [-1])
  return tf.boolean_mask(values, keep)


def _chunks(dataset, tokens_length, merge_examples_to_reduce_padding=True):
  """T5's chunking: one window per document, concatenate, split into `tokens_length` pieces."""
  if tokens_length < 1:
    raise ValueError(f'sequence lengths leave chunks of {tokens_length} tokens; make them longer.')
  dataset = select_random_chunk(dataset, feature_key='targets')
  if merge_examples_to_reduce_padding:
    dataset = reduce_concat_tokens(dataset, feature_key='targets')
  return split_tokens(dataset, tokens_length, feature_key='targets')


def _full_text_chunk_length(sequence_length):
  """Chunk length (EOS excluded) when both inputs and targets are as long as the chunk."""
  return min(sequence_length['inputs'], sequence_length['targets']) - 1


def prefix_lm(dataset, sequence_length, output_features,
              noise_density=PREFIX_LM_NOISE_DENSITY, merge_examples_to_reduce_padding=True):
  """Prefix LM (T5 Table 3): inputs = a random prefix of the chunk, targets = the rest.

  Chunks are min(inputs, targets) long, so with EOS neither side is trimmed.
  """
  tokens_length = min(sequence_length['inputs'], sequence_length['targets'])
  dataset = _chunks(dataset, tokens_length, merge_examples_to_reduce_padding)
  return denoise(dataset, output_features, noise_density, random_prefix_noise_mask_tf,
                 inputs_fn=drop_noise_tokens, targets_fn=drop_nonnoise_tokens)


def bert_style(dataset, sequence_length, output_features, noise_density=DEFAULT_NOISE_DENSITY,
               mask_prob=BERT_MASK_PROB, random_prob=BERT_RANDOM_PROB,
               merge_examples_to_reduce_padding=True):
  """BERT-style (T5 Table 3): i.i.d. 15% noise, 80/10/10 mask/random/kept; targets = the text."""
  dataset = _chunks(dataset, _full_text_chunk_length(sequence_length),
                    merge_examples_to_reduce_padding)
  inputs_fn = functools.partial(noise_token_to_random_token_or_sentinel, mask_prob=mask_prob,
                                random_prob=random_prob)
  return denoise(dataset, output_features, noise_density, iid_noise_mask_tf, inputs_fn=inputs_fn)


def deshuffling(dataset, sequence_length, output_features, merge_examples_to_reduce_padding=True):
  """Deshuffling (T5 Table 3): inputs = the chunk's tokens shuffled, targets = the chunk."""
  dataset = _chunks(dataset, _full_text_chunk_length(sequence_length),
                    merge_examples_to_reduce_padding)
  return denoise(dataset, output_features, 1.0, iid_noise_mask_tf,
                 inputs_fn=permute_noise_tokens)


def iid_mask_tokens(dataset, sequence_length, output_features,
                    noise_density=DEFAULT_NOISE_DENSITY, merge_examples_to_reduce_padding=True):
  """I.i.d. noise, mask tokens (T5 Table 3 "MASS-style"): each noise token -> <extra_id_0>; targets = the text."""
  dataset = _chunks(dataset, _full_text_chunk_length(sequence_length),
                    merge_examples_to_reduce_padding)
  return denoise(dataset, output_features, noise_density, iid_noise_mask_tf,
                 inputs_fn=noise_token_to_sentinel)


def iid_replace_spans(dataset, sequence_length, output_features,
                      noise_density=DEFAULT_NOISE_DENSITY, merge_examples_to_reduce_padding=True):
  """I.i.d. noise, replace spans (T5 Table 3): each run of noise -> one sentinel.

  Targets are the dropped runs, each after its sentinel
  (`noise_span_to_unique_sentinel_and_span`). Chunks fill the inputs length
  before corruption, so inputs are never trimmed.
  """
  dataset = _chunks(dataset, sequence_length['inputs'] - 1, merge_examples_to_reduce_padding)
  return denoise(dataset, output_features, noise_density, iid_noise_mask_tf,
                 inputs_fn=noise_span_to_unique_sentinel,
                 targets_fn=noise_span_to_unique_sentinel_and_span)


def iid_drop_tokens(dataset, sequence_length, output_features,
                    noise_density=DEFAULT_NOISE_DENSITY, merge_examples_to_reduce_padding=True):
  """I.i.d. noise, drop tokens (T5 Table 3): noise tokens leave the inputs and form the targets."""
  dataset = _chunks(dataset, sequence_length['inputs'] - 1, merge_examples_to_reduce_padding)
  return denoise(dataset, output_features, noise_density, iid_noise_mask_tf,
                 inputs_fn=drop_noise_tokens, targets_fn=drop_nonnoise_tokens)


def full_lm(dataset, sequence_length, output_features, merge_examples_to_reduce_padding=True):
  """Language modelling for decoder-only models: 'targets' = a chunk of text, no inputs."""
  del output_features
  return _chunks(dataset, sequence_length['targets'] - 1, merge_examples_to_reduce_padding)
