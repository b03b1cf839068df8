# Copyright 2026 The esc_hf authors. Licensed under the Apache License, Version 2.0.
"""ESC (Efficient Speech Codec, Gu & Diao 2024) as a transformers model.

Module and parameter names follow the authors' code, so that their checkpoints load with a plain key check
(see `esc_hf.convert`). Shapes: `B` batch, `L` samples, `F` STFT bins, `T` STFT frames, `H`/`W` frequency/time
size of a latent grid, `C` channels, `G` product-VQ groups, `N` streams, `K` code frames (`W / overlap`).
Swin layers keep tokens as `(B, H*W, C)` (row-major over `(h, w)`), the CNN backbone keeps `(B, C, H, W)`.
"""

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers.utils import ModelOutput

from .configuration_esc import EscConfig


try:  # The package's CPU kernels for the bf16 backbone; a remote-code copy without esc_hf installed goes without.
    from esc_hf import cpu_kernels as _cpu_kernels
except ImportError:
    _cpu_kernels = None


# ----------------------------------------------------------------------------------------------------------------
# Outputs


@dataclass
class EscEncoderOutput(ModelOutput):
    r"""
    audio_codes (`torch.LongTensor` of shape `(batch_size, num_streams, group_size, code_frames)`):
        Code indices; stream 0 is the coarsest, each further stream refines the previous ones.
    """

    audio_codes: torch.LongTensor | None = None


@dataclass
class EscDecoderOutput(ModelOutput):
    r"""
    audio_values (`torch.FloatTensor` of shape `(batch_size, 1, sequence_length)`):
        Decoded waveform; cropped to `padding_mask`'s length and silent in padding when a mask is given.
    reconstructed_stft (`torch.FloatTensor` of shape `(batch_size, 2, num_frequency_bins, frames)`, *optional*):
        The decoder's complex STFT (real, imaginary) before the inverse transform, when asked for.
    """

    audio_values: torch.FloatTensor | None = None
    reconstructed_stft: torch.FloatTensor | None = None


