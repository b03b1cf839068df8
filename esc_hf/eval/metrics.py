"""Speech quality metrics for codec evaluation, on 16 kHz mono waveforms (numpy or torch, `(L,)`).

PESQ-WB and STOI come from the `pesq` and `pystoi` packages; the mel distance is the log-mel L1 part of ESC's
training loss summed over its 7 scales (the paper's metric); SI-SDR is the scale-invariant SDR of zero-mean signals.
"""

import numpy as np
import torch
import torch.nn as nn
from transformers.audio_utils import mel_filter_bank


METRICS = ("pesq", "stoi", "mel_distance", "si_sdr")  # what every evaluation reports, in this order


def _as_numpy(audio) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise ValueError("metrics need non-empty, finite audio")
    return audio


def _pair(reference, estimate) -> tuple[np.ndarray, np.ndarray]:
    reference, estimate = _as_numpy(reference), _as_numpy(estimate)
    if reference.shape != estimate.shape:
        raise ValueError(f"reference and estimate differ in length: {reference.size} vs {estimate.size}")
    return reference, estimate


def si_sdr(reference, estimate, eps: float = 1e-12) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (both signals made zero-mean first)."""
    reference, estimate = _pair(reference, estimate)
    reference, estimate = reference - reference.mean(), estimate - estimate.mean()
    target = (estimate @ reference) / (reference @ reference + eps) * reference
    noise = estimate - target
    return float(10 * np.log10((target @ target + eps) / (noise @ noise + eps)))


def pesq_wb(reference, estimate, sampling_rate: int = 16000) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0 to 4.64). Returns NaN where PESQ finds no speech in the reference."""
    from pesq import NoUtterancesError, pesq

    reference, estimate = _pair(reference, estimate)
    try:
        return float(pesq(sampling_rate, reference, estimate, "wb"))
    except NoUtterancesError:
        return float("nan")


def stoi(reference, estimate, sampling_rate: int = 16000) -> float:
    """Short-time objective intelligibility (0 to 1)."""
    from pystoi import stoi as _stoi

    reference, estimate = _pair(reference, estimate)
    return float(_stoi(reference, estimate, sampling_rate, extended=False))


class MultiScaleMel(nn.Module):
    """ESC's mel spectrograms at its seven scales: `M` is a magnitude (power 1) HTK mel spectrogram with hop
    `window // 4`, centred with reflect padding. Shared by the paper's training loss (`esc_hf.training.losses`) and
    the mel distance metric, so that both measure the same thing."""

    def __init__(
        self,
        sampling_rate: int = 16000,
        window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048),
        num_mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320),
        clamp_eps: float = 1e-5,
    ):
        super().__init__()
        if len(window_lengths) != len(num_mel_bins):
            raise ValueError("window_lengths and num_mel_bins need one entry per scale")
        self.window_lengths, self.clamp_eps = list(window_lengths), clamp_eps
        for i, (window, mels) in enumerate(zip(window_lengths, num_mel_bins)):
            filters = mel_filter_bank(
                num_frequency_bins=window // 2 + 1,
                num_mel_filters=mels,
                min_frequency=0.0,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="htk",
            )
            self.register_buffer(f"filters_{i}", torch.tensor(filters, dtype=torch.float32), persistent=False)
            self.register_buffer(f"window_{i}", torch.hann_window(window), persistent=False)

    def mel(self, audio: torch.Tensor, scale: int) -> torch.Tensor:
        """Mel magnitudes `(B, mels, frames)` of `audio` `(B, L)` at scale index `scale`."""
        window = self.window_lengths[scale]
        spec = torch.stft(
            audio, n_fft=window, hop_length=window // 4, win_length=window, window=getattr(self, f"window_{scale}"),
            center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
        ).abs()  # fmt: skip
        return (spec.transpose(-1, -2) @ getattr(self, f"filters_{scale}")).transpose(-1, -2)


_MEL = {}


