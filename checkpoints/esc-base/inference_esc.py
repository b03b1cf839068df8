# Copyright 2026 The esc_hf authors. Licensed under the Apache License, Version 2.0.
"""ESC's inference forms: the same network as `modeling_esc`'s modules, computed faster without autograd.

`EscModel` chooses them in one place (`EscModel._formulation`); they give the modules' values up to float rounding:

* A Swin stage keeps its tokens in window order between its blocks (`_WindowPlan`) instead of padding, rolling,
  partitioning, merging and cropping in every block, and skips the padding rows of a grid lower than one window.
* Attention runs in PyTorch's fused kernel, or for a bf16 backbone on the CPU in the package's kernel
  (`esc_hf.kernels.cpu_kernels`); linear layers run in oneDNN with the bias and GELU fused.
* The de-embedding's two convolutions and the pixel shuffle between them are one convolution (`patch_deembed`,
  which also serves traced graphs).
* `cast_backbone` is `EscModel.set_backbone_dtype`.

Their speed is measured in `benchmarks/bench_codec.py`; the choices it led to are in `docs/benchmarks.md`.
"""

import importlib
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modeling_esc import (
    EscPatchDeEmbed,
    EscSwinBlock,
    EscTransformerLayer,
    _at_least_float32,
    _shift_window_mask,
    fused_window_attention,
)


# Largest float32 temporary the bf16 CPU attention makes at once (see `_attend_qkv`): small enough to stay in a
# core's L2 cache.
_FLOAT32_SLICE_BYTES = 2**20


@lru_cache(maxsize=None)
def _cpu_kernels():
    """The package's CPU kernels for the bf16 backbone (`esc_hf.kernels.cpu_kernels`), or None. A remote-code copy of
    this file (loaded with `trust_remote_code=True`) goes without them: it must not import whatever version of
    esc_hf happens to be installed."""
    if not __name__.startswith("esc_hf."):
        return None
    return importlib.import_module("esc_hf.kernels.cpu_kernels")


# ----------------------------------------------------------------------------------------------------------------
# Linear layers and attention


@lru_cache(maxsize=None)
def _cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _onednn_linear(x: torch.Tensor, linear: nn.Linear, activation: str) -> torch.Tensor | None:
    """`linear(x)` followed by `activation` ("none" or "gelu", erf form) as one oneDNN call on the CPU, or None
    where that does not apply. It adds the bias inside the GEMM (aten's addmm first copies the broadcast bias into
    the output) and applies GELU as a post-op (no second pass over the largest activation, no fresh buffer);
    values equal the separate ops up to float rounding."""
    if (
        x.device.type != "cpu"
        or x.dim() != 2
        or x.dtype not in (torch.float32, torch.bfloat16)
        or x.dtype != linear.weight.dtype
        or linear.bias is None
        or not torch.backends.mkldnn.is_available()
        or torch.is_autocast_enabled("cpu")
        # oneDNN has no bf16 GEMM on CPUs without AVX512-BF16/AMX (it fails to create the primitive); aten's
        # linear still computes it there, slowly
        or (x.dtype == torch.bfloat16 and not _cpu_has_bf16())
    ):
        return None
    algorithm = "none" if activation == "gelu" else ""
    scalars = [None] if algorithm else []
    return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, activation, scalars, algorithm)


def _linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    x = x.to(linear.weight.dtype)
    out = _onednn_linear(x.reshape(-1, x.shape[-1]), linear, "none")
    return linear(x) if out is None else out.view(*x.shape[:-1], -1)


def _linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    x = x.to(linear.weight.dtype)
    out = _onednn_linear(x, linear, "gelu")
    return F.gelu(linear(x)) if out is None else out


def _add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`x.add_(y)` on the residual stream; one pass, with the package's CPU kernel, for a bf16 backbone's branch."""
    kernels = _cpu_kernels()
    return x.add_(y) if kernels is None else kernels.add_(x, y)


def _attend(attn, windows: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`EscWindowAttention` `attn` on `windows` `(B * nW, N, C)`: the position `bias` `(1, heads, N, N)`, plus the
    shift `mask` `(B * nW, 1, N, N)` of these windows where it is nonzero."""
    batch_windows, tokens, _ = windows.shape
    qkv = _linear(windows, attn.qkv).view(batch_windows, tokens, 3, attn.num_heads, -1)
    return _linear(_attend_qkv(attn, qkv, bias, mask), attn.proj)


