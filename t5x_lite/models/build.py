"""One entry point per model family: build it, size it, and pick its seqio feature converter.

`config.architecture` decides everything the trainer needs to know about the family, so callers
never branch on it themselves.
"""

from __future__ import annotations

import jax
import seqio
from flax import nnx

from t5x_lite.models.config import T5Config
from t5x_lite.models.decoder_only import DecoderOnly
from t5x_lite.models.t5 import EncoderDecoder, eager_rngs

MODEL_CLASSES = {
    'encoder_decoder': EncoderDecoder,
    'decoder_only': DecoderOnly,
    'prefix_lm': DecoderOnly,
}

FEATURE_CONVERTERS = {
    'encoder_decoder': seqio.EncDecFeatureConverter,
    'decoder_only': seqio.DecoderFeatureConverter,
    'prefix_lm': seqio.PrefixLMFeatureConverter,
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


def feature_converter(config: T5Config, pack: bool = True) -> seqio.FeatureConverter:
  """The seqio converter whose output `model.logits_for_batch` expects."""
  return FEATURE_CONVERTERS[config.architecture](pack=pack)
