"""Dead-code revival: codebook entries that no training input chose for a window of steps are re-initialised from
recent encoder outputs, so that a collapsed codebook comes back into use.

This is what EnCodec's and DAC's reference trainers do (and k-means re-seeding does): an entry nobody picks gets no
gradient from the codebook loss and stays dead forever. ESC's codebooks stay as the paper has them (factorised,
looked up on L2-normalised vectors, dequantised to their raw rows); a revived entry is set to one projected-down
input vector `z_e` that its codebook saw in the last steps, raw, so that it starts where the encoder's outputs
lie. Only the training loop changes: the model, its inference and its parity with the authors' code do not.
"""

import contextlib

import torch
import torch.nn as nn

from ..models.esc.modeling_esc import EscCodebook


class DeadCodeReviver:
    """Watches every [`EscCodebook`] of `model` in training forwards and, each `window` steps, revives its entries
    that were not chosen once in the window.

    `observe()` is a context manager around the training forward (evaluation forwards are not counted);
    `maybe_revive(step, optimizer)` after each optimizer step. With several processes the counts are summed and the
    recent inputs gathered across them (`accelerator`), and every process draws the same replacements. The counts
    and recent inputs are part of the training state (`state_dict`), so a resumed run revives exactly as an
    uninterrupted one.
    """

    def __init__(self, model: nn.Module, window: int, seed: int, buffer_size: int = 4096, accelerator=None):
        if window < 1 or buffer_size < 1:
            raise ValueError("the revival window and buffer size must be at least 1")
        self.window, self.seed, self.buffer_size, self.accelerator = window, seed, buffer_size, accelerator
        self.codebooks = [m for m in model.modules() if isinstance(m, EscCodebook)]
        if not self.codebooks:
            raise ValueError("the model has no codebooks to revive")
        self.counts = [torch.zeros(cb.embedding.num_embeddings, dtype=torch.long) for cb in self.codebooks]
        self.recent = [torch.zeros(0, cb.embedding.embedding_dim) for cb in self.codebooks]
        self._watching = False
        self.revived_total = 0  # entries revived since the run began
        for index, codebook in enumerate(self.codebooks):
            codebook.register_forward_hook(self._hook(index))

    def _hook(self, index: int):
        def record(module, inputs, outputs):
            if not self._watching:
                return
            z, codes = inputs[0].detach(), outputs[1].detach()
            self.counts[index] += torch.bincount(codes.reshape(-1).cpu(), minlength=self.counts[index].numel())
            vectors = torch.cat([self.recent[index], z.reshape(-1, z.shape[-1]).float().cpu()])
            self.recent[index] = vectors[-self.buffer_size :]

        return record

    @contextlib.contextmanager
    def observe(self):
        """Count the codes and keep the inputs of the forwards run inside this block."""
        self._watching = True
        try:
            yield
        finally:
            self._watching = False

    def _reduced(self, counts: torch.Tensor, recent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = self.accelerator
        if acc is None or acc.num_processes == 1:
            return counts, recent
        counts = acc.reduce(counts.to(acc.device), reduction="sum").cpu()
        # Buffers are equally long on every process (same batch size, same steps), as gather needs.
        return counts, acc.gather(recent.to(acc.device)).cpu()

    @torch.no_grad()
    def maybe_revive(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, int]:
        """At a multiple of `window`: re-initialise every entry unused since the last revival from distinct recent
        inputs of its codebook (drawn with a generator seeded by the seed, the step and the codebook), clear its
        AdamW moments, and start a new window. Returns the entries revived per codebook (empty between windows)."""
        if step % self.window:
            return {}
        revived = {}
        for index, codebook in enumerate(self.codebooks):
            counts, recent = self._reduced(self.counts[index], self.recent[index])
            dead = (counts == 0).nonzero()[:, 0]
            self.counts[index].zero_()
            if not dead.numel() or not recent.shape[0]:
                continue
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1_009 + index)
            if recent.shape[0] >= dead.numel():
                pick = torch.randperm(recent.shape[0], generator=generator)[: dead.numel()]
            else:
                pick = torch.randint(recent.shape[0], (dead.numel(),), generator=generator)
            weight = codebook.embedding.weight
            weight[dead.to(weight.device)] = recent[pick].to(weight.device, weight.dtype)
            state = optimizer.state.get(weight, {})
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][dead.to(weight.device)] = 0
            revived[f"codebook_{index}"] = int(dead.numel())
        self.revived_total += sum(revived.values())
        return revived

    def state_dict(self) -> dict:
        return {"counts": [c.clone() for c in self.counts], "recent": [r.clone() for r in self.recent],
                "revived_total": torch.tensor(self.revived_total)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["counts"]) != len(self.codebooks) or len(state["recent"]) != len(self.codebooks):
            raise ValueError("the saved revival state is for another model")
        self.counts = [c.clone().long() for c in state["counts"]]
        self.recent = [r.clone().float() for r in state["recent"]]
        self.revived_total = int(state["revived_total"])
