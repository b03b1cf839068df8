"""Spectrograms of a stream whose rate changes from packet to packet (.esc v2 layers), beside the constant-rate
decodes: no click at the switches.

    python benchmarks/plot_rate_switch.py --clip tests/data/speech_nl.flac --output docs/rate_switch.png

The streaming encoder sends 9 kbps, then 3 kbps (packets with 2 of 6 layers) from 1.6 s to 3.2 s, then 9 kbps
again; the streaming decoder decodes each frame with the layers its packet holds. Printed: the largest difference
from the constant-rate decode of the same rate away from the switches, and the peak level near each switch.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from esc_hf.codec.audio_io import load_audio  # noqa: E402
from esc_hf.codec.bitstream import streams_per_frame, unpack  # noqa: E402
from esc_hf.codec.loading import load_model  # noqa: E402
from esc_hf.codec.streaming import ChunkPlan, EscStreamingDecoder, EscStreamingEncoder  # noqa: E402

BLOCK = 3200  # 0.2 s per push: one packet of 10 frames


def stream(model, audio, rate_of_block):
    encoder = EscStreamingEncoder(model, kbps=9)
    packets = []
    for index, start in enumerate(range(0, audio.size, BLOCK)):
        encoder.set_rate(kbps=rate_of_block(index))
        packets += encoder.push(audio[start : start + BLOCK])
    packets += encoder.flush()
    decoder = EscStreamingDecoder(model, encoder.header)
    audio_out = np.concatenate([decoder.push(packet) for packet in packets])
    codes, _ = unpack(encoder.header + b"".join(packets), model)
    return audio_out, streams_per_frame(codes[0].numpy())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--model")
    parser.add_argument("--output", type=Path, default=Path("rate_switch.png"))
    args = parser.parse_args(argv)
    model = load_model(args.model)
    audio, _ = load_audio(args.clip, model.config.sampling_rate)
    mixed, present = stream(model, audio, lambda index: 3 if 8 <= index < 16 else 9)
    high, _ = stream(model, audio, lambda index: 9)
    low, _ = stream(model, audio, lambda index: 3)
    spf = model.config.samples_per_code_frame
    changes = (np.flatnonzero(np.diff(present)) + 1) * spf
    plan = ChunkPlan.for_model(model)
    margin = spf * (max(plan.decode_left, plan.decode_right) + 10)
    for at in changes:
        near = slice(max(0, at - margin), at + margin)
        print(f"switch at {at / 16000:.2f} s: peak {np.abs(mixed[near]).max():.3f} (9 kbps there "
              f"{np.abs(high[near]).max():.3f}, 3 kbps {np.abs(low[near]).max():.3f})")  # fmt: skip
    far = np.ones(audio.size, bool)
    for at in changes:
        far[max(0, at - margin) : at + margin] = False
    reference = np.where(np.repeat(present, spf)[: audio.size] == 6, high, low)
    print(f"away from the switches (±{margin / 16000:.2f} s): max |mixed − constant rate| = "
          f"{np.abs(mixed - reference)[far].max():.2e}")  # fmt: skip

    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    for ax, (signal, title) in zip(axes, [(high, "9 kbps throughout"), (mixed, "9 → 3 → 9 kbps (layers dropped "
                                          "per packet)"), (mixed - reference, "difference from the constant-rate "
                                          "decode of each stretch")]):  # fmt: skip
        with np.errstate(divide="ignore"):  # the difference is exactly 0 away from the switches
            ax.specgram(signal, NFFT=512, Fs=16000, noverlap=384, cmap="magma", vmin=-140, vmax=-20)
        for at in changes:
            ax.axvline(at / 16000, color="cyan", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("Hz")
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
