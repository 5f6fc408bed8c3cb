"""Canvas layout for the text sampler: left padding, position ids and blocks.

Position ids. Bidirectional models get ``cumsum(attention_mask) − 1`` (LLaDA / Dream with left
padding). Block-causal models group positions in blocks of ``block_size`` by position, so a row
with ``p`` pad slots gets ``slot − ⌊p / block_size⌋·block_size``: its real tokens keep their
offset inside a block, and slot block j is the model's block j for every row at once — which is
what a shared exact KV cache needs. ``generate`` pads prompts to a whole number of blocks, so a
prompt of length P starts at position ``(−P) mod block_size`` alone or in any batch.

Blocks (``blocks[b, i]`` = block of generated slot i, −1 elsewhere): bidirectional — the rank
of the masked slot in its row divided by ``block_length`` (one block when None); block-causal —
windows of ``block_length`` slots (a multiple of ``block_size``, default equal) starting at
``origin``, the first model block holding a mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["Layout", "canvas_from_prompts", "check_canvas", "layout", "left_pad", "pad_multiple"]


@dataclass(frozen=True)
class Layout:
    real: Tensor  # (B, L) bool, not padding
    gen: Tensor  # (B, L) bool, to be generated
    positions: Tensor | None  # (B, L) position ids; None = slots are positions (no padding)
    blocks: Tensor  # (B, L) long, block of each generated slot, −1 elsewhere
    n_blocks: Tensor  # (B,) long, one past the row's last block
    first_block: Tensor  # (B,) long, the row's first block (block-causal: > 0 when other rows
    # start earlier; the row's steps are split over n_blocks − first_block blocks)
    block_length: int
    origin: int  # slot where block 0 starts (block-causal)


def _left_padded(real: Tensor) -> bool:
    return bool((real[:, 1:].long() >= real[:, :-1].long()).all()) if real.shape[1] > 1 else True


def _check_ids(ids: Tensor, vocab: int) -> None:
    """`InvalidInputError` naming an id outside [0, vocab), if ``ids`` hold one."""
    if not ids.numel() or (int(ids.min()) >= 0 and int(ids.max()) < vocab):
        return
    bad = int(ids[(ids < 0) | (ids >= vocab)][0])
    hint = (" — a token the tokenizer has and the model's embedding lacks: added to the "
            "tokenizer without `model.resize_token_embeddings`? Remove it from the text, or "
            "use the model's own tokenizer") if bad >= vocab else ""  # fmt: skip
    raise InvalidInputError(f"token ids must lie in [0, {vocab}); got {bad}{hint}")


def check_canvas(x, attention_mask, spec) -> tuple[Tensor, Tensor]:
    """Validate a canvas (B, L) or (L,) and its mask; returns ``(x, real)``."""
    if not torch.is_tensor(x) or x.dtype != torch.long or x.dim() not in (1, 2):
        raise InvalidInputError("x must be a LongTensor of token ids (B, L)")
    x = x[None] if x.dim() == 1 else x
    if x.numel() == 0:
        raise InvalidInputError(f"x must be non-empty, got shape {tuple(x.shape)}")
    _check_ids(x, spec.vocab_size)
    if attention_mask is None:
        return x, torch.ones_like(x, dtype=torch.bool)
    if not torch.is_tensor(attention_mask):
        raise InvalidInputError("attention_mask must be a tensor (B, L)")
    real = (attention_mask[None] if attention_mask.dim() == 1 else attention_mask).bool()
    if real.shape != x.shape:
        raise InvalidInputError(
            f"attention_mask {tuple(real.shape)} must match the ids {tuple(x.shape)}"
        )
    if not _left_padded(real):
        raise InvalidInputError("attention_mask must describe left padding (0…0 1…1 per row)")
    return x, real.to(x.device)


def layout(real: Tensor, masked: Tensor, spec, block_length: int | None,
           origin: int | None = None) -> Layout:  # fmt: skip
    """Positions and blocks of a checked canvas (see the module docstring). ``origin``
    (block-causal): block 0's slot instead of the first mask's block — rows joining a running
    batch (`sampling.rows`) take its origin; it must lie whole blocks before that one."""
    B, L = real.shape
    gen = real & masked
    slots = torch.arange(L, device=real.device).expand(B, L)
    pads = (~real).sum(1)
    if spec.attention == "block_causal":
        bs = int(spec.block_size)
        bl = block_length or bs
        if bl % bs:
            raise InvalidInputError(
                f"block_length {bl} must be a multiple of the model's block_size {bs}"
            )
        pos = (slots - (pads // bs * bs)[:, None]).clamp_min(0)
        first = int(torch.where(gen, slots, L).min()) if bool(gen.any()) else 0
        own = first // bs * bs
        if origin is not None and (origin > own or (own - origin) % bl):
            raise InvalidInputError(f"origin {origin} is not whole blocks before slot {own}")
        origin = own if origin is None else origin
        blocks = torch.where(gen, torch.div(slots - origin, bl, rounding_mode="floor"), -1)
    else:
        pos = (real.long().cumsum(1) - 1).clamp_min(0)
        bl, origin = block_length or L, 0
        blocks = torch.where(gen, (gen.long().cumsum(1) - 1) // bl, -1)
    positions = None if bool(real.all()) else pos
    n_blocks = blocks.max(1).values + 1
    first = torch.where(gen, blocks, L).min(1).values
    first = torch.where(gen.any(1), first, 0)
    return Layout(real, gen, positions, blocks, n_blocks, first, bl, origin)


def canvas_from_prompts(input_ids, attention_mask, spec, gen_length: int, device):
    """``[pad … | prompt | [MASK] × gen_length]`` per row, and its non-padding mask."""
    if torch.is_tensor(input_ids):
        ids, real = check_canvas(input_ids, attention_mask, spec)
        rows, device = [ids[b][real[b]] for b in range(ids.shape[0])], ids.device
    else:
        try:
            rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in input_ids]
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidInputError(f"prompts must be lists of token ids: {e}") from None
        if not rows:
            raise InvalidInputError("no prompts given")
        for r in rows:
            _check_ids(r, spec.vocab_size)
    S = max(r.numel() for r in rows)
    if spec.attention == "block_causal":
        S = -(-S // spec.block_size) * spec.block_size
    pad = spec.pad_id
    if pad is None:
        pad = next(i for i in (*spec.eos_ids, 0, 1) if i != spec.mask_id)
    x = torch.full((len(rows), S + gen_length), pad, dtype=torch.long, device=device)
    x[:, S:] = spec.mask_id
    real = torch.zeros_like(x, dtype=torch.bool)
    for b, r in enumerate(rows):
        x[b, S - r.numel() : S] = r.to(device)
        real[b, S - r.numel() :] = True
    return x, real


def pad_multiple(spec) -> int:
    """The width a left-padded canvas is rounded up to: a block-causal model's ``block_size``
    (so a row of n tokens starts at position ``(−n) mod block_size`` alone or in any batch —
    its blocks, and so its output, do not depend on the other rows), else 1."""
    return int(spec.block_size) if spec.attention == "block_causal" else 1


def left_pad(rows: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Token lists → left-padded ids (B, W) and the non-padding mask (B, W); W is the longest
    row rounded up to a multiple of `multiple` (see `pad_multiple`)."""
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        real[b, width - len(r) :] = True
    return ids, real
