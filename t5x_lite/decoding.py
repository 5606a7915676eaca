"""Autoregressive decoding: greedy, sampling (temperature, top-k, top-p) and beam search.

One jitted function per model and option set runs the whole decode in a `lax.while_loop` that
stops as soon as every row has emitted EOS (beam search: as soon as no live beam can still beat
the finished ones). The model state between steps is a KV cache (`model.init_cache` /
`model.decode_step`, see models/t5.py): the encoder runs once, the prompt is one prefill call,
then each step feeds one token per row. `use_cache=False` instead re-runs the decoder over the
whole token buffer every step, the quadratic baseline that the cached path is tested and
benchmarked against (the encoder output is computed once either way).

Batches are what the unpacked feature converters emit (other keys are ignored):

* encoder-decoder: `encoder_input_tokens` [b, enc_len]; the decoder starts from BOS (id 0).
* decoder-only / prefix LM: the prompt is the span of `decoder_input_tokens` where
  `decoder_causal_attention` is 1 (BOS then the inputs, as seqio's PrefixLM/Decoder feature
  converters lay it out); the prefix LM attends bidirectionally over it, the causal LM does not.
  Without `decoder_causal_attention` the prompt is BOS alone. Prompts may differ in length per
  row: row b's new tokens take positions prompt_length[b] onwards.

`decode` returns tokens [b, max_decode_length], 0 after the first EOS, and each row's score: the
sum of the model's log-probabilities (nats, temperature 1, no truncation) of the returned tokens
up to and including EOS, i.e. what `infer.score_batch` gives for them as targets. Beam search
ranks finished beams by T5X's length-penalised score, log p / ((5 + length) / 6) ** alpha (Wu et
al. 2016), and returns the best beam with its unpenalised log-probability.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.models.layers import write_cache

EOS_ID = 1
PAD_ID = 0  # also BOS: T5 starts the decoder from the pad id
METHODS = ('greedy', 'sample', 'beam')
NEG_INF = -jnp.inf  # dead beams and empty finished slots; never multiplied, so no NaNs


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """Everything that shapes the compiled decode; hashable, so one compile per distinct value."""
  max_decode_length: int
  method: str = 'greedy'
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  alpha: float = 0.6
  eos_id: int = EOS_ID
  use_cache: bool = True

  def validate(self, vocab_size: int) -> None:
    if self.method not in METHODS:
      raise ValueError(f'decoding method must be one of {list(METHODS)}, got {self.method!r}.')
    if not isinstance(self.max_decode_length, int) or self.max_decode_length < 1:
      raise ValueError(f'max_decode_length must be an int >= 1, got {self.max_decode_length!r}.')
    if self.temperature < 0:
      raise ValueError(f'temperature must be >= 0 (0 is greedy), got {self.temperature}.')
    if not 0 <= self.top_k <= vocab_size:
      raise ValueError(f'top_k must be in [0, vocab_size={vocab_size}] (0 = off), '
                       f'got {self.top_k}.')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'top_p must be in (0, 1] (1 = off), got {self.top_p}.')
    if self.num_beams < 1 or 2 * self.num_beams > self.num_beams * vocab_size:
      raise ValueError(f'num_beams must be >= 1 and the vocabulary ({vocab_size}) at least 2, '
                       f'got num_beams={self.num_beams}.')


def decode(model: nnx.Module, batch: Mapping[str, Any], *, max_decode_length: int,
           method: str = 'greedy', temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           num_beams: int = 4, alpha: float = 0.6, rng: jax.Array | None = None,
           eos_id: int = EOS_ID, use_cache: bool = True) -> tuple[jax.Array, jax.Array]:
  """(tokens int32 [b, max_decode_length], scores float32 [b]) for a feature-converter batch.

  `method`: 'greedy'; 'sample' from softmax(logits / temperature) restricted to the `top_k`
  most likely tokens (0 = all) and then to the smallest set of probability >= `top_p`
  (temperature 0 is greedy); 'beam' keeps `num_beams` live and finished beams with length
  penalty `alpha`. `rng` seeds sampling (default: key 0). See the module docstring for the
  batch layout and what the scores are.
  """
  options = DecodeOptions(max_decode_length=int(max_decode_length), method=method,
                          temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                          num_beams=int(num_beams), alpha=float(alpha), eos_id=int(eos_id),
                          use_cache=bool(use_cache))
  options.validate(model.config.vocab_size)
  if rng is None:
    rng = jax.random.key(0)
  graphdef, state = nnx.split(model)
  return _decode_jit(graphdef, state, _features(model.config.architecture, batch), rng, options)


def _features(architecture: str, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The batch entries decoding reads, as int32 arrays (extra keys would only retrace)."""
  names = (('encoder_input_tokens',) if architecture == 'encoder_decoder'
           else ('decoder_input_tokens', 'decoder_causal_attention'))
  missing = [n for n in names[:1] if n not in batch]
  if missing:
    raise ValueError(f'decoding a {architecture} model needs {missing[0]!r} in the batch; '
                     f'got keys {sorted(batch)}.')
  return {n: jnp.asarray(batch[n], jnp.int32) for n in names if n in batch}


