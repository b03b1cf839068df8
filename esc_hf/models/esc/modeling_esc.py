# Copyright 2026 The esc_hf authors. Licensed under the Apache License, Version 2.0.
"""ESC (Efficient Speech Codec, Gu & Diao 2024) as a transformers model.

Module and parameter names follow the authors' code, so that their checkpoints load with a plain key check
(see `esc_hf.convert`). Shapes: `B` batch, `L` samples, `F` STFT bins, `T` STFT frames, `H`/`W` frequency/time
size of a latent grid, `C` channels, `G` product-VQ groups, `N` streams, `K` code frames (`W / overlap`).
Swin layers keep tokens as `(B, H*W, C)` (row-major over `(h, w)`), the CNN backbone keeps `(B, C, H, W)`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import initialization as init
from transformers.modeling_utils import PreTrainedAudioTokenizerBase
from transformers.utils import ModelOutput

from .configuration_esc import EscConfig, esc_padded_length


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


# ----------------------------------------------------------------------------------------------------------------
# Swin backbone


def _shift_window_mask(padded_height: int, padded_width: int, window_size: int, device: torch.device):
    """Additive mask `(num_windows, ws², ws²)` that stops shifted windows from mixing regions that the cyclic
    shift brought together: 0 within a region, -100 across (the authors' value, not -inf)."""
    shift = window_size // 2

    def band(size: int) -> torch.Tensor:  # 0 before the last window, 1 in its first half, 2 in its shifted half
        index = torch.arange(size, device=device)
        return (index >= size - window_size).long() + (index >= size - shift).long()

    # Region 3·row band + column band, the authors' nine regions; built by arithmetic rather than nine slice
    # assignments, which tracers (torch.export, torch.compile) turn into chains of scatters over symbolic sizes.
    labels = (3 * band(padded_height)[:, None] + band(padded_width)[None, :]).float()
    windows = _window_partition(labels[None, :, :, None], window_size).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _relative_position_index(window_size: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def _padded(size: int, window_size: int) -> int:
    """`size` rounded up to whole windows. One expression for every padded size: traced with a symbolic length
    (torch.export), it is visibly a multiple of the window, so the windows' counts and the mask's cancel."""
    return (size + window_size - 1) // window_size * window_size


def _window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """`(B, Hp, Wp, C)` → `(B * num_windows, ws², C)`, windows row-major per item, tokens row-major per window."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def _window_merge(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


class _Linear(nn.Linear):
    """`nn.Linear` that takes its input in its own dtype: with a bf16 backbone
    ([`EscModel.set_backbone_dtype`]) the LayerNorms and the residual stream stay float32 and only the matmuls run
    in bf16. A no-op cast in float32. Under autocast the matmul casts its input itself: casting here as well turned
    each bf16 activation into float32 and back, twice a step with its gradient (a tenth of a bf16 training step on a
    CPU, docs/benchmarks.md), for the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.weight.dtype)
        return super().forward(x)


def fused_window_attention(qkv: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of `qkv` `(B, N, 3, heads, d)` with the additive `bias` `(B or 1, heads, N, N)` in PyTorch's fused
    kernel → `(B, N, heads * d)`; the same values as the explicit softmax up to float rounding."""
    query, key, value = qkv.permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)
    # The CPU kernel returns (B, heads, N, d) as a transposed view of (B, N, heads, d): this reshape is free.
    return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


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

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None, fused: bool = False) -> torch.Tensor:
        """`windows` `(B * nW, N, C)`, `mask` `(nW, N, N)` or None → `(B * nW, N, C)`. `fused` runs PyTorch's
        fused attention (inference only: its backward moves the gradient norm by ~1e-3 from the authors')."""
        batch_windows, tokens, channels = windows.shape
        qkv = self.qkv(windows).reshape(batch_windows, tokens, 3, self.num_heads, channels // self.num_heads)
        if fused:
            bias = self.position_bias()
            if mask is not None:
                bias = (bias + mask[:, None].to(bias.dtype)).repeat(batch_windows // mask.shape[0], 1, 1, 1)
            return self.proj(fused_window_attention(qkv, bias, self.scale))
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attn = (query * self.scale) @ key.transpose(-2, -1) + self.position_bias()
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None].to(attn.dtype)
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        out = attn.softmax(dim=-1) @ value
        return self.proj(out.transpose(1, 2).reshape(batch_windows, tokens, channels))


class EscMlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.linear_1 = _Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.linear_2 = _Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

    def forward(
        self, x: torch.Tensor, height: int, width: int, mask: torch.Tensor, fused: bool = False
    ) -> torch.Tensor:
        """Tokens `(B, H*W, C)` → `(B, H*W, C)`; `mask` is the stage's shift mask, `fused` as for the attention."""
        batch, _, channels = x.shape
        ws = self.window_size
        y = self.norm1(x).view(batch, height, width, channels)
        # Padding tokens are zeros after the norm and are deliberately not masked: the authors' model attends to
        # them (their keys and values are the qkv biases), and parity needs the same.
        padded_height, padded_width = _padded(height, ws), _padded(width, ws)
        pad_h, pad_w = padded_height - height, padded_width - width
        # Traced (torch.compile, torch.export) the pad and crop are unconditional, so that one graph serves every
        # length: branching on a symbolic length would specialise the graph to lengths of one residue.
        always = torch.compiler.is_compiling()
        if always or pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        if self.shift_size:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        y = self.attn(_window_partition(y, ws), mask if self.shift_size else None, fused)
        y = _window_merge(y, ws, padded_height, padded_width)
        if self.shift_size:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if always or pad_h or pad_w:
            y = y[:, :height, :width]
        x = x + y.reshape(batch, height * width, channels)
        return x + self.mlp(self.norm2(x))


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

    def forward(self, x: torch.Tensor, height: int, width: int, fused: bool = False) -> tuple[torch.Tensor, int]:
        """`x` `(B, H*W, C_in)` → `(B, H'*W, C_out)` and `H'`; `fused` as for the attention."""
        # The residual stream is in the LayerNorms' dtype: float32, also with a bf16 backbone (set_backbone_dtype).
        x = x.to(self.swint_blocks[0].norm1.weight.dtype) if len(self.swint_blocks) else x
        ws = self.window_size
        mask = _shift_window_mask(_padded(height, ws), _padded(width, ws), ws, x.device)
        for block in self.swint_blocks:
            x = block(x, height, width, mask, fused)
        return self._rescale(x, height, width)

    def _rescale(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int]:
        if self.scale is None:
            return x, height
        x = self.subsample(x, height, width)
        return x, (height + 1) // 2 if self.scale == "down" else 2 * height


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
        return self.project(x.to(self.de_proj1.weight.dtype))

    def project(self, x: torch.Tensor, padding: tuple[int, int] | None = None) -> torch.Tensor:
        """`(B, C0, H0, W)` → STFT: `de_proj1`, the pixel shuffle of its channels into patches, `de_proj2`.
        `padding` (rows, columns) overrides `de_proj1`'s own, for strips padded by hand."""
        conv = self.de_proj1
        x = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding if padding is None else padding)
        x = x.permute(0, 2, 3, 1)
        batch, height, width, _ = x.shape
        s1, s2 = self.patch_size
        # Channel (s1_idx * s2 + s2_idx) * C0 + c goes to row s1*h + s1_idx, column s2*w + s2_idx.
        x = x.reshape(batch, height, width, s1, s2, -1).permute(0, 1, 3, 2, 4, 5)
        return self.de_proj2(x.reshape(batch, height * s1, width * s2, -1).permute(0, 3, 1, 2))


def _run_stage(stage: nn.Module, x: torch.Tensor, height: int, width: int, form: str) -> tuple[torch.Tensor, int]:
    """`stage(x, height, width)` in formulation `form` (see [`EscModel`])."""
    if not isinstance(stage, EscTransformerLayer):
        return stage(x, height, width)  # the CNN ablation has one formulation
    if form == "eager" and len(stage.swint_blocks):
        from .inference_esc import transformer_layer

        return transformer_layer(stage, x, height, width)
    return stage(x, height, width, fused=form != "autograd")


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

    def forward(self, stft: torch.Tensor, form: str = "autograd") -> tuple[list[torch.Tensor], int]:
        """STFT `(B, 2, F, T)` → the feature maps at every scale, finest first, and the latent width `W`; `form` is
        the formulation (see [`EscModel`])."""
        height, width = stft.shape[2] // self.patch_embed.proj.stride[0], stft.shape[3] // 2
        x = self.patch_embed(stft)
        x, height = _run_stage(self.pre_nn, x, height, width, form)
        hidden_states = [x]
        for block in self.blocks:
            x, height = _run_stage(block, x, height, width, form)
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

    def project_out(self, x: torch.Tensor, height: int, width: int, form: str = "autograd") -> torch.Tensor:
        """Finest decoder feature → STFT `(B, 2, F, 2W)`; `form` is the formulation (see [`EscModel`])."""
        x, height = _run_stage(self.post_nn, x, height, width, form)
        if form != "autograd":
            from .inference_esc import patch_deembed

            return patch_deembed(self.patch_deembed, x, height, width)
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


def _stream_weight(stream_weights: torch.Tensor, stream: int) -> torch.Tensor:
    """Stream `stream`'s weight from `(streams,)` (one per stream) or `(B, streams, K)` (one per code frame), shaped
    to multiply code vectors `(B, K, D)`."""
    if stream_weights.dim() == 1:
        return stream_weights[stream]
    return stream_weights[:, stream, :, None]


class EscProductVectorQuantizer(nn.Module):
    """One CS-RVQ stream: product VQ over `group_size` contiguous slices, each projected down to its codebook's
    dimension (`down_projs`), quantised, and projected back (`up_projs`). Its methods take and return a stream axis
    of size 1, as [`EscProductResidualVectorQuantizer`]'s take `num_streams`, so that the cross-scale recursion
    (`EscModel._cross_scale`) treats both alike."""

    def __init__(self, config: EscConfig, in_dim: int, in_freq: int, codebook_dim: int):
        super().__init__()
        self.grouping = EscFrameGrouping(config, in_dim, in_freq)
        self.group_dims = _split_dimension(config.overlap * in_dim * in_freq, config.group_size)
        self.vqs = nn.ModuleList(
            EscCodebook(codebook_dim, config.codebook_size, config.l2norm) for _ in self.group_dims
        )
        self.down_projs = nn.ModuleList(nn.Linear(d, codebook_dim, bias=False) for d in self.group_dims)
        self.up_projs = nn.ModuleList(nn.Linear(codebook_dim, d, bias=False) for d in self.group_dims)

    def encode(self, x: torch.Tensor, num_streams: int = 1) -> torch.LongTensor:
        """Feature map → codes `(B, 1, G, K)`."""
        groups = self.grouping.to_vectors(x).to(self.down_projs[0].weight.dtype).split(self.group_dims, dim=-1)
        return torch.stack([vq.encode(proj(g)) for g, proj, vq in zip(groups, self.down_projs, self.vqs)], dim=1)[
            :, None
        ]

    def decode(self, codes: torch.LongTensor, stream_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Codes `(B, 1, G, K)` → feature map; `stream_weights` `(1,)` or `(B, 1, K)` of 0 drops the stream (in
        those code frames), see `EscModel.decode_stft`."""
        parts = [proj(vq.decode(codes[:, 0, g])) for g, (proj, vq) in enumerate(zip(self.up_projs, self.vqs))]
        vectors = torch.cat(parts, dim=-1)
        if stream_weights is not None:
            vectors = _stream_weight(stream_weights, 0) * vectors
        return self.grouping.from_vectors(vectors)

    def forward(self, x: torch.Tensor, num_streams: int = 1, bypass: bool = False):
        """Quantised feature map, codes `(B, 1, G, K)`, commitment and codebook loss `(B,)` (means over groups).

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
        return quantized, torch.stack(codes, dim=1)[:, None], commitment / len(self.vqs), codebook / len(self.vqs)


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
        """Codes `(B, n, K)` → `(B, K, D_g)`; `stream_weights` `(n,)` or `(B, n, K)` of 0/1 drops streams (in those
        code frames), see `EscModel.decode_stft`."""
        z = 0.0
        for i in range(codes.shape[1]):
            q = self.vqs[i].decode(codes[:, i])
            z = z + (q if stream_weights is None else _stream_weight(stream_weights, i) * q)
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

    Cross-scale residual VQ (CS-RVQ) is the paper's idea: the streams do not all quantise the bottleneck, as a
    residual VQ does, but refine the decoder at successively finer scales. Stream 0 quantises the encoder's
    bottleneck feature; stream 1 quantises what the decoder's input still lacks of it (the encoder's feature minus
    stream 0's reconstruction); each further stream sits one decoder stage further up, where it quantises the
    difference between the encoder's feature map of that resolution and the decoder's feature map after the stage
    before. So the coarse streams carry the bottleneck and the fine ones detail the decoder only the encoder could
    see, and any leading subset of streams decodes (a lower bitrate). Every stream is a product VQ of
    `group_size` codebooks with factorised (projected-down), L2-normalised lookup. The recursion is written once,
    in `_cross_scale`, for encoding, decoding and training alike; the `"rvq"` ablation runs it with all its
    streams at the bottleneck.

    Three formulations compute the same network, chosen in one place (`_formulation`): under autograd, the
    modules' own `forward`s, which follow the authors' op order, so that training gradients match theirs;
    traced without autograd (`torch.compile`, `torch.export`, ONNX), the same graph with fused attention and the
    fused de-embedding of `inference_esc`, so that one graph serves every length; and in eager inference, all of
    `inference_esc`'s forms (window-ordered Swin stages, oneDNN linears, the package's CPU kernels). They agree up
    to float rounding.

    Any input length is accepted: the waveform is right-padded with zeros to the next length the network handles
    losslessly (`80 * (4k - 1)` samples for ESC) and the output is cropped back, so outputs equal the authors' code
    wherever their code round-trips. The geometry (streams for a bandwidth, code frames for a number of samples,
    samples for code frames) is on [`EscConfig`].

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
            # Streams 0 and 1 quantise the bottleneck; stream s >= 2 the output of decoder stage s - 2, which has the
            # resolution of the encoder's feature map s - 1 steps above the bottleneck.
            dims, freq = config.hidden_dims[::-1], config.bottleneck_frequency
            self.quantizers = nn.ModuleList(
                EscProductVectorQuantizer(
                    config, dims[max(s - 1, 0)], freq * 2 ** max(s - 1, 0), config.codebook_dims[s]
                )
                for s in range(config.num_streams)
            )
        else:
            self.quantizers = EscProductResidualVectorQuantizer(config)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        self.post_init()

    # -- helpers ------------------------------------------------------------------------------------------------

    def set_backbone_dtype(self, dtype: torch.dtype) -> "EscModel":
        """Opt-in, approximate: casts the encoder and decoder (nearly all of the compute) to `dtype`, typically
        `torch.bfloat16` on a GPU or a CPU with AVX512-BF16/AMX, where it runs several times faster. The STFT, the
        patch embedding, the LayerNorms and the residual stream, the quantizers (projections and codebook search)
        and the inverse STFT stay in float32, so codes are still searched at full precision, but from slightly
        different features: they no longer match float32 exactly (`benchmarks/bench_codec.py` reports the
        agreement). On the CPU, window attention and the residual adds then run in kernels of this package,
        compiled for the machine on the first bf16 call (cached), or in aten's ops where they cannot be
        built (and in a remote-code copy of this file, which runs without esc_hf). Casting back does not restore the
        float32 weights; load the model again for exact outputs. Returns the model.
        """
        from .inference_esc import cast_backbone

        return cast_backbone(self, dtype)

    @staticmethod
    def _formulation() -> str:
        """The one place that chooses the formulation (see the class docstring): "autograd", "traced" or "eager"."""
        if torch.is_grad_enabled():
            return "autograd"
        return "traced" if torch.compiler.is_compiling() else "eager"

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
        bins, multiple = self.config.num_frequency_bins, self.config.frames_per_code
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
        padded = self.config.padded_length(waveform.shape[-1])
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
            raise ValueError(
                f"audio_codes has {audio_codes.shape[1]} streams; this model has 1 to {self.config.num_streams}"
            )
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
        num_streams = self.config.resolve_num_streams(num_streams, bandwidth)
        with torch.no_grad():
            codes = self.encode_stft(self._input_stft(input_values, padding_mask, input_features)[0], num_streams)
        return EscEncoderOutput(codes) if return_dict else (codes,)

    def encode_stft(self, input_stft: torch.Tensor, num_streams: int) -> torch.LongTensor:
        """The network of [`~EscModel.encode`]: ESC's STFT `(batch_size, 2, num_frequency_bins, 4 * code_frames)` →
        `audio_codes` `(batch_size, num_streams, group_size, code_frames)`, without the checks, the padding and the
        STFT, so that it traces (`torch.compile`, ONNX export). Under autograd it records the graph."""
        form = self._formulation()
        hidden_states, width = self.encoder(input_stft, form)
        codes = []

        def quantize(position, quantizer, streams, decoded):
            target = hidden_states[-max(position, 1)]
            codes.append(quantizer.encode(target if decoded is None else target - decoded, streams))
            return quantizer.decode(codes[-1])

        self._cross_scale(quantize, num_streams, width, form, to_stft=False)
        return torch.cat(codes, dim=1)

    def decode(
        self,
        audio_codes: torch.LongTensor,
        padding_mask: torch.Tensor | None = None,
        return_stft: bool = False,
        return_dict: bool | None = None,
        streams_per_frame: torch.LongTensor | None = None,
        blend_codes: torch.LongTensor | None = None,
        blend_weights: torch.Tensor | None = None,
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
            streams_per_frame (`torch.LongTensor` of shape `(batch_size, code_frames)`, *optional*):
                A bitrate that changes over time: how many leading streams (1 … `num_streams`) each code frame uses.
                The codes of the streams beyond are ignored (they may be anything, e.g. -1); a frame decodes as if
                they were not there, so away from a change of rate the audio is that of the constant-rate decode.
            blend_codes (`torch.LongTensor` of the shape of `audio_codes`, *optional*):
                Latent interpolation (packet-loss concealment): with `blend_weights` `w`, code frame k's quantised
                features at every stream are `(1 - w[k]) * features(audio_codes) + w[k] * features(blend_codes)`.
            blend_weights (`torch.Tensor` of shape `(batch_size, code_frames)`, *optional*):
                Weights in [0, 1] for `blend_codes`; a frame of weight 0 decodes exactly as without blending.

        Returns:
            [`EscDecoderOutput`] with `audio_values` `(batch_size, 1, sequence_length)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        weights = None
        if streams_per_frame is not None and isinstance(audio_codes, torch.Tensor) and audio_codes.dim() == 4:
            weights = self._stream_weights_per_frame(streams_per_frame, audio_codes)
            audio_codes = audio_codes.masked_fill(weights[:, :, None] == 0, 0)  # the ignored codes may be anything
        self._check_codes(audio_codes)
        blend = None
        if blend_codes is not None or blend_weights is not None:
            blend = self._checked_blend(audio_codes, blend_codes, blend_weights, weights)
        with torch.no_grad():
            stft = _at_least_float32(self.decode_stft(audio_codes.long(), weights, blend))
            audio = self._finish_audio(self._istft(stft), padding_mask, None)
        stft = stft if return_stft else None
        if not return_dict:
            return (audio, stft) if return_stft else (audio,)
        return EscDecoderOutput(audio, stft)

    def _stream_weights_per_frame(self, streams_per_frame, audio_codes: torch.Tensor) -> torch.Tensor:
        """`streams_per_frame` `(B, K)` → checked 0/1 weights `(B, streams, K)` for `decode_stft`."""
        batch, streams, _, frames = audio_codes.shape
        if (
            not isinstance(streams_per_frame, torch.Tensor)
            or streams_per_frame.is_floating_point()
            or streams_per_frame.is_complex()
            or tuple(streams_per_frame.shape) != (batch, frames)
        ):
            raise ValueError(
                f"streams_per_frame must be an integer tensor of shape (batch, code_frames) = {(batch, frames)}"
            )
        if streams_per_frame.min() < 1 or streams_per_frame.max() > streams:
            raise ValueError(f"streams_per_frame must lie in [1, {streams}] (the streams of audio_codes)")
        stream = torch.arange(streams, device=audio_codes.device)
        return (stream[None, :, None] < streams_per_frame.to(audio_codes.device)[:, None, :]).to(self.dtype)

    def _checked_blend(self, audio_codes, blend_codes, blend_weights, stream_weights) -> tuple:
        """`(blend_codes, blend_weights)` checked against `audio_codes`, ignored streams masked as in `audio_codes`."""
        batch, _, _, frames = audio_codes.shape
        if not isinstance(blend_codes, torch.Tensor) or blend_codes.shape != audio_codes.shape:
            raise ValueError(f"blend_codes must be a tensor of the shape of audio_codes {tuple(audio_codes.shape)}")
        if (
            not isinstance(blend_weights, torch.Tensor)
            or not blend_weights.is_floating_point()
            or tuple(blend_weights.shape) != (batch, frames)
        ):
            raise ValueError(f"blend_weights must be a float tensor of shape (batch, code_frames) = {(batch, frames)}")
        if not bool(((blend_weights >= 0) & (blend_weights <= 1)).all()):
            raise ValueError("blend_weights must lie in [0, 1]")
        if stream_weights is not None:
            blend_codes = blend_codes.masked_fill(stream_weights[:, :, None] == 0, 0)
        self._check_codes(blend_codes)
        return blend_codes.long().to(audio_codes.device), blend_weights.to(audio_codes.device, self.dtype)

    def decode_stft(
        self,
        audio_codes: torch.LongTensor,
        stream_weights: torch.Tensor | None = None,
        blend: tuple[torch.LongTensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The network of [`~EscModel.decode`]: `audio_codes` `(batch_size, streams, group_size, code_frames)` → the
        decoder's STFT `(batch_size, 2, num_frequency_bins, 4 * code_frames)`, without the checks and the inverse
        STFT, so that it traces (`torch.compile`, ONNX export). `stream_weights`, 1 for a stream to use and 0 for
        one to drop, either `(streams,)`, which lets one traced graph take any number of streams, or
        `(batch_size, streams, code_frames)`, a bitrate that changes from frame to frame. `1 * q` and `0 * q + x`
        are exact, so a frame's quantised features are the same as with only its used streams passed. `blend`,
        `(blend_codes, blend_weights (batch_size, code_frames))`, mixes in a second set of codes (see `decode`):
        the features are linear in the code vectors, so the mix is taken of each position's features."""
        width = audio_codes.shape[-1] * self.config.overlap
        offsets = [0]

        def quantize(position, quantizer, streams, decoded):
            start = offsets[-1]
            offsets.append(start + streams)
            weights = None
            if stream_weights is not None:  # streams are axis 0 of `(streams,)`, axis 1 of `(B, streams, K)`
                weights = stream_weights.narrow(stream_weights.dim() // 2, start, streams)
            features = quantizer.decode(audio_codes[:, start : start + streams], weights)
            if blend is None:
                return features
            other = quantizer.decode(blend[0][:, start : start + streams], weights)
            # Per-frame weights laid out as the features are: the grouping is a reshape of one vector per frame.
            mix = quantizer.grouping.from_vectors(blend[1][:, :, None].expand(-1, -1, sum(quantizer.group_dims)))
            return (1 - mix) * features + mix * other  # exact where the weight is 0: 1 * x + 0 * y

        return self._cross_scale(quantize, audio_codes.shape[1], width, self._formulation())

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
        num_streams = self.config.resolve_num_streams(num_streams, bandwidth)
        if bypass_quantizer and not self.training:
            raise ValueError("bypass_quantizer (warm start) is a training-mode option; call model.train() first")
        if bypass_quantizer:
            num_streams = self.config.num_streams
        form = self._formulation()
        input_stft, length = self._input_stft(input_values, padding_mask, input_features)
        hidden_states, width = self.encoder(input_stft, form)
        codes, losses = [], []

        def quantize(position, quantizer, streams, decoded):
            target = hidden_states[-max(position, 1)]
            quantized, code, commitment, codebook = quantizer(
                target if decoded is None else target - decoded, streams, bypass_quantizer
            )
            if position >= num_streams:  # a stream beyond `num_streams` in training: quantised, then dropped
                quantized, commitment, codebook = quantized * 0.0, commitment * 0.0, codebook * 0.0
            codes.append(code)
            losses.append((commitment, codebook))
            return quantized

        # Training quantises every stream (all their codes are returned) and zeroes the unused ones.
        recon_stft = self._cross_scale(quantize, num_streams, width, form, every_position=self.training)
        commitment, codebook = losses[0]
        for cm, cb in losses[1:]:
            commitment, codebook = commitment + cm, codebook + cb
        audio = self._finish_audio(self._istft(recon_stft), padding_mask, length)
        loss = (
            self.config.commitment_loss_weight * commitment.mean() + self.config.codebook_loss_weight * codebook.mean()
        )
        output = EscOutput(loss, audio, torch.cat(codes, dim=1), commitment, codebook, input_stft, recon_stft)
        return output if return_dict else output.to_tuple()

    def _cross_scale(
        self, quantize, num_streams: int, width: int, form: str, to_stft: bool = True, every_position: bool = False
    ) -> torch.Tensor | None:
        """The cross-scale recursion (see the class docstring) over the positions of the first `num_streams`
        streams, with the decoder stages between them, then (`to_stft`) the rest of the decoder → its STFT
        `(B, 2, F, 2 * width)`.

        `quantize(position, quantizer, streams, decoded)` quantises `streams` streams at one position and returns
        what they add to the decoder's feature map `decoded` there (None at position 0). Position p holds stream p;
        in the `"rvq"` ablation one position at the bottleneck holds all streams. `every_position` also visits the
        positions of the streams beyond `num_streams` (training quantises them all, see `forward`).
        """
        if self.config.quantizer == "rvq":
            positions = [(self.quantizers, num_streams)]
        else:
            used = self.quantizers if every_position else self.quantizers[:num_streams]
            positions = [(quantizer, 1) for quantizer in used]
        height, decoded = self.config.bottleneck_frequency, None
        stages = iter(self.decoder.blocks)
        for position, (quantizer, streams) in enumerate(positions):
            if position >= 2:
                decoded, height = _run_stage(next(stages), decoded, height, width, form)
            added = quantize(position, quantizer, streams, decoded)
            decoded = added if decoded is None else added + decoded
        if not to_stft:
            return None
        for stage in stages:
            decoded, height = _run_stage(stage, decoded, height, width, form)
        return self.decoder.project_out(decoded, height, width, form)


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
