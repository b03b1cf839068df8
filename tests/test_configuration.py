import pytest
import torch

from esc_hf import ESC_VARIANTS, EscConfig, EscModel


@pytest.mark.parametrize(
    "variant,parameters", [("esc-base", 8_736_581), ("esc-base-adv", 8_386_373), ("esc-large", 15_580_931)]
)
def test_published_variants_have_the_papers_parameter_counts(variant, parameters):
    with torch.device("meta"):
        model = EscModel(EscConfig.from_variant(variant))
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_defaults_are_esc_base():
    config = EscConfig()
    for key, value in ESC_VARIANTS["esc-base"].items():
        assert getattr(config, key) == value
    assert (config.n_fft, config.win_length, config.hop_length) == (382, 320, 80)
    assert config.frame_rate == 50 and config.bitrate_per_stream == 1500
    assert config.bottleneck_frequency == 2


def test_bandwidth_helpers():
    config = EscConfig()
    assert [config.num_streams_for_bandwidth(k) for k in (1.5, 3, 4.5, 6, 7.5, 9)] == [1, 2, 3, 4, 5, 6]
    assert config.bandwidth_for_num_streams(4) == 6.0
    for bad in (0, 1.0, 5, 10.5, float("nan")):
        with pytest.raises(ValueError, match="not supported"):
            config.num_streams_for_bandwidth(bad)
    with pytest.raises(ValueError, match="between 1 and 6"):
        config.bandwidth_for_num_streams(7)


def test_json_round_trip(tmp_path):
    config = EscConfig.from_variant("esc-large", backbone="conv")
    config.save_pretrained(tmp_path)
    loaded = EscConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_heads": [4, 6, 12, 24, 24]}, "does not divide"),
        ({"num_heads": [3, 6, 12, 24]}, "one entry per Swin stage"),
        ({"codebook_dims": [8, 8]}, "one entry per stream"),
        ({"backbone": "lstm"}, "backbone"),
        ({"quantizer": "fsq"}, "quantizer"),
        ({"codebook_size": 1000}, "power of two"),
        ({"num_frequency_bins": 193}, "multiple of the frequency patch"),
        ({"num_frequency_bins": 144}, "halve exactly"),
        ({"quantizer": "rvq", "codebook_dims": [8, 8, 8, 8, 8, 4]}, "shares one codebook dim"),
        ({"num_streams": 4, "codebook_dims": [8] * 4}, "num_streams must equal"),
        ({"patch_size": [3]}, "pairs"),
        ({"window_length_ms": 40}, "no longer than the FFT size"),
    ],
)
def test_invalid_configs_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EscConfig(**kwargs)


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown ESC variant"):
        EscConfig.from_variant("esc-huge")
