"""Continuous batching of FIM requests that never changes an answer.

`Batcher(code_model)` owns one worker thread. `submit(jobs)` queues a request's `Job` s (one per
choice: prefix, suffix, length, seed, sampler settings) and returns at once. The worker starts
a running batch with the oldest waiting job and every waiting job of the same sampler settings
(temperature, top_p), up to ``max_rows`` canvas rows; then, between two sampler steps:

- waiting jobs at the head of the queue join it (`_admit`: same settings, at most
  ``join_rows`` rows with them, canvas within ``max_width``; the first that cannot stops
  admission, so no job waits behind later ones forever; those that came in during one step
  are laid out together, one at a time only if they do not fit together) — continuous
  batching at step boundaries. Measured on 2 cores (`benchmarks/batcher_speed.py`): a step
  of 4 rows costs 11 ms, of 8 rows 15, of 16 rows 24, of 64 rows 81 — joining a small
  batch is nearly free, a big one shares the cores out (for jobs of one size that is later
  on average than one batch after another, but a burst of requests — 32 over HTTP arrive
  within ~70 ms — then runs as one batch instead of a first one of whatever had arrived);
  ``join_rows`` (default ``max_rows``) bounds it;
- each row that is done leaves at once, and a job whose rows are all out is answered (its
  length search scored then, on its solo canvases, together with the other jobs finishing);
- cancelled jobs leave (a closed stream frees its rows within one step).

Rows step apart: with the exact cache each row keeps its own cache length
(`mdiff.text.sampling.ragged`), so every row steps in its own block at every tick and a row that
joins never makes the others wait (`mdiff.text.sampling.rows`: join, take, widen, compact).

Why answers do not change: each job is laid out exactly as `mdiff.text.fim.infilling.infill`
lays out a single input (token healing, context fitting, its candidate rows; whole blocks of
padding more on either side change nothing for a block-causal model), every row draws from its
own generator seeded with the job's seed (as ``infill`` does for input 0), a row's steps and
keys are its own, and the length search scores each job's rows cut to its solo canvas. A job's
text therefore equals ``CodeModel.infill(prefix, suffix, length, seed=seed, ...)`` run alone
(tested with interleaved arrivals).

Streaming: a job with ``on_text(delta, draft)`` gets committed text as the sampler finalises
it (never retracted) and, every step, the current draft of its hole. A streamed auto-length job
runs its search first, then its chosen length again with the streamer (same result). A running
batch that fails runs its jobs one by one, so one bad job fails only itself.

A model with its own ``infill`` (DiffusionGemma's `GemmaCodeModel`: its own canvas and
sampler) runs each job alone through that ``infill``, the SDK's call; its text is not streamed.

Bounds: at most ``queue_size`` requests wait (`submit` raises `QueueFull` beyond: HTTP 429).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

import mdiff.text.fim.infilling as F
from mdiff.errors import InvalidInputError
from mdiff.serve import batch_answers as answers
from mdiff.serve import batch_layout as layout
from mdiff.serve import compute
from mdiff.serve.batch_layout import Member
from mdiff.text.pipeline import CodeModel
from mdiff.text.sampling.rows import compact, join, joinable, rebase, take, widen

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


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At exit, end every worker thread: one still waiting on its queue when the interpreter
    finalizes aborts the process (``terminate called without an active exception``, exit 134)."""
    for batcher in list(_LIVE):
        batcher.close(wait=5.0)


