"""The entropy model of `.esc` v2 (esc_hf/codec/entropy.py): exact round trips, its files, and who may use it."""

import copy
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_hf.codec.bitstream import codebook_fingerprint
from esc_hf.codec.entropy import CONTEXTS, ENTROPY_MODEL_FILE, EntropyModel, EntropyModelError, load_entropy_model
from esc_hf.codec.loading import load_model


@pytest.fixture(scope="module")
def model():
    return load_model(None)


@pytest.fixture(scope="module")
def speech_codes(model):
    """Codes of the two real test clips at 9 kbps, `(6, 3, frames)` each."""
    out = []
    for path in SPEECH:
        audio = torch.from_numpy(sf.read(str(path), dtype="float32")[0])
        out.append(model.encode(audio[None, None]).audio_codes[0].numpy())
    return out


def test_the_packaged_model_ships_tables_fitted_on_its_codes(model, speech_codes):
    shipped = load_entropy_model(model)
    assert shipped is not None, f"the packaged model's folder must hold {ENTROPY_MODEL_FILE}"
    shipped.check_model(model)
    assert shipped.contexts[0] != "coarser" and set(shipped.contexts) <= set(CONTEXTS)
    # On speech it never saw, fewer bits than the 10 a code costs bit-packed, most of all in the coarse stream.
    bits = np.concatenate([shipped.bits(c).reshape(6, -1) for c in speech_codes], axis=1).mean(axis=1)
    assert bits[0] < 8.5 and bits.mean() < 9.5, bits


@pytest.mark.parametrize("context", CONTEXTS)
def test_every_context_round_trips_exactly(speech_codes, context):
    fitted = EntropyModel.fit(speech_codes[:1], context, 1024, num_buckets=16, prior_weight=16.0)
    codes = speech_codes[1]
    rng = np.random.default_rng(0)
    for frames in (1, 2, 7, 50):
        start = int(rng.integers(0, codes.shape[-1] - frames))
        part = codes[..., start : start + frames]
        for stream in range(6):
            coarser = part[stream - 1] if stream else None
            data = fitted.encode_layer(stream, part[stream], coarser)
            assert len(data) >= 1
            assert np.array_equal(fitted.decode_layer(stream, data, frames, coarser), part[stream])
    # Uniform random codes, the worst case for the tables, come back exactly too.
    noise = rng.integers(0, 1024, (3, 50))
    data = fitted.encode_layer(1, noise, noise)
    assert np.array_equal(fitted.decode_layer(1, data, 50, noise), noise)


def test_real_bytes_are_close_to_the_ideal_code_length(model, speech_codes):
    shipped = load_entropy_model(model)
    codes = speech_codes[1][..., :50]
    ideal = shipped.bits(codes).sum(axis=(1, 2)) / 8
    for stream in range(6):
        data = shipped.encode_layer(stream, codes[stream], codes[stream - 1] if stream else None)
        assert ideal[stream] - 1 <= len(data) <= ideal[stream] + 4, (stream, len(data), ideal[stream])


def test_a_stream_that_needs_the_coarser_codes_says_so(speech_codes):
    fitted = EntropyModel.fit(speech_codes, "coarser", 1024, num_buckets=4)
    with pytest.raises(ValueError, match="stream 0's codes, which were not given"):
        fitted.encode_layer(1, speech_codes[0][1])
    with pytest.raises(ValueError, match="outside the entropy model's 6 streams"):
        fitted.encode_layer(6, speech_codes[0][1])
    with pytest.raises(EntropyModelError, match="stream 0 has no coarser stream"):
        EntropyModel.fit(speech_codes, ("coarser",) * 6, 1024)


FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(min_size=0, max_size=64), frames=st.integers(1, 40), stream=st.integers(0, 5))
def test_any_bytes_decode_to_valid_codes_or_a_value_error(speech_codes, data, frames, stream):
    fitted = _fitted_previous(speech_codes)
    coarser = np.zeros((3, frames), np.int64)
    try:
        codes = fitted.decode_layer(stream, data, frames, coarser)
    except ValueError as error:
        assert "cannot be decoded" in str(error)
        return
    assert codes.shape == (3, frames) and codes.min() >= 0 and codes.max() < 1024


_CACHE = {}


def _fitted_previous(speech_codes):
    if "previous" not in _CACHE:
        _CACHE["previous"] = EntropyModel.fit(speech_codes, ("previous", "coarser", "coarser", "none", "none", "none"),
                                              1024, num_buckets=16)  # fmt: skip
    return _CACHE["previous"]


