"""The paper's objective against the authors' loss values and training gradients."""

import pytest
import torch

from conftest import get_fixture
from esc_hf.training import EscLoss


@pytest.mark.parametrize("name", ["swin_csrvq", "conv_rvq", "esc_base_random"])
def test_mel_and_stft_losses_match_authors(name):
    fixture = get_fixture(name)
    model, loss = fixture.model(), EscLoss()
    waveform = fixture.inputs["waveform"]
    with torch.no_grad():
        terms = loss(waveform, model(waveform, num_streams=6))
    torch.testing.assert_close(terms["mel"], fixture.outputs["loss_mel_6"], rtol=1e-4, atol=0)
    torch.testing.assert_close(terms["stft"], fixture.outputs["loss_stft_6"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("tag,kwargs", [("n3", {"num_streams": 3}), ("freeze", {"bypass_quantizer": True})])
def test_training_loss_and_gradient_norm_match_authors(tiny, tag, kwargs):
    model = tiny.model().train()
    waveform = tiny.inputs["waveform"]
    terms = EscLoss()(waveform, model(waveform, **kwargs))
    terms["total"].backward()
    grad_norm = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None))
    torch.testing.assert_close(terms["total"].reshape(1), tiny.outputs[f"train_{tag}_loss_total"], rtol=1e-4, atol=0)
    torch.testing.assert_close(
        grad_norm.float().reshape(1), tiny.outputs[f"train_{tag}_grad_norm"], rtol=1e-3, atol=0
    )