@dataclass
class EscOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        `commitment_loss_weight * commitment_loss.mean() + codebook_loss_weight * codebook_loss.mean()`.
    audio_values (`torch.FloatTensor` of shape `(batch_size, 1, sequence_length)`):
        Reconstructed waveform, same length as the input.
    audio_codes (`torch.LongTensor` of shape `(batch_size, streams, group_size, code_frames)`):
        Codes; `streams` is `num_streams` in eval mode and always `config.num_streams` in training mode, where the
        streams beyond `num_streams` are computed but not used (quantizer dropout).
    commitment_loss (`torch.FloatTensor` of shape `(batch_size,)`):
        Commitment loss summed over the used streams.
    codebook_loss (`torch.FloatTensor` of shape `(batch_size,)`):
        Codebook loss summed over the used streams.
    input_stft (`torch.FloatTensor` of shape `(batch_size, 2, num_frequency_bins, frames)`):
        Complex STFT (real, imaginary) of the (internally padded) input.
    reconstructed_stft (`torch.FloatTensor` of shape `(batch_size, 2, num_frequency_bins, frames)`):
        The decoder's STFT before the inverse transform; `input_stft` and this are what the STFT loss compares.
    """

    loss: torch.FloatTensor | None = None
    audio_values: torch.FloatTensor | None = None
    audio_codes: torch.LongTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    input_stft: torch.FloatTensor | None = None
    reconstructed_stft: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------
# STFT front end


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def esc_stft(waveform: torch.Tensor, window: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Complex STFT of `waveform` `(B, L)` as ESC computes it: `(B, 2, n_fft // 2 + 1, L // hop_length + 1)`.

    Periodic Hann `window` (zero-padded to `n_fft` by `torch.stft`), centred with reflect padding, no normalisation;
    channel 0 is the real part, channel 1 the imaginary part.
    """
    spec = torch.stft(
        waveform,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=window.shape[0],
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return torch.view_as_real(spec).permute(0, 3, 1, 2)


def esc_istft(stft: torch.Tensor, window: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Inverse of [`esc_stft`]: `(B, 2, F, T)` → waveform `(B, hop_length * (T - 1))`."""
    spec = torch.view_as_complex(stft.permute(0, 2, 3, 1).contiguous())
    return torch.istft(
        spec,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=window.shape[0],
        window=window,
        center=True,
        normalized=False,
        onesided=True,
    )


def esc_padded_length(length: int, hop_length: int, frames_per_code: int, n_fft: int) -> int:
    """Smallest length `>= length` that ESC round-trips exactly, `hop * (frames_per_code * k - 1)` (80·(4k−1) for
    ESC): its STFT has a multiple of `frames_per_code` frames, and reflect padding needs more than `n_fft / 2`."""
    k = max(1, math.ceil((length / hop_length + 1) / frames_per_code))
    while hop_length * (frames_per_code * k - 1) <= n_fft // 2:
        k += 1
    return hop_length * (frames_per_code * k - 1)


# ----------------------------------------------------------------------------------------------------------------
# Swin backbone


@lru_cache(maxsize=64)
def _shift_window_mask(padded_height: int, padded_width: int, window_size: int, device: torch.device):
    """Additive mask `(num_windows, ws², ws²)` that stops shifted windows from mixing regions that the cyclic
    shift brought together: 0 within a region, -100 across (the authors' value, not -inf)."""
    shift = window_size // 2
    labels = torch.zeros(padded_height, padded_width, device=device)
    bounds = ((0, -window_size), (-window_size, -shift), (-shift, None))
    region = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            labels[h0:h1, w0:w1] = region
            region += 1
    windows = _window_partition(labels[None, :, :, None], window_size).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _relative_position_index(window_size: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def _window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """`(B, Hp, Wp, C)` → `(B * num_windows, ws², C)`, windows row-major per item, tokens row-major per window."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def _window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


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


# Largest float32 temporary the bf16 CPU attention makes at once (see `EscWindowAttention.attend_qkv`): small enough
# to stay in a core's L2 cache.
_FLOAT32_SLICE_BYTES = 2**20


class _Linear(nn.Linear):
    """`nn.Linear` that takes its input in its own dtype: with a bf16 backbone
    ([`EscModel.set_backbone_dtype`]) the LayerNorms and the residual stream stay float32 and only the matmuls run
    in bf16. A no-op cast in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


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
        torch.compiler.is_compiling()  # inductor makes its own oneDNN fusions; checked first, nothing to trace
        or x.device.type != "cpu"
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


def _inference_linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    x = x.to(linear.weight.dtype)
    out = _onednn_linear(x.reshape(-1, x.shape[-1]), linear, "none")
    return linear(x) if out is None else out.view(*x.shape[:-1], -1)


def _linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    x = x.to(linear.weight.dtype)
    out = _onednn_linear(x, linear, "gelu")
    return F.gelu(linear(x)) if out is None else out


def _add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`x.add_(y)` on the residual stream; one pass, with the package's CPU kernel, for a bf16 backbone's branch."""
    return x.add_(y) if _cpu_kernels is None else _cpu_kernels.add_(x, y)


class EscWindowAttention(nn.Module):
    """Multi-head self-attention inside `ws × ws` windows with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Derived from window_size alone, so it is recomputed rather than stored (the converter checks it).
        self.register_buffer("relative_position_index", _relative_position_index(window_size), persistent=False)
        self.qkv = _Linear(dim, 3 * dim)
        self.proj = _Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """`(1, heads, N, N)`."""
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`windows` `(B * nW, N, C)`, `mask` `(nW, N, N)` or None → `(B * nW, N, C)`."""
        batch_windows, tokens, channels = windows.shape
        bias = self.position_bias()
        if not torch.is_grad_enabled():
            # Inference: the fused kernel is 1.3-1.5x faster over the whole encoder and moves outputs by ~1e-7.
            if mask is not None:
                bias = (bias + mask[:, None].to(bias.dtype)).repeat(batch_windows // mask.shape[0], 1, 1, 1)
            return self.attend(windows, bias)
        # Training keeps the authors' op order: the fused kernel's backward moves the gradient norm by ~1e-3.
        qkv = self.qkv(windows).reshape(batch_windows, tokens, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attn = (query * self.scale) @ key.transpose(-2, -1) + bias
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        out = attn.softmax(dim=-1) @ value
        return self.proj(out.transpose(1, 2).reshape(batch_windows, tokens, channels))

    def attend(self, windows: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference attention on `windows` `(B * nW, N, C)`: the position `bias` `(1, heads, N, N)`, plus the shift
        `mask` `(B * nW, 1, N, N)` of these windows where it is nonzero."""
        batch_windows, tokens, _ = windows.shape
        qkv = _inference_linear(windows, self.qkv).view(batch_windows, tokens, 3, self.num_heads, -1)
        return _inference_linear(self.attend_qkv(qkv, bias, mask), self.proj)

    def attend_qkv(self, qkv: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attend` from the projected `qkv` `(B * nW, N, 3, heads, d)`, before the output projection."""
        batch_windows, tokens, _, heads, head_dim = qkv.shape
        if _cpu_kernels is not None and _cpu_kernels.supports_attention(qkv, bias, mask):
            # 3-4x faster than the float32 slices below: no conversion passes, no per-window overhead.
            return _cpu_kernels.window_attention(qkv, bias, mask, self.scale)
        if qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16:
            # Without the fused kernel (esc_hf.cpu_kernels): aten's attention.
            # The CPU kernel is ~1.5x slower in bf16 than in float32 on 16-token windows (per-window overhead), so
            # it runs in float32, on slices of windows that stay in the L2 cache, with the same values: at the
            # finest scale (4008 windows for 10 s, 2 threads) this call takes 18.4 ms in 1 MiB slices, 20.3 ms in
            # 16 MiB ones and 25.4 ms with one float32 copy of the whole qkv (35 MB). The mask is added per slice
            # too: at the bottleneck every window is on the seam, and a (windows, heads, N, N) bias is 6 MB.
            out = qkv.new_empty(batch_windows, tokens, heads * head_dim)
            step = max(1, _FLOAT32_SLICE_BYTES // (4 * qkv[0].numel()))
            bias = bias.float()
            for start in range(0, batch_windows, step):
                part = slice(start, start + step)
                out[part] = self._attention(qkv[part].float(), bias if mask is None else bias + mask[part])
            return out
        return self._attention(qkv, bias if mask is None else bias + mask.to(bias.dtype))

    def _attention(self, qkv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """`qkv` `(B, N, 3, heads, d)` → `(B, N, heads * d)`."""
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=self.scale)
        # The CPU kernel returns (B, heads, N, d) as a transposed view of (B, N, heads, d): this reshape is free.
        return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


class EscMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear_1 = _Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = _Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return _inference_linear(_linear_gelu(x, self.linear_1), self.linear_2)
        return self.linear_2(self.act(self.linear_1(x)))


class EscSwinBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window attention, then an MLP, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EscWindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = EscMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        ws = self.window_size
        y = self.norm1(x).view(batch, height, width, channels)
        # Padding tokens are zeros after the norm and are deliberately not masked: the authors' model attends to
        # them (their keys and values are the qkv biases), and parity needs the same.
        pad_h, pad_w = -height % ws, -width % ws
        # Traced (torch.compile, torch.export) the pad and crop are unconditional, so that one graph serves every
        # length: branching on a symbolic length would specialise the graph to lengths of one residue.
        always = torch.compiler.is_compiling()
        if always or pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        padded_height, padded_width = height + pad_h, width + pad_w
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        y = self.attn(_window_partition(y, ws), mask if self.shift_size else None)
        y = _window_merge(y, ws, padded_height, padded_width)
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if always or pad_h or pad_w:
            y = y[:, :height, :width]
        x = x + y.reshape(batch, height * width, channels)
        return x + self.mlp(self.norm2(x))

    def forward_windows(self, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
        """Inference form of `forward` on tokens `(rows, C)` already in this block's window order (see
        [`_WindowPlan`]); updates `x` in place. The same arithmetic per token, without the per-block pad, roll,
        partition, merge and crop copies."""
        if plan.real[self.shift_size] is not None:
            return self._forward_real_rows(x, plan)
        return self._forward_all_rows(x, plan)

    def _forward_all_rows(self, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
        tokens, channels = self.window_size**2, x.shape[-1]
        y = self.norm1(x)
        padding = plan.padding[self.shift_size]
        if padding is not None:  # a few rows: cheaper than multiplying every row by a 0/1 mask
            y.index_fill_(0, padding, 0.0)
        y, windows = y.view(-1, tokens, channels), x.view(-1, tokens, channels)
        bias = self.attn.position_bias()
        for part, mask in self._mask_parts(plan, windows.shape[0]):
            _add_(windows[part], self.attn.attend(y[part], bias, mask))
        return _add_(x, self.mlp(self.norm2(x)))

    def _mask_parts(self, plan: _WindowPlan, num_windows: int) -> list[tuple[slice, torch.Tensor | None]]:
        """The non-empty runs of windows and their shift masks: only the windows on the cyclic seam have a nonzero
        mask (they come last in a shifted order); the others need the position bias alone."""
        if not self.shift_size:
            return [(slice(None), None)]
        interior = plan.interior[self.shift_size]
        parts = [(slice(0, interior), None), (slice(interior, num_windows), plan.border_mask[self.shift_size])]
        return [(part, mask) for part, mask in parts if part.start < part.stop]

    def _forward_real_rows(self, x: torch.Tensor, plan: _WindowPlan) -> torch.Tensor:
        """`forward_windows` where padding is a large share of the rows (ESC-Base's bottleneck is 2 rows high,
        half of every 4 × 4 window): norms, projections and the MLP run on the real tokens only. A padding token's
        normed input is zero, so its query, key and value are the qkv bias, which is what it gets here."""
        real, tokens, channels = plan.real[self.shift_size], self.window_size**2, x.shape[-1]
        real_x = x.index_select(0, real)
        projected = _inference_linear(self.norm1(real_x), self.attn.qkv)
        qkv = self.attn.qkv.bias.to(projected.dtype).expand(x.shape[0], -1).index_copy(0, real, projected)
        qkv = qkv.view(-1, tokens, 3, self.attn.num_heads, channels // self.attn.num_heads)
        bias = self.attn.position_bias()
        outs = [self.attn.attend_qkv(qkv[part], bias, mask) for part, mask in self._mask_parts(plan, qkv.shape[0])]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        _add_(real_x, _inference_linear(out.view(-1, channels).index_select(0, real), self.attn.proj))
        _add_(real_x, self.mlp(self.norm2(real_x)))
        return x.index_copy_(0, real, real_x)


class EscPatchMerge(nn.Module):
    """Halves the frequency axis: rows 2h and 2h+1 are concatenated on channels, normalised and projected."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * in_dim)
        self.down = _Linear(2 * in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, channels = x.shape
        x = x.view(batch, height, width, channels)
        if height % 2:
            x = F.pad(x, (0, 0, 0, 0, 0, 1))
        x = x.view(batch, (height + 1) // 2, 2, width, channels).transpose(2, 3)
        return self.down(self.norm(x.reshape(batch, -1, 2 * channels)))


class EscPatchSplit(nn.Module):
    """Doubles the frequency axis: each token is normalised, projected to two rows' channels and split."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.up = _Linear(in_dim, 2 * out_dim, bias=False)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch = x.shape[0]
        x = self.up(self.norm(x)).view(batch, height, width, 2, -1).transpose(2, 3)
        return x.reshape(batch, 2 * height * width, -1)


class EscTransformerLayer(nn.Module):
    """One stage: `depth` Swin blocks (W-MSA and SW-MSA alternating), then an optional frequency rescaling."""

    def __init__(self, config: EscConfig, in_dim: int, out_dim: int, num_heads: int, scale: str | None):
        super().__init__()
        ws = config.window_size
        self.window_size = ws
        self.swint_blocks = nn.ModuleList(
            EscSwinBlock(in_dim, num_heads, ws, 0 if j % 2 == 0 else ws // 2, config.mlp_ratio)
            for j in range(config.depth)
        )
        self.scale = scale
        if scale == "down":
            self.subsample = EscPatchMerge(in_dim, out_dim)
        elif scale == "up":
            self.subsample = EscPatchSplit(in_dim, out_dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
        """`x` `(B, H*W, C_in)` → `(B, H'*W, C_out)` and `H'`."""
        # The residual stream is in the LayerNorms' dtype: float32, also with a bf16 backbone (set_backbone_dtype).
        x = x.to(self.swint_blocks[0].norm1.weight.dtype) if len(self.swint_blocks) else x
        # Under torch.compile the plain path is traced instead: the plan's index tensors are built with data-dependent
        # shapes, and inductor removes the copies that the plan avoids in eager mode.
        if not torch.is_grad_enabled() and len(self.swint_blocks) and not torch.compiler.is_compiling():
            return self._forward_inference(x, height, width)
        ws = self.window_size
        padded_height, padded_width = (height + ws - 1) // ws * ws, (width + ws - 1) // ws * ws
        # A traced length is symbolic: no cache lookup on it.
        build = _shift_window_mask.__wrapped__ if torch.compiler.is_compiling() else _shift_window_mask
        mask = build(padded_height, padded_width, ws, x.device)
        for block in self.swint_blocks:
            x = block(x, height, width, mask)
        return self._rescale(x, height, width)

    def _rescale(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
        if self.scale is None:
            return x, height
        x = self.subsample(x, height, width)
        return x, (height + 1) // 2 if self.scale == "down" else 2 * height

    def _forward_inference(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
        batch, _, channels = x.shape
        plan = _window_plan(batch, height, width, self.window_size, x.device)
        shift = self.swint_blocks[0].shift_size
        x = x.reshape(-1, channels).index_select(0, plan.to_window[shift])  # a fresh tensor: updated in place
        for block in self.swint_blocks:
            if block.shift_size != shift:
                x = x.index_select(0, plan.switch[(shift, block.shift_size)])
                shift = block.shift_size
            x = block.forward_windows(x, plan)
        if self.scale == "down" and plan.to_merge[shift] is not None:
            pairs = x.index_select(0, plan.to_merge[shift]).view(batch, -1, 2 * channels)
            return self.subsample.down(self.subsample.norm(pairs)), height // 2
        x = x.index_select(0, plan.to_grid[shift]).view(batch, height * width, channels)
        return self._rescale(x, height, width)


# ----------------------------------------------------------------------------------------------------------------
# CNN backbone (ablation)


class EscConv2d(nn.Module):
    """Convolution over (frequency, time), cropped so that time stays causal and frequency is kept or rescaled."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size, scale: bool = False, transpose: bool = False):
        super().__init__()
        stride = (2, 1) if scale else (1, 1)
        if transpose:
            self.conv = nn.ConvTranspose2d(in_dim, out_dim, tuple(kernel_size), stride, padding=(1, 0))
        else:
            self.conv = nn.Conv2d(in_dim, out_dim, tuple(kernel_size), stride, padding=(2, 1))
        self.scale, self.transpose = scale, transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.scale:
            height = 2 * height if self.transpose else height // 2
        return self.conv(x)[..., :height, :width]


class EscResidualUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            EscConv2d(dim, dim, (5, 2)), nn.BatchNorm2d(dim), nn.PReLU(),
            EscConv2d(dim, dim, (5, 2)), nn.BatchNorm2d(dim), nn.PReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EscConvLayer(nn.Module):
    """One CNN stage: residual units, then a strided (or transposed) convolution that rescales frequency."""

    def __init__(self, config: EscConfig, in_dim: int, out_dim: int, transpose: bool):
        super().__init__()
        self.blocks = nn.Sequential(
            *[EscResidualUnit(in_dim) for _ in range(config.conv_depth)],
            EscConv2d(in_dim, out_dim, config.conv_kernel_size, scale=True, transpose=transpose),
            nn.BatchNorm2d(out_dim),
            nn.PReLU(),
        )

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
        x = self.blocks(x.to(self.blocks[-3].conv.weight.dtype))
        return x, x.shape[-2]


class EscConvPrePost(EscConv2d):
    """The CNN backbone's stage at full resolution: one plain convolution (no norm, no activation)."""

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
        return super().forward(x.to(self.conv.weight.dtype)), height


# ----------------------------------------------------------------------------------------------------------------
# Patch embedding and encoder / decoder stacks


class EscPatchEmbed(nn.Module):
    def __init__(self, config: EscConfig):
        super().__init__()
        self.is_swin = config.backbone == "swin"
        self.proj = nn.Conv2d(2, config.hidden_dims[0], config.patch_size, config.patch_size)
        # The CNN backbone never applies it, but the authors' checkpoints carry it, so it exists for both.
        self.norm = nn.LayerNorm(config.hidden_dims[0])

    def forward(self, stft: torch.Tensor) -> torch.Tensor:
        """`(B, 2, F, T)` → tokens `(B, H0*W, C0)` (Swin) or `(B, C0, H0, W)` (CNN); an odd last frame is dropped."""
        x = stft.to(self.proj.weight.dtype)
        if not self.is_swin:
            return self.proj(x)
        # A channels-last input makes the convolution write its output in token order (same values, twice as
        # fast), so the flatten and transpose below are views rather than a copy of the largest feature map.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.flatten(2).transpose(1, 2))


class EscPatchDeEmbed(nn.Module):
    def __init__(self, config: EscConfig):
        super().__init__()
        dim = config.hidden_dims[0]
        self.patch_size = tuple(config.patch_size)
        self.is_swin = config.backbone == "swin"
        self.de_proj1 = nn.Conv2d(dim, dim * self.patch_size[0] * self.patch_size[1], kernel_size=5, padding=2)
        self.de_proj2 = nn.Conv2d(dim, 2, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Tokens `(B, H0*W, C0)` or `(B, C0, H0, W)` → STFT `(B, 2, H0 * p_f, W * p_t)`."""
        # Both convolutions get channels-last inputs (views, no copies): that is also what the authors' einops
        # rearranges produce, and the CPU convolution kernels are faster on it.
        if self.is_swin:
            x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        x = x.to(self.de_proj1.weight.dtype)
        if not torch.is_grad_enabled() and all(
            size >= n + self.de_proj1.padding[0] for size, n in zip(x.shape[-2:], self._edge_patches())
        ):
            return self._fused(x)
        return self._two_convs(x)

    def _edge_patches(self) -> tuple[int, int]:
        """Patches along each axis whose first-convolution outputs the second convolution's edge taps read."""
        k2 = self.de_proj2.padding[0]
        return tuple((2 * k2 - 1) // s + 1 for s in self.patch_size)

    def _two_convs(self, x: torch.Tensor) -> torch.Tensor:
        x = self.de_proj1(x).permute(0, 2, 3, 1)
        batch, height, width, _ = x.shape
        s1, s2 = self.patch_size
        # Channel (s1_idx * s2 + s2_idx) * C0 + c goes to row s1*h + s1_idx, column s2*w + s2_idx.
        x = x.reshape(batch, height, width, s1, s2, -1).permute(0, 1, 3, 2, 4, 5)
        return self.de_proj2(x.reshape(batch, height * s1, width * s2, -1).permute(0, 3, 1, 2))

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two convolutions and the pixel shuffle between them as one convolution on the coarse grid: output
        channel `(i, j, o)` is STFT channel `o` at sub-position `(i, j)` of a patch. A 3×3 tap `(dy, dx)` of
        `de_proj2` at sub-position `(i, j)` reads sub-position `((i + dy) mod s1, (j + dx) mod s2)` of the patch
        `(⌊(i + dy) / s1⌋, ⌊(j + dx) / s2⌋)` away, so the 5×5 kernel of `de_proj1` lands shifted by that in a
        7×7 kernel."""
        s1, s2 = self.patch_size
        # Composed in float32 at least, so that a bf16 backbone rounds the fused kernel once.
        conv1, conv2 = self.de_proj1, self.de_proj2
        w1, b1, w2, b2 = (_at_least_float32(t) for t in (conv1.weight, conv1.bias, conv2.weight, conv2.bias))
        dim, k1, k2 = w2.shape[1], w1.shape[-1] // 2, w2.shape[-1] // 2
        w1 = w1.view(s1, s2, dim, *w1.shape[1:])
        b1 = b1.view(s1, s2, dim)
        size = w1.shape[-1] + 2 * k2
        weight = w1.new_zeros(s1, s2, w2.shape[0], w1.shape[3], size, size)
        bias = b2.expand(s1, s2, -1).clone()
        for i in range(s1):
            for j in range(s2):
                for dy in range(-k2, k2 + 1):
                    for dx in range(-k2, k2 + 1):
                        (py, ty), (px, tx) = divmod(i + dy, s1), divmod(j + dx, s2)
                        tap = w2[:, :, dy + k2, dx + k2]  # (2, C0)
                        rows, cols = slice(py + k2, py + k2 + 2 * k1 + 1), slice(px + k2, px + k2 + 2 * k1 + 1)
                        weight[i, j, :, :, rows, cols] += torch.einsum("oc,cikl->oikl", tap, w1[ty, tx])
                        bias[i, j] += tap @ b1[ty, tx]
        return weight.flatten(0, 2), bias.flatten()

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: ~6x fewer FLOPs than the two convolutions (12 instead of 6·C0 + 2 output channels per
        patch). The fused kernel reads a zero-padded input as if the first convolution's output existed outside the
        grid, where the second convolution reads zeros; the four edge rows and columns that this touches are
        recomputed with the two convolutions on thin strips."""
        s1, s2 = self.patch_size
        batch, _, height, width = x.shape
        weight, bias = (t.to(x.dtype) for t in self._fused_weights())
        reach = weight.shape[-1] // 2
        out = F.conv2d(x, weight, bias, padding=reach)
        out = out.view(batch, s1, s2, 2, height, width).permute(0, 3, 4, 1, 5, 2)
        out = out.reshape(batch, 2, height * s1, width * s2)
        # Output rows 0 .. k2-1 (and the last k2, and the same columns) read the first convolution's output
        # outside the grid; their patches are recomputed from the input rows they read, padded by hand.
        k1, k2 = self.de_proj1.padding[0], self.de_proj2.padding[0]
        n_rows, n_cols = self._edge_patches()
        top = self._two_convs_strip(F.pad(x[:, :, : n_rows + k1], (0, 0, k1, 0)), rows=True)
        bottom = self._two_convs_strip(F.pad(x[:, :, -(n_rows + k1) :], (0, 0, 0, k1)), rows=True)
        left = self._two_convs_strip(F.pad(x[..., : n_cols + k1], (k1, 0)), rows=False)
        right = self._two_convs_strip(F.pad(x[..., -(n_cols + k1) :], (0, k1)), rows=False)
        out[:, :, :k2], out[:, :, -k2:] = top[:, :, :k2], bottom[:, :, -k2:]
        out[..., :k2], out[..., -k2:] = left[..., :k2], right[..., -k2:]
        return out

    def _two_convs_strip(self, x: torch.Tensor, rows: bool) -> torch.Tensor:
        """`_two_convs` on a strip padded by hand along its thin axis: one patch row (or column) of output."""
        conv = self.de_proj1
        k1 = conv.padding[0]
        padding = (0, k1) if rows else (k1, 0)
        y = F.conv2d(x, conv.weight, conv.bias, padding=padding).permute(0, 2, 3, 1)
        batch, height, width, _ = y.shape
        s1, s2 = self.patch_size
        y = y.reshape(batch, height, width, s1, s2, -1).permute(0, 1, 3, 2, 4, 5)
        return self.de_proj2(y.reshape(batch, height * s1, width * s2, -1).permute(0, 3, 1, 2))


class EscEncoder(nn.Module):
    def __init__(self, config: EscConfig):
        super().__init__()
        dims, heads = config.hidden_dims, config.num_heads
        self.patch_embed = EscPatchEmbed(config)
        if config.backbone == "swin":
            self.pre_nn = EscTransformerLayer(config, dims[0], dims[0], heads[0], scale=None)
            self.blocks = nn.ModuleList(
                EscTransformerLayer(config, dims[i], dims[i + 1], heads[i], scale="down") for i in range(len(heads))
            )
        else:
            self.pre_nn = EscConvPrePost(dims[0], dims[0], config.conv_kernel_size)
            self.blocks = nn.ModuleList(
                EscConvLayer(config, dims[i], dims[i + 1], transpose=False) for i in range(len(dims) - 1)
            )

    def forward(self, stft: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """STFT `(B, 2, F, T)` → the feature maps at every scale, finest first, and the latent width `W`."""
        height, width = stft.shape[2] // self.patch_embed.proj.stride[0], stft.shape[3] // 2
        x = self.patch_embed(stft)
        x, height = self.pre_nn(x, height, width)
        hidden_states = [x]
        for block in self.blocks:
            x, height = block(x, height, width)
            hidden_states.append(x)
        return hidden_states, width


class EscDecoder(nn.Module):
    """Mirror of the encoder; the cross-scale recursion between its stages lives in [`EscModel`]."""

    def __init__(self, config: EscConfig):
        super().__init__()
        dims, heads = config.hidden_dims[::-1], config.num_heads[::-1]
        if config.backbone == "swin":
            self.blocks = nn.ModuleList(
                EscTransformerLayer(config, dims[i], dims[i + 1], heads[i], scale="up") for i in range(len(heads))
            )
            self.post_nn = EscTransformerLayer(config, dims[-1], dims[-1], heads[-1], scale=None)
        else:
            self.blocks = nn.ModuleList(
                EscConvLayer(config, dims[i], dims[i + 1], transpose=True) for i in range(len(dims) - 1)
            )
            self.post_nn = EscConvPrePost(dims[-1], dims[-1], config.conv_kernel_size)
        self.patch_deembed = EscPatchDeEmbed(config)

    def project_out(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Finest decoder feature → STFT `(B, 2, F, 2W)`."""
        x, height = self.post_nn(x, height, width)
        return self.patch_deembed(x, height, width)


# ----------------------------------------------------------------------------------------------------------------
# Quantisation


class EscCodebook(nn.Module):
    """Nearest-neighbour codebook; lookup on L2-normalised vectors (if `l2norm`), dequantisation to raw rows."""

    def __init__(self, dim: int, size: int, l2norm: bool):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        self.l2norm = l2norm

    def encode(self, z: torch.Tensor) -> torch.LongTensor:
        """`(B, K, d)` → codes `(B, K)`; ties go to the lowest index."""
        # The search runs in float32 at least, also when the model was cast to a 16-bit type.
        codebook = _at_least_float32(self.embedding.weight)
        flat = _at_least_float32(z.reshape(-1, z.shape[-1]))
        if self.l2norm:
            codebook, flat = F.normalize(codebook, dim=-1), F.normalize(flat, dim=-1)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]
        return dist.min(1).indices.view(z.shape[:-1])

    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        return F.embedding(codes, self.embedding.weight)

    def forward(self, z: torch.Tensor):
        """Returns the quantised `z` (straight-through in training), codes, commitment and codebook loss `(B,)`."""
        codes = self.encode(z)
        z_q = self.decode(codes)
        if self.training:
            commitment = (z_q.detach() - z).pow(2).mean([1, 2])
            codebook = (z_q - z.detach()).pow(2).mean([1, 2])
            z_q = z + (z_q - z).detach()
        else:
            commitment = codebook = (z_q - z).pow(2).mean([1, 2])
        return z_q, codes, commitment, codebook


def _split_dimension(total: int, groups: int) -> list[int]:
    """Contiguous group sizes; the last group takes the remainder (e.g. 512 → 170, 170, 172)."""
    return [total // groups] * (groups - 1) + [total - (groups - 1) * (total // groups)]


class EscFrameGrouping(nn.Module):
    """Turns a feature map into one vector per `overlap` latent frames, `v[c*H + h]` per frame, and back."""

    def __init__(self, config: EscConfig, in_dim: int, in_freq: int):
        super().__init__()
        self.in_dim, self.in_freq, self.overlap = in_dim, in_freq, config.overlap
        self.is_swin = config.backbone == "swin"

    def to_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, H*W, C)` or `(B, C, H, W)` → `(B, W / overlap, overlap * C * H)`."""
        batch = x.shape[0]
        if self.is_swin:
            x = x.view(batch, self.in_freq, -1, self.in_dim).permute(0, 2, 3, 1)
        else:
            x = x.permute(0, 3, 1, 2)
        width = x.shape[1]
        if width % self.overlap:
            raise ValueError(f"latent width {width} is not a multiple of overlap {self.overlap}")
        return x.reshape(batch, width // self.overlap, -1)

    def from_vectors(self, v: torch.Tensor) -> torch.Tensor:
        batch = v.shape[0]
        x = v.reshape(batch, -1, self.in_dim, self.in_freq)  # (B, W, C, H)
        if self.is_swin:
            return x.permute(0, 3, 1, 2).reshape(batch, -1, self.in_dim)
        return x.permute(0, 2, 3, 1)


class EscProductVectorQuantizer(nn.Module):
    """One CS-RVQ stream: product VQ over `group_size` contiguous slices, each projected down to its codebook's
    dimension (`down_projs`), quantised, and projected back (`up_projs`)."""

    def __init__(self, config: EscConfig, in_dim: int, in_freq: int, codebook_dim: int):
        super().__init__()
        self.grouping = EscFrameGrouping(config, in_dim, in_freq)
        self.group_dims = _split_dimension(config.overlap * in_dim * in_freq, config.group_size)
        self.vqs = nn.ModuleList(
            EscCodebook(codebook_dim, config.codebook_size, config.l2norm) for _ in self.group_dims
        )
        self.down_projs = nn.ModuleList(nn.Linear(d, codebook_dim, bias=False) for d in self.group_dims)
        self.up_projs = nn.ModuleList(nn.Linear(codebook_dim, d, bias=False) for d in self.group_dims)

    def encode(self, x: torch.Tensor) -> torch.LongTensor:
        """Feature map → codes `(B, G, K)`."""
        groups = self.grouping.to_vectors(x).to(self.down_projs[0].weight.dtype).split(self.group_dims, dim=-1)
        return torch.stack([vq.encode(proj(g)) for g, proj, vq in zip(groups, self.down_projs, self.vqs)], dim=1)

    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """Codes `(B, G, K)` → feature map."""
        parts = [proj(vq.decode(codes[:, g])) for g, (proj, vq) in enumerate(zip(self.up_projs, self.vqs))]
        return self.grouping.from_vectors(torch.cat(parts, dim=-1))

    def forward(self, x: torch.Tensor, bypass: bool = False):
        """Quantised feature map, codes `(B, G, K)`, commitment and codebook loss `(B,)` (means over groups).

        With `bypass` (warm start) the codebooks are skipped, `W_out(W_in(x))` is returned and the losses are zero;
        they are still computed and multiplied by zero so that the codebooks receive zero (not missing) gradients.
        """
        groups = self.grouping.to_vectors(x).to(self.down_projs[0].weight.dtype).split(self.group_dims, dim=-1)
        outputs, codes, commitment, codebook = [], [], 0.0, 0.0
        for g, down, up, vq in zip(groups, self.down_projs, self.up_projs, self.vqs):
            z_e = down(g)
            z_q, code, cm, cb = vq(z_e)
            if bypass:
                z_q, cm, cb = z_q * 0.0 + z_e, cm * 0.0, cb * 0.0
            outputs.append(up(z_q))
            codes.append(code)
            commitment, codebook = commitment + cm, codebook + cb
        quantized = self.grouping.from_vectors(torch.cat(outputs, dim=-1))
        return quantized, torch.stack(codes, dim=1), commitment / len(self.vqs), codebook / len(self.vqs)


class EscResidualVectorQuantizer(nn.Module):
    """Residual VQ of one product group (the `"rvq"` ablation): project down once, quantise the residual stage
    by stage, project the sum back up."""

    def __init__(self, config: EscConfig, dim: int):
        super().__init__()
        codebook_dim = config.codebook_dims[0]
        projected = dim != codebook_dim
        self.proj_down = nn.Linear(dim, codebook_dim, bias=False) if projected else nn.Identity()
        self.proj_up = nn.Linear(codebook_dim, dim, bias=False) if projected else nn.Identity()
        self.vqs = nn.ModuleList(
            EscCodebook(codebook_dim, config.codebook_size, config.l2norm) for _ in range(config.num_streams)
        )

    def encode(self, x: torch.Tensor, num_streams: int) -> torch.LongTensor:
        """`(B, K, D_g)` → codes `(B, num_streams, K)`."""
        residual, codes = self.proj_down(x), []
        for vq in self.vqs[:num_streams]:
            codes.append(vq.encode(residual))
            if len(codes) < num_streams:
                residual = residual - vq.decode(codes[-1])
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.LongTensor, stream_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Codes `(B, n, K)` → `(B, K, D_g)`; `stream_weights` `(n,)` of 0/1 drops streams (see `EscModel`)."""
        z = 0.0
        for i in range(codes.shape[1]):
            q = self.vqs[i].decode(codes[:, i])
            z = z + (q if stream_weights is None else stream_weights[i] * q)
        return self.proj_up(z)

    def forward(self, x: torch.Tensor, num_streams: int, bypass: bool):
        z_e = self.proj_down(x)
        residual, z_q, codes, commitment, codebook = z_e, 0.0, [], 0.0, 0.0
        for i, vq in enumerate(self.vqs):
            if not self.training and i >= num_streams:
                break
            q, code, cm, cb = vq(residual)
            # In training `q` is the straight-through value, so this residual carries no gradient (authors' code).
            residual = residual - q
            if i >= num_streams:
                q, cm, cb = q * 0.0, cm * 0.0, cb * 0.0
            z_q, commitment, codebook = z_q + q, commitment + cm, codebook + cb
            codes.append(code)
        if bypass:
            z_q, commitment, codebook = z_e + z_q * 0.0, commitment * 0.0, codebook * 0.0
        return self.proj_up(z_q), torch.stack(codes, dim=1), commitment, codebook


class EscProductResidualVectorQuantizer(nn.Module):
    """The `"rvq"` ablation's quantizer at the bottleneck: one residual VQ per product group."""

    def __init__(self, config: EscConfig):
        super().__init__()
        dim, freq = config.hidden_dims[-1], config.bottleneck_frequency
        self.grouping = EscFrameGrouping(config, dim, freq)
        self.group_dims = _split_dimension(config.overlap * dim * freq, config.group_size)
        self.vqs = nn.ModuleList(EscResidualVectorQuantizer(config, d) for d in self.group_dims)

    def _dtype(self) -> torch.dtype:
        return self.vqs[0].vqs[0].embedding.weight.dtype

    def encode(self, x: torch.Tensor, num_streams: int) -> torch.LongTensor:
        """Bottleneck feature → codes `(B, num_streams, G, K)`."""
        groups = self.grouping.to_vectors(x).to(self._dtype()).split(self.group_dims, dim=-1)
        return torch.stack([rvq.encode(g, num_streams) for g, rvq in zip(groups, self.vqs)], dim=2)

    def decode(self, codes: torch.LongTensor, stream_weights: torch.Tensor | None = None) -> torch.Tensor:
        parts = [rvq.decode(codes[:, :, g], stream_weights) for g, rvq in enumerate(self.vqs)]
        return self.grouping.from_vectors(torch.cat(parts, dim=-1))

    def forward(self, x: torch.Tensor, num_streams: int, bypass: bool):
        groups = self.grouping.to_vectors(x).to(self._dtype()).split(self.group_dims, dim=-1)
        outputs, codes, commitment, codebook = [], [], 0.0, 0.0
        for g, rvq in zip(groups, self.vqs):
            z_q, code, cm, cb = rvq(g, num_streams, bypass)
            outputs.append(z_q)
            codes.append(code)
            commitment, codebook = commitment + cm, codebook + cb
        quantized = self.grouping.from_vectors(torch.cat(outputs, dim=-1))
        return quantized, torch.stack(codes, dim=2), commitment / len(self.vqs), codebook / len(self.vqs)


# ----------------------------------------------------------------------------------------------------------------
# Model


class EscPreTrainedModel(PreTrainedAudioTokenizerBase):
    config: EscConfig
    config_class = EscConfig
    base_model_prefix = "esc"
    main_input_name = "input_values"
    input_modalities = "audio"

    def _init_weights(self, module):
        # PyTorch's default layer init, as the authors' model uses everywhere but the Swin position biases and the
        # codebooks; written with `transformers.initialization` so that loaded tensors are left alone.
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                if isinstance(module, nn.ConvTranspose2d):
                    fan_in = module.weight.shape[0] * module.weight[0, 0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.PReLU):
            init.constant_(module.weight, 0.25)
        elif isinstance(module, nn.Embedding):
            init.kaiming_normal_(module.weight)
        elif isinstance(module, EscWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            init.copy_(module.relative_position_index, _relative_position_index(module.window_size))
        elif isinstance(module, EscModel):
            init.copy_(module.window, torch.hann_window(module.config.win_length))


class EscModel(EscPreTrainedModel):
    """ESC: complex STFT → Swin (or CNN) encoder → cross-scale residual VQ → decoder → inverse STFT.

    Any input length is accepted: the waveform is right-padded with zeros to the next length the network handles
    losslessly (`80 * (4k - 1)` samples for ESC) and the output is cropped back, so outputs equal the authors' code
    wherever their code round-trips.

    Example:

    ```python
    >>> import torch, esc_hf
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("path/to/esc-base").eval()
    >>> audio = torch.randn(1, 1, 16000) * 0.1
    >>> codes = model.encode(audio, bandwidth=6.0).audio_codes      # (1, 4, 3, 51)
    >>> audio_hat = model.decode(codes).audio_values                  # (1, 1, 16240): codes carry no length
    ```
    """

    def __init__(self, config: EscConfig):
        super().__init__(config)
        self.encoder = EscEncoder(config)
        self.decoder = EscDecoder(config)
        if config.quantizer == "csrvq":
            # Stream 0 and 1 quantise the bottleneck, stream s >= 2 the decoder's scale s - 1 (ESC_SPEC §4.4).
            dims, freq = config.hidden_dims[::-1], config.bottleneck_frequency
            self.quantizers = nn.ModuleList(
                EscProductVectorQuantizer(config, dims[max(s - 1, 0)], freq * 2 ** max(s - 1, 0), config.codebook_dims[s])
                for s in range(config.num_streams)
            )
        else:
            self.quantizers = EscProductResidualVectorQuantizer(config)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        self.post_init()

    # -- helpers ------------------------------------------------------------------------------------------------

    @property
    def frames_per_code(self) -> int:
        """STFT frames per code frame (4 for ESC)."""
        return self.config.patch_size[1] * self.config.overlap

    def padded_length(self, length: int) -> int:
        """The length `length` samples are zero-padded to before the STFT (see [`esc_padded_length`])."""
        return esc_padded_length(length, self.config.hop_length, self.frames_per_code, self.config.n_fft)

    def set_backbone_dtype(self, dtype: torch.dtype) -> "EscModel":
        """Opt-in, approximate: casts the encoder and decoder (nearly all of the compute) to `dtype`, typically
        `torch.bfloat16` on a GPU or a CPU with AVX512-BF16/AMX, where it runs several times faster. The STFT, the
        patch embedding, the LayerNorms and the residual stream, the quantizers (projections and codebook search)
        and the inverse STFT stay in float32, so codes are still searched at full precision, but from slightly
        different features: they no longer match float32 exactly (`benchmarks/bench_codec.py` reports the
        agreement). On the CPU, window attention and the residual adds then run in kernels of this package,
        compiled for the machine on the first bf16 call (about 10 s, cached; see `esc_hf.cpu_kernels`), or in
        aten's ops where they cannot be built. Casting back does not restore the float32 weights; load the model again for exact
        outputs. Returns the model.
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
        self.encoder.to(dtype)
        self.decoder.to(dtype)
        for module in self.modules():
            # Normalisation and the residual stream stay float32: bf16 LayerNorms over 45 channels are 2.5x
            # slower on the CPU, and the stream keeps full precision between the bf16 matmuls.
            if isinstance(module, nn.LayerNorm):
                module.float()
        # So does the patch embedding: a convolution over 2 input channels is all memory traffic, and 2x slower
        # in bf16 on the CPU.
        self.encoder.patch_embed.float()
        if dtype == torch.bfloat16 and self.device.type == "cpu" and not _cpu_has_bf16():
            warnings.warn(
                "this CPU has no bf16 matrix instructions (AVX512-BF16 or AMX): the bf16 backbone still works but "
                "runs much slower than float32 here; keep float32 on this machine",
                stacklevel=2,
            )
        if dtype == torch.bfloat16 and self.device.type == "cpu" and _cpu_kernels is not None:
            _cpu_kernels.enabled()  # builds the CPU kernels now (once per machine) rather than in the first call
        return self

    def _resolve_num_streams(self, num_streams: int | None, bandwidth: float | None) -> int:
        if num_streams is not None and bandwidth is not None:
            raise ValueError("give num_streams or bandwidth, not both")
        if bandwidth is not None:
            return self.config.num_streams_for_bandwidth(bandwidth)
        if num_streams is None:
            return self.config.num_streams
        if isinstance(num_streams, bool) or not isinstance(num_streams, int) or not 1 <= num_streams <= self.config.num_streams:
            raise ValueError(f"num_streams must be an integer from 1 to {self.config.num_streams}, got {num_streams!r}")
        return num_streams

    def _prepare_waveform(self, input_values: torch.Tensor, padding_mask: torch.Tensor | None):
        """Validates `(B, 1, L)`, `(B, L)` or `(L,)` audio and returns it as `(B, L)`, zero in padding."""
        if not isinstance(input_values, torch.Tensor):
            raise ValueError(f"input_values must be a torch.Tensor, got {type(input_values).__name__}")
        if not input_values.is_floating_point():
            raise ValueError(f"input_values must be floating point audio, got {input_values.dtype}")
        if input_values.dim() == 3 and input_values.shape[1] == 1:
            input_values = input_values[:, 0]
        elif input_values.dim() == 1:
            input_values = input_values[None]
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must be mono audio of shape (batch, 1, length), (batch, length) or (length,), got "
                f"{tuple(input_values.shape)}"
            )
        if input_values.shape[-1] == 0 or input_values.shape[0] == 0:
            raise ValueError(f"input_values is empty: shape {tuple(input_values.shape)}")
        if padding_mask is not None:
            if tuple(padding_mask.shape) != tuple(input_values.shape):
                raise ValueError(
                    f"padding_mask must have shape (batch, length) = {tuple(input_values.shape)}, got "
                    f"{tuple(padding_mask.shape)}"
                )
            input_values = input_values * padding_mask.to(input_values.dtype)
        return input_values

    def _check_features(self, input_features: torch.Tensor) -> torch.Tensor:
        bins, multiple = self.config.num_frequency_bins, self.frames_per_code
        expected = f"(batch, 2, {bins}, frames) with frames a positive multiple of {multiple}"
        if not isinstance(input_features, torch.Tensor) or not input_features.is_floating_point():
            raise ValueError(f"input_features must be a floating point torch.Tensor of shape {expected}")
        shape = tuple(input_features.shape)
        if len(shape) != 4 or shape[1] != 2 or shape[2] != bins or shape[3] == 0 or shape[3] % multiple:
            raise ValueError(f"input_features must have shape {expected}, got {shape}")
        return input_features

    def _input_stft(self, input_values, padding_mask, input_features) -> tuple[torch.Tensor, int | None]:
        """The STFT the encoder sees and the waveform length (None when features were given)."""
        if (input_values is None) == (input_features is None):
            raise ValueError("give exactly one of input_values (waveform) and input_features (STFT)")
        if input_features is not None:
            return self._check_features(input_features), None
        waveform = self._prepare_waveform(input_values, padding_mask)
        return self._stft(waveform), waveform.shape[-1]

    def _stft(self, waveform: torch.Tensor) -> torch.Tensor:
        padded = self.padded_length(waveform.shape[-1])
        waveform = F.pad(waveform, (0, padded - waveform.shape[-1]))
        return esc_stft(waveform, self.window.to(waveform.dtype), self.config.n_fft, self.config.hop_length)

    def _istft(self, stft: torch.Tensor) -> torch.Tensor:
        stft = _at_least_float32(stft)
        return esc_istft(stft, self.window.to(stft.dtype), self.config.n_fft, self.config.hop_length)

    @staticmethod
    def _finish_audio(audio: torch.Tensor, padding_mask: torch.Tensor | None, length: int | None) -> torch.Tensor:
        if padding_mask is not None:
            length = padding_mask.shape[-1]
        if length is not None:
            if length > audio.shape[-1]:
                raise ValueError(f"asked for {length} samples but the codes hold only {audio.shape[-1]}")
            audio = audio[:, :length]
        if padding_mask is not None:
            audio = audio * padding_mask.to(audio.dtype)
        return audio[:, None]

    def _check_codes(self, audio_codes: torch.Tensor) -> None:
        if not isinstance(audio_codes, torch.Tensor) or audio_codes.is_floating_point() or audio_codes.is_complex():
            raise ValueError("audio_codes must be an integer torch.Tensor of shape (batch, streams, groups, frames)")
        if audio_codes.dim() != 4 or audio_codes.shape[2] != self.config.group_size or audio_codes.shape[-1] < 1:
            raise ValueError(
                f"audio_codes must have shape (batch, streams, {self.config.group_size}, frames), got "
                f"{tuple(audio_codes.shape)}"
            )
        if not 1 <= audio_codes.shape[1] <= self.config.num_streams:
            raise ValueError(f"audio_codes has {audio_codes.shape[1]} streams; this model has 1 to {self.config.num_streams}")
        if audio_codes.numel() and (audio_codes.min() < 0 or audio_codes.max() >= self.config.codebook_size):
            raise ValueError(f"audio_codes must lie in [0, {self.config.codebook_size}), got values outside")

    # -- public API ---------------------------------------------------------------------------------------------

    def encode(
        self,
        input_values: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        num_streams: int | None = None,
        bandwidth: float | None = None,
        input_features: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> tuple | EscEncoderOutput:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, sequence_length)`):
                16 kHz mono waveform (`(batch_size, sequence_length)` and `(sequence_length,)` are accepted too).
            padding_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real samples, 0 for padding, as the feature extractor returns it.
            num_streams (`int`, *optional*):
                Streams to encode, 1 … `config.num_streams` (default: all). Each adds 1.5 kbps for ESC.
            bandwidth (`float`, *optional*):
                Alternative to `num_streams`, in kbps (one of `config.target_bandwidths`).
            input_features (`torch.FloatTensor` of shape `(batch_size, 2, num_frequency_bins, frames)`, *optional*):
                ESC's complex STFT, as `EscFeatureExtractor(..., return_stft=True)` returns it, instead of
                `input_values`; `frames` must be a multiple of 4.

        Returns:
            [`EscEncoderOutput`] with `audio_codes` `(batch_size, num_streams, group_size, code_frames)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        num_streams = self._resolve_num_streams(num_streams, bandwidth)
        with torch.no_grad():
            codes = self._encode_codes(self._input_stft(input_values, padding_mask, input_features)[0], num_streams)
        return EscEncoderOutput(codes) if return_dict else (codes,)

    def _encode_codes(self, stft: torch.Tensor, num_streams: int) -> torch.LongTensor:
        hidden_states, width = self.encoder(stft)
        if self.config.quantizer == "rvq":
            return self.quantizers.encode(hidden_states[-1], num_streams)
        height = self.config.bottleneck_frequency
        codes = [self.quantizers[0].encode(hidden_states[-1])]
        decoded = self.quantizers[0].decode(codes[0]) if num_streams > 1 else None
        for i in range(num_streams - 1):
            codes.append(self.quantizers[i + 1].encode(hidden_states[-1 - i] - decoded))
            if len(codes) == num_streams:
                break
            decoded = self.quantizers[i + 1].decode(codes[-1]) + decoded
            decoded, height = self.decoder.blocks[i](decoded, height, width)
        return torch.stack(codes, dim=1)

    def decode(
        self,
        audio_codes: torch.LongTensor,
        padding_mask: torch.Tensor | None = None,
        return_stft: bool = False,
        return_dict: bool | None = None,
    ) -> tuple | EscDecoderOutput:
        r"""
        Args:
            audio_codes (`torch.LongTensor` of shape `(batch_size, num_streams, group_size, code_frames)`):
                Codes from [`~EscModel.encode`]; any leading subset of streams decodes (lower bitrate).
            padding_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                The mask given to `encode`: the output is cropped to its length and zeroed where it is 0. Without
                it the output has all `320 * code_frames - 80` samples the codes describe.
            return_stft (`bool`, *optional*, defaults to `False`):
                Also return the decoder's STFT `(batch_size, 2, num_frequency_bins, 4 * code_frames)`.

        Returns:
            [`EscDecoderOutput`] with `audio_values` `(batch_size, 1, sequence_length)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_codes(audio_codes)
        with torch.no_grad():
            stft = _at_least_float32(self._decode_stft(audio_codes.long()))
            audio = self._finish_audio(self._istft(stft), padding_mask, None)
        stft = stft if return_stft else None
        if not return_dict:
            return (audio, stft) if return_stft else (audio,)
        return EscDecoderOutput(audio, stft)

    def _decode_stft(self, codes: torch.LongTensor, stream_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Codes → decoder STFT. `stream_weights` `(streams,)`, 1 for a stream to use and 0 for one to drop, lets
        one traced graph (ONNX) take any number of streams: `1 * q` and `0 * q + x` are exact, so the result is the
        same as passing only the used streams."""
        width = codes.shape[-1] * self.config.overlap
        height = self.config.bottleneck_frequency
        if self.config.quantizer == "rvq":
            decoded = self.quantizers.decode(codes, stream_weights)
            for block in self.decoder.blocks:
                decoded, height = block(decoded, height, width)
            return self.decoder.project_out(decoded, height, width)
        decoded = self.quantizers[0].decode(codes[:, 0])
        for i, block in enumerate(self.decoder.blocks):
            if i + 1 < codes.shape[1]:
                residual = self.quantizers[i + 1].decode(codes[:, i + 1])
                if stream_weights is not None:
                    residual = stream_weights[i + 1] * residual
                decoded = residual + decoded
            decoded, height = block(decoded, height, width)
        return self.decoder.project_out(decoded, height, width)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        num_streams: int | None = None,
        bandwidth: float | None = None,
        bypass_quantizer: bool = False,
        input_features: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> tuple | EscOutput:
        r"""
        Encode and decode in one differentiable pass (training and evaluation).

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, 1, sequence_length)`):
                16 kHz mono waveform.
            padding_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real samples, 0 for padding.
            num_streams (`int`, *optional*):
                Streams used (quantizer dropout in training); default all.
            bandwidth (`float`, *optional*):
                Alternative to `num_streams`, in kbps.
            bypass_quantizer (`bool`, *optional*, defaults to `False`):
                Warm start: skip the codebooks (`z_q = W_out W_in z_e`, projections kept), all streams used, VQ
                losses zero. Training mode only.
            input_features (`torch.FloatTensor` of shape `(batch_size, 2, num_frequency_bins, frames)`, *optional*):
                ESC's complex STFT instead of `input_values` (see [`~EscModel.encode`]).

        Returns:
            [`EscOutput`].
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        num_streams = self._resolve_num_streams(num_streams, bandwidth)
        if bypass_quantizer and not self.training:
            raise ValueError("bypass_quantizer (warm start) is a training-mode option; call model.train() first")
        input_stft, length = self._input_stft(input_values, padding_mask, input_features)
        hidden_states, width = self.encoder(input_stft)
        if bypass_quantizer:
            num_streams = self.config.num_streams
        if self.config.quantizer == "rvq":
            recon_stft, codes, commitment, codebook = self._rvq_forward(hidden_states, width, num_streams, bypass_quantizer)
        else:
            recon_stft, codes, commitment, codebook = self._csrvq_forward(
                hidden_states, width, num_streams, bypass_quantizer
            )
        audio = self._finish_audio(self._istft(recon_stft), padding_mask, length)
        loss = (
            self.config.commitment_loss_weight * commitment.mean()
            + self.config.codebook_loss_weight * codebook.mean()
        )
        output = EscOutput(loss, audio, codes, commitment, codebook, input_stft, recon_stft)
        return output if return_dict else output.to_tuple()

    def _csrvq_forward(self, hidden_states, width, num_streams, bypass):
        height = self.config.bottleneck_frequency
        decoded, codes, commitment, codebook = self.quantizers[0](hidden_states[-1], bypass)
        codes = [codes]
        for i, block in enumerate(self.decoder.blocks):
            used = i < num_streams - 1
            # Training quantises every stream (their codes are returned) and zeroes the unused ones.
            if used or self.training:
                residual_q, code, cm, cb = self.quantizers[i + 1](hidden_states[-1 - i] - decoded, bypass)
                if not used:
                    residual_q, cm, cb = residual_q * 0.0, cm * 0.0, cb * 0.0
                decoded = residual_q + decoded
                commitment, codebook = commitment + cm, codebook + cb
                codes.append(code)
            decoded, height = block(decoded, height, width)
        return self.decoder.project_out(decoded, height, width), torch.stack(codes, dim=1), commitment, codebook

    def _rvq_forward(self, hidden_states, width, num_streams, bypass):
        decoded, codes, commitment, codebook = self.quantizers(hidden_states[-1], num_streams, bypass)
        height = self.config.bottleneck_frequency
        for block in self.decoder.blocks:
            decoded, height = block(decoded, height, width)
        return self.decoder.project_out(decoded, height, width), codes, commitment, codebook


__all__ = [
    "EscModel",
    "EscPreTrainedModel",
    "EscOutput",
    "EscEncoderOutput",
    "EscDecoderOutput",
    "esc_stft",
    "esc_istft",
    "esc_padded_length",
]
