"""Two-channel streaming for the diffusion sampler.

A streamer is any object with ``put(value)`` and ``end()`` — `transformers`' ``BaseStreamer``
interface, so ``TextStreamer`` / ``TextDiffusionStreamer`` work unchanged — and optionally
``put_draft(value, step=i)``:

    put(tokens)               committed tokens, LongTensor (1, n): for its row, the newly *final*
                              left-to-right prefix. Monotone and never retracted, so the chunks
                              concatenate to the row's output (without padding, and without what
                              ``EOSPolicy(truncate=True)`` removes). The first call carries the
                              prompt (the tokens before the first mask, possibly none), as
                              `transformers` expects for ``skip_prompt``.
    put_draft(canvas, step=i) once per sampler step: the row's whole canvas (1, n), masks shown as
                              the current proposals.
    end()                     once, after the last put.

A batch takes one streamer per row (a list); a single streamer serves a batch of one. A token is
final when it is committed and nothing can change it any more (with ReMDM remasking, only when
its block is finished).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["CommitFeed", "TokenCollector"]


class TokenCollector:
    """A streamer that records what it receives (for tests, servers and notebooks)."""

    def __init__(self):
        self.chunks: list[list[int]] = []
        self.drafts: list[tuple[int | None, list[int]]] = []
        self.ended = 0

    def put(self, value: Tensor) -> None:
        if self.ended:
            raise InvalidInputError("put() after end()")
        self.chunks.append(torch.as_tensor(value).reshape(-1).tolist())

    def put_draft(self, value: Tensor, step: int | None = None) -> None:
        self.drafts.append((step, torch.as_tensor(value).reshape(-1).tolist()))

    def end(self) -> None:
        self.ended += 1

    @property
    def tokens(self) -> list[int]:
        """Every committed token, in order."""
        return [t for chunk in self.chunks for t in chunk]

    @classmethod
    def for_batch(cls, n: int) -> list[TokenCollector]:
        return [cls() for _ in range(n)]


def _sinks(streamer, batch: int) -> list:
    if isinstance(streamer, Sequence) and not isinstance(streamer, str | bytes):
        sinks = list(streamer)
        if len(sinks) != batch:
            raise InvalidInputError(f"{len(sinks)} streamers for a batch of {batch} rows")
    elif batch == 1:
        sinks = [streamer]
    else:
        raise InvalidInputError(
            f"a batch of {batch} rows needs one streamer per row (a list), got a single streamer"
        )
    for s in sinks:
        if not (callable(getattr(s, "put", None)) and callable(getattr(s, "end", None))):
            raise InvalidInputError(f"a streamer needs put() and end(); got {type(s).__name__}")
    return sinks


class CommitFeed:
    """Sampler side of streaming: turns canvas states into per-row ``put``/``put_draft`` calls.

    ``real`` (B, L) marks non-padding positions, ``generated`` (B, L) those the sampler fills.
    """

    def __init__(self, streamer, real: Tensor, generated: Tensor, eos_ids, truncate: bool):
        self.sinks = _sinks(streamer, real.shape[0])
        self.positions = [r.nonzero().squeeze(1).cpu() for r in real]
        self.generated = generated.cpu()
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.truncate = bool(truncate) and len(eos_ids) > 0
        self.ptr = [0] * len(self.sinks)
        self.cut = [False] * len(self.sinks)
        self.started = [False] * len(self.sinks)

    def take(self, rows: list[int]) -> CommitFeed:
        """The feed of ``rows`` only (same streamers, same progress)."""
        other = copy.copy(self)
        for name in ("sinks", "positions", "ptr", "cut", "started"):
            setattr(other, name, [getattr(self, name)[b] for b in rows])
        other.generated = self.generated[rows]
        return other

    def extend(self, other: CommitFeed) -> None:
        """Append the rows of ``other`` (a feed over a canvas of the same width)."""
        for name in ("sinks", "positions", "ptr", "cut", "started"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.generated = torch.cat([self.generated, other.generated])

    def commit(self, x: Tensor, final: Tensor) -> None:
        """Emit, per row, the final tokens right of what was already emitted."""
        x, final = x.cpu(), final.cpu()
        for b, sink in enumerate(self.sinks):
            pos = self.positions[b][self.ptr[b] :]
            ready = final[b, pos].long().cumprod(0).sum().item()  # leading final positions
            pos = pos[:ready]
            self.ptr[b] += ready
            tokens, gen = x[b, pos], self.generated[b, pos]
            keep = torch.ones_like(gen)
            if self.truncate:
                if self.cut[b]:
                    keep = ~gen
                else:
                    hit = (gen & torch.isin(tokens, self.eos)).nonzero()
                    if hit.numel():
                        after = torch.arange(len(pos)) > hit[0, 0]
                        keep = ~(gen & after)
                        self.cut[b] = True
            if keep.any() or not self.started[b]:
                sink.put(tokens[keep][None])
            self.started[b] = True

    def draft(self, canvas: Tensor, step: int) -> None:
        canvas = canvas.cpu()
        for b, sink in enumerate(self.sinks):
            put_draft = getattr(sink, "put_draft", None)
            if callable(put_draft):
                put_draft(canvas[b, self.positions[b]][None], step=step)

    @property
    def wants_drafts(self) -> bool:
        return any(callable(getattr(s, "put_draft", None)) for s in self.sinks)

    def end(self, x: Tensor) -> None:
        """Flush everything (all final now) and call ``end()`` once per distinct streamer."""
        self.commit(x, torch.ones_like(x, dtype=torch.bool))
        seen: set[int] = set()
        for sink in self.sinks:
            if id(sink) not in seen:
                seen.add(id(sink))
                sink.end()
