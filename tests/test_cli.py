import copy
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH

from esc_hf import load_model
from esc_hf.codec.bitstream import HEADER_SIZES, unpack
from esc_hf.cli import main


def run_esc(*args, cwd, capsys=None):
    """Exit code, stdout, stderr of `esc ARGS` run in `cwd`: in a fresh process (the real console entry point), or
    in this one when given `capsys` (the same `main`, without the seconds of importing torch again)."""
    if capsys is None:
        result = subprocess.run(
            [sys.executable, "-m", "esc_hf", *map(str, args)], capture_output=True, text=True, check=False, cwd=cwd
        )
        return result.returncode, result.stdout, result.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        capsys.readouterr()
        code = main(list(map(str, args)))
    return (code, *capsys.readouterr())


def test_roundtrip_real_clip_with_packaged_model(tmp_path, capsys):
    out = tmp_path / "decoded.wav"
    assert main(["roundtrip", str(SPEECH[0]), str(out), "--kbps", "3"]) == 0
    decoded, rate = sf.read(str(out))
    original, _ = sf.read(str(SPEECH[0]))
    assert rate == 16000 and decoded.shape == original.shape and np.abs(decoded).max() > 0
    assert "3 kbps" in capsys.readouterr().out


def test_roundtrip_resamples_and_downmixes(tmp_path, capsys):
    stereo = np.stack([np.sin(np.arange(44100) / 20), np.cos(np.arange(44100) / 30)], axis=1) * 0.3
    sf.write(str(tmp_path / "in.wav"), stereo, 44100)
    assert main(["roundtrip", str(tmp_path / "in.wav"), str(tmp_path / "out.flac")]) == 0
    assert sf.info(str(tmp_path / "out.flac")).samplerate == 16000
    err = capsys.readouterr().err
    assert "44100 Hz → 16000 Hz" in err and "2 channels" in err
    assert err.count("note:") == 2, "each change is said once"


def test_encode_info_decode_end_to_end(tmp_path, capsys):
    esc, wav = tmp_path / "speech.esc", tmp_path / "speech.wav"
    code, out, err = run_esc("encode", SPEECH[1], esc, "--kbps", "6", cwd=tmp_path)
    assert code == 0 and err == "", err
    assert "3.69 s at 6 kbps" in out and f"{esc.stat().st_size:,} bytes" in out
    codes, header = unpack(esc.read_bytes(), load_model(None))
    assert header.num_streams == 4 and header.num_samples == sf.info(str(SPEECH[1])).frames

    code, out, err = run_esc("info", esc, cwd=tmp_path, capsys=capsys)
    assert code == 0 and err == ""
    assert "58,974 samples at 16000 Hz" in out and "4 streams × 3 codebooks × 10 bits, 185 frames" in out
    assert "every CRC correct" in out and "decodes with the packaged default model" in out

    code, out, err = run_esc("decode", esc, wav, cwd=tmp_path, capsys=capsys)
    assert code == 0 and err == "" and "3.69 s at 6 kbps" in out
    decoded = sf.read(str(wav), dtype="float32")[0]
    # the same audio as decoding the codes in one go (written as 16-bit PCM)
    model = load_model(None)
    with torch.inference_mode():
        direct = model.decode(codes).audio_values[0, 0, : header.num_samples].numpy()
    assert decoded.shape == direct.shape and np.abs(decoded - direct).max() <= 1 / 32768

    assert run_esc("roundtrip", SPEECH[1], tmp_path / "rt.wav", "--kbps", "6", cwd=tmp_path, capsys=capsys)[0] == 0
    # Exact on any CPU: the codes are exact, and roundtrip decodes them with the same chunk plan as `decode`, i.e.
    # the same model calls on the same inputs in the same process (no kernel sees another shape).
    assert np.array_equal(sf.read(str(tmp_path / "rt.wav"))[0], sf.read(str(wav))[0]), "roundtrip = encode + decode"


