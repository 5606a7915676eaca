"""T5-family models in Flax NNX: config, building blocks, encoder-decoder, decoder-only / prefix
LM, and FLOP counts. `build_model`, `count_params` and `training_flops_per_example` dispatch on
`T5Config.architecture`. Importing it needs JAX, Flax and gin, not TensorFlow or seqio."""

from t5x_lite.models.build import abstract_model, build_model, count_params
from t5x_lite.models.config import T5Config
from t5x_lite.models.decoder_only import DecoderOnly
from t5x_lite.models.flops import forward_flops_per_example, training_flops_per_example
from t5x_lite.models.t5 import Decoder, Encoder, EncoderDecoder, eager_rngs

__all__ = [
    'T5Config', 'EncoderDecoder', 'DecoderOnly', 'Encoder', 'Decoder', 'build_model',
    'abstract_model', 'count_params', 'eager_rngs',
    'forward_flops_per_example', 'training_flops_per_example',
]
