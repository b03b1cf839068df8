"""Convert a checkpoint of the authors' ESC code into a transformers folder.

    python -m esc_hf.convert --checkpoint PATH --output-dir DIR [--config PATH]

`PATH` is the authors' release folder (`config.yaml` + `model.pth`, the state dict bare or under
`"model_state_dict"`), a fixture-style folder (`config.json` + `state_dict.safetensors`), or one of those weight
files with `--config` naming its config. The output is a `save_pretrained` folder: `config.json` (with `auto_map`),
`model.safetensors`, `preprocessor_config.json`, the remote-code files and a generated `README.md` model card.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from .eval.model_card import write_model_card
from .models.esc.configuration_esc import EscConfig
from .models.esc.feature_extraction_esc import EscFeatureExtractor
from .models.esc.modeling_esc import EscModel
from .utils.atomic_files import atomic_directory


class ConversionError(ValueError):
    """The checkpoint or its config cannot be turned into an ESC model; the message says what is wrong."""


# The authors' constructor keywords → EscConfig fields. Keys that only describe training data or losses are
# ignored; anything else unknown is an error, so that a config we do not understand is never half-converted.
_SAME_FOR_ALL = {
    "in_freq": "num_frequency_bins",
    "win_len": "window_length_ms",
    "hop_len": "hop_length_ms",
    "sr": "sampling_rate",
    "patch_size": "patch_size",
    "h_dims": "hidden_dims",
    "swin_heads": "num_heads",
    "swin_depth": "depth",
    "window_size": "window_size",
    "mlp_ratio": "mlp_ratio",
    "overlap": "overlap",
    "group_size": "group_size",
    "codebook_size": "codebook_size",
    "l2norm": "l2norm",
    "kernel_size": "conv_kernel_size",
    "conv_depth": "conv_depth",
}
_MODEL_NAMES = ("csvq+swinT", "csvq+conv", "rvq+swinT", "rvq+conv")


def config_from_authors(model_kwargs: dict, model_name: str | None = None) -> EscConfig:
    """Map the authors' `model` keyword arguments (and `model_name`, e.g. `"csvq+swinT"`) to an [`EscConfig`]."""
    kwargs = dict(model_kwargs)
    if model_name is not None and model_name not in _MODEL_NAMES:
        raise ConversionError(f"unknown model_name {model_name!r}; expected one of {sorted(_MODEL_NAMES)}")
    is_rvq = (model_name or "csvq").startswith("rvq") or "num_rvqs" in kwargs
    backbone = kwargs.pop("backbone", "transformer")
    if backbone not in ("transformer", "convolution"):
        raise ConversionError(f"unknown backbone {backbone!r}; expected 'transformer' or 'convolution'")
    if model_name is not None and model_name.endswith("conv") != (backbone == "convolution"):
        raise ConversionError(f"model_name {model_name!r} disagrees with backbone {backbone!r}")
    if kwargs.pop("in_dim", 2) != 2:
        raise ConversionError("in_dim must be 2 (real and imaginary STFT channels)")
    fields = {"backbone": "swin" if backbone == "transformer" else "conv", "quantizer": "rvq" if is_rvq else "csrvq"}
    for key in list(kwargs):
        if key in _SAME_FOR_ALL:
            fields[_SAME_FOR_ALL[key]] = kwargs.pop(key)
    max_streams = kwargs.pop("max_streams", 6)
    # The authors' ablation configs name the same setting `codebook_dim` in some files and `codebook_dims` in others.
    dims = kwargs.pop("codebook_dims", None)
    dims = kwargs.pop("codebook_dim", dims)
    if is_rvq:
        num_rvqs = kwargs.pop("num_rvqs", 6)
        if isinstance(dims, (list, tuple)):
            if len(set(dims)) != 1:
                raise ConversionError(f"the rvq model needs one codebook_dim, got {dims}")
            dims = dims[0]
        hidden = fields.get("hidden_dims", EscConfig().hidden_dims)
        if max_streams != len(hidden):
            raise ConversionError(f"max_streams {max_streams} must equal len(h_dims) {len(hidden)} for rvq models")
        fields.update(num_streams=num_rvqs, codebook_dims=[8 if dims is None else int(dims)] * num_rvqs)
    else:
        if dims is None:
            dims = [8] * max_streams
        if not isinstance(dims, (list, tuple)):
            dims = [dims] * max_streams
        fields.update(num_streams=max_streams, codebook_dims=list(dims))
    if kwargs:
        raise ConversionError(f"unknown keys in the model config: {sorted(kwargs)}")
    for key in ("patch_size", "hidden_dims", "num_heads", "conv_kernel_size"):
        if key in fields:
            fields[key] = list(fields[key])
    return EscConfig(**fields)