@pytest.mark.parametrize("verb", ["encode", "decode", "simulate-loss", "info", "roundtrip", "report"])
def test_help_for_each_verb(verb, tmp_path, capsys):
    """Each verb's help describes every argument it accepts, and what it states is true: the bitrates, the default
    chunk length, the audio formats read and written, the report's codecs and defaults."""
    import argparse

    from esc_hf import EscConfig
    from esc_hf.codec.audio_io import AudioSource, open_audio_sink
    from esc_hf.cli import build_parser
    from esc_hf.eval.baselines import all_codecs
    from esc_hf.codec.loading import DEFAULT_MODEL
    from esc_hf.eval.report import DEFAULT_CODECS, DEFAULT_KBPS
    from esc_hf.codec.streaming import FILE_CHUNK_FRAMES

    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines; compare with single spaces
    assert exit_.value.code == 0 and f"usage: esc {verb}" in text
    (verbs,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parser = verbs.choices[verb]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = " ".join(action.help.replace("%%", "%").split())  # as argparse prints it
        assert action.help and shown in text, f"esc {verb}: {action.dest} is not described"
        assert all(option in text for option in action.option_strings)
    options = {o for a in parser._actions for o in a.option_strings}

    config = EscConfig.from_pretrained(DEFAULT_MODEL)  # the packaged model the help speaks of
    if "--kbps" in options and verb != "report":
        rates = [f"{kbps:g}" for kbps in config.target_bandwidths]
        assert f"{', '.join(rates[:-1])} or {rates[-1]}); default: the highest" in text
    if "--chunk-seconds" in options:
        assert f"(default: {FILE_CHUNK_FRAMES / config.frame_rate:g} for ESC)" in text
    if verb in ("encode", "roundtrip"):  # every input format named is read (ogg: Vorbis and Opus)
        assert "audio file (wav, flac, ogg/opus, mp3; any rate, mono or multichannel)" in text
        noise = np.random.default_rng(0).uniform(-0.3, 0.3, (4800, 2))
        for name, subtype in [("a.wav", None), ("a.flac", None), ("a.ogg", "VORBIS"), ("a.opus", "OPUS"),
                              ("a.mp3", "MPEG_LAYER_III")]:  # fmt: skip
            file_format = "OGG" if name.endswith(".opus") else None
            sf.write(str(tmp_path / name), noise, 48000, subtype=subtype, format=file_format)
            source = AudioSource(tmp_path / name)
            assert source.channels == 2 and np.concatenate(list(source.blocks())).size > 0, name
    if verb in ("decode", "roundtrip"):  # every output format named is written
        assert "audio file to write (.wav, .flac or .ogg)" in text
        for suffix in (".wav", ".flac", ".ogg"):
            with open_audio_sink(tmp_path / f"out{suffix}") as sink:
                sink.write(np.zeros(1600, dtype=np.float32))
            assert sf.info(str(tmp_path / f"out{suffix}")).frames == 1600, suffix
    if "--conceal" in options:  # the CLI names the methods without importing them (torch): the same ones
        from esc_hf import cli
        from esc_hf.codec.concealment import CONCEAL_METHODS

        assert cli.CONCEAL_METHODS == CONCEAL_METHODS and "{silence,repeat,interpolate}" in text
    if "--frames-per-packet" in options:
        from esc_hf import cli
        from esc_hf.codec.bitstream import DEFAULT_FRAMES_PER_PACKET

        assert cli.DEFAULT_FRAMES_PER_PACKET == DEFAULT_FRAMES_PER_PACKET
    if verb == "report":
        assert f"(default: {','.join(f'{k:g}' for k in DEFAULT_KBPS)})" in text
        named = text.split("other codecs, comma-separated: ")[1].split(" (default: ")[0]
        assert set(named.split(", ")) == set(all_codecs())
        assert f"(default: {','.join(DEFAULT_CODECS)}; an empty string for none)" in text


def test_missing_packets_decode_with_conceal_and_simulate_loss(tmp_path, capsys):
    """A file that lost packets is an error for `esc decode`, and decodes to its full length with `--conceal`;
    `esc simulate-loss` drops a seeded share of packets and says how many."""
    from esc_hf.codec.bitstream import iter_packet_bytes

    esc = tmp_path / "a.esc"
    assert run_esc("encode", SPEECH[0], esc, "--kbps", "3", "--frames-per-packet", "1", cwd=tmp_path, capsys=capsys)[0] == 0
    with open(esc, "rb") as handle:
        parts = list(iter_packet_bytes(handle))
    lossy = tmp_path / "lossy.esc"
    lossy.write_bytes(parts[0].to_bytes() + b"".join(data for i, (_, data) in enumerate(parts[1:]) if i % 7 != 3))
    code, _, err = run_esc("decode", lossy, tmp_path / "x.wav", cwd=tmp_path, capsys=capsys)
    assert code == 1 and "was expected (a packet was lost" in err and not (tmp_path / "x.wav").exists()
    code, _, _ = run_esc("decode", lossy, tmp_path / "x.wav", "--conceal", "repeat", cwd=tmp_path, capsys=capsys)
    original = sf.read(str(SPEECH[0]))[0]
    assert code == 0 and sf.read(str(tmp_path / "x.wav"))[0].shape == original.shape
    code, out, _ = run_esc("simulate-loss", esc, tmp_path / "y.wav", "--loss", "20%", "--burst", "3", cwd=tmp_path,
                           capsys=capsys)  # fmt: skip
    count = len(parts) - 1
    assert code == 0 and f"of {count} packets of 20 ms" in out and "concealed by interpolate" in out
    assert sf.read(str(tmp_path / "y.wav"))[0].shape == original.shape
    for bad, message in ((["--loss", "1.5"], "below 100 %"), (["--loss", "ten"], "a number"),
                         (["--loss", "5%", "--burst", "0.5"], "--burst")):  # fmt: skip
        code, _, err = run_esc("simulate-loss", esc, tmp_path / "z.wav", *bad, cwd=tmp_path, capsys=capsys)
        assert code == 1 and message in err and not (tmp_path / "z.wav").exists()


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    esc = tmp_path / "good.esc"
    assert main(["encode", str(SPEECH[0]), str(esc), "--kbps", "3"]) == 0
    data = esc.read_bytes()
    (tmp_path / "flipped.esc").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    (tmp_path / "short.esc").write_bytes(data[:-10])
    (tmp_path / "header.esc").write_bytes(data[:20])
    (tmp_path / "text.esc").write_text("hello")
    other = copy.deepcopy(load_model(None))
    with torch.no_grad():
        other.quantizers[0].vqs[0].embedding.weight.mul_(2)
    other.save_pretrained(tmp_path / "other_model")
    cases = [
        (["roundtrip", "missing.wav", "o.wav"], "no such file: missing.wav"),
        (["encode", "missing.wav", "o.esc"], "no such file: missing.wav"),
        (["encode", "bad.wav", "o.esc"], "cannot read bad.wav as audio"),
        (["roundtrip", str(SPEECH[0]), "o.wav", "--kbps", "5"], "bandwidth 5.0 kbps is not supported"),
        (["encode", str(SPEECH[0]), "o.esc", "--kbps", "10"], "bandwidth 10.0 kbps is not supported"),
        (["roundtrip", str(SPEECH[0]), "o.mp9"], "unknown audio format 'MP9'"),
        (["decode", "missing.esc", "o.wav"], "no such file: missing.esc"),
        (["decode", "flipped.esc", "o.wav"], "flipped.esc: packet 0 (code frame 0), layer 0 is corrupt (CRC mismatch)"),
        (["decode", "short.esc", "o.wav"], "short.esc: packet 4 (code frame 200), layer 1 is cut off"),
        (["decode", "header.esc", "o.wav"], "header.esc: the header is cut off after 20 of 57 bytes"),
        (["decode", "text.esc", "o.wav"], "text.esc: not an ESC bitstream"),
        (["info", "flipped.esc"], "flipped.esc: packet 0 (code frame 0), layer 0 is corrupt"),
        (["info", "missing.esc"], "no such file: missing.esc"),
        (["decode", "good.esc", "o.wav", "--model", "other_model"], "other codebooks"),
        (["decode", "good.esc", "o.wav", "--model", "no_such_model"], "cannot load model 'no_such_model'"),
    ]
    for i, (args, message) in enumerate(cases):
        code, _, err = run_esc(*args, cwd=tmp_path, capsys=None if i in (0, 7) else capsys)
        assert code == 1, (args, err)
        assert err.startswith("esc: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert message in err, (message, err)
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*")), "nothing half-written is left"


def test_decode_with_the_wrong_default_model_says_what_to_do(tmp_path, capsys):
    model = copy.deepcopy(load_model(None))
    with torch.no_grad():
        model.quantizers[0].vqs[0].embedding.weight.mul_(2)
    model.save_pretrained(tmp_path / "mine")
    assert main(["encode", str(SPEECH[0]), str(tmp_path / "x.esc"), "--model", str(tmp_path / "mine")]) == 0
    code, _, err = run_esc("decode", "x.esc", "x.wav", cwd=tmp_path, capsys=capsys)
    assert code == 1 and "pass the model that encoded it with --model" in err
    code, out, _ = run_esc("info", "x.esc", cwd=tmp_path, capsys=capsys)
    assert code == 0 and "NOT made by the packaged default model" in out
    assert run_esc("decode", "x.esc", "x.wav", "--model", "mine", cwd=tmp_path, capsys=capsys)[0] == 0


def test_file_lengths_and_sizes(tmp_path):
    """Every length comes back exactly in both formats; a v1 file is the nominal bitrate plus the documented
    framing, and v2 (entropy coded with the packaged model's tables) is smaller on speech."""
    model = load_model(None)
    speech = sf.read(str(SPEECH[0]), dtype="float32")[0]
    for length in (1, 239, 240, 241, 320, 16000, 48000):
        sf.write(str(tmp_path / "in.wav"), speech[:length], 16000, subtype="FLOAT")
        sizes = {}
        for form in ("v1", "v2"):
            esc = tmp_path / f"{form}.esc"
            assert main(["encode", str(tmp_path / "in.wav"), str(esc), "--kbps", "1.5", "--format", form]) == 0
            assert main(["decode", str(esc), str(tmp_path / "x.wav")]) == 0
            assert sf.info(str(tmp_path / "x.wav")).frames == length
            sizes[form] = esc.stat().st_size
        frames = model.config.code_frames_for_samples(length)
        packets = -(-frames // 50)
        assert sizes["v1"] == HEADER_SIZES[1] + packets * 8 + 2 + sum(
            -(-min(50, frames - s) * 30 // 8) for s in range(0, frames, 50)
        )
        if length >= 16000:  # 1 s or more: the tables pay for the v2 header's 9 more bytes
            assert sizes["v2"] < 0.9 * sizes["v1"], sizes


def test_output_that_is_the_input_is_refused(tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(str(wav), sf.read(str(SPEECH[0]), dtype="float32")[0][:8000], 16000)
    original = wav.read_bytes()
    (tmp_path / "link.wav").hardlink_to(wav)
    for args in (["encode", "a.wav", "a.wav"], ["roundtrip", "a.wav", "a.wav"], ["roundtrip", "a.wav", "link.wav"],
                 ["roundtrip", "a.wav", "./a.wav"]):  # fmt: skip
        code, _, err = run_esc(*args, cwd=tmp_path, capsys=capsys)
        assert code == 1 and "is the input file; choose another output name" in err, (args, err)
    assert main(["encode", str(wav), str(tmp_path / "a.esc"), "--kbps", "1.5"]) == 0
    code, _, err = run_esc("decode", "a.esc", "a.esc", cwd=tmp_path, capsys=capsys)
    assert code == 1 and "is the input file" in err
    assert wav.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["a.esc", "a.wav", "link.wav"]
    code, _, err = run_esc("report", ".", ".", cwd=tmp_path, capsys=capsys)
    assert code == 1 and "would replace the clips' folder" in err


def test_full_disk_is_one_line(tmp_path):
    """A write that fails for lack of space (here: a file size limit, which fails writes the same way) is one line
    and leaves no temporary behind."""
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us

    assert main(["encode", str(SPEECH[1]), str(tmp_path / "a.esc"), "--kbps", "9"]) == 0
    for args in (["decode", "a.esc", "out.wav"], ["encode", str(SPEECH[1]), "out.esc"]):
        result = subprocess.run([sys.executable, "-B", "-m", "esc_hf", *args], capture_output=True, text=True,
                                cwd=tmp_path, preexec_fn=limit_file_size)  # fmt: skip
        assert result.returncode == 1 and result.stderr.startswith("esc: error: "), result.stderr
        assert "cannot write" in result.stderr or "File too large" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Exception ignored" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.esc"]


def test_help_and_argument_errors_do_not_load_the_model():
    """`esc --help` and a mistyped option answer without importing torch or transformers (seconds of imports)."""
    code = (
        "import sys; sys.argv = ['esc']\n"
        "from esc_hf.cli import main\n"
        "for argv in (['--help'], ['encode', '--help'], ['encode', 'a.wav', 'b.esc', '--kbps', 'x']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'soundfile') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    assert "usage: esc encode" in result.stdout and "invalid float value: 'x'" in result.stderr