# ---------------------------------------------------------------------------------------------
# Pure numerics.
# ---------------------------------------------------------------------------------------------

def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """T5X's (GNMT's) brevity penalty ((5 + length) / 6) ** alpha; 1 for length 1 or alpha 0."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """`logits` [..., vocab] with tokens outside the top-k, then outside the nucleus, set to -inf.

  The nucleus is the smallest set of most likely tokens whose probability reaches `top_p`; the
  most likely token is always kept. Tokens tied with the last kept one are kept too.
  """
  if top_k:
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth_largest, NEG_INF, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(mass_before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def _log_prob_of(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log softmax(logits)[token] per row: logits [b, vocab], tokens [b] -> [b] float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


# ---------------------------------------------------------------------------------------------
# The model between steps: a KV cache, or (use_cache=False) the token buffer to re-run.
# ---------------------------------------------------------------------------------------------

def _prompt(features):
  """Decoder-only prompt: (tokens [b, width], lengths [b]); BOS alone without a prefix."""
  tokens = features['decoder_input_tokens']
  if 'decoder_causal_attention' not in features:
    return jnp.zeros((tokens.shape[0], 1), jnp.int32), jnp.ones((tokens.shape[0],), jnp.int32)
  prefix = features['decoder_causal_attention']
  # A padding row (all zeros) still gets BOS, so that it decodes harmlessly.
  return tokens * prefix, jnp.maximum(jnp.sum(prefix, axis=1), 1).astype(jnp.int32)


def _start(model, features, options):
  """(decoder state, last prompt token [b], its position [b]) before the first step.

  The prompt but its last token is already in the state: the first step feeds that token and
  yields the first new token's logits. Encoder-decoder: the encoder output (cached: each layer's
  cross-attention keys/values) and the prompt BOS at 0. Decoder-only: the cached path runs the
  whole prompt once (the prefill; the prefix LM must see all of it bidirectionally), and the
  first step rewrites its last position with the same keys and values.
  """
  length = options.max_decode_length
  if model.config.architecture == 'encoder_decoder':
    encoder_tokens = features['encoder_input_tokens']
    batch = encoder_tokens.shape[0]
    if options.use_cache:
      state = model.init_cache(encoder_tokens, length)
    else:
      state = {'encoded': model.encode(encoder_tokens), 'encoder_input_tokens': encoder_tokens,
               'tokens': jnp.zeros((batch, length), jnp.int32)}
    return state, jnp.full((batch,), PAD_ID, jnp.int32), jnp.zeros((batch,), jnp.int32)

  prompt, prompt_length = _prompt(features)
  batch, width = prompt.shape
  prefix_length = prompt_length if model.config.architecture == 'prefix_lm' else None
  if options.use_cache:
    state = model.init_cache(batch, width + length, prefix_length)
    if width > 1:
      _, state = model.decode_step(state, prompt, 0)  # its logits are unused: XLA drops them
  else:
    state = {'tokens': jnp.pad(prompt, ((0, 0), (0, length)))}
    if prefix_length is not None:
      state['prefix_length'] = prefix_length
  last = prompt_length - 1
  return state, jnp.take_along_axis(prompt, last[:, None], axis=1)[:, 0], last


def _step(model, state, tokens, index, options):
  """Feeds `tokens` [b] at positions `index` [b]: (logits of the next token [b, vocab], state)."""
  if options.use_cache:
    logits, state = model.decode_step(state, tokens[:, None], index)
    return logits[:, 0], state
  state = {**state, 'tokens': write_cache(state['tokens'], tokens[:, None], index)}
  tokens = state['tokens']
  if 'encoded' in state:
    logits = model.decode(state['encoded'], state['encoder_input_tokens'], tokens)
  else:
    prefix = None
    if 'prefix_length' in state:
      prefix = (jnp.arange(tokens.shape[1])[None, :]
                < state['prefix_length'][:, None]).astype(jnp.int32)
    logits = model(tokens, None, prefix)
  return jnp.take_along_axis(logits, index[:, None, None], axis=1)[:, 0], state


# ---------------------------------------------------------------------------------------------
# Search.
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_jit(graphdef, params, features, rng, options: DecodeOptions):
  model = nnx.merge(graphdef, params)
  if options.method == 'beam':
    return _beam_search(model, features, options)
  return _sample(model, features, rng, options)


def _choose(logits, key, options):
  """The next token per row: argmax, or a draw from the filtered, tempered distribution."""
  if options.method == 'greedy' or options.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits.astype(jnp.float32) / options.temperature, options.top_k,
                         options.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _sample(model, features, rng, options):
  """Greedy decoding and sampling: one token per row per step until every row has hit EOS."""
  state, last, index = _start(model, features, options)
  batch, length = last.shape[0], options.max_decode_length

  def cond(loop):
    t, _, done = loop[:3]
    return (t < length) & ~jnp.all(done)

  def body(loop):
    t, tokens, done, scores, rng, state, last, index = loop
    logits, state = _step(model, state, last, index, options)
    rng, key = jax.random.split(rng)
    token = _choose(logits, key, options)
    scores = scores + jnp.where(done, 0.0, _log_prob_of(logits, token))
    token = jnp.where(done, PAD_ID, token)
    done = done | (token == options.eos_id)
    return t + 1, tokens.at[:, t].set(token), done, scores, rng, state, token, index + 1

  loop = (jnp.int32(0), jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch,), bool),
          jnp.zeros((batch,), jnp.float32), rng, state, last, index)
  _, tokens, _, scores = jax.lax.while_loop(cond, body, loop)[:4]
  return tokens, scores


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class _Beams:
  """Per row: `num_beams` live beams and the best `num_beams` finished ones.

  Live beams are ranked by log-probability, finished ones by the length-penalised score;
  `-inf` marks a dead live beam or an empty finished slot.
  """
  live_tokens: jax.Array       # [b, k, max_len]
  live_log_probs: jax.Array    # [b, k]
  finished_tokens: jax.Array   # [b, k, max_len]
  finished_scores: jax.Array   # [b, k] penalised
  finished_log_probs: jax.Array  # [b, k]


def _take_beams(x, indices):
  """x [b, n, ...] at beam indices [b, m] -> [b, m, ...]."""
  return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def _grow_beams(beams: _Beams, logits, t, options):
  """Extends every live beam by every token at position t; returns (beams, parents [b, k])."""
  batch, k, length = beams.live_tokens.shape
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, -1)
  vocab = log_probs.shape[-1]
  candidates = (beams.live_log_probs[:, :, None] + log_probs).reshape(batch, k * vocab)
  # 2k candidates: even if k of them end in EOS, k remain to stay alive.
  cand_log_probs, cand = jax.lax.top_k(candidates, 2 * k)
  cand_parents, cand_tokens = cand // vocab, (cand % vocab).astype(jnp.int32)
  cand_seqs = _take_beams(beams.live_tokens, cand_parents).at[:, :, t].set(cand_tokens)
  ends = cand_tokens == options.eos_id

  cand_scores = jnp.where(ends, cand_log_probs / length_penalty(t + 1, options.alpha), NEG_INF)
  all_scores = jnp.concatenate([beams.finished_scores, cand_scores], axis=1)
  finished_scores, keep = jax.lax.top_k(all_scores, k)
  finished_tokens = _take_beams(jnp.concatenate([beams.finished_tokens, cand_seqs], axis=1), keep)
  finished_log_probs = _take_beams(
      jnp.concatenate([beams.finished_log_probs, cand_log_probs], axis=1), keep)

  live_log_probs, keep = jax.lax.top_k(jnp.where(ends, NEG_INF, cand_log_probs), k)
  beams = _Beams(_take_beams(cand_seqs, keep), live_log_probs, finished_tokens, finished_scores,
                 finished_log_probs)
  return beams, _take_beams(cand_parents, keep)


def _beams_done(beams: _Beams, t, options):
  """[b]: no live beam can beat the worst kept finished beam once positions >= t are added.

  Log-probabilities only fall as a beam grows, so a live beam's best final score is its current
  log-probability over the penalty at the most favourable of its possible lengths t+1 .. max.
  """
  best = jnp.maximum(beams.live_log_probs / length_penalty(t + 1, options.alpha),
                     beams.live_log_probs / length_penalty(options.max_decode_length,
                                                           options.alpha))
  worst_finished = jnp.min(beams.finished_scores, axis=1)
  return (t >= options.max_decode_length) | (worst_finished >= jnp.max(best, axis=1))


def _beam_search(model, features, options):
  """T5X-style beam search; rows with no finished beam fall back to their best live beam."""
  state, last, index = _start(model, features, options)
  batch, k, length = last.shape[0], options.num_beams, options.max_decode_length
  # Row b's beams are rows b*k .. b*k + k-1 of the decoder state.
  state, last, index = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), (state, last, index))
  empty = jnp.zeros((batch, k, length), jnp.int32)
  first_only = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)  # beams start identical: keep one
  beams = _Beams(empty, jnp.broadcast_to(first_only, (batch, k)), empty,
                 jnp.full((batch, k), NEG_INF), jnp.full((batch, k), NEG_INF))
  parents = jnp.broadcast_to(jnp.arange(k), (batch, k))

  def cond(loop):
    t, beams = loop[:2]
    return ~jnp.all(_beams_done(beams, t, options))

  def body(loop):
    t, beams, parents, state, last, index = loop
    rows = (jnp.arange(batch)[:, None] * k + parents).reshape(-1)
    state = jax.tree.map(lambda x: x[rows], state)  # each live beam's decoder state follows it
    logits, state = _step(model, state, last, index, options)
    beams, parents = _grow_beams(beams, logits, t, options)
    return t + 1, beams, parents, state, beams.live_tokens[:, :, t].reshape(-1), index + 1

  loop = (jnp.int32(0), beams, parents, state, last, index)
  beams = jax.lax.while_loop(cond, body, loop)[1]
  any_finished = beams.finished_scores[:, 0] > NEG_INF
  tokens = jnp.where(any_finished[:, None], beams.finished_tokens[:, 0], beams.live_tokens[:, 0])
  scores = jnp.where(any_finished, beams.finished_log_probs[:, 0], beams.live_log_probs[:, 0])
  return tokens, scores
