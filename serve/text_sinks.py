"""A running batch's per-row streamers for the text server: committed middle tokens become
text deltas (never retracted), optionally with the hole's draft every step; and the stop-string
cut shared by streamed and whole answers."""

from __future__ import annotations

import torch

import mdiff.text.fim.infilling as F
from mdiff.text.sampling.heal import middle_text

__all__ = ["DraftSink", "Sink", "stopped_by", "visible"]


def stopped_by(text: str, stops, eol: str = "\n") -> tuple[str, str] | None:
    """``(text before its first stop string, that stop as the client wrote it)``, or None.
    With ``eol`` other than ``"\n"`` (the middle of a CRLF or CR file, written so) the stops
    are matched on its LF text, as the client wrote them for a line break (`_as_lf`): ``"\n"``
    cuts before the ``"\r\n"``, ``"\n\n"`` at a blank line."""
    lf = text.replace(eol, "\n")
    hits = [(i, s) for s in stops if s and (i := lf.find(_as_lf(s, eol))) >= 0]
    if not hits:
        return None
    i, stop = min(hits, key=lambda h: h[0])
    return lf[:i].replace("\n", eol), stop


def visible(text: str, stops, *, final: bool, eol: str = "\n") -> str:
    """``text`` cut before its first stop string (`stopped_by`); while streaming (not
    ``final``), also without a tail that could still grow into one."""
    hit = stopped_by(text, stops, eol)
    if hit is not None:
        return hit[0]
    if final or not stops:
        return text
    hold = max(len(_as_lf(s, eol)) for s in stops) - 1
    if not hold:
        return text
    lf = text.replace(eol, "\n")
    return lf[: len(lf) - hold].replace("\n", eol)


def _as_lf(stop: str, eol: str) -> str:
    """A stop as matched on the LF text of a CRLF or CR file: its CRLFs and CRs are line
    breaks (a client in a CR file writes "\r" for one; in a CRLF file "\r" starts one)."""
    return stop if eol == "\n" else F._lf(stop).replace("\r", "\n")


class Sink:
    """Row streamer of a `mdiff.serve.batching.Job`: its middle's committed tokens (the row's
    real tokens ``start … start + n``) → ``job.on_text(delta, None)``."""

    def __init__(self, job, tokenizer, carry: str, start: int, n: int):
        self.job, self.tok, self.carry, self.start, self.n = job, tokenizer, carry, start, n
        self.ids: list[int] = []
        self.seen = 0  # real positions received so far
        self.eol = F.line_ending(job.prefix + job.suffix)
        self.live = job.on_text is not None and job.length != "auto"

    def _text(self, ids) -> str:
        text = middle_text(self.tok, ids, self.carry, self.job.prefix)
        return text.replace("\n", self.eol) if self.eol != "\n" else text

    def put(self, value) -> None:
        tokens = torch.as_tensor(value).reshape(-1).tolist()
        lo, hi = self.start - self.seen, self.start + self.n - self.seen
        self.ids += tokens[max(lo, 0) : max(hi, 0)]
        self.seen += len(tokens)
        if self.live:
            text = self._text(self.ids).rstrip("\ufffd")  # hold back a split character
            text = visible(text, self.job.stop, final=False, eol=self.eol)
            if text.startswith(self.job.sent) and len(text) > len(self.job.sent):
                delta, self.job.sent = text[len(self.job.sent) :], text
                self.job.on_text(delta, None)

    def end(self) -> None:
        pass


class DraftSink(Sink):
    """A `Sink` that also sends the hole's draft every step (computed only when asked)."""

    def put_draft(self, value, step: int | None = None) -> None:
        if self.live:
            ids = torch.as_tensor(value).reshape(-1).tolist()[self.start : self.start + self.n]
            self.job.on_text("", self._text(ids))
