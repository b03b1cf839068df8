"""esc_hf: the Efficient Speech Codec (ESC, Gu & Diao 2024) as a transformers model.

Importing the package registers the model type "esc" with `AutoConfig`, `AutoModel` and `AutoFeatureExtractor`.
The public names are imported on first use, so that the `esc` command can answer `--help` without loading torch.
"""

import importlib
import os
import sys


__version__ = "0.1.0"

_EXPORTS = {
    "ESC_VARIANTS": "configuration_esc",
    "EscConfig": "configuration_esc",
    "EscFeatureExtractor": "feature_extraction_esc",
    "EscDecoderOutput": "modeling_esc",
    "EscEncoderOutput": "modeling_esc",
    "EscModel": "modeling_esc",
    "EscOutput": "modeling_esc",
    "EscPreTrainedModel": "modeling_esc",
    "DEFAULT_MODEL": "loading",
    "ModelLoadError": "loading",
    "load_model": "loading",
}

__all__ = sorted(_EXPORTS) + ["register_auto_classes"]


def register_auto_classes() -> None:
    """Registers "esc" with transformers' Auto classes (done on `import esc_hf`; calling it again is harmless)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    from .configuration_esc import EscConfig
    from .feature_extraction_esc import EscFeatureExtractor
    from .modeling_esc import EscModel

    AutoConfig.register("esc", EscConfig, exist_ok=True)
    AutoModel.register(EscConfig, EscModel, exist_ok=True)
    AutoFeatureExtractor.register(EscConfig, EscFeatureExtractor, exist_ok=True)
    # save_pretrained then also writes the three modeling files and an `auto_map`, so that a saved folder loads
    # with `trust_remote_code=True` where esc_hf is not installed (the Hub's remote-code convention).
    EscConfig.register_for_auto_class()
    EscModel.register_for_auto_class("AutoModel")
    EscFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _started_as_the_command_line() -> bool:
    """True in the `esc` console script and in `python -m esc_hf` (not `python -m esc_hf.convert` etc.)."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    return os.path.basename(sys.argv[0] if sys.argv else "") == "esc" or module == "esc_hf"


# The command line registers when it loads a model (esc_hf.loading.load_model), so that `esc --help` and argument
# errors answer in a fraction of a second instead of waiting seconds for torch and transformers.
if not _started_as_the_command_line():
    register_auto_classes()
