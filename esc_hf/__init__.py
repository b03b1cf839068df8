"""esc_hf: the Efficient Speech Codec (ESC, Gu & Diao 2024) as a transformers model.

Importing the package registers the model type "esc" with `AutoConfig`, `AutoModel` and `AutoFeatureExtractor`.
"""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from .configuration_esc import ESC_VARIANTS, EscConfig
from .feature_extraction_esc import EscFeatureExtractor
from .modeling_esc import EscDecoderOutput, EscEncoderOutput, EscModel, EscOutput, EscPreTrainedModel


__version__ = "0.1.0"

AutoConfig.register("esc", EscConfig, exist_ok=True)
AutoModel.register(EscConfig, EscModel, exist_ok=True)
AutoFeatureExtractor.register(EscConfig, EscFeatureExtractor, exist_ok=True)
# save_pretrained then also writes the three modeling files and an `auto_map`, so that a saved folder loads with
# `trust_remote_code=True` where esc_hf is not installed (the Hub's remote-code convention).
EscConfig.register_for_auto_class()
EscModel.register_for_auto_class("AutoModel")
EscFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = [
    "ESC_VARIANTS",
    "EscConfig",
    "EscDecoderOutput",
    "EscEncoderOutput",
    "EscFeatureExtractor",
    "EscModel",
    "EscOutput",
    "EscPreTrainedModel",
]