def _attend_qkv(attn, qkv: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`_attend` from the projected `qkv` `(B * nW, N, 3, heads, d)`, before the output projection."""
    batch_windows, tokens, _, heads, head_dim = qkv.shape
    kernels = _cpu_kernels()
    if kernels is not None and kernels.supports_attention(qkv, bias, mask):
        return kernels.window_attention(qkv, bias, mask, attn.scale)
    if qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16:
        # Without the package's kernel, aten's CPU attention is slower in bf16 than in float32 on 16-token windows
        # (per-window overhead), so it runs in float32, on slices of windows that stay in the L2 cache, with the
        # same values. The mask is added per slice too: at the bottleneck every window is on the seam.
        out = qkv.new_empty(batch_windows, tokens, heads * head_dim)
        step = max(1, _FLOAT32_SLICE_BYTES // (4 * qkv[0].numel()))
        bias = bias.float()
        for start in range(0, batch_windows, step):
            part = slice(start, start + step)
            out[part] = fused_window_attention(
                qkv[part].float(), bias if mask is None else bias + mask[part], attn.scale
            )
        return out
    return fused_window_attention(qkv, bias if mask is None else bias + mask.to(bias.dtype), attn.scale)


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    return _linear(_linear_gelu(x, mlp.linear_1), mlp.linear_2)


# ----------------------------------------------------------------------------------------------------------------
# Swin stages in window order


@dataclass(frozen=True)
class _WindowPlan:
    """Gather indices that keep a Swin stage's tokens in window order between its blocks (inference path).

    Every token layout here is a flat `(rows, C)` tensor. `to_window[s]` gathers the grid tokens `(B*H*W, C)` into
    the window order of shift `s`: the padded, rolled grid cut into `ws × ws` windows, row-major tokens inside each
    window, exactly as pad + roll + partition would give, except that for a shifted order the windows that
    straddle the cyclic seam (the only ones with a nonzero shift mask) come after all the others, `interior[s]`
    windows in. Padding positions gather row 0: their values never matter, because the first norm's output is
    zeroed on the rows that `padding[s]` lists, as the zero padding of the plain path is. `switch[(a, b)]`
    re-orders from shift `a` to `b`, `to_grid[s]` returns to the cropped grid and `to_merge[s]` (even H only)
    straight to `EscPatchMerge`'s row pairs; `border_mask[s]` is the shift mask of the seam windows, in their
    order. `real[s]` lists the rows of real tokens where padding is at least a quarter of the rows (a bottleneck
    lower than one window), else None.
    """

    to_window: dict
    switch: dict
    to_grid: dict
    to_merge: dict
    padding: dict
    interior: dict
    border_mask: dict
    real: dict


@lru_cache(maxsize=64)
def _window_plan(batch: int, height: int, width: int, window_size: int, device: torch.device) -> _WindowPlan:
    ws, shift = window_size, window_size // 2
    hp, wp = math.ceil(height / ws) * ws, math.ceil(width / ws) * ws
    padded = (hp, wp) != (height, width)
    item = torch.arange(batch)[:, None, None, None] * (hp * wp)
    row, col = torch.arange(hp)[:, None], torch.arange(wp)[None, :]
    real = ((row < height) & (col < width)).expand(hp, wp)
    # Index of every padded-grid position in the grid tokens (row 0 for padding).
    source = torch.arange(batch)[:, None, None] * (height * width) + row * width + col
    source = source.masked_fill(~real, 0)
    orders, inverse = {}, {}
    to_window, padding, interior, border_mask, real_rows = {}, {}, {}, {}, {}
    for s in sorted({0, shift}):
        # Rolling by -s puts padded position ((r + s) % hp, (c + s) % wp) at (r, c).
        grid = ((row + s) % hp) * wp + (col + s) % wp
        windows = grid.view(hp // ws, ws, wp // ws, ws).transpose(1, 2).reshape(-1, ws * ws)
        positions = item[:, :, 0, 0][..., None] + windows[None]  # (B, nW, N)
        if s:
            mask = _shift_window_mask(hp, wp, ws, torch.device("cpu"))
            seam = (mask != 0).flatten(1).any(1)
            positions = torch.cat([positions[:, ~seam].reshape(-1), positions[:, seam].reshape(-1)])
            interior[s] = batch * int((~seam).sum())
            border_mask[s] = mask[seam][:, None].repeat(batch, 1, 1, 1).to(device)
        order = positions.reshape(-1)
        orders[s], inverse[s] = order, torch.argsort(order)
        to_window[s] = source.reshape(-1)[order].to(device)
        is_real = real.reshape(-1).repeat(batch)[order]
        padding[s] = (~is_real).nonzero()[:, 0].to(device) if padded else None
        real_rows[s] = is_real.nonzero()[:, 0].to(device) if 4 * int(is_real.sum()) <= 3 * is_real.numel() else None
    switch = {(a, b): inverse[a][orders[b]].to(device) for a in orders for b in orders if a != b}
    grid_positions = (item[..., 0] + row * wp + col)[:, :height, :width].reshape(-1)
    to_grid = {s: inverse[s][grid_positions].to(device) for s in orders}
    to_merge = {}
    for s in orders:
        if height % 2:
            to_merge[s] = None
            continue
        # (b, h', w, t) ← grid row 2h' + t: PatchMerge's concatenation of two rows on channels.
        pairs = item[..., 0, None] + (2 * row[: height // 2, :, None] + torch.arange(2)) * wp + col[..., None]
        to_merge[s] = inverse[s][pairs[:, :, :width].reshape(-1)].to(device)
    return _WindowPlan(to_window, switch, to_grid, to_merge, padding, interior, border_mask, real_rows)


def transformer_layer(
    layer: EscTransformerLayer, x: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, int]:
    """`layer(x, height, width)` (a Swin stage with at least one block): `x` `(B, H*W, C_in)` → `(B, H'*W, C_out)`
    and `H'`."""
    x = x.to(layer.swint_blocks[0].norm1.weight.dtype)  # the residual stream is in the LayerNorms' dtype
    batch, _, channels = x.shape
    plan = _window_plan(batch, height, width, layer.window_size, x.device)
    shift = layer.swint_blocks[0].shift_size
    x = x.reshape(-1, channels).index_select(0, plan.to_window[shift])  # a fresh tensor: updated in place
    for block in layer.swint_blocks:
        if block.shift_size != shift:
            x = x.index_select(0, plan.switch[(shift, block.shift_size)])
            shift = block.shift_size
        x = _block_in_window_order(block, x, plan)
    if layer.scale == "down" and plan.to_merge[shift] is not None:
        pairs = x.index_select(0, plan.to_merge[shift]).view(batch, -1, 2 * channels)
        return layer.subsample.down(layer.subsample.norm(pairs)), height // 2
    x = x.index_select(0, plan.to_grid[shift]).view(batch, height * width, channels)
    return layer._rescale(x, height, width)


def _block_in_window_order(block: EscSwinBlock, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
    """`block` on tokens `(rows, C)` already in its window order (see [`_WindowPlan`]); updates `x` in place. The
    same arithmetic per token as `EscSwinBlock.forward`, without its pad, roll, partition, merge and crop copies."""
    if plan.real[block.shift_size] is not None:
        return _block_on_real_rows(block, x, plan)
    return _block_on_all_rows(block, x, plan)


def _block_on_all_rows(block: EscSwinBlock, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
    tokens, channels = block.window_size**2, x.shape[-1]
    y = block.norm1(x)
    padding = plan.padding[block.shift_size]
    if padding is not None:  # a few rows: cheaper than multiplying every row by a 0/1 mask
        y.index_fill_(0, padding, 0.0)
    y, windows = y.view(-1, tokens, channels), x.view(-1, tokens, channels)
    bias = block.attn.position_bias()
    for part, mask in _mask_parts(block, plan, windows.shape[0]):
        _add_(windows[part], _attend(block.attn, y[part], bias, mask))
    return _add_(x, _mlp(block.mlp, block.norm2(x)))


def _mask_parts(block: EscSwinBlock, plan: _WindowPlan, num_windows: int) -> list[tuple[slice, torch.Tensor | None]]:
    """The non-empty runs of windows and their shift masks: only the windows on the cyclic seam have a nonzero
    mask (they come last in a shifted order); the others need the position bias alone."""
    if not block.shift_size:
        return [(slice(None), None)]
    interior = plan.interior[block.shift_size]
    parts = [(slice(0, interior), None), (slice(interior, num_windows), plan.border_mask[block.shift_size])]
    return [(part, mask) for part, mask in parts if part.start < part.stop]


def _block_on_real_rows(block: EscSwinBlock, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
    """`_block_in_window_order` where padding is a large share of the rows (ESC-Base's bottleneck is 2 rows high,
    half of every 4 × 4 window): norms, projections and the MLP run on the real tokens only. A padding token's
    normed input is zero, so its query, key and value are the qkv bias, which is what it gets here."""
    attn = block.attn
    real, tokens, channels = plan.real[block.shift_size], block.window_size**2, x.shape[-1]
    real_x = x.index_select(0, real)
    projected = _linear(block.norm1(real_x), attn.qkv)
    qkv = attn.qkv.bias.to(projected.dtype).expand(x.shape[0], -1).index_copy(0, real, projected)
    qkv = qkv.view(-1, tokens, 3, attn.num_heads, channels // attn.num_heads)
    bias = attn.position_bias()
    outs = [_attend_qkv(attn, qkv[part], bias, mask) for part, mask in _mask_parts(block, plan, qkv.shape[0])]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    _add_(real_x, _linear(out.view(-1, channels).index_select(0, real), attn.proj))
    _add_(real_x, _mlp(block.mlp, block.norm2(real_x)))
    return x.index_copy_(0, real, real_x)


# ----------------------------------------------------------------------------------------------------------------
# De-embedding


def patch_deembed(deembed: EscPatchDeEmbed, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`deembed(x, height, width)` with its two convolutions fused into one where the grid is large enough (every
    grid but a few patches wide); also traced (torch.compile, ONNX)."""
    if deembed.is_swin:
        x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
    x = x.to(deembed.de_proj1.weight.dtype)
    if all(size >= n + deembed.de_proj1.padding[0] for size, n in zip(x.shape[-2:], _edge_patches(deembed))):
        return _fused_deembedding(deembed, x)
    return deembed.project(x)


def _edge_patches(deembed: EscPatchDeEmbed) -> tuple[int, int]:
    """Patches along each axis whose first-convolution outputs the second convolution's edge taps read."""
    k2 = deembed.de_proj2.padding[0]
    return tuple((2 * k2 - 1) // s + 1 for s in deembed.patch_size)


def _fused_deembedding_weights(deembed: EscPatchDeEmbed) -> tuple[torch.Tensor, torch.Tensor]:
    """`_compose_deembedding_weights(deembed)`, kept on the module while its four parameters stay the same tensors
    with the same contents (storage, dtype and version counter: an in-place update, a cast or a move recomputes it).
    Composed once, not on every decode; torch.export (ONNX) does not trace it but takes the kernel of the last eager
    call as a constant of the graph (`export_onnx` makes one first; parameters are not real tensors while exporting,
    so they cannot be checked then). torch.compile traces the composition: a compiled decoder follows later changes
    of the weights."""
    cached = deembed.__dict__.get("_fused_weights")
    if torch.compiler.is_exporting() and cached is not None:
        return cached[1]
    if torch.compiler.is_compiling():
        return _compose_deembedding_weights(deembed)
    params = (deembed.de_proj1.weight, deembed.de_proj1.bias, deembed.de_proj2.weight, deembed.de_proj2.bias)
    key = tuple((p.data_ptr(), p.dtype, p.device, p._version) for p in params)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = key, _compose_deembedding_weights(deembed)
        deembed.__dict__["_fused_weights"] = cached
    return cached[1]


def _compose_deembedding_weights(deembed: EscPatchDeEmbed) -> tuple[torch.Tensor, torch.Tensor]:
    """The two convolutions and the pixel shuffle between them as one convolution on the coarse grid: output
    channel `(i, j, o)` is STFT channel `o` at sub-position `(i, j)` of a patch. The map is linear and, away from
    the edges, shift-invariant by whole patches, so its kernel is its response to an impulse on each input channel,
    flipped (a convolution correlates); the bias is the response to `de_proj1`'s bias alone. One small convolution
    instead of a loop over taps, so that a traced graph (torch.export, torch.compile) stays small."""
    s1, s2 = deembed.patch_size
    # Composed in float32 at least, so that a bf16 backbone rounds the fused kernel once.
    conv1, conv2 = deembed.de_proj1, deembed.de_proj2
    w1, b1, w2, b2 = (_at_least_float32(t) for t in (conv1.weight, conv1.bias, conv2.weight, conv2.bias))
    channels, dim, k1, k2 = w1.shape[1], w2.shape[1], w1.shape[-1] // 2, w2.shape[-1] // 2
    # A fused tap reaches de_proj1's k1 patches plus de_proj2's k2 pixels (at most k2 patches) away. On a grid of
    # 2 * reach + 1 patches the impulse's response stays inside, so the convolutions' zero padding changes nothing.
    reach = k1 + k2
    size = 2 * reach + 1
    # de_proj1's response to an impulse on input channel c in the middle of that grid is its own kernel, flipped.
    fine = F.pad(w1.transpose(0, 1).flip(-2, -1), (k2,) * 4).view(channels, s1, s2, dim, size, size)
    fine = fine.permute(0, 3, 4, 1, 5, 2).reshape(channels, dim, size * s1, size * s2)  # the pixel shuffle
    response = F.conv2d(fine, w2, padding=k2).view(channels, 2, size, s1, size, s2)
    weight = response.permute(3, 5, 1, 0, 2, 4).flip(-2, -1).reshape(s1 * s2 * 2, channels, size, size)
    # de_proj1's bias, tiled over enough patches around one that de_proj2 (unpadded) reads only the tiling.
    tiles_y, tiles_x = 2 * -(-k2 // s1) + 1, 2 * -(-k2 // s2) + 1
    field = b1.view(1, s1, s2, dim).permute(0, 3, 1, 2).repeat(1, 1, tiles_y, tiles_x)
    centre = F.conv2d(field, w2)[0, :, tiles_y // 2 * s1 - k2 :, tiles_x // 2 * s2 - k2 :][:, :s1, :s2]
    bias = (centre + b2.view(2, 1, 1)).permute(1, 2, 0)
    return weight, bias.flatten()


def _fused_deembedding(deembed: EscPatchDeEmbed, x: torch.Tensor) -> torch.Tensor:
    """Inference: ~6x fewer FLOPs than the two convolutions (12 instead of 6·C0 + 2 output channels per
    patch). The fused kernel reads a zero-padded input as if the first convolution's output existed outside the
    grid, where the second convolution reads zeros; the four edge rows and columns that this touches are
    recomputed with the two convolutions on thin strips."""
    s1, s2 = deembed.patch_size
    batch, _, height, width = x.shape
    weight, bias = (t.to(x.dtype) for t in _fused_deembedding_weights(deembed))
    reach = weight.shape[-1] // 2
    out = F.conv2d(x, weight, bias, padding=reach)
    out = out.view(batch, s1, s2, 2, height, width).permute(0, 3, 4, 1, 5, 2)
    out = out.reshape(batch, 2, height * s1, width * s2)
    # Output rows 0 .. k2-1 (and the last k2, and the same columns) read the first convolution's output
    # outside the grid; their patches are recomputed from the input rows they read, padded by hand.
    k1, k2 = deembed.de_proj1.padding[0], deembed.de_proj2.padding[0]
    n_rows, n_cols = _edge_patches(deembed)
    top = deembed.project(F.pad(x[:, :, : n_rows + k1], (0, 0, k1, 0)), padding=(0, k1))
    bottom = deembed.project(F.pad(x[:, :, -(n_rows + k1) :], (0, 0, 0, k1)), padding=(0, k1))
    left = deembed.project(F.pad(x[..., : n_cols + k1], (k1, 0)), padding=(k1, 0))
    right = deembed.project(F.pad(x[..., -(n_cols + k1) :], (0, k1)), padding=(k1, 0))
    out[:, :, :k2], out[:, :, -k2:] = top[:, :, :k2], bottom[:, :, -k2:]
    out[..., :k2], out[..., -k2:] = left[..., :k2], right[..., -k2:]
    return out


# ----------------------------------------------------------------------------------------------------------------
# bf16 backbone


def cast_backbone(model, dtype: torch.dtype):
    """`EscModel.set_backbone_dtype` (see there)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    model.encoder.to(dtype)
    model.decoder.to(dtype)
    for module in model.modules():
        # Normalisation and the residual stream stay float32: bf16 LayerNorms over 45 channels are slower on the
        # CPU, and the stream keeps full precision between the bf16 matmuls.
        if isinstance(module, nn.LayerNorm):
            module.float()
    # So does the patch embedding: a convolution over 2 input channels is all memory traffic, slower in bf16.
    model.encoder.patch_embed.float()
    on_cpu = dtype == torch.bfloat16 and model.device.type == "cpu"
    if on_cpu and not _cpu_has_bf16():
        warnings.warn(
            "this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX): the bf16 backbone still works but "
            "runs much slower than float32 here; keep float32 on this machine",
            stacklevel=3,
        )
    if on_cpu and _cpu_kernels() is not None:
        _cpu_kernels().enabled()  # builds the CPU kernels now (once per machine) rather than in the first call
    return model