class Batcher:
    """The worker thread and its wait queue for one `CodeModel`."""

    def __init__(self, code_model, *, queue_size: int = 32, max_rows: int = 64,
                 max_width: int = 512, join_rows: int = 64):  # fmt: skip
        self.cm, self.queue_size, self.max_rows = code_model, queue_size, max_rows
        # a running batch takes arrivals while it has at most join_rows rows with them (see
        # the module doc); 0: arrivals wait for the next batch
        self.join_rows = join_rows
        self.max_width = max_width  # slots a running batch may widen to for a joining job
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._waiting = 0  # requests not started yet
        self.stats = {"batches": 0, "joined": 0, "rows": 0, "jobs": 0, "cancelled": 0,
                      "restarted": 0}  # fmt: skip
        self.running = 0  # jobs in the batch being denoised
        self._live: list[Job] = []  # the jobs the running batch has taken
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="mdiff-batcher", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------ client side

    def window(self) -> int:
        """The most tokens a middle may have (the model's infilling window)."""
        return F.window(self.cm.model, self.cm.context) - 1

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

    def close(self, wait: float = 0.0) -> None:
        """Stop taking jobs (queued ones are not started); ``wait``: seconds to let the worker
        finish its running batch and exit."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if wait > 0 and self._thread is not threading.current_thread():
            self._thread.join(wait)

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
                self._started(j)
            self.running = len(batch)
            return batch

    @staticmethod
    def _rows(job: Job) -> int:
        return len(job.candidates) if job.length == "auto" else 1

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [j for j in batch if not self._gone(j)]
            self._live = live
            try:
                if live:
                    compute.call(self._serve, live)  # torch work: on the compute thread
            except Exception as e:  # noqa: BLE001 — a failed run retries its jobs alone
                left = [j for j in self._live if not j.future.done()]
                if len(left) > 1:
                    self._requeue(left, solo=True)
                elif left:
                    left[0].future.set_exception(e)
            finally:
                self.running, self._live = 0, []

    def _gone(self, job: Job) -> bool:
        """A cancelled job: its future fails (the client has gone)."""
        if not job.cancel.is_set():
            return False
        self.stats["cancelled"] += 1
        if not job.future.done():
            job.future.set_exception(_Cancelled("cancelled"))
        return True

    def _requeue(self, jobs: list[Job], solo: bool = False) -> None:
        with self._cond:
            for j in reversed(jobs):
                if j.future.done() or self._gone(j):
                    continue
                self.stats["restarted"] += 1
                j.solo = j.solo or solo
                self._jobs.appendleft(j)

    @torch.no_grad()
    def _serve(self, jobs: list[Job]) -> None:
        """Denoise ``jobs`` as one running batch; between two steps, waiting jobs join it
        (`_admit`), finished jobs leave it with their answers and cancelled ones are dropped."""
        if type(self.cm).infill is not CodeModel.infill:  # its own sampler (DiffusionGemma)
            for j in jobs:
                self._own_infill(j)
            return
        run, members = self._prepare(jobs)
        run.start(range(run.x.shape[0]))
        self.stats["batches"] += 1
        while run is not None:
            run = self._keep(run, members, [not self._gone(m.job) for m in members])
            if run is None:
                break
            self._admit(run, members)
            self.running = len(members)
            run.tick()
            compute.yield_point()  # live video chunks waiting run first
            run = self._retire(run, members)

    def _prepare(self, jobs: list[Job], run=None):
        return layout.prepare_jobs(self.cm, jobs, self.window() + 1, self.max_width, run)

    def _admit(self, run, members: list[Member]) -> None:
        """Join the waiting jobs at the head of the queue that fit the running batch (same
        settings, its width and origin, masks only where it has not cached, ``max_rows``);
        the first that does not fit stops it, so no job waits behind later ones forever.
        The heads are laid out together (one `prepare_jobs`, as a batch that starts with
        them); one at a time only when they do not fit together."""
        key = members[0].job.key
        while heads := self._heads(run, key):
            if len(heads) > 1 and self._join(run, members, heads):
                continue
            if not self._join(run, members, heads[:1]):
                return

    def _heads(self, run, key) -> list[Job]:
        """The jobs at the head of the queue that may join ``run`` (cancelled ones there are
        dropped): same settings, not solo, within the batch's row bound."""
        while True:
            with self._cond:
                j = self._jobs[0] if self._jobs else None
                if j is None or not j.cancel.is_set():
                    break
                self._jobs.popleft()
                self._started(j)
            self._gone(j)  # cancelled while it waited
        room, heads = min(self.max_rows, self.join_rows) - run.x.shape[0], []
        with self._cond:
            for j in self._jobs:
                if j.solo or j.key != key or self._rows(j) > room or j.cancel.is_set():
                    break
                heads.append(j)
                room -= self._rows(j)
        return heads

    def _join(self, run, members: list[Member], jobs: list[Job]) -> bool:
        """Lay ``jobs`` (the queue's heads) out for ``run`` and join them; False if they do
        not fit (its width and origin, masks only where it has not cached)."""
        got = self._prepare(jobs, run)
        if got is not None:  # the same width (right padding) and block origin
            widen(got[0], run.x.shape[1] - got[0].x.shape[1])
            widen(run, got[0].x.shape[1] - run.x.shape[1])
            if got[0].lay.origin < run.lay.origin and run.runner.ragged is not None:
                rebase(run, got[0].lay.origin)
        if got is None or joinable(run, got[0]) is not None:
            return False
        with self._cond:  # only this thread takes from the head: they are still there
            for j in jobs:
                self._jobs.popleft()
                self._started(j)
        join(run, got[0])
        members.extend(got[1])
        self._live.extend(jobs)
        self.stats["joined"] += len(jobs)
        return True

    def _started(self, job: Job) -> None:
        """Count ``job``'s request as started (under ``_cond``): it no longer waits."""
        if not job._group.started:
            job._group.started = True
            self._waiting -= 1

    def _keep(self, run, members: list[Member], keep: list[bool]):
        """The run without the rows of the members not kept (None when none is left)."""
        if all(keep):
            return run
        rows, off = [], 0
        for m, k in zip(members, keep, strict=True):
            rows += list(range(off, off + m.rows)) if k else []
            off += m.rows
        members[:] = [m for m, k in zip(members, keep, strict=True) if k]
        return take(run, rows) if rows else None

    def _retire(self, run, members: list[Member]):
        """Take the finished rows out of the batch (kept, cut to their solo canvas, by their
        member); answer the members whose rows are all out; the run of the others."""
        if not bool(run.done.any()):
            return run
        rows = run.done.nonzero().squeeze(1).tolist()
        sub = take(run, rows)
        out, real = sub.finish(), sub.lay.real
        at = {r: i for i, r in enumerate(rows)}
        off, spec = 0, self.cm.model.spec
        for m in members:
            live = [p for p in range(len(m.parts)) if p not in m.got]
            for k, p in enumerate(live):
                i = at.get(off + k)
                if i is not None:
                    e = int(real[i].nonzero().max()) + 1  # its canvas alone ends here
                    seq, re, gen = (
                        _solo(t[i], e, m.width, f)
                        for t, f in (
                            (out.sequences, spec.fill_id),
                            (real, False),
                            (out.generated, False),
                        )
                    )
                    m.got[p] = (seq, re, gen, out.steps_per_block[i],
                                out.tokens_per_forward[i])  # fmt: skip
            off += len(live)
        done = [m for m in members if m.rows == 0]
        members[:] = [m for m in members if m.rows]
        scores = answers.scores(self.cm, [m for m in done if len(m.parts) > 1])
        for m in done:
            self._complete(m, out, scores.get(m))
        left = (~run.done).nonzero().squeeze(1).tolist()
        if not left:
            return None
        run = take(run, left)
        compact(run)  # the blocks only the finished rows needed
        return run

    def _complete(self, m: Member, out, scores: list[float] | None) -> None:
        """Answer member ``m`` (all its rows out); ``out``: the batch's last output (for its
        counters and settings)."""
        j, best = m.job, 0
        self.stats["rows"] += len(m.parts)
        if scores is not None:
            best = max(range(len(scores)), key=lambda p: scores[p])
            j.scores = {part[1]: sc for part, sc in zip(m.parts, scores, strict=True)}
        n = m.parts[best][1]
        if j.length == "auto" and j.on_text is not None:
            j.length, j.chosen = n, True  # stream it: same seed, same text
            with self._cond:
                self._jobs.appendleft(j)
            return
        self._answer(j, answers.answer(self.cm, j, answers.output(m, out), best, n, m.carry))

    def _own_infill(self, job: Job) -> None:
        self._answer(job, answers.own_infill(self.cm, job))

    def _answer(self, job: Job, done) -> None:
        self.stats["jobs"] += 1
        job.future.set_result(done)


def _solo(row, end: int, width: int, fill):
    """``row``'s solo canvas: its ``width`` slots up to ``end``. Slots before the batch's
    first one (leading blocks of padding the batch dropped, `rows.compact`) are put back as
    the padding they were."""
    lo = end - width
    if lo >= 0:
        return row[lo:end]
    return torch.cat([row.new_full((-lo,), fill), row[:end]])
