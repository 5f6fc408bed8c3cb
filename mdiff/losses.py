"""Losses: flow-matching MSE, masked-diffusion weighted cross-entropy, and the discrete ELBO.

Every loss returns one value per sample, shape (B,); the trainer takes the mean. That keeps
weighting, per-t diagnostics and distributed averaging in one place.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.paths import MaskPath, expand_t

__all__ = ["discrete_nelbo", "fm_mse", "generalized_kl", "loss_bins", "masked_ce"]


def fm_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Flow-matching regression: ``w · mean((pred − target)²)`` over all but the batch axis."""
    if pred.shape != target.shape:
        raise InvalidInputError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return per_sample if weight is None else per_sample * weight.float()


def loss_bins(t: Tensor, per_sample: Tensor, n_bins: int = 10) -> dict[str, float]:
    """Mean loss per t bin, ``{"loss_t0.0": …}``: the standard per-noise-level diagnostic.

    ``t`` may be per token (B, N); its per-sample mean places the sample in a bin.
    """
    t = t.detach().float().flatten(1).mean(1) if t.dim() > 1 else t.detach().float()
    idx = (t * n_bins).long().clamp(0, n_bins - 1)
    loss = per_sample.detach().float()
    return {
        f"loss_t{b / n_bins:.1f}": loss[idx == b].mean().item()
        for b in range(n_bins)
        if bool((idx == b).any())
    }


def masked_ce(
    logits: Tensor, x1: Tensor, masked: Tensor, weight: Tensor, valid: Tensor | None = None
) -> Tensor:
    """Masked-diffusion loss: ``Σ_i masked_i · w_i · (−log p(x1^i | x_t)) / n_valid`` per sample.

    ``weight`` is ``MaskPath.weight(t)``, shape (B,) or per token (B, L). ``valid`` (B, L) drops
    padding from the count; by default every position counts. The sum over t of this quantity
    is the negative ELBO (see :func:`discrete_nelbo`).
    """
    if logits.shape[:2] != x1.shape or masked.shape != x1.shape:
        raise InvalidInputError("logits (B, L, V), x1 (B, L) and masked (B, L) must agree")
    ce = F.cross_entropy(logits.float().transpose(1, 2), x1, reduction="none")  # (B, L)
    w = expand_t(weight, x1).float()
    per_token = torch.where(masked, w * ce, torch.zeros_like(ce))
    n = x1.shape[1] if valid is None else valid.sum(1).clamp_min(1)
    if valid is not None:
        per_token = per_token * valid
    return per_token.sum(1) / n


def generalized_kl(log_post: Tensor, x1: Tensor, x_t: Tensor, weight: Tensor) -> Tensor:
    """The generalized KL of a mixture path, per token (B, L).

    ``ℓ = −w · [p(x_t | x_t) − δ(x_t = x1) + (1 − δ(x_t = x1)) · log p(x1 | x_t)]`` with
    ``w = κ̇/(1 − κ)`` and ``log_post`` the log data posterior (B, L, V). Its integral over t is
    an ELBO for any posterior; with the absorbing structure of :meth:`MaskPath.posterior` it is
    exactly the weighted cross-entropy on masked tokens and zero elsewhere.
    """
    p_stay = log_post.gather(-1, x_t.unsqueeze(-1)).squeeze(-1).exp()
    logp_x1 = log_post.gather(-1, x1.unsqueeze(-1)).squeeze(-1)
    same = x_t == x1
    jump = torch.where(same, torch.zeros_like(logp_x1), logp_x1)
    return -expand_t(weight, x1) * (p_stay - same.to(p_stay.dtype) + jump)


LogitsFn = Callable[[Tensor, Tensor], Tensor]


def _subsets(n: int, m: int, device) -> Tensor:
    return torch.tensor(list(itertools.combinations(range(n), m)), device=device)


@torch.no_grad()
def discrete_nelbo(
    model_fn: LogitsFn,
    x1: Tensor,
    path: MaskPath,
    *,
    samples: int = 64,
    maskable: Tensor | None = None,
    exact: bool = False,
    generator=None,
) -> Tensor:
    """Negative ELBO (nats per sequence, shape (B,)) of ``x1`` under a masked-diffusion model.

    Integrating the weighted cross-entropy over t in closed form per number of masked tokens
    ``m`` gives ``NELBO = Σ_{m=1..L} (1/m) · E_{|S|=m} Σ_{i∈S} −log p(x1^i | x1 with S masked)``,
    independent of the κ schedule. We estimate it as ``L · E_{m~U{1..L}} [(1/m) Σ_{i∈S} CE_i]``
    (low variance: every draw scores m tokens), or, with ``exact=True`` on short sequences,
    enumerate every subset. ``maskable`` restricts masking (a prompt for a conditional
    likelihood). The model sees ``t = κ⁻¹(1 − m/L)``, the time at which m of L are masked on
    average. An exact denoiser makes the bound tight: the NELBO equals the true NLL.
    """
    B, L = x1.shape
    maskable = torch.ones_like(x1, dtype=torch.bool) if maskable is None else maskable.bool()
    total = torch.zeros(B, dtype=torch.float64, device=x1.device)
    for b in range(B):
        pos = maskable[b].nonzero().squeeze(1)
        n = pos.numel()
        if n == 0:
            continue
        if exact:
            if n > 16:
                raise InvalidInputError(f"exact NELBO enumerates 2^{n} subsets; use samples")
            draws = [(m, _subsets(n, m, x1.device)) for m in range(1, n + 1)]
        else:
            ms = torch.randint(1, n + 1, (samples,), generator=generator).tolist()
            draws = []
            for m in ms:
                perm = torch.randperm(n, generator=generator)[:m]
                draws.append((m, perm.unsqueeze(0).to(x1.device)))
        for m, subsets in draws:
            xs = x1[b].repeat(subsets.shape[0], 1)  # (S, L)
            masked = torch.zeros_like(xs, dtype=torch.bool)
            masked.scatter_(1, pos[subsets], True)
            xs = torch.where(masked, torch.full_like(xs, path.mask_id), xs)
            kappa = torch.full((xs.shape[0],), 1 - m / n, dtype=torch.float64)
            t = path.schedule.inverse(kappa).float().to(x1.device)
            out = model_fn(xs, t)  # (S, L, V) logits; float64 models keep their precision
            logp = out.to(torch.promote_types(out.dtype, torch.float32)).log_softmax(-1)
            nll = -logp.gather(-1, x1[b].expand_as(xs).unsqueeze(-1)).squeeze(-1)
            per_draw = (nll * masked).sum(1).double() / m  # (S,)
            if exact:
                total[b] += per_draw.sum() / math.comb(n, m)
            else:
                total[b] += per_draw.sum() * n / samples
    return total