def mel_distance(reference, estimate, sampling_rate: int = 16000) -> float:
    """Sum over ESC's 7 mel scales of the mean |log10 mel² difference| (lower is better)."""
    if sampling_rate not in _MEL:
        _MEL[sampling_rate] = MultiScaleMel(sampling_rate)
    loss = _MEL[sampling_rate]
    reference, estimate = _pair(reference, estimate)
    if reference.size <= max(loss.window_lengths) // 2:
        raise ValueError(f"the mel distance needs more than {max(loss.window_lengths) // 2} samples, got {reference.size}")
    x = torch.from_numpy(reference).float()[None]
    y = torch.from_numpy(estimate).float()[None]
    with torch.no_grad():
        total = 0.0
        for scale in range(len(loss.window_lengths)):
            log_x = loss.mel(x, scale).clamp(loss.clamp_eps).pow(2).log10()
            log_y = loss.mel(y, scale).clamp(loss.clamp_eps).pow(2).log10()
            total += (log_x - log_y).abs().mean().item()
    return total


def _code_counts(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs, per stream and codebook: `(streams, groups, codebook_size)` float64, from `codes`
    `(..., streams, groups, frames)` with all leading items and frames pooled."""
    if codes.dim() < 3:
        raise ValueError(f"codes must be (..., streams, groups, frames), got {tuple(codes.shape)}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size})")
    streams, groups = codes.shape[-3], codes.shape[-2]
    flat = codes.reshape(-1, streams, groups, codes.shape[-1]).permute(1, 2, 0, 3).reshape(streams, groups, -1)
    offsets = torch.arange(streams * groups).view(streams, groups, 1) * codebook_size
    counts = torch.bincount((flat.long().cpu() + offsets).reshape(-1), minlength=streams * groups * codebook_size)
    return counts.view(streams, groups, codebook_size).double()


def _entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    p = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    return -(p * p.clamp(min=1e-300).log2()).sum(-1)


def code_utilization(codes: torch.Tensor, codebook_size: int) -> float:
    """Mean over streams and groups of the entropy of the empirical code distribution divided by
    log2(codebook_size): 1.0 means every code is used equally often, so the nominal bitrate is fully used.

    `codes` is `(..., streams, groups, frames)`; frames of all leading items are pooled.
    """
    counts = _code_counts(codes, codebook_size)
    return float(_entropy_bits(counts).mean() / np.log2(codebook_size))


def codebook_health(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Per stream `s` and codebook `c` of `codes` `(..., streams, groups, frames)` (all items and frames pooled):
    `usage_s{s}_c{c}`, the share of the `codebook_size` codes that occur at least once (0 to 1), and
    `entropy_s{s}_c{c}`, the entropy of the codes' empirical distribution in bits (at most log2 codebook_size).
    A collapsed codebook, which uses few of its codes, wastes the bits its stream costs."""
    counts = _code_counts(codes, codebook_size)
    usage, entropy = (counts > 0).double().mean(-1), _entropy_bits(counts)
    health = {}
    for s in range(counts.shape[0]):
        for c in range(counts.shape[1]):
            health[f"usage_s{s}_c{c}"] = float(usage[s, c])
            health[f"entropy_s{s}_c{c}"] = float(entropy[s, c])
    return health


def entropy_kbps(codes: torch.Tensor, codebook_size: int, frame_rate: float) -> float:
    """The bitrate, in kbps, that `codes` `(..., streams, groups, frames)` would cost coded by their own empirical
    distribution, one per stream and codebook, at `frame_rate` code frames per second: the sum of the codebooks'
    entropies (as in [`codebook_health`]) times the frame rate.

    Bit-packed, every code costs log2(`codebook_size`) bits however few codes a codebook uses, so the nominal rate
    hides a collapsed codebook; entropy coding (`.esc` v2) does not, and then a recipe that spreads the codes over
    the codebook buys its quality with bits. This estimate lets runs be compared at the rate they would really
    cost. It is not the v2 files' rate: those tables are fitted once, on other clips, and model each code given the
    previous frame's (less than this for slowly changing coarse codes), and the files add headers and packets."""
    return float(_entropy_bits(_code_counts(codes, codebook_size)).sum() * frame_rate / 1000)


def stream_usage(row: dict) -> dict[int, float]:
    """Mean share of codes used per stream (over its codebooks), from a dict with [`codebook_health`]'s keys."""
    usage = {}
    for key, value in row.items():
        if key.startswith("usage_s"):
            usage.setdefault(int(key.split("_")[1][1:]), []).append(value)
    return {s: float(np.mean(values)) for s, values in sorted(usage.items())}
