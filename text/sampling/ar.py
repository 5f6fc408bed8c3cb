"""The autoregressive baseline: greedy (or sampled) left-to-right decoding with a KV cache.

The baseline is a `TextDenoiser` with ``attention="causal"`` trained on next-token prediction
over FIM-formatted sequences (see `mdiff.text.data.fim_transform`), so infilling reads

    [PRE] prefix [SUF] suffix [MID]  ->  middle … [EOS]          (order "psm")
    [PRE] [SUF] suffix [MID] prefix  ->  middle … [EOS]          (order "spm")

`generate_ar` decodes a left-padded batch: one forward over the prompts (its keys committed to
the cache), then one forward per new token. Rows stop at an EOS id; the loop ends when every
row has stopped. It uses the same float64 Gumbel sampling (one generator per row) and the same
watermark hook as the diffusion sampler, so the comparison is like for like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.text.data import FIM_ORDERS
from mdiff.text.sampling.heal import fit_vocab
from mdiff.text.sampling.layout import left_pad
from mdiff.unmasking import sample_categorical

__all__ = ["ARResult", "fim_prompt", "generate_ar"]


@dataclass
class ARResult:
    tokens: list[list[int]]  # per row, the new tokens up to (not including) the first EOS
    nfe: int  # model forwards (the prompt pass included)


def fim_prompt(prefix_ids: list[int], suffix_ids: list[int], special: dict[str, int],
               order: str = "psm") -> list[int]:  # fmt: skip
    """The prompt the middle follows, in the `order` the baseline was trained with."""
    pre, suf, mid = special["[PRE]"], special["[SUF]"], special["[MID]"]
    if order == "psm":
        return [pre, *prefix_ids, suf, *suffix_ids, mid]
    if order == "spm":
        return [pre, suf, *suffix_ids, mid, *prefix_ids]
    raise InvalidInputError(f"fim order must be one of {FIM_ORDERS}, got {order!r}")


@torch.no_grad()
def generate_ar(
    model,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    generator=None,
    watermark=None,
    first_allowed: Tensor | None = None,
) -> ARResult:
    """Decode up to `max_new_tokens` after each prompt. `model` must be causal and cached.
    `first_allowed` (B, V) bool: the only tokens the first new token may be (token healing)."""
    spec = model.spec
    if spec.attention != "causal" or not spec.supports_cache:
        raise InvalidInputError("generate_ar needs a causal model with a KV cache")
    if not prompts or any(len(p) == 0 for p in prompts) or max_new_tokens < 1:
        raise InvalidInputError("need non-empty prompts and max_new_tokens >= 1")
    pad = spec.fill_id
    ids, mask = left_pad(prompts, pad)  # (B, P)
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.long().cumsum(1) - 1).clamp_min(0)  # (B, P) positions of real tokens from 0
    cache = model.new_cache()
    logits = model(ids, attention_mask=mask, position_ids=pos, cache=cache)[:, -1]  # (B, V)
    cache.commit()
    nfe, last = 1, ids[:, -1]
    next_pos = pos[:, -1] + 1  # (B,)
    out = torch.empty((ids.shape[0], 0), dtype=torch.long, device=device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    eos = torch.tensor(spec.eos_ids, dtype=torch.long, device=device)
    if first_allowed is not None:
        keep = fit_vocab(first_allowed.to(device), logits.shape[-1])
        logits = logits.masked_fill(~keep, -torch.inf)
    for step in range(max_new_tokens):
        if watermark is not None:  # score the next slot as a [MASK] after the last token
            window = torch.stack([last, torch.full_like(last, spec.mask_id)], 1)  # (B, 2)
            pair = torch.stack([torch.zeros_like(logits), logits], 1)  # (B, 2, V)
            logits = watermark.bias(pair, window, spec.mask_id, inplace=True)[:, 1]
        token = sample_categorical(logits[:, None], generator, temperature)[:, 0]  # (B,)
        token = torch.where(done, torch.full_like(token, pad), token)
        out = torch.cat([out, token[:, None]], 1)
        done |= torch.isin(token, eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        logits = model(token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                       cache=cache)[:, -1]  # fmt: skip
        cache.commit()
        nfe, last, next_pos = nfe + 1, token, next_pos + 1
    tokens = []
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in spec.eos_ids), len(row))
        tokens.append(row[:cut])
    return ARResult(tokens, nfe)
