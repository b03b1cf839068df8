"""ESC codes as one token sequence for speech language models.

Flattening (frame-major): code frame 0's tokens come first, then frame 1's, …; within a frame, stream 0's three
groups, then stream 1's, and so on. Each (stream, group) slot has its own block of `codebook_size` ids:

    token = offset + (stream * group_size + group) * codebook_size + code

so one vocabulary of `num_streams * group_size * codebook_size` ids (18,432 for ESC-Base, the packaged model; 1,152 for the
tiny model) covers every bitrate, and a token means the same at 1.5 kbps as at 9 kbps. `offset` shifts the block
past an existing vocabulary (a text LM's, say). A sequence at n streams has `n * group_size` tokens per code frame
(3 per 20 ms per stream: 150 tokens/s per 1.5 kbps).
"""

import torch


def vocab_size(config) -> int:
    """Token ids that ESC codes use (without `offset`): num_streams × group_size × codebook_size."""
    return config.num_streams * config.group_size * config.codebook_size


def _slot_offsets(config, num_streams: int, device) -> torch.Tensor:
    """`(num_streams * group_size,)` first id of each (stream, group) slot, in the order of a frame."""
    return torch.arange(num_streams * config.group_size, device=device) * config.codebook_size


def codes_to_tokens(codes: torch.Tensor, config, offset: int = 0) -> torch.LongTensor:
    """Codes `(batch, streams, groups, frames)` → tokens `(batch, frames * streams * groups)` (see module doc)."""
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise ValueError("codes must be an integer torch.Tensor of shape (batch, streams, groups, frames)")
    if codes.dim() != 4 or codes.shape[2] != config.group_size or not 1 <= codes.shape[1] <= config.num_streams:
        raise ValueError(
            f"codes must have shape (batch, 1…{config.num_streams} streams, {config.group_size} groups, frames), "
            "got "
            f"{tuple(codes.shape)}"
        )
    if codes.numel() and (codes.min() < 0 or codes.max() >= config.codebook_size):
        raise ValueError(f"codes must lie in [0, {config.codebook_size})")
    if offset < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    batch, streams, groups, frames = codes.shape
    per_frame = codes.long().permute(0, 3, 1, 2).reshape(batch, frames, streams * groups)
    tokens = per_frame + _slot_offsets(config, streams, codes.device) + offset
    return tokens.reshape(batch, frames * streams * groups)


def tokens_to_codes(tokens: torch.Tensor, config, num_streams: int | None = None, offset: int = 0) -> torch.LongTensor:
    """Tokens `(batch, length)` (or `(length,)`) → codes `(batch, streams, groups, frames)`, exactly inverting
    `codes_to_tokens`. `num_streams` is read from the tokens when not given. A token in the wrong slot (a model
    that generated an id of another stream or group, an unfinished frame) is a `ValueError` naming its position."""
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError("tokens must be an integer torch.Tensor of shape (batch, length)")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape (batch, length) with length > 0, got {tuple(tokens.shape)}")
    groups, size = config.group_size, config.codebook_size
    local = tokens.long() - offset
    if local.min() < 0 or local.max() >= vocab_size(config):
        bad = ((local < 0) | (local >= vocab_size(config))).nonzero()[0].tolist()
        raise ValueError(
            f"token {tokens[bad[0], bad[1]].item()} at (item {bad[0]}, position {bad[1]}) is not an ESC token "
            f"(ids {offset}…{offset + vocab_size(config) - 1})"
        )
    slots = local // size
    if num_streams is None:
        # A frame ends where slot 0 comes round again; a single frame fills the whole sequence.
        restarts = (slots[0, 1:] == 0).nonzero()
        per_frame = restarts[0, 0].item() + 1 if len(restarts) else tokens.shape[1]
        if per_frame % groups:
            raise ValueError(f"the first frame has {per_frame} tokens, not a multiple of {groups} groups")
        num_streams = per_frame // groups
    if not 1 <= num_streams <= config.num_streams:
        raise ValueError(f"num_streams must be from 1 to {config.num_streams}, got {num_streams}")
    per_frame = num_streams * groups
    if tokens.shape[1] % per_frame:
        raise ValueError(
            f"{tokens.shape[1]} tokens are not whole frames of {per_frame} ({num_streams} streams × {groups} groups)"
        )
    expected = torch.arange(per_frame, device=tokens.device).repeat(tokens.shape[1] // per_frame)
    wrong = (slots != expected).nonzero()
    if len(wrong):
        item, position = wrong[0].tolist()
        stream, group = divmod(expected[position].item(), groups)
        found_stream, found_group = divmod(slots[item, position].item(), groups)
        raise ValueError(
            f"token {tokens[item, position].item()} at (item {item}, position {position}) is a code of stream "
            f"{found_stream}, group {found_group}, but that position holds stream {stream}, group {group}"
        )
    codes = (local - expected * size).reshape(tokens.shape[0], -1, num_streams, groups)
    return codes.permute(0, 2, 3, 1).contiguous()
