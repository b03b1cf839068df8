"""Dead-code revival (esc_hf/training/revival.py): dead codebook entries come back into use, live ones and the
model's inference are left alone."""

import pytest
import torch

from conftest import get_fixture
from esc_hf.training.revival import DeadCodeReviver


def _forced_dead(model, dead: int):
    """Stream 0's first codebook with entries 1 … `dead` equal to entry 0: ties go to the lowest index, so they are
    never chosen."""
    codebook = model.quantizers[0].vqs[0]
    with torch.no_grad():
        codebook.embedding.weight[1 : dead + 1] = codebook.embedding.weight[0]
    return codebook


def _chosen(model, codebook, audio) -> torch.Tensor:
    """Which entries of `codebook` the codec chooses for `audio` (an encoding in eval mode)."""
    chosen = []
    handle = codebook.register_forward_hook(lambda m, i, o: chosen.append(o[1].reshape(-1)))
    try:
        model.train()  # the codebooks' forward (the training path) runs in train mode
        with torch.no_grad():
            model(audio)
    finally:
        handle.remove()
    return torch.cat(chosen).unique()


def test_forced_dead_entries_come_back_into_use():
    model = get_fixture("swin_csrvq").model().train()
    audio = 0.1 * torch.randn(4, 1, 80 * (4 * 25 - 1), generator=torch.Generator().manual_seed(0))
    codebook = _forced_dead(model, dead=20)
    forced = set(range(1, 21))
    assert not forced & set(_chosen(model, codebook, audio).tolist())
    reviver = DeadCodeReviver(model, window=1, seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    with reviver.observe():
        model(audio).loss.backward()
    optimizer.step()
    with torch.no_grad():
        model(audio)  # outside observe(): not counted, as evaluation forwards are not
    assert reviver.counts[reviver.codebooks.index(codebook)].sum() == 4 * 25  # 4 items of 25 code frames
    revived = reviver.maybe_revive(step=1, optimizer=optimizer)
    assert revived[f"codebook_{reviver.codebooks.index(codebook)}"] >= len(forced)
    assert reviver.revived_total == sum(revived.values())
    # Each revived entry is one of the inputs its codebook saw before the optimizer step, so most of them are chosen
    # again: not all, since the encoder has moved since and ~60 of the 64 entries were revived at once and compete
    # (15 of the 20 forced ones were back in use here; none before).
    back = forced & set(_chosen(model, codebook, audio).tolist())
    assert len(back) >= len(forced) // 2, sorted(back)
    state = optimizer.state[codebook.embedding.weight]
    assert not state["exp_avg"][1:21].any() and not state["exp_avg_sq"][1:21].any()


def test_live_entries_and_off_window_steps_are_left_alone():
    model = get_fixture("swin_csrvq").model().train()
    audio = 0.1 * torch.randn(2, 1, 80 * (4 * 25 - 1), generator=torch.Generator().manual_seed(1))
    reviver = DeadCodeReviver(model, window=2, seed=0)
    optimizer = torch.optim.AdamW(model.parameters())
    with reviver.observe():
        model(audio)
    before = {i: cb.embedding.weight.detach().clone() for i, cb in enumerate(reviver.codebooks)}
    assert reviver.maybe_revive(step=1, optimizer=optimizer) == {}  # not the end of a window
    used = [counts > 0 for counts in reviver.counts]
    reviver.maybe_revive(step=2, optimizer=optimizer)
    for i, codebook in enumerate(reviver.codebooks):
        assert torch.equal(codebook.embedding.weight[used[i]], before[i][used[i]])
        assert not torch.equal(codebook.embedding.weight[~used[i]], before[i][~used[i]]) or used[i].all()
    assert all(not counts.any() for counts in reviver.counts)  # a new window starts


def test_bad_settings_are_refused():
    model = get_fixture("swin_csrvq").model()
    with pytest.raises(ValueError, match="at least 1"):
        DeadCodeReviver(model, window=0, seed=0)
    with pytest.raises(ValueError, match="no codebooks"):
        DeadCodeReviver(torch.nn.Linear(2, 2), window=1, seed=0)
    reviver = DeadCodeReviver(model, window=1, seed=0)
    with pytest.raises(ValueError, match="another model"):
        reviver.load_state_dict({"counts": [], "recent": [], "revived_total": torch.tensor(0)})
