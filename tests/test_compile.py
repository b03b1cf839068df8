"""torch.compile of encode/decode: one graph for the network, and the same results as eager mode."""

import torch
import torch._dynamo

from conftest import get_fixture, three_scale_model


def test_compile_captures_the_network_in_one_graph_and_matches_eager():
    torch._dynamo.reset()
    model = three_scale_model()
    waveform = get_fixture("swin_csrvq").inputs["waveform"][:, None]
    # fullgraph=True fails on any graph break. aot_eager runs the captured graph through AOTAutograd without code
    # generation: it checks what inductor would compile in seconds; the benchmark times inductor on ESC-Base.
    encode = torch.compile(model.encode, backend="aot_eager", fullgraph=True)
    decode = torch.compile(model.decode_stft, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        codes = encode(waveform, num_streams=3).audio_codes
        # Exact: every codebook decision on this input is ≥ 1.2e-4 (squared distance) from a tie.
        assert torch.equal(codes, model.encode(waveform, num_streams=3).audio_codes)
        torch.testing.assert_close(decode(codes), model.decode_stft(codes), atol=1e-5, rtol=1e-5)
        # decode() itself breaks only where it checks the code values (a data-dependent ValueError), before the
        # network.
        explanation = torch._dynamo.explain(model.decode)(codes)
    frames = [[frame.name for frame in b.user_stack] for b in explanation.break_reasons]
    assert frames and all("_check_codes" in f[-1] for f in frames), frames
    torch._dynamo.reset()
