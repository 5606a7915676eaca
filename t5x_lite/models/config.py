"""The hyperparameters of a T5 encoder-decoder, as one frozen, gin-configurable dataclass.

Field names follow T5/T5X (`d_model`, `d_kv`, `d_ff`, `relative_attention_num_buckets`, ...) so the
published configs read the same here. Defaults are T5.1.1 small (Raffel et al. 2020 with the
t5.1.1 changes: gated-GELU MLP, untied logits, no dropout in pre-training); the other sizes live in
gin/models/. The loss (z-loss, label smoothing) is the trainer's business, not the model's.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin
import jax
import jax.numpy as jnp

# MLP activation names. 'gelu' is the tanh approximation (`gelu_new` in HF), which is what T5.1.1
# was trained with; 'linear' is the identity branch of a gated MLP.
ACTIVATIONS = ('relu', 'gelu', 'silu', 'linear')
DTYPES = ('float32', 'bfloat16', 'float16')
# Model families (T5 paper Sec. 3.2.1 / Table 2; T5X's EncoderDecoderModel / DecoderOnlyModel).
ARCHITECTURES = ('encoder_decoder', 'decoder_only', 'prefix_lm')
# Rematerialisation per layer (what the backward pass recomputes instead of keeping): 'none' keeps
# every residual, 'minimal' keeps the weight-matmul outputs, 'full' keeps only each layer's input.
REMAT_POLICIES = ('none', 'minimal', 'full')
# Which implementation of attention, projections and the relative-position bias runs: 'cpu' (the
# hand-written backward passes of cpu_kernels.py), 'xla' (plain JAX that XLA fuses), 'cudnn'
# (XLA, with attention in cuDNN's fused kernel where it supports the call), or 'auto': chosen by
# the platform that runs the model, as below.
KERNELS = ('auto', 'cpu', 'xla', 'cudnn')
PLATFORM_KERNELS = {'cpu': 'cpu', 'gpu': 'cudnn', 'cuda': 'cudnn', 'tpu': 'xla'}
# Large negative logit for masked positions (T5X's choice); finite, so fully masked rows (padding
# queries) give a uniform softmax instead of NaN.
MASKED_LOGIT = -1e10


@gin.configurable(module='t5x_lite.models')
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Sizes and numerics of a T5 model (T5.1.1 small by default).

  `mlp_activations`: one name gives T5 v1.0's `wo(act(wi(x)))`; several give the gated MLP of
  T5.1.1, `wo(act_0(wi_0(x)) * act_1(wi_1(x)) * ...)`. `logits_via_embedding`: v1.0 ties the
  output layer to the token embedding and scales the decoder output by 1/sqrt(d_model).
  `dtype` is the compute dtype; parameters are stored in `param_dtype`.

  `architecture`: 'encoder_decoder' (T5), 'decoder_only' (a causal LM built from the decoder
  stack without cross-attention, GPT-style) or 'prefix_lm' (the same decoder-only stack attending
  bidirectionally over the inputs prefix). Decoder-only families use `num_decoder_layers` only.
  `shared_encoder_decoder`: T5 Table 2 "Enc-dec, shared": encoder and decoder layer i share their
  self-attention, MLP and norms, and the stacks share the relative-position table and final norm;
  the decoder's cross-attention (and its norm) has no encoder counterpart and stays its own.

  `remat_policy`: what each encoder/decoder layer keeps for the backward pass. 'none' keeps all
  its residuals; 'minimal' keeps the outputs of the weight matmuls (projections, MLP) and
  recomputes attention scores, softmax, norms and activations; 'full' keeps only the layer's
  input and recomputes the whole layer (about one extra forward pass). Numerics are unchanged.

  `kernels`: see KERNELS; `for_platform` resolves 'auto'. `scan_layers`: each stack's layers are
  one layer with stacked parameters (leading logical axis 'layers') run by `jax.lax.scan`, so
  compile time does not grow with depth (T5X's and MaxText's `scan_layers`).
  """
  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 6
  d_kv: int = 64
  d_ff: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.0
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  architecture: str = 'encoder_decoder'
  shared_encoder_decoder: bool = False
  remat_policy: str = 'none'
  kernels: str = 'auto'
  scan_layers: bool = False

  def __post_init__(self):
    # gin may hand over a list; a tuple keeps the config hashable (usable as a jit static arg).
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    for name in ('vocab_size', 'd_model', 'num_heads', 'd_kv', 'd_ff',
                 'relative_attention_num_buckets', 'relative_attention_max_distance'):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'T5Config.{name} must be a positive int, got {value!r}.')
    for name in ('num_encoder_layers', 'num_decoder_layers'):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f'T5Config.{name} must be an int >= 0, got {value!r}.')
    if not self.mlp_activations:
      raise ValueError('T5Config.mlp_activations is empty; use e.g. (\'relu\',) for T5 v1.0 or '
                       '(\'gelu\', \'linear\') for T5.1.1.')
    unknown = [a for a in self.mlp_activations if a not in ACTIVATIONS]
    if unknown:
      raise ValueError(f'T5Config.mlp_activations has unknown activation(s) {unknown}; '
                       f'allowed: {list(ACTIVATIONS)}.')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}.')
    if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
      # Bidirectional bucketing halves the buckets, then half of those are exact offsets.
      raise ValueError('T5Config.relative_attention_num_buckets must be even and >= 4, '
                       f'got {self.relative_attention_num_buckets}.')
    if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
      raise ValueError(
          'T5Config.relative_attention_max_distance must exceed relative_attention_num_buckets / 2 '
          f'(the exact-offset buckets), got {self.relative_attention_max_distance}.')
    if not self.layer_norm_epsilon > 0:
      raise ValueError(f'T5Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}.')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f'T5Config.{name} must be one of {list(DTYPES)}, '
                         f'got {getattr(self, name)!r}.')

    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'T5Config.remat_policy must be one of {list(REMAT_POLICIES)}, '
                       f'got {self.remat_policy!r}.')

    if self.kernels not in KERNELS:
      raise ValueError(f'T5Config.kernels must be one of {list(KERNELS)}, got {self.kernels!r}.')

    if self.architecture not in ARCHITECTURES:
      raise ValueError(f'T5Config.architecture must be one of {list(ARCHITECTURES)}, '
                       f'got {self.architecture!r}.')
    if self.architecture != 'encoder_decoder' and self.num_decoder_layers < 1:
      raise ValueError(f'T5Config.architecture={self.architecture!r} needs num_decoder_layers '
                       f'>= 1, got {self.num_decoder_layers}.')
    if self.shared_encoder_decoder:
      if self.architecture != 'encoder_decoder':
        raise ValueError('T5Config.shared_encoder_decoder needs architecture=\'encoder_decoder\', '
                         f'got {self.architecture!r}.')
      if self.num_encoder_layers != self.num_decoder_layers:
        raise ValueError('T5Config.shared_encoder_decoder shares layer i of both stacks, so '
                         'num_encoder_layers must equal num_decoder_layers; got '
                         f'{self.num_encoder_layers} and {self.num_decoder_layers}.')

  def for_platform(self, platform: str) -> 'T5Config':
    """This config with `kernels='auto'` made concrete for a JAX platform ('cpu', 'gpu', 'tpu'):
    what the trainer does for its mesh's devices, which need not be this host's."""
    if self.kernels != 'auto':
      return self
    return dataclasses.replace(self, kernels=PLATFORM_KERNELS.get(platform, 'xla'))

  @property
  def resolved_kernels(self) -> str:
    """`kernels`, with 'auto' read as this host's default backend (see `for_platform`)."""
    return self.for_platform(jax.default_backend()).kernels

  @property
  def dense_kernels(self) -> str:
    """'cpu' or 'xla' for the projections. The CPU kernel's custom VJP hides its dots from
    `jax.checkpoint`, so 'minimal' remat (which keeps the dots' outputs) uses the plain one."""
    cpu = self.resolved_kernels == 'cpu' and self.remat_policy != 'minimal'
    return 'cpu' if cpu else 'xla'

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @property
  def inner_dim(self) -> int:
    """Width of the concatenated attention heads (num_heads * d_kv); need not equal d_model."""
    return self.num_heads * self.d_kv