def test_save_and_load_keep_the_tables_and_their_fingerprint(speech_codes, tmp_path):
    fitted = _fitted_previous(speech_codes)
    fitted.save(tmp_path / "tables.safetensors")
    loaded = EntropyModel.load(tmp_path / "tables.safetensors")
    assert loaded.fingerprint == fitted.fingerprint and loaded.contexts == fitted.contexts
    codes = speech_codes[0][..., :30]
    assert loaded.encode_layer(1, codes[1], codes[0]) == fitted.encode_layer(1, codes[1], codes[0])
    other = EntropyModel.fit(speech_codes[:1], fitted.contexts, 1024, num_buckets=16)
    assert other.fingerprint != fitted.fingerprint


def _rewrite(path, tensors=None, metadata=None):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), "np") as handle:
        old_tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        old_metadata = handle.metadata()
    save_file({**old_tensors, **(tensors or {})}, str(path), {**old_metadata, **(metadata or {})})


@pytest.mark.parametrize(
    "damage, message",
    [
        ("cut", "cannot read the entropy model"),
        ({"metadata": {"format": "something-else"}}, "not an ESC entropy model"),
        ({"metadata": {"contexts": "none,none"}}, "holds tensors"),
        ({"metadata": {"contexts": "coarser,none,none,none,none,none"}}, "stream 0 has no coarser stream"),
        ({"metadata": {"prior_weight": "nan"}}, "prior weight must be positive"),
        ({"tensors": {"buckets": np.full((6, 3, 1024), 99, np.int32)}}, r"buckets must lie in \[0, 16\)"),
        ({"tensors": {"unigram": -np.ones((6, 3, 1024), np.int32)}}, "unigram counts must be integers"),
        ({"tensors": {"unigram": np.ones((6, 3, 1024), np.float32)}}, "expected int32"),
        ({"tensors": {"context_counts": np.ones((6, 3, 16, 512), np.int32)}}, "context counts must have shape"),
    ],
)
def test_a_damaged_tables_file_is_named(speech_codes, tmp_path, damage, message):
    path = tmp_path / "tables.safetensors"
    _fitted_previous(speech_codes).save(path)
    if damage == "cut":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        _rewrite(path, **damage)
    with pytest.raises(EntropyModelError, match=message):
        EntropyModel.load(path)


def test_tables_of_another_checkpoint_are_refused(model, tmp_path):
    shipped = load_entropy_model(model)
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.quantizers[0].vqs[0].embedding.weight[3, 0] += 1e-3
    with pytest.raises(EntropyModelError, match="fitted on another checkpoint's codes"):
        shipped.check_model(retrained)
    # A saved copy of a model carries its tables along, and they load with it.
    retrained.save_pretrained(tmp_path / "copy")
    shipped.save(tmp_path / "copy" / ENTROPY_MODEL_FILE)
    with pytest.raises(EntropyModelError, match="another checkpoint"):
        load_entropy_model(load_model(tmp_path / "copy"))
    assert json.loads((tmp_path / "copy" / "config.json").read_text())
    assert codebook_fingerprint(retrained) != shipped.codebook_fingerprint


def test_golden_bytes():
    """The bytes of a layer are integer arithmetic on tables computed the same way everywhere: these were written
    by the first version of the coder and must not change (a file written on one machine decodes on any other,
    and a new release of `constriction` that changes them needs a new format version)."""
    v = np.arange(1024)
    unigram = np.stack([(v * 7919 + 13 * s) % 1000 for s in range(2)])[:, None, :].repeat(3, axis=1)
    counts = ((v[None, :] * 31 + v[:, None] * 17) % 200)[:16][None, None].repeat(2, 0).repeat(3, 1)
    buckets = (v % 16)[None, None].repeat(2, 0).repeat(3, 1)
    tables = EntropyModel(("previous", "coarser"), unigram, counts, buckets, 64.0, b"")
    codes = (np.arange(36).reshape(3, 12) * 97) % 1024
    golden = {
        0: "54020000d0bde96d553329cadc3f496c60ac542c3e28e6089efb88a3524f16c811db8260006ae98860db36e7fb19edbe",
        1: "4115af45dddccbdbc60637665aedf03335ba50b7198cfbaba7bd65ac102b78c3ab8606ef94c530dbe5c0c278f93e62fa01e8d67e",
    }
    layers = {0: (codes, None), 1: (codes[::-1].copy(), codes)}
    assert tables.fingerprint.hex() == "ec2b6217d4859c51"
    for stream, (layer, coarser) in layers.items():
        assert tables.encode_layer(stream, layer, coarser).hex() == golden[stream]
        assert np.array_equal(tables.decode_layer(stream, bytes.fromhex(golden[stream]), 12, coarser), layer)
