"""Fused CPU kernels for the opt-in bf16 backbone, compiled on first use.

ESC's Swin windows hold 16 tokens. aten's attention kernels spend most of their time on per-window overhead at
that size, so the bf16 path on the CPU uses `torch.ops.esc_hf.window_attention` (source: `csrc/cpu_kernels.cpp`):
bf16 q, k, v in, each window's attention computed in float32, bf16 out; and `torch.ops.esc_hf.add_bf16_` adds a
bf16 branch output to the float32 residual stream in one pass. They are built with `torch.utils.cpp_extension`
(a C++ compiler with OpenMP and `ninja`, as `torch.compile` also needs) for this machine's CPU, once; later
processes load the cached build. Where the build is impossible the bf16 path falls back to aten's ops with a
single warning, and `ESC_HF_CPU_KERNELS=0` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"
_FLAGS = ["-O3", "-march=native", "-fopenmp"]
_lock = threading.Lock()
_loaded: bool | None = None  # None until the first `enabled()`


def _cpu_signature() -> str:
    """Built with -march=native: a cache shared between different CPUs must not hand one's build to another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build_name() -> str:
    digest = hashlib.sha1()
    for part in (SOURCE.read_bytes(), " ".join(_FLAGS).encode(), _cpu_signature().encode(), torch.__version__.encode()):
        digest.update(part)
    return f"esc_hf_cpu_kernels_{digest.hexdigest()[:12]}"


def enabled() -> bool:
    """Whether `torch.ops.esc_hf` is loaded, building it if needed (first call only; about 10 s). False where the
    kernels are switched off (`ESC_HF_CPU_KERNELS=0`) or cannot be built here."""
    if os.environ.get("ESC_HF_CPU_KERNELS", "1") == "0":
        return False
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> bool:
    if platform.system() != "Linux":
        logger.warning("esc_hf: fused CPU kernels are built on Linux only; the bf16 backbone uses aten's ops")
        return False
    from torch.utils import cpp_extension

    try:
        logger.info("esc_hf: building the fused CPU kernels (once per machine)")
        cpp_extension.load(_build_name(), [str(SOURCE)], extra_cflags=_FLAGS, is_python_module=False)
    except Exception as error:  # no compiler, no ninja, a read-only cache: the aten path still works
        logger.warning("esc_hf: could not build the fused CPU kernels (%s); the bf16 backbone uses aten's ops", error)
        return False
    return True


def _attention_problem(qkv: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None) -> str | None:
    """What keeps `window_attention` from taking these inputs, or None."""
    if qkv.dim() != 5 or qkv.shape[1] != 16 or qkv.shape[2] != 3 or not 1 <= qkv.shape[-1] <= 64:
        return f"qkv must be (windows, 16, 3, heads, head_dim ≤ 64), got {tuple(qkv.shape)}"
    if qkv.dtype != torch.bfloat16 or qkv.device.type != "cpu":
        return f"qkv must be a bf16 CPU tensor, got {qkv.dtype} on {qkv.device}"
    windows, heads = qkv.shape[0], qkv.shape[3]
    if bias.numel() != heads * 256:
        return f"bias must be (1, {heads}, 16, 16), got {tuple(bias.shape)}"
    if mask is not None and mask.numel() != windows * 256:
        return f"mask must be ({windows}, 1, 16, 16), got {tuple(mask.shape)}"
    return None


def _usable() -> bool:
    """The kernels have no autograd formula and are opaque to tracing: inference in eager mode only."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and enabled()


def window_attention(qkv: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Softmax attention inside 16-token windows, bf16 in and out, float32 inside (no autograd: inference only).

    Args:
        qkv: `(windows, 16, 3, heads, head_dim)` bf16, head_dim ≤ 64.
        bias: `(1, heads, 16, 16)` position bias, added to the scaled scores.
        mask: `(windows, 1, 16, 16)` additive mask, or None.
        scale: factor on `q · k`.

    Returns:
        `(windows, 16, heads * head_dim)` bf16, tokens in order and heads concatenated on channels.
    """
    problem = _attention_problem(qkv, bias, mask)
    if problem:
        raise ValueError(problem)
    if not enabled():
        raise RuntimeError("the esc_hf CPU kernels are not available here (see the warning logged when building)")
    return torch.ops.esc_hf.window_attention(qkv, bias, mask, scale)


def supports_attention(qkv: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """Whether `window_attention` takes these inputs here and now."""
    return _attention_problem(qkv, bias, mask) is None and _usable()


def add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`x += y` for a float32 residual stream and a bf16 branch output, in one pass; returns `x`. Where the kernels
    do not apply (other dtypes, non-contiguous tensors, autograd, tracing), it is `x.add_(y)`."""
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and y.dtype == torch.bfloat16
        and x.shape == y.shape
        and x.is_contiguous()
        and y.is_contiguous()
        and _usable()
    ):
        torch.ops.esc_hf.add_bf16_(x, y)
        return x
    return x.add_(y)
