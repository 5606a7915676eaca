"""Model FLOPs of the T5 model families, counted from their matmuls (for MFU).

6·N·T (N params, T tokens) is wrong for an encoder-decoder: encoder weights see only the inputs,
decoder weights only the targets, and the embedding lookup is not a matmul. So we add up, per
layer, 2·m·n·k for every matmul of one example:

  L_e = inputs_length, L_d = targets_length, d = d_model, i = num_heads·d_kv, f = d_ff,
  g = number of MLP input projections (1 for ReLU, 2 for gated GELU), V = vocab_size.

  encoder layer:  attention projections q,k,v,o     2·L_e·d·i·4
                  scores q·kᵀ and weights·v          2·L_e·L_e·i·2
                  MLP (g inputs + wo)                2·L_e·d·f·(g+1)
  decoder layer:  self-attention projections        2·L_d·d·i·4
                  self scores and values             2·L_d·L_d·i·2
                  cross q and o (over targets)       2·L_d·d·i·2
                  cross k and v (over inputs)        2·L_e·d·i·2
                  cross scores and values            2·L_d·L_e·i·2
                  MLP                                2·L_d·d·f·(g+1)
  logits:                                            2·L_d·d·V

Decoder-only families run one stack over one sequence of length L: L = targets for a causal LM,
L = inputs + targets for a prefix LM (seqio concatenates the two into one sequence). Their layer
is the decoder layer without the cross-attention terms, with L_d = L, and logits cover all L.

Causal masking does not halve the decoder's score matmuls (the hardware computes them in full).
Norms, softmax, activations and the relative-position bias are elementwise and left out.
Training = forward + backward = 3 × forward (the backward pass has two matmuls per forward one).

Lengths are given as seqio's `task_feature_lengths` ({'inputs': .., 'targets': ..}); the older
form `(config, inputs_length, targets_length)` still works for the encoder-decoder.
"""

from __future__ import annotations

from typing import Mapping

from t5x_lite.models.config import T5Config


def _check_lengths(inputs_length: int, targets_length: int) -> None:
  if inputs_length <= 0 or targets_length <= 0:
    raise ValueError(f'Sequence lengths must be positive; got inputs_length={inputs_length}, '
                     f'targets_length={targets_length}.')


def _lengths(config: T5Config, lengths, targets_length):
  """(inputs_length, targets_length) from task_feature_lengths or the two ints."""
  if isinstance(lengths, Mapping):
    if targets_length is not None:
      raise ValueError('Pass task_feature_lengths as a dict or two ints, not both.')
    if 'targets' not in lengths:
      raise ValueError(f'task_feature_lengths needs a \'targets\' length; got {dict(lengths)}.')
    if config.architecture == 'decoder_only':
      return 0, lengths['targets']
    if 'inputs' not in lengths:
      raise ValueError(f'architecture={config.architecture!r} needs an \'inputs\' length in '
                       f'task_feature_lengths; got {dict(lengths)}.')
    return lengths['inputs'], lengths['targets']
  if targets_length is None:
    raise ValueError('Pass task_feature_lengths (a dict) or inputs_length and targets_length.')
  return lengths, targets_length


def _decoder_only_forward(config: T5Config, length: int) -> int:
  d, i, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
  mlp_matmuls = len(config.mlp_activations) + 1
  layer = (2 * length * d * i * 4
           + 2 * length * length * i * 2
           + 2 * length * d * f * mlp_matmuls)
  return config.num_decoder_layers * layer + 2 * length * d * config.vocab_size


def _encoder_decoder_forward(config: T5Config, le: int, ld: int) -> int:
  d, i, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
  mlp_matmuls = len(config.mlp_activations) + 1
  encoder_layer = (2 * le * d * i * 4
                   + 2 * le * le * i * 2
                   + 2 * le * d * f * mlp_matmuls)
  decoder_layer = (2 * ld * d * i * 4
                   + 2 * ld * ld * i * 2
                   + 2 * ld * d * i * 2
                   + 2 * le * d * i * 2
                   + 2 * ld * le * i * 2
                   + 2 * ld * d * f * mlp_matmuls)
  logits = 2 * ld * d * config.vocab_size
  return (config.num_encoder_layers * encoder_layer
          + config.num_decoder_layers * decoder_layer
          + logits)


def forward_flops_per_example(config: T5Config, task_feature_lengths: Mapping[str, int] | int,
                              targets_length: int | None = None) -> float:
  """FLOPs of one forward pass over one (packed) example of the given lengths.

  `task_feature_lengths`: {'inputs': .., 'targets': ..} ('targets' only for a causal LM); or,
  for the encoder-decoder, `inputs_length, targets_length` as two ints.
  """
  inputs_length, targets_length = _lengths(config, task_feature_lengths, targets_length)
  if config.architecture == 'decoder_only':
    _check_lengths(1, targets_length)
    return float(_decoder_only_forward(config, targets_length))
  _check_lengths(inputs_length, targets_length)
  if config.architecture == 'prefix_lm':
    return float(_decoder_only_forward(config, inputs_length + targets_length))
  return float(_encoder_decoder_forward(config, inputs_length, targets_length))


def training_flops_per_example(config: T5Config, task_feature_lengths: Mapping[str, int] | int,
                               targets_length: int | None = None) -> float:
  """FLOPs of one training step (forward + backward) for one example: 3 × forward."""
  return 3.0 * forward_flops_per_example(config, task_feature_lengths, targets_length)
