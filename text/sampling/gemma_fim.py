"""Fill-in-the-middle with DiffusionGemma: prefix in the encoder, ``[n free slots | suffix]`` as
the decoder's canvas.

The decoder attends bidirectionally over its canvas, so slots see the suffix; the suffix tokens
are *pinned* (never drawn, renoised, biased or counted by the entropy rule and the adaptive
stop — `gemma_runner.Pinned`). The middle is the last argmax canvas's n slots, cut at its first
EOS when the EOS policy truncates. There is no training signal for this use in the released
model (its canvases are generated left to right); it is the natural infill of a bidirectional
canvas, as Dream's pinned-suffix hook is for Dream.

``length="auto"``: each candidate length is denoised alone from the same seed (so re-running the
chosen length reproduces it), then scored by the model's own uniform-noise estimate of the
middle's log-likelihood per token: for each rate r in `SCORE_RATES` a fixed share of the middle
slots (drawn from ``seed``, the same for every candidate) is replaced by uniform random ids and
one decoder forward scores the true ids there; the mean over rates is the score, the best wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdiff.errors import InvalidInputError
from mdiff.record import check_seed
from mdiff.text.sampling.gemma_runner import Context, Pinned, denoise_canvas
from mdiff.text.sampling.gemma_settings import GemmaSettings, resolve_settings

__all__ = ["DEFAULT_CANDIDATES", "SCORE_RATES", "GemmaInfill", "infill_gemma"]

DEFAULT_CANDIDATES = (4, 8, 12, 16, 24, 32)
SCORE_RATES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class GemmaInfill:
    """``middle`` the chosen ids, ``length`` its slot count, ``nfe`` decoder forwards of every
    run (scoring included), ``scores`` per candidate length (auto only), ``settings``."""

    middle: list[int]
    length: int
    nfe: int
    scores: dict[int, float] | None
    settings: dict


def _ids(name: str, value, lm) -> list[int]:
    try:
        ids = torch.as_tensor(value, dtype=torch.long).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidInputError(f"{name} must be a list of token ids: {e}") from None
    if any(not 0 <= i < lm.vocab_size for i in ids):
        raise InvalidInputError(f"{name} ids must lie in [0, {lm.vocab_size})")
    return ids


def _fill(lm, ctx, st, n, suffix, seed, eos_ids, watermark, streamer=None, prefix=()):
    dev = lm.device
    mask = torch.tensor([[False] * n + [True] * len(suffix)], device=dev)
    ids = torch.tensor([[0] * n + suffix], dtype=torch.long, device=dev)
    gens = [torch.Generator(device=dev).manual_seed(seed)]
    active = torch.ones(1, dtype=torch.bool, device=dev)
    draft = None
    if streamer is not None:
        head = torch.tensor(list(prefix), dtype=torch.long)
        streamer.put(head[None])
        put_draft = getattr(streamer, "put_draft", None)
        if callable(put_draft):
            draft = lambda a, i: put_draft(torch.cat([head, a[0, :n].cpu()])[None], step=i)  # noqa: E731
    out, steps, _ = denoise_canvas(lm, ctx, st, gens, active, eos_ids=eos_ids,
                                   watermark=watermark, pinned=Pinned(mask, ids),
                                   on_draft=draft)  # fmt: skip
    middle = out[0, :n].tolist()
    if st.eos.truncate and eos_ids:
        cut = next((i for i, t in enumerate(middle) if t in eos_ids), len(middle))
        middle = middle[:cut]
    if streamer is not None:
        streamer.put(torch.tensor([middle], dtype=torch.long))
        streamer.end()
    return middle, int(steps[0])


@torch.no_grad()
def _score(lm, ctx: Context, middle: list[int], suffix: list[int], seed: int) -> float:
    """Mean log p of the middle ids at uniformly renoised slots, over `SCORE_RATES` (one
    decoder forward each, no self-conditioning); a middle cut at EOS is scored as it is,
    followed by the suffix. Noise ranks and ids come from ``seed``."""
    dev, V = lm.device, lm.vocab_size
    if not middle:
        return -float("inf")
    m = torch.tensor(middle, dtype=torch.long, device=dev)
    canvas0 = torch.cat([m, torch.tensor(suffix, dtype=torch.long, device=dev)])
    g = torch.Generator(device=dev).manual_seed(seed)
    ranks = torch.rand(m.numel(), generator=g, device=dev).argsort().argsort()
    noise = torch.randint(0, V, canvas0.shape, generator=g, device=dev)
    mask = torch.cat([ctx.mask, torch.ones(1, canvas0.numel(), dtype=torch.bool, device=dev)], 1)
    positions = ctx.pos[:, None] + torch.arange(canvas0.numel(), device=dev)
    total = 0.0
    for r in SCORE_RATES:
        hit = torch.zeros_like(canvas0, dtype=torch.bool)
        hit[: m.numel()] = ranks < max(1, round(r * m.numel()))
        canvas = torch.where(hit, noise, canvas0)[None]
        logp = lm.denoise(canvas, None, mask, positions, ctx.cache).log_softmax(-1)[0]
        total += float(logp[hit].gather(-1, canvas0[hit][:, None]).mean())
    return total / len(SCORE_RATES)


def infill_gemma(lm, prefix, suffix, length: int | str = "auto", *, seed: int = 0,
                 candidates=DEFAULT_CANDIDATES, settings: GemmaSettings | None = None,
                 watermark=None, streamer=None, **overrides) -> GemmaInfill:  # fmt: skip
    """The middle between ``prefix`` ids (non-empty, e.g. BOS + text) and ``suffix`` ids:
    ``length`` slots, or the best of ``candidates`` with ``length="auto"``.

    ``streamer`` (`mdiff.text.sampling.stream` interface) gets ``put(prefix)``, then
    ``put_draft(prefix + slots, step=i)`` after every step and ``put(middle)`` at the end;
    with ``"auto"`` the chosen length is re-run streamed (same seed, same middle)."""
    check_seed(seed)
    st = resolve_settings(settings, lm.generation_config, {**overrides, "seed": seed})
    prefix, suffix = _ids("prefix", prefix, lm), _ids("suffix", suffix, lm)
    if not prefix:
        raise InvalidInputError("the prefix needs at least one token (e.g. the BOS id)")
    if length == "auto":
        try:
            lengths = sorted({int(c) for c in candidates})
        except (TypeError, ValueError):
            raise InvalidInputError(f"candidates must be lengths, got {candidates!r}") from None
    elif isinstance(length, int) and not isinstance(length, bool):
        lengths = [length]
    else:
        raise InvalidInputError(f"length must be a positive int or 'auto', got {length!r}")
    if not lengths or lengths[0] < 1:
        raise InvalidInputError(f"lengths must be positive, got {lengths}")
    eos_ids = st.eos.ids(lm.eos_ids)
    ctx = Context(lm, exact=True)
    ctx.append(
        torch.tensor([prefix], device=lm.device),
        torch.ones(1, len(prefix), dtype=torch.bool, device=lm.device),
    )
    ctx.flush()  # the prefix is encoded once; the decoder never writes the cache
    runs, nfe = {}, 0
    for n in lengths:
        runs[n] = _fill(lm, ctx, st, n, suffix, seed, eos_ids, watermark)
        nfe += runs[n][1]
    scores = None
    if length == "auto":
        scores = {n: _score(lm, ctx, runs[n][0], suffix, seed) for n in lengths}
        nfe += len(SCORE_RATES) * len(lengths)
        best = max(lengths, key=lambda n: (scores[n], -n))
    else:
        best = lengths[0]
    if streamer is not None:
        runs[best] = _fill(lm, ctx, st, best, suffix, seed, eos_ids, watermark, streamer, prefix)
        nfe += runs[best][1]
    return GemmaInfill(runs[best][0], best, nfe, scores, {**st.to_dict(), "length": length})
