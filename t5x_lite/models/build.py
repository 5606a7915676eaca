"""One entry point per model family: build it and size it (its input format is
`t5x_lite.data.pipeline.feature_converter`).

`config.architecture` decides everything the trainer needs to know about the family, so callers
never branch on it themselves.
"""

from __future__ import annotations

import jax
from flax import nnx

from t5x_lite.models.config import T5Config
from t5x_lite.models.decoder_only import DecoderOnly
from t5x_lite.models.t5 import EncoderDecoder, eager_rngs

MODEL_CLASSES = {
    'encoder_decoder': EncoderDecoder,
    'decoder_only': DecoderOnly,
    'prefix_lm': DecoderOnly,
}


def build_model(config: T5Config, rngs: nnx.Rngs) -> nnx.Module:
  """The model of `config.architecture`, initialised from `rngs`."""
  return MODEL_CLASSES[config.architecture](config, rngs=rngs)


def abstract_model(config: T5Config) -> nnx.Module:
  """The model with ShapeDtypeStructs for parameters: shapes and axis names, no memory."""
  return nnx.eval_shape(lambda: build_model(config, eager_rngs(0)))


def count_params(config: T5Config) -> int:
  """Number of parameters of the model, without allocating any; shared ones count once."""
  params = nnx.state(abstract_model(config), nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(params))
