"""esc_hf: the Efficient Speech Codec (ESC, Gu & Diao 2024) as a transformers model.

Importing the package registers the model type "esc" with `AutoConfig`, `AutoModel` and `AutoFeatureExtractor`.
The public names are imported on first use, so that the `esc` command can answer `--help` without loading torch.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings


__version__ = "0.1.0"

_EXPORTS = {
    "ESC_VARIANTS": "models.esc.configuration_esc",
    "EscConfig": "models.esc.configuration_esc",
    "EscFeatureExtractor": "models.esc.feature_extraction_esc",
    "EscDecoderOutput": "models.esc.modeling_esc",
    "EscEncoderOutput": "models.esc.modeling_esc",
    "EscModel": "models.esc.modeling_esc",
    "EscOutput": "models.esc.modeling_esc",
    "EscPreTrainedModel": "models.esc.modeling_esc",
    "DEFAULT_MODEL": "codec.loading",
    "ModelLoadError": "codec.loading",
    "load_model": "codec.loading",
    "encode_batch": "codec.dataset_codes",
}

# Modules of release 0.1's flat layout and where they live now. `import esc_hf.bitstream` and the like still work
# for one release, with a DeprecationWarning, and give the new module itself (not a copy).
_MOVED_MODULES = {
    "audio_io": "codec.audio_io",
    "bitstream": "codec.bitstream",
    "codecs": "eval.baselines",
    "configuration_esc": "models.esc.configuration_esc",
    "cpu_kernels": "kernels.cpu_kernels",
    "feature_extraction_esc": "models.esc.feature_extraction_esc",
    "io_utils": "utils.atomic_files",
    "loading": "codec.loading",
    "metrics": "eval.metrics",
    "model_card": "eval.model_card",
    "modeling_esc": "models.esc.modeling_esc",
    "onnx_runtime": "codec.onnx_runtime",
    "plotting": "eval.plotting",
    "report": "eval.report",
    "streaming": "codec.streaming",
    "tokens": "codec.tokens",
}

__all__ = sorted(_EXPORTS) + ["register_auto_classes"]


def register_auto_classes() -> None:
    """Registers "esc" with transformers' Auto classes (done on `import esc_hf`; calling it again is harmless)."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    from .models.esc.configuration_esc import EscConfig
    from .models.esc.feature_extraction_esc import EscFeatureExtractor
    from .models.esc.modeling_esc import EscModel

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


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves the old module paths of `_MOVED_MODULES` to the modules' new homes."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = f"{__name__}.{_MOVED_MODULES[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} has moved to {new}; the old path goes in the next release", DeprecationWarning, 2)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system is about to set the old name's spec on it
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # already executed; only its own spec is given back


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def _started_as_the_command_line() -> bool:
    """True in the `esc` console script and in `python -m esc_hf` (not `python -m esc_hf.convert` etc.)."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    return os.path.basename(sys.argv[0] if sys.argv else "") == "esc" or module == "esc_hf"


# The command line registers when it loads a model (esc_hf.codec.loading.load_model), so that `esc --help` and argument
# errors answer in a fraction of a second instead of waiting seconds for torch and transformers.
if not _started_as_the_command_line():
    register_auto_classes()
