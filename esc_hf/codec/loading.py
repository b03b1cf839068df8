"""Where models come from: the packaged default model, and `load_model` for a folder or a Hub id.

Every way a load can fail (no such folder, a folder that is not a model, a damaged `config.json` or
`model.safetensors`, a Hub id while offline) is one `ModelLoadError` that names the model and the problem, raised
at once: an unreachable Hub is detected before transformers' download retries start.
"""

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse


DEFAULT_MODEL = Path(__file__).parent.parent / "default_model"
"""The packaged default model (ESC-Base trained by this project), a `from_pretrained` folder inside the package."""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_HUB_TIMEOUT_SECONDS = 3.0


class ModelLoadError(ValueError):
    """A model cannot be loaded; the message names the model and says why."""


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no details'}"


def _hub_is_reachable() -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_TIMEOUT_SECONDS).close()
    except OSError:
        return False
    return True


def _hub_options(name: str) -> dict:
    """`from_pretrained` options for Hub id `name`: from the local cache only when the Hub cannot be reached."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise ModelLoadError(
                f"cannot load model {name!r}: HF_HUB_OFFLINE is set and it is not in the local Hub cache (for a "
                "local folder, pass its path)"
            )
        return {"local_files_only": True}
    if _hub_is_reachable():
        return {}
    if cached:
        return {"local_files_only": True}
    raise ModelLoadError(
        f"cannot load model {name!r}: there is no such folder, and the Hugging Face Hub ({constants.ENDPOINT}) "
        "cannot be reached to download it (offline?)"
    )


def _source(name: str | os.PathLike | None) -> tuple[str, dict]:
    """The folder or Hub id to load for `name`, with the options to load it."""
    if name is None:
        return str(DEFAULT_MODEL), {}
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"cannot load model {text!r}: the folder has no config.json, so it is not a model")
        return str(path), {}
    if path.exists():
        raise ModelLoadError(f"cannot load model {text!r}: it is a file; pass the model's folder")
    if not _HUB_ID.fullmatch(text) or text.startswith((".", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"cannot load model {text!r}: no such folder")
    return text, _hub_options(text)


def load_model(name: str | os.PathLike | None = None):
    """The `EscModel` in folder or Hub id `name` (None: the packaged default model), in eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from .. import register_auto_classes

    register_auto_classes()
    source, options = _source(name)
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(source, **options).eval()
    except Exception as error:  # a damaged folder fails in any library on the way; say which file, in one line
        raise ModelLoadError(f"cannot load model {str(name or source)!r}: {_first_line(error)}") from error
