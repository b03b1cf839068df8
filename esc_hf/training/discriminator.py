"""The adversarial option (the paper's ESC-Base-adv variant): DAC's multi-period and multi-band multi-resolution STFT
discriminators with a least-squares GAN loss and feature matching."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


def _conv2d(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv2d(*args, **kwargs))


class PeriodDiscriminator(nn.Module):
    """Looks at the waveform folded into `period` columns (one column per phase)."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period
        channels = [1, 32, 128, 512, 1024, 1024]
        self.convs = nn.ModuleList(
            _conv2d(channels[i], channels[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)) for i in range(5)
        )
        self.post = _conv2d(1024, 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.pad(x, (0, -x.shape[-1] % self.period), mode="reflect")
        x = x.view(x.shape[0], 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        features.append(self.post(x))
        return features


class BandSTFTDiscriminator(nn.Module):
    """Looks at the complex STFT of one resolution, split into frequency bands that get their own convolutions."""

    BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))

    def __init__(self, window_length: int, channels: int = 32):
        super().__init__()
        self.window_length = window_length
        self.register_buffer("window", torch.hann_window(window_length), persistent=False)
        bins = window_length // 2 + 1
        self.bands = [(int(lo * bins), int(hi * bins)) for lo, hi in self.BANDS]

        def stack():
            return nn.ModuleList([
                _conv2d(2, channels, (3, 9), padding=(1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4)),
                _conv2d(channels, channels, (3, 3), padding=(1, 1)),
            ])  # fmt: skip

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = _conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        spec = torch.stft(x[:, 0], self.window_length, self.window_length // 4, window=self.window, return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, 2, frames, bins)
        features, outputs = [], []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            band = spec[..., lo:hi]
            for conv in convs:
                band = F.leaky_relu(conv(band), 0.1)
                features.append(band)
            outputs.append(band)
        features.append(self.post(torch.cat(outputs, dim=-1)))
        return features


class Discriminator(nn.Module):
    """Multi-period (2, 3, 5, 7, 11) and multi-resolution STFT (2048, 1024, 512) discriminators. Inputs are
    DC-removed and peak-normalised to 0.8 first, as in DAC."""

    def __init__(self, periods=(2, 3, 5, 7, 11), window_lengths=(2048, 1024, 512)):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p) for p in periods] + [BandSTFTDiscriminator(w) for w in window_lengths]
        )

    def forward(self, audio: torch.Tensor) -> list[list[torch.Tensor]]:
        """`audio` `(B, 1, L)` → per discriminator, its feature maps; the last one is the score map."""
        audio = audio - audio.mean(dim=-1, keepdim=True)
        audio = 0.8 * audio / (audio.abs().amax(dim=-1, keepdim=True) + 1e-9)
        return [d(audio) for d in self.discriminators]


def discriminator_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least squares: fakes towards 0, reals towards 1."""
    return sum(f[-1].pow(2).mean() + (1 - r[-1]).pow(2).mean() for f, r in zip(fake, real))


def generator_adversarial_loss(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum((1 - f[-1]).pow(2).mean() for f in fake)


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminators' hidden features of fake and (detached) real audio."""
    return sum(
        (f_layer - r_layer.detach()).abs().mean() for f, r in zip(fake, real) for f_layer, r_layer in zip(f[:-1], r[:-1])
    )
