"""Tensor rules the unmasking policies (`mdiff.unmasking`) are built from.

How many tokens a step commits (per row; ``n`` = masks to fill, ``T`` = steps):

    equal      LLaDA: ``n // T`` each, the first ``n mod T`` steps one more
    dream      Dream: ``ts = linspace(1, eps, T+1)``; step i commits ``⌊r·(1 − ts[i+1]/ts[i])⌋`` of
               the ``r`` still masked (all at the last step) — per row, not Dream's batch mean
    cosine     MaskGIT: after step i, ``⌊n·cos(π/2·(i+1)/T)⌋`` stay masked
    threshold  Fast-dLLM: the best position plus every one scoring ≥ τ (adaptive step count)
    entropy    DiffusionGemma: sort by entropy H ascending, accept the prefix with
               ``Σ_{j≤k} H_j − H_k ≤ bound`` (always ≥ 1)

How positions are scored (higher commits first): the probability of the proposed token
(LLaDA: un-tempered softmax at the noisy argmax), the top-2 margin, −entropy, or uniform noise.

LLaDA 2 (diffusers' ``BlockRefinementScheduler``): a step commits the top ``max(n_i, #{score > τ})``
masked positions (``n_i`` the step's scheduled count), and *token editing* re-decides committed
tokens: an editable position whose proposal differs from its token and scores > τ_edit takes the
proposal (``edit_accept``).

Error correction (ReMDM, Wang et al. 2025): a decoded token is remasked with probability σ;
``cap`` σ = min(η, (1 − α_s)/α_t), ``rescale`` σ = η·min(1, (1 − α_s)/α_t), with α the
revealed fraction before (t) and after (s) the step. σ = 0 is the plain step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = [
    "FIXED_SCHEDULES",
    "REMASK_STRATEGIES",
    "SCHEDULES",
    "SCORES",
    "Scratch",
    "cosine_split",
    "dream_split",
    "edit_accept",
    "entropy",
    "entropy_bound_accept",
    "equal_split",
    "filter_logits",
    "remask_sigma",
    "score",
    "scheduled_threshold_accept",
    "threshold_accept",
    "top_n",
    "transfer_counts",
]

FIXED_SCHEDULES = ("equal", "dream", "cosine")
SCHEDULES = (*FIXED_SCHEDULES, "threshold", "entropy", "llada2")
SCORES = ("confidence", "margin", "neg_entropy", "random")
REMASK_STRATEGIES = ("none", "cap", "rescale")


# ---- how many tokens per step -------------------------------------------------------------------


def _check_counts(n: Tensor, steps: int) -> Tensor:
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be a positive int, got {steps!r}")
    n = torch.as_tensor(n).long()
    if n.dim() != 1 or bool((n < 0).any()):
        raise InvalidInputError("mask counts must be a 1-D tensor of non-negative ints")
    return n


def equal_split(n: Tensor, steps: int) -> Tensor:
    """LLaDA's split of ``n`` (B,) masks over ``steps``: (B, steps), e.g. 10, 4 → [3, 3, 2, 2]."""
    n = _check_counts(n, steps)
    base, extra = n // steps, n % steps
    return base[:, None] + (torch.arange(steps, device=n.device)[None] < extra[:, None]).long()


def dream_split(n: Tensor, steps: int, eps: float = 1e-3) -> Tensor:
    """Dream's ``1 − s/t`` schedule, simulated per row: (B, steps), rows sum to ``n``.

    With ``steps == n`` step 0 commits 0 (``⌊n·(1 − eps)/n⌋``) and the last step commits 2.
    """
    n = _check_counts(n, steps)
    ts = torch.linspace(1, eps, steps + 1, dtype=torch.float64).tolist()
    left, out = n.clone(), []
    for i in range(steps):
        k = left if i == steps - 1 else (left.double() * (1 - ts[i + 1] / ts[i])).floor().long()
        out.append(k)
        left = left - k
    return torch.stack(out, 1)


def cosine_split(n: Tensor, steps: int) -> Tensor:
    """MaskGIT's cosine schedule: few commits early, many late; (B, steps), rows sum to ``n``."""
    n = _check_counts(n, steps)
    frac = [math.cos(math.pi / 2 * (i + 1) / steps) for i in range(steps)]
    frac[-1] = 0.0
    left = (n.double()[:, None] * n.new_tensor(frac, dtype=torch.float64)).floor().long()
    before = torch.cat([n[:, None], left[:, :-1]], 1)
    return before - left


def transfer_counts(kind: str, n: Tensor, steps: int, eps: float = 1e-3) -> Tensor:
    """Per-row commit counts (B, steps) of a fixed schedule (``equal``, ``dream``, ``cosine``)."""
    if kind == "equal":
        return equal_split(n, steps)
    if kind == "dream":
        return dream_split(n, steps, eps)
    if kind == "cosine":
        return cosine_split(n, steps)
    raise InvalidInputError(f"no fixed count for schedule {kind!r}; one of {FIXED_SCHEDULES}")


# ---- which positions --------------------------------------------------------------------------


def top_n(score: Tensor, eligible: Tensor, n: Tensor) -> Tensor:
    """Per row, the ``n[b]`` eligible positions of highest score (ties: leftmost first)."""
    s = score.double().masked_fill(~eligible, -torch.inf)  # (B, L)
    order = s.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(s.shape[1], device=s.device).expand_as(s)
    rank = torch.empty_like(order).scatter_(-1, order, ranks)
    return eligible & (rank < n.to(rank.device)[:, None])


def threshold_accept(score: Tensor, eligible: Tensor, tau: float) -> Tensor:
    """Fast-dLLM: the best eligible position of each row plus every one scoring ≥ ``tau``."""
    best = top_n(score, eligible, torch.ones(score.shape[0], dtype=torch.long, device=score.device))
    return best | (eligible & (score >= tau))


