"""T5-family models in Flax NNX: config, building blocks, encoder-decoder and FLOP counts."""

from t5x_lite.models.config import T5Config
from t5x_lite.models.flops import forward_flops_per_example, training_flops_per_example
from t5x_lite.models.t5 import (Decoder, Encoder, EncoderDecoder, abstract_model,
                                count_params, eager_rngs)

__all__ = [
    'T5Config', 'EncoderDecoder', 'Encoder', 'Decoder', 'abstract_model', 'count_params',
    'eager_rngs', 'forward_flops_per_example', 'training_flops_per_example',
]
