"""Dynamic batching of FIM requests that never changes an answer.

`Batcher(code_model)` owns one worker thread. `submit(jobs)` queues a request's `Job` s (one per
choice: prefix, suffix, length, seed, sampler settings) and returns at once; the worker takes
the oldest waiting job and every waiting job with the same sampler settings (temperature,
top_p), up to ``max_rows`` canvas rows, and denoises them as one left-padded batch. Requests
that arrive while a batch runs join the next one (batching at batch boundaries).

Why answers do not change: each job is laid out exactly as `mdiff.text.fim.infilling.infill`
lays out a single input (token healing, context fitting, its candidate rows), every row of a
job draws from its own generator seeded with the job's seed (as ``infill`` does for input 0),
and the sampler is batch-invariant (exact cache, per-row generators and schedules). The
auto-length search scores each job on its own rows, re-padded to the width it has alone, so
the score masks and forwards are those of the solo run. A job's text therefore equals
``CodeModel.infill(prefix, suffix, length, seed=seed, ...)`` run alone (tested).

Streaming: a job with ``on_text(delta, draft)`` gets committed text as the sampler finalises
it (never retracted) and, every step, the current draft of its hole. A streamed auto-length job
runs its search first, then its chosen length again with the streamer (same result). Setting
``job.cancel`` stops a batch at its next step; the batch's other jobs are queued again in front
(they restart; their streamed text is not repeated) — a closed stream frees its slot within
one step. A batch that fails runs its jobs one by one, so one bad job fails only itself.

A model with its own ``infill`` (DiffusionGemma's `GemmaCodeModel`: its own canvas and
sampler) runs each job alone through that ``infill``, the SDK's call; its text is not streamed.

Bounds: at most ``queue_size`` requests wait (`submit` raises `QueueFull` beyond: HTTP 429).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

import mdiff.text.fim.infilling as F
from mdiff.errors import InvalidInputError
from mdiff.serve import compute
from mdiff.text.pipeline import CodeModel
from mdiff.text.sampling.heal import heal as heal_prefix
from mdiff.text.sampling.heal import middle_text
from mdiff.text.sampling.layout import pad_multiple
from mdiff.text.sampling.sampler import denoise
from mdiff.text.sampling.token_bytes import token_view

__all__ = ["Batcher", "Job", "QueueFull"]


class QueueFull(Exception):
    """The wait queue is full: try again later (``retry_after`` seconds)."""

    def __init__(self, retry_after: int = 1):
        super().__init__(f"server busy: retry after {retry_after} s")
        self.retry_after = retry_after


class _Cancelled(Exception):
    pass


@dataclass(eq=False)
class Job:
    """One choice to fill: ``infill(prefix, suffix, length, seed=seed, **settings)``.

    ``future`` resolves to a `mdiff.text.pipeline.Completion` (or the error); ``nfe`` and
    ``scores`` are filled in by the worker."""

    prefix: str
    suffix: str
    length: int | str = "auto"
    candidates: tuple[int, ...] = F.DEFAULT_CANDIDATES  # the lengths "auto" tries
    seed: int = 0
    settings: dict = field(default_factory=dict)  # temperature, top_p
    on_text: object = None  # callable(delta: str, draft: str | None), from the worker thread
    stop: tuple[str, ...] = ()  # the middle ends before the first of these strings
    source: str | None = None  # record's prompt text (default prefix + "\0" + suffix)
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    scores: dict = field(default_factory=dict)
    sent: str = ""  # committed text streamed so far
    solo: bool = False
    chosen: bool = False  # an auto length, chosen by the search, runs again to stream
    drafts: bool = False  # on_text also gets the hole's draft every step
    _group: object = None

    @property
    def key(self):
        return tuple(sorted(self.settings.items()))


class _Group:
    def __init__(self, jobs):
        self.jobs, self.started = jobs, False


class Batcher:
    """The worker thread and its wait queue for one `CodeModel`."""

    def __init__(self, code_model, *, queue_size: int = 32, max_rows: int = 64):
        self.cm, self.queue_size, self.max_rows = code_model, queue_size, max_rows
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._waiting = 0  # requests not started yet
        self.stats = {"batches": 0, "rows": 0, "jobs": 0, "cancelled": 0, "restarted": 0}
        self.running = 0  # jobs in the batch being denoised
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="mdiff-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ client side

    def window(self) -> int:
        """The most tokens a middle may have (the model's infilling window)."""
        return min(self.cm.context or F._max_len(self.cm.model), F._max_len(self.cm.model)) - 1

    def submit(self, jobs: list[Job]) -> list[Future]:
        """Queue one request's jobs; `QueueFull` when ``queue_size`` requests already wait."""
        for j in jobs:
            F._lengths(j.length, j.candidates)
            if isinstance(j.length, int) and j.length > self.window():
                raise InvalidInputError(f"at most {self.window()} tokens fit the model's window")
        with self._cond:
            if self._waiting >= self.queue_size:
                raise QueueFull(retry_after=1)
            group = _Group(jobs)
            for j in jobs:
                j._group = group
            self._waiting += 1
            self._jobs.extend(jobs)
            self._cond.notify()
        return [j.future for j in jobs]

    @property
    def waiting(self) -> int:
        """Requests queued and not started."""
        with self._cond:
            return self._waiting

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # ------------------------------------------------------------------ worker side

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._jobs.popleft()
            batch, rows = [first], self._rows(first)
            if not first.solo:
                for j in list(self._jobs):
                    if j.key == first.key and not j.solo and rows + self._rows(j) <= self.max_rows:
                        self._jobs.remove(j)
                        batch.append(j)
                        rows += self._rows(j)
            for j in batch:
                if not j._group.started:
                    j._group.started = True
                    self._waiting -= 1
            self.running = len(batch)
            return batch

    @staticmethod
    def _rows(job: Job) -> int:
        return len(job.candidates) if job.length == "auto" else 1

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not j.cancel.is_set()]
            for j in batch:
                if j.cancel.is_set():
                    self.stats["cancelled"] += 1
                    j.future.set_exception(_Cancelled("cancelled"))
            try:
                if live:
                    compute.call(self._run, live)  # torch work: on the compute thread
            except _Cancelled:
                self._requeue(live)
            except Exception as e:  # noqa: BLE001 — a failed batch retries its jobs alone
                if len(live) > 1:
                    self._requeue(live, solo=True)
                elif not live[0].future.done():
                    live[0].future.set_exception(e)
            finally:
                self.running = 0

    def _requeue(self, jobs: list[Job], solo: bool = False) -> None:
        with self._cond:
            for j in reversed(jobs):
                if j.future.done():
                    continue
                if j.cancel.is_set():
                    self.stats["cancelled"] += 1
                    j.future.set_exception(_Cancelled("cancelled"))
                else:
                    self.stats["restarted"] += 1
                    j.solo = j.solo or solo
                    self._jobs.appendleft(j)

    def _run(self, jobs: list[Job]) -> None:
        """Denoise every job's rows as one batch; resolve the finished jobs' futures."""
        cm, tok = self.cm, self.cm.tokenizer
        if type(cm).infill is not CodeModel.infill:  # its own sampler (DiffusionGemma)
            for j in jobs:
                self._own_infill(j)
            return
        heals = [heal_prefix(tok, F._lf(j.prefix), enabled=True) for j in jobs]
        inputs = [(h[0], j.suffix, F._lengths(j.length, j.candidates))
                  for h, j in zip(heals, jobs, strict=True)]  # fmt: skip
        c = F.fim_canvas(cm.model.spec, token_view(tok), inputs, heals, self.window() + 1)
        parts, device = c.parts, next(cm.model.parameters()).device
        x, real = c.x.to(device), c.real.to(device)
        gens = [torch.Generator(device).manual_seed(jobs[k].seed) for k, _, _ in parts]
        kind = _DraftSink if any(j.drafts and j.on_text is not None for j in jobs) else _Sink
        sinks = [kind(jobs[k], tok, heals[k][1], start, n, self._any_cancelled, jobs)
                 for k, n, start in parts]  # fmt: skip
        out = denoise(cm.model, x, None if bool(real.all()) else real, None, generators=gens,
                      watermark=cm.watermark, streamer=sinks,
                      restrict=c.restrict, **jobs[0].settings)  # fmt: skip
        self.stats["batches"] += 1
        self.stats["rows"] += len(parts)
        again = []
        rows = [[r for r, p in enumerate(parts) if p[0] == k] for k in range(len(jobs))]
        scores = self._scores(out, real, [idx for idx in rows if len(idx) > 1])
        for k, j in enumerate(jobs):
            idx = rows[k]
            best = idx[0]
            if len(idx) > 1:
                best = max(idx, key=lambda r: scores[r])
                j.scores = {parts[r][1]: scores[r] for r in idx}
            if j.length == "auto" and j.on_text is not None:
                j.length, j.chosen = parts[best][1], True  # stream it: same seed, same text
                again.append(j)
                continue
            self._finish(j, out, best, parts[best][1], heals[k][1])
        if again:
            with self._cond:
                self._jobs.extendleft(reversed(again))

    def _own_infill(self, job: Job) -> None:
        """A job for a model with its own `infill` (not our sampler's canvas): run alone,
        the same call as the SDK's; its text arrives whole at the end."""
        auto = {"candidates": job.candidates} if job.length == "auto" else {}
        done = self.cm.infill(job.prefix, job.suffix, job.length, seed=job.seed, **auto,
                              **job.settings)  # fmt: skip
        cut = visible(done.middles[0], job.stop, final=True)
        stopped = cut != done.middles[0]
        if stopped:  # sign what the client gets: the middle cut before its stop string
            p, s = job.prefix, job.suffix
            settings = done.stamped.record.extra.get("sampler_settings", {})
            done = self.cm._finish(p + cut + s, [cut], [(len(p), len(p) + len(cut))],
                                   p + "\0" + s, settings, done.nfe, done.tokens_per_forward,
                                   edited=True, seed=job.seed)  # fmt: skip
        fixed = isinstance(job.length, int)
        done.finish_reason = "length" if fixed and not stopped else "stop"
        self.stats["jobs"] += 1
        job.future.set_result(done)

    def _scores(self, out, real, jobs: list[list[int]]) -> dict[int, float]:
        """Length-search scores of the rows of ``jobs`` (each a job's row indices): every
        job's rows are cut to the width they have alone (whole blocks of left padding off),
        and the jobs of one width are scored as one batch — each row sees exactly its solo
        canvas, in far fewer forwards than one job at a time."""
        spec, W = self.cm.model.spec, out.sequences.shape[1]
        m = pad_multiple(spec)
        widths: dict[int, list[int]] = {}
        for idx in jobs:
            w = -(-int(real[idx].sum(1).max()) // m) * m
            widths.setdefault(w, []).extend(idx)
        scores = {}
        for w, idx in widths.items():
            cut = slice(W - w, W)
            s = F._score(self.cm.model, out.sequences[idx, cut], real[idx, cut],
                         out.generated[idx, cut], spec.mask_id)  # fmt: skip
            scores.update({r: float(v) for r, v in zip(idx, s.tolist(), strict=True)})
        return scores

    def _finish(self, job: Job, out, row: int, n: int, carry: str) -> None:
        r = F._result(out, row, n, job.prefix, job.suffix, self.cm.tokenizer, job.scores, carry)
        r = F._with_line_ending(r, F.line_ending(job.prefix + job.suffix), job.prefix,
                                job.suffix)  # fmt: skip
        cut = visible(r.middle, job.stop, final=True)
        stopped = cut != r.middle
        if stopped:
            r.middle, r.text = cut, job.prefix + cut + job.suffix
            r.span = (len(job.prefix), len(job.prefix) + len(cut))
        steps = sum(out.steps_per_block[row])
        source = job.source if job.source is not None else job.prefix + "\0" + job.suffix
        done = self.cm._finish(r.text, [r.middle], [r.span], source, r.settings, steps,
                               r.tokens_per_forward, edited=job.source is None,
                               seed=job.seed)  # fmt: skip
        done.length = n
        fixed = isinstance(job.length, int) and not job.chosen  # the caller's own length
        done.finish_reason = "length" if fixed and not stopped else "stop"
        self.stats["jobs"] += 1
        job.future.set_result(done)

    def _any_cancelled(self, jobs) -> bool:
        return any(j.cancel.is_set() for j in jobs)


def visible(text: str, stops, *, final: bool) -> str:
    """``text`` cut before its first stop string; while streaming (not ``final``), also
    without a tail that could still grow into one."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if cuts:
        return text[: min(cuts)]
    if final or not stops:
        return text
    hold = max(len(s) for s in stops) - 1
    return text[: len(text) - hold] if hold else text


class _Sink:
    """A row's streamer: committed middle tokens → text deltas; drafts; cancellation."""

    def __init__(self, job: Job, tokenizer, carry: str, start: int, n: int, stop, jobs):
        self.job, self.tok, self.carry, self.start, self.n = job, tokenizer, carry, start, n
        self.stop, self.jobs = stop, jobs
        self.ids: list[int] = []
        self.seen = 0  # real positions received so far
        self.eol = F.line_ending(job.prefix + job.suffix)
        self.live = job.on_text is not None and job.length != "auto"

    def _text(self, ids) -> str:
        text = middle_text(self.tok, ids, self.carry)
        return text.replace("\n", self.eol) if self.eol != "\n" else text

    def put(self, value) -> None:
        compute.yield_point()  # every step: live video chunks waiting run first
        if self.stop(self.jobs):
            raise _Cancelled("a client went away")
        tokens = torch.as_tensor(value).reshape(-1).tolist()
        lo, hi = self.start - self.seen, self.start + self.n - self.seen
        self.ids += tokens[max(lo, 0) : max(hi, 0)]
        self.seen += len(tokens)
        if self.live:
            text = self._text(self.ids).rstrip("\ufffd")  # hold back a split character
            text = visible(text, self.job.stop, final=False)
            if text.startswith(self.job.sent) and len(text) > len(self.job.sent):
                delta, self.job.sent = text[len(self.job.sent) :], text
                self.job.on_text(delta, None)

    def end(self) -> None:
        pass


class _DraftSink(_Sink):
    """A `_Sink` that also sends the hole's draft every step (computed only when asked)."""

    def put_draft(self, value, step: int | None = None) -> None:
        if self.stop(self.jobs):
            raise _Cancelled("a client went away")
        if self.live:
            ids = torch.as_tensor(value).reshape(-1).tolist()[self.start : self.start + self.n]
            self.job.on_text("", self._text(ids))