def scheduled_threshold_accept(score: Tensor, eligible: Tensor, n: Tensor, tau: float) -> Tensor:
    """LLaDA 2: per row the ``max(n[b], #{eligible, score > tau})`` eligible positions of highest
    score — every one above ``tau`` (strictly), and at least the scheduled ``n[b]``."""
    above = (eligible & (score > tau)).sum(1)
    return top_n(score, eligible, torch.maximum(n.to(above.device), above))


def edit_accept(score: Tensor, proposal: Tensor, x: Tensor, editable: Tensor, tau: float) -> Tensor:
    """Token editing (LLaDA 2): the editable positions (B, L) whose proposal differs from the
    current token and whose score exceeds ``tau`` (strictly); ``tau`` ≤ 0 edits nothing."""
    if not tau > 0:
        return torch.zeros_like(editable)
    return editable & (proposal != x) & (score > tau)


def entropy_bound_accept(h: Tensor, eligible: Tensor, bound: float) -> Tensor:
    """DiffusionGemma's EB rule on entropies ``h`` (B, L): in ascending order accept position k
    while ``Σ_{j≤k} h_j − h_k ≤ bound``, i.e. the entropy of the others accepted with it. The
    lowest-entropy eligible position is always accepted."""
    hs = h.double().masked_fill(~eligible, torch.inf)
    sorted_h, order = hs.sort(dim=-1, stable=True)
    finite = torch.where(sorted_h.isfinite(), sorted_h, torch.zeros_like(sorted_h))
    others = torch.cat([torch.zeros_like(finite[:, :1]), finite.cumsum(-1)[:, :-1]], -1)
    ok = (others <= bound) & sorted_h.isfinite()
    return torch.zeros_like(eligible).scatter(-1, order, ok) & eligible


# ---- logits and scores ------------------------------------------------------------------------


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Keep the ``top_k`` largest and the smallest set of probability ≥ ``top_p`` (−inf elsewhere);
    the argmax always survives."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1.0:
        sorted_l, order = logits.sort(dim=-1, descending=True)
        p = sorted_l.double().softmax(-1)
        drop_sorted = p.cumsum(-1) - p > top_p  # mass strictly before this token exceeds top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def entropy(logits: Tensor) -> Tensor:
    """Entropy (nats, float64) of softmax(logits) over the last axis."""
    logp = logits.double().log_softmax(-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


class Scratch:
    """Reusable float64 buffers for a loop's per-step softmax (`score`): each step's (N, V)
    float64 copy and probabilities land in the same memory instead of fresh multi-MB tensors,
    which on CPU cost page faults every step. The values are those of the plain computation."""

    def __init__(self):
        self._bufs: dict[str, Tensor] = {}

    def take(self, key: str, shape: tuple[int, ...], device) -> Tensor:
        """A contiguous float64 (``shape``) view of buffer ``key`` (grown when too small)."""
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n or buf.device != torch.device(device):
            buf = self._bufs[key] = torch.empty(n, dtype=torch.float64, device=device)
        return buf[:n].view(shape)

    def softmax64(self, logits: Tensor) -> Tensor:
        """``logits.double().softmax(-1)`` in this scratch's buffers (valid until the next)."""
        shape = tuple(logits.shape)
        x = self.take("x", shape, logits.device)
        x.copy_(logits)  # float32/bf16 -> float64 is exact: the same values as .double()
        return torch.softmax(x, -1, out=self.take("p", shape, logits.device))


def score(kind: str, logits: Tensor, proposal: Tensor, noise: Tensor | None = None,
          scratch: Scratch | None = None) -> Tensor:  # fmt: skip
    """Score (float64) of each position from its logits (..., V) and proposed token (...):
    ``confidence`` p(proposal), ``margin`` p₁ − p₂, ``neg_entropy`` −H, ``random`` the given
    uniform ``noise``. Higher is committed first. ``scratch``: compute the softmax in its
    buffers (the same values; the result never aliases them)."""
    if kind == "random":
        if noise is None or noise.shape != proposal.shape:
            raise InvalidInputError("the random score needs uniform noise shaped like proposal")
        return noise.double()
    if kind == "neg_entropy":
        return -entropy(logits)
    p = logits.double().softmax(-1) if scratch is None else scratch.softmax64(logits)
    if kind == "confidence":
        return p.gather(-1, proposal.unsqueeze(-1)).squeeze(-1)
    if kind == "margin":
        top2 = p.topk(min(2, p.shape[-1]), dim=-1).values
        return top2[..., 0] - (top2[..., 1] if top2.shape[-1] > 1 else 0)
    raise InvalidInputError(f"unknown score {kind!r}; one of {SCORES}")


# ---- ReMDM ------------------------------------------------------------------------------------


def remask_sigma(strategy: str, eta: float, alpha_t: Tensor, alpha_s: Tensor) -> Tensor:
    """ReMDM remasking probability per row for a step from revealed fraction α_t to α_s."""
    if strategy not in REMASK_STRATEGIES:
        raise InvalidInputError(f"unknown remask strategy {strategy!r}; one of {REMASK_STRATEGIES}")
    alpha_t, alpha_s = alpha_t.double(), alpha_s.double()
    if strategy == "none" or eta == 0:
        return torch.zeros_like(alpha_t)
    room = torch.where(alpha_t > 0, (1 - alpha_s) / alpha_t.clamp_min(1e-12), 0.0).clamp_min(0)
    if strategy == "cap":
        return room.clamp(max=float(eta))
    return float(eta) * room.clamp(max=1.0)
