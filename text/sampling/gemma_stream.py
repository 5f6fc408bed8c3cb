"""Prompt batching and two-channel streaming for the DiffusionGemma runner (`gemma_runner`).

Streamers have `mdiff.text.sampling.stream`'s interface (`transformers`' ``BaseStreamer`` plus
an optional ``put_draft(value, step=i)``): ``put`` receives the row's prompt first, then each
finished canvas's kept tokens (never retracted: the chunks concatenate to the row's output
without padding); ``put_draft`` receives after every denoising step the row's whole text so far
with the current argmax canvas at its end (its *draft*); ``end()`` once per streamer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.text.sampling.layout import left_pad
from mdiff.text.sampling.stream import _sinks  # one rule for streamers per row

__all__ = ["Feed", "prompts_batch"]


def prompts_batch(input_ids, attention_mask, lm) -> tuple[Tensor, Tensor]:
    """Left-padded ids (B, P) and their real-token mask from a tensor (+ mask) or id lists."""
    pad = lm.pad_id if lm.pad_id is not None else 0
    if torch.is_tensor(input_ids):
        ids = input_ids[None] if input_ids.dim() == 1 else input_ids
        if ids.dtype != torch.long or ids.dim() != 2 or ids.numel() == 0:
            raise InvalidInputError("input_ids must be a non-empty LongTensor (B, P)")
        if attention_mask is None:
            real = torch.ones_like(ids, dtype=torch.bool)
        else:
            real = torch.as_tensor(attention_mask).to(ids.device).bool()
            real = real[None] if real.dim() == 1 else real
            if real.shape != ids.shape:
                raise InvalidInputError(f"attention_mask {tuple(real.shape)} must match the ids "
                                        f"{tuple(ids.shape)}")  # fmt: skip
            if real.shape[1] > 1 and not bool((real[:, 1:].long() >= real[:, :-1].long()).all()):
                raise InvalidInputError("prompts must be left-padded (mask 0…0 1…1 per row)")
    else:
        try:
            rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1).tolist() for r in input_ids]
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidInputError(f"prompts must be lists of token ids: {e}") from None
        if not rows:
            raise InvalidInputError("no prompts given")
        ids, real = left_pad(rows, pad)
        ids, real = ids.to(lm.device), real.to(lm.device)
    if not bool(real.any(1).all()):
        raise InvalidInputError("every prompt needs at least one token (e.g. the BOS id)")
    if int(ids[real].min()) < 0 or int(ids[real].max()) >= lm.vocab_size:
        raise InvalidInputError(f"token ids must lie in [0, {lm.vocab_size})")
    return ids.masked_fill(~real, pad), real


class Feed:
    """Runner side of streaming, per row: prompt, committed canvases, drafts."""

    def __init__(self, streamer, ids: Tensor, real: Tensor):
        self.sinks = _sinks(streamer, ids.shape[0])
        self.text = [ids[b][real[b]].cpu() for b in range(ids.shape[0])]  # what the row shows
        for sink, prompt in zip(self.sinks, self.text, strict=True):
            sink.put(prompt[None])

    def draft(self, argmax: Tensor, step: int, active: Tensor) -> None:
        argmax = argmax.cpu()
        for b in active.nonzero().squeeze(1).tolist():
            put_draft = getattr(self.sinks[b], "put_draft", None)
            if callable(put_draft):
                put_draft(torch.cat([self.text[b], argmax[b]])[None], step=step)

    def commit(self, canvas: Tensor, keep: Tensor) -> None:
        canvas, keep = canvas.cpu(), keep.cpu()
        for b, sink in enumerate(self.sinks):
            if keep[b].any():
                self.text[b] = torch.cat([self.text[b], canvas[b][keep[b]]])
                sink.put(canvas[b][keep[b]][None])

    def end(self) -> None:
        seen: set[int] = set()
        for sink in self.sinks:
            if id(sink) not in seen:
                seen.add(id(sink))
                sink.end()
