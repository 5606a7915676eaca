"""Model FLOPs of a T5 encoder-decoder, counted from its matmuls (for MFU).

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

Causal masking does not halve the decoder's score matmuls (the hardware computes them in full).
Norms, softmax, activations and the relative-position bias are elementwise and left out.
Training = forward + backward = 3 × forward (the backward pass has two matmuls per forward one).
"""

from __future__ import annotations

from t5x_lite.models.config import T5Config


def _check_lengths(inputs_length: int, targets_length: int) -> None:
  if inputs_length <= 0 or targets_length <= 0:
    raise ValueError(f'Sequence lengths must be positive; got inputs_length={inputs_length}, '
                     f'targets_length={targets_length}.')


def forward_flops_per_example(config: T5Config, inputs_length: int, targets_length: int) -> float:
  """FLOPs of one forward pass over one (packed) example of the given lengths."""
  _check_lengths(inputs_length, targets_length)
  le, ld = inputs_length, targets_length
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
  return float(config.num_encoder_layers * encoder_layer
               + config.num_decoder_layers * decoder_layer
               + logits)


def training_flops_per_example(config: T5Config, inputs_length: int,
                               targets_length: int) -> float:
  """FLOPs of one training step (forward + backward) for one example: 3 × forward."""
  return 3.0 * forward_flops_per_example(config, inputs_length, targets_length)