def convert_state_dict(state_dict: dict, model: EscModel) -> dict:
    """Check the authors' state dict against `model` and return it in our layout.

    Buffers that we recompute (`ft.window`, `ift.window`, `*.relative_position_index`) are checked and dropped;
    the CNN backbone's unused `patch_embed.norm` is kept (our model has it too). Unknown or missing keys raise.
    """
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    expected = model.state_dict()
    window = torch.hann_window(model.config.win_length)
    buffers = dict(model.named_buffers())  # with the ones recomputed at load time, which the state dict lacks
    converted = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"state dict entry {key!r} is not a tensor")
        if key in ("ft.window", "ift.window"):
            if value.shape != window.shape or not torch.allclose(value.float(), window, atol=1e-6):
                raise ConversionError(f"{key} is not the periodic Hann window of {model.config.win_length} samples")
            continue
        if key.endswith("relative_position_index"):
            if key not in buffers or not torch.equal(value.long(), buffers[key]):
                raise ConversionError(f"{key} does not match window_size {model.config.window_size}")
            continue
        converted[key] = value
    unknown = sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    if unknown or missing:
        raise ConversionError(
            "the checkpoint does not fit the config: "
            + (f"unknown keys {unknown[:10]}{' …' if len(unknown) > 10 else ''} " if unknown else "")
            + (f"missing keys {missing[:10]}{' …' if len(missing) > 10 else ''}" if missing else "")
        )
    for key, value in converted.items():
        if value.shape != expected[key].shape:
            raise ConversionError(f"{key} has shape {tuple(value.shape)}, the config expects {tuple(expected[key].shape)}")
        converted[key] = value.to(expected[key].dtype)
    return converted


def _read_config(path: Path) -> tuple[dict, str | None]:
    """Returns the authors' `model` kwargs and `model_name` from a `config.yaml` or fixture `config.json`."""
    if not path.is_file():
        raise ConversionError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConversionError(f"{path} has no 'model' section with the constructor arguments")
    return data["model"], data.get("model_name")


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types; all mean the same to the user
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {error}") from error
    if isinstance(data, dict) and isinstance(data.get("model_state_dict"), dict):
        return data["model_state_dict"]
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data
    raise ConversionError(f"{path} holds neither a state dict nor a dict with 'model_state_dict'")


def _locate(checkpoint: Path, config: Path | None) -> tuple[Path, Path]:
    if checkpoint.is_dir():
        for weights_name, config_name in (("model.pth", "config.yaml"), ("state_dict.safetensors", "config.json")):
            if (checkpoint / weights_name).is_file():
                return checkpoint / weights_name, config or checkpoint / config_name
        raise ConversionError(f"{checkpoint} holds neither model.pth nor state_dict.safetensors")
    if config is None:
        for name in ("config.yaml", "config.json"):
            if (checkpoint.parent / name).is_file():
                return checkpoint, checkpoint.parent / name
        raise ConversionError(f"no config.yaml or config.json beside {checkpoint}; name one with --config")
    return checkpoint, config


def load_authors_checkpoint(checkpoint: str | Path, config: str | Path | None = None) -> EscModel:
    """Build an [`EscModel`] from the authors' checkpoint (see the module docstring for the accepted forms)."""
    weights_path, config_path = _locate(Path(checkpoint), Path(config) if config else None)
    model_kwargs, model_name = _read_config(config_path)
    model = EscModel(config_from_authors(model_kwargs, model_name))
    model.load_state_dict(convert_state_dict(_read_state_dict(weights_path), model), strict=False)
    return model.eval()


def convert(checkpoint: str | Path, output_dir: str | Path, config: str | Path | None = None) -> EscModel:
    """Convert and write a `save_pretrained` folder with remote code, feature extractor and model card."""
    model = load_authors_checkpoint(checkpoint, config)
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp)
        EscFeatureExtractor(sampling_rate=model.config.sampling_rate).save_pretrained(tmp)
        write_model_card(tmp, model, source=f"converted from the authors' checkpoint `{Path(checkpoint).name}`")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esc_hf.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="release folder, model.pth or state_dict.safetensors")
    parser.add_argument("--output-dir", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--config", help="config.yaml / config.json, if not beside the checkpoint")
    args = parser.parse_args(argv)
    try:
        model = convert(args.checkpoint, args.output_dir, args.config)
    except (ConversionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output_dir}: {model.config.backbone}/{model.config.quantizer}, {model.num_parameters():,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
