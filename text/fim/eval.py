"""FIM evaluation: exact match on held-out code, for fixed, true and automatic middle lengths.

    report = evaluate_fim(model, tokenizer, tasks, modes=("fixed", "true", "auto"))
    report["true"]["exact_match"], report["true"]["tokens_per_forward"], ...

Modes (reported separately, as published infilling numbers often silently use the true
length): ``fixed`` — every middle gets ``fixed_length`` tokens; ``true`` — the reference
middle's token count (an oracle); ``auto`` — the length search of `mdiff.text.fim.infilling`.
Single-line tasks keep the completion's first line (SantaCoder-FIM convention), for every
system alike. The autoregressive baseline (`mdiff.text.sampling.ar`) is scored on the same tasks by
`evaluate_ar_fim`, with its own EOS deciding the length. Both get token healing at the
hole's left edge (`sampling.heal`; ``heal=False`` turns it off), and the true length counts
the healed hole.

Each mode also reports tokens per forward (generated tokens / model forwards) and tokens per
second (generated tokens / wall time, the length search included).
"""

from __future__ import annotations

import time

import torch

from mdiff.errors import InvalidInputError
from mdiff.text.fim.infilling import fit_context, infill
from mdiff.text.fim.tasks import FIMTask, exact_match
from mdiff.text.sampling.ar import fim_prompt, generate_ar
from mdiff.text.sampling.heal import heal as heal_prefix
from mdiff.text.sampling.heal import middle_text, true_length
from mdiff.text.sampling.token_bytes import token_view

__all__ = ["MODES", "evaluate_ar_fim", "evaluate_fim", "first_line"]

MODES = ("fixed", "true", "auto")


def first_line(text: str) -> str:
    """The completion up to its first line break (leading blank lines skipped)."""
    stripped = text.lstrip("\r\n")
    return stripped.split("\n", 1)[0].rstrip("\r")


def _post(task: FIMTask, middle: str) -> str:
    return first_line(middle) if task.kind == "single" else middle


def _summary(hits, tokens, forwards, seconds, n) -> dict:
    return {
        "tasks": n,
        "exact_match": hits / max(n, 1),
        "tokens": tokens,
        "forwards": forwards,
        "tokens_per_forward": tokens / max(forwards, 1),
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "seconds": seconds,
    }


def evaluate_fim(model, tokenizer, tasks: list[FIMTask], *, modes=MODES, fixed_length: int = 16,
                 candidates=None, seed: int = 0, progress=None, heal: bool = True, fill=None,
                 **settings) -> dict:  # fmt: skip
    """Exact match of the diffusion model's infills per mode (see the module doc). ``fill``:
    a model with its own infilling (DiffusionGemma's `GemmaCodeModel.infill`: its canvas and
    sampler, its own healing) used instead of the masked sampler; ``settings`` and ``heal``
    are then the masked sampler's and unused."""
    bad = [m for m in modes if m not in MODES]
    if bad or not tasks:
        raise InvalidInputError(f"need tasks and modes among {MODES}, got {list(modes)}")
    report = {}
    extra = {} if candidates is None else {"candidates": candidates}
    for mode in modes:
        hits = tokens = forwards = 0
        start = time.perf_counter()
        for task in tasks:
            if mode == "fixed":
                length = fixed_length
            elif mode == "true":
                length = true_length(tokenizer, task.prefix, task.middle, healed=heal)
            else:
                length = "auto"
            if fill is None:
                r = infill(model, tokenizer, task.prefix, task.suffix, length, seed=seed,
                           heal=heal, **extra, **settings)  # fmt: skip
                middle, n = r.middle, r.length
            else:
                r = fill(task.prefix, task.suffix, length, seed=seed, **extra)
                middle = r.middles[0]
                n = len(token_view(tokenizer).encode_after(middle))
            hits += exact_match(task, _post(task, middle))
            forwards += r.nfe
            tokens += n
            if progress is not None:
                progress(mode, task, r)
        report[mode] = _summary(hits, tokens, forwards, time.perf_counter() - start, len(tasks))
    return report


@torch.no_grad()
def evaluate_ar_fim(model, tokenizer, tasks: list[FIMTask], *, max_new_tokens: int = 64,
                    context: int | None = None, progress=None, heal: bool = True,
                    order: str = "psm") -> dict:  # fmt: skip
    """Exact match of the autoregressive FIM baseline, greedy, on the same tasks; `order` is
    the FIM order it was trained with (`CodeModel.fim_order`)."""
    if not tasks:
        raise InvalidInputError("need at least one task")
    limit = context or int(getattr(model.config, "max_len", 1024))
    special = tokenizer.special_ids
    hits = tokens = forwards = 0
    start = time.perf_counter()
    for task in tasks:
        kept, carry, allowed = heal_prefix(tokenizer, task.prefix, enabled=heal)
        view = token_view(tokenizer)
        pre, suf = view.encode(kept), view.encode_after(task.suffix)
        pre, suf = fit_context(pre, suf, max_new_tokens + 3, limit)  # + [PRE] [SUF] [MID]
        first = None if allowed is None else allowed[None]
        out = generate_ar(model, [fim_prompt(pre, suf, special, order)], max_new_tokens,
                          first_allowed=first)  # fmt: skip
        middle = middle_text(tokenizer, out.tokens[0], carry, task.prefix)
        hits += exact_match(task, _post(task, middle))
        tokens += len(out.tokens[0])
        forwards += out.nfe
        if progress is not None:
            progress("ar", task, out)
    return _summary(hits, tokens, forwards, time.perf_counter() - start, len(tasks))
