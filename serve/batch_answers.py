"""The answers of the continuous batcher (`mdiff.serve.batching`): a finished job's length
search scores, its `Completion` (middle cut at a stop string, record, watermark), and the jobs
of models with their own ``infill``.

Everything here is what `mdiff.text.fim.infilling.infill` and `CodeModel.infill` do for one
input alone, on the rows the batch handed back cut to that job's solo canvas — so an answer is
the SDK's answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

import mdiff.text.fim.infilling as F
from mdiff.serve.text_sinks import stopped_by
from mdiff.text.sampling.sampler import GenerationOutput

if TYPE_CHECKING:
    from mdiff.serve.batch_layout import Member
    from mdiff.serve.batching import Job

__all__ = ["answer", "output", "own_infill", "scores"]


def scores(cm, members: list[Member]) -> dict:
    """Length-search scores of each member's rows (member → one score per part), on their
    solo canvases; members of one width are scored as one batch — each row sees exactly its
    solo canvas, in far fewer forwards than one job at a time."""
    widths: dict[int, list[Member]] = {}
    for m in members:
        widths.setdefault(m.width, []).append(m)
    out = {}
    for group in widths.values():
        got = [m.got[p] for m in group for p in range(len(m.parts))]
        seq, re, gen = (torch.stack([g[i] for g in got]) for i in (0, 1, 2))
        s = F._score(cm.model, seq, re, gen, cm.model.spec.mask_id).tolist()
        for m in group:
            out[m], s = s[: len(m.parts)], s[len(m.parts) :]
    return out


def output(m: Member, last: GenerationOutput) -> GenerationOutput:
    """Member ``m``'s rows (all out of the batch) as one output; ``last``: the batch's last
    output, for its counters and settings."""
    got = [m.got[p] for p in range(len(m.parts))]
    return GenerationOutput(
        sequences=torch.stack([g[0] for g in got]), generated=torch.stack([g[2] for g in got]),
        tokens_per_forward=torch.stack([g[4] for g in got]), nfe=last.nfe,
        steps_per_block=[g[3] for g in got], drift=None, settings=last.settings,
    )  # fmt: skip


def answer(cm, job: Job, out: GenerationOutput, row: int, n: int, carry: str):
    """The `Completion` of ``job`` from row ``row`` (length ``n``) of its own output."""
    r = F._result(out, row, n, job.prefix, job.suffix, cm.tokenizer, job.scores, carry)
    eol = F.line_ending(job.prefix + job.suffix)
    r = F._with_line_ending(r, eol, job.prefix, job.suffix)
    hit = stopped_by(r.middle, job.stop, eol)
    stopped, word = hit is not None, None if hit is None else hit[1]
    if stopped:
        cut = hit[0]
        r.middle, r.text = cut, job.prefix + cut + job.suffix
        r.span = (len(job.prefix), len(job.prefix) + len(cut))
    steps = sum(out.steps_per_block[row])
    source = job.source if job.source is not None else job.prefix + "\0" + job.suffix
    done = cm._finish(r.text, [r.middle], [r.span], source, r.settings, steps,
                      r.tokens_per_forward, edited=job.source is None, seed=job.seed)  # fmt: skip
    done.length = n
    done.finish_reason = finish_reason(job, n, stopped, chosen=job.chosen)
    done.stop_word = word
    return done


def finish_reason(job: Job, n: int, stopped: bool, *, chosen: bool = False) -> str:
    """OpenAI's ``finish_reason``: "length" where the client's bound decided the length — its
    own fixed length, or a length search whose longest allowed candidate won while
    ``max_tokens`` kept longer ones out — else "stop" (the model's chosen length, or a stop
    string)."""
    if stopped:
        return "stop"
    if isinstance(job.length, int) and not chosen:
        return "length"
    top = max(job.candidates)
    return "length" if n >= top and top < max(F.DEFAULT_CANDIDATES) else "stop"


def own_infill(cm, job: Job):
    """A job for a model with its own `infill` (not our sampler's canvas): run alone, the same
    call as the SDK's; its text arrives whole at the end."""
    auto = {"candidates": job.candidates} if job.length == "auto" else {}
    done = cm.infill(job.prefix, job.suffix, job.length, seed=job.seed, **auto, **job.settings)
    hit = stopped_by(done.middles[0], job.stop, F.line_ending(job.prefix + job.suffix))
    stopped, word = hit is not None, None if hit is None else hit[1]
    if stopped:  # sign what the client gets: the middle cut before its stop string
        p, s, cut = job.prefix, job.suffix, hit[0]
        settings = done.stamped.record.extra.get("sampler_settings", {})
        done = cm._finish(p + cut + s, [cut], [(len(p), len(p) + len(cut))], p + "\0" + s,
                          settings, done.nfe, done.tokens_per_forward, edited=True,
                          seed=job.seed)  # fmt: skip
    n = int((done.record.sizes or {}).get("tokens", 0))  # the tokens its hole held
    done.length = n
    done.finish_reason = finish_reason(job, n, stopped)
    done.stop_word = word
    return done
