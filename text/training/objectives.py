"""Training objectives for the text models, and their held-out likelihood estimates.

Each objective is ``objective(model, batch, generator) -> (loss [B], logs)`` for the core
`Trainer`; `batch` is ``{"input_ids": (B, L), "attention_mask": (B, L) bool}`` (or the ids
alone) and padding is never masked nor counted.

Masked diffusion (LLaDA / MDLM). Draw a masking level ``s ~ U(0, 1)`` per sequence (stratified
over the batch: ``s_b = (u + b/B) mod 1``), mask each token with probability
``p = (1 − ε)s + ε`` and score

    loss = (1 / n_valid) · Σ_{i masked} −log p_θ(x^i | x_t) / p.

In the core convention (t = 0 all ``[MASK]``, κ_t = t revealed) that is ``t = 1 − p`` with the
`MaskPath` ELBO weight ``κ̇/(1 − κ) = 1/p``. Its expectation over s is the discrete negative ELBO
per token, ``(1/L) Σ_m (1/m) E_{|S|=m} Σ_{i∈S} −log p_θ(x^i | x with S masked)`` (the integral
of ``C(L, m) p^{m−1} (1−p)^{L−m}`` over p is 1/m), up to O(ε).

Block diffusion (BD3-LM): the same loss with an independent level per block of the block-causal
model, scored by `model.block_forward(x_t, x_0)` — block b denoises with the clean blocks < b
as context. The per-token terms sum to the block-autoregressive NELBO.

Autoregressive (the FIM baseline): next-token cross-entropy, position i predicting token i + 1,
for a causal model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.losses import masked_ce
from mdiff.paths import MaskPath

__all__ = [
    "ARObjective",
    "BlockDiffusionObjective",
    "MaskedDiffusionObjective",
    "ar_nll",
    "masked_nelbo",
    "stratified_uniform",
]

LN2 = math.log(2.0)


def _unwrap(model):
    return getattr(model, "module", model)  # DDP wrapper -> the model


def _split(batch) -> tuple[Tensor, Tensor]:
    """(input_ids (B, L) long, valid (B, L) bool) from a dict batch or bare ids."""
    if isinstance(batch, dict):
        ids = batch["input_ids"]
        valid = batch.get("attention_mask")
    else:
        ids, valid = batch, None
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise InvalidInputError("a text batch needs input_ids of shape (B, L)")
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.bool()
    return ids.long(), valid


def _mask_arg(valid: Tensor) -> Tensor | None:
    """None when nothing is padding (the model may then use its fast unmasked kernels)."""
    return None if bool(valid.all()) else valid


def stratified_uniform(n: int, generator: torch.Generator, device=None) -> Tensor:
    """n draws, each marginally U(0, 1), one per stratum ``(u + k/n) mod 1``, in random order
    (so the blocks of one row do not get neighbouring strata); float64."""
    u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
    perm = torch.randperm(n, generator=generator, device=device)
    return (u + perm.to(torch.float64) / n) % 1.0


def _mask_id(model, mask_id: int | None) -> int:
    if mask_id is not None:
        return mask_id
    spec = getattr(_unwrap(model), "spec", None)
    if spec is None:
        raise InvalidInputError("pass mask_id: the model has no `spec`")
    return spec.mask_id


def _diffusion_terms(logits, x1, masked, t, valid, path, suppress_mask):
    """(loss [B], logs) shared by the masked and the block objective."""
    if suppress_mask:  # MDLM's SUBS: [MASK] is never the answer
        logits = logits.float().index_fill(-1, torch.tensor([path.mask_id], device=x1.device), -1e9)
    loss = masked_ce(logits, x1, masked, path.weight(t), valid)  # (B,)
    with torch.no_grad():
        picked, target = logits[masked].float(), x1[masked]  # (M, V), (M,)
        n_masked = max(int(target.numel()), 1)
        logs = {
            "masked_acc": float((picked.argmax(-1) == target).sum()) / n_masked,
            "masked_ce": float(F.cross_entropy(picked, target, reduction="sum")) / n_masked,
            "mask_rate": float(masked.sum() / valid.sum().clamp_min(1)),
        }
    return loss, logs


@dataclass
class MaskedDiffusionObjective:
    """LLaDA / MDLM loss for a bidirectional denoiser (see the module doc)."""

    mask_id: int | None = None  # default: model.spec.mask_id
    eps: float = 1e-3
    stratified: bool = True
    suppress_mask: bool = False  # True: score with the [MASK] logit removed (SUBS)

    def __call__(self, model, batch, generator: torch.Generator):
        x1, valid = _split(batch)
        path = MaskPath(_mask_id(model, self.mask_id), eps=self.eps)
        B = x1.shape[0]
        if self.stratified:
            s = stratified_uniform(B, generator, x1.device)
        else:
            s = torch.rand(B, generator=generator, device=x1.device, dtype=torch.float64)
        t = (1 - self.eps) * (1 - s)  # mask probability 1 − t = (1 − ε)s + ε
        sample = path.sample(x1, t, generator=generator, maskable=valid)
        logits = model(sample.x_t, attention_mask=_mask_arg(valid))  # (B, L, V)
        return _diffusion_terms(logits, x1, sample.masked, t, valid, path, self.suppress_mask)


@dataclass
class BlockDiffusionObjective:
    """BD3-LM loss: an independent masking level per block, `model.block_forward(x_t, x_0)`.

    `mask_range` clips the masking level ``s`` to ``[lo, hi]`` (BD3-LM's variance reduction;
    the loss is then no longer the ELBO); the default (0, 1) keeps it unbiased.
    """

    block_size: int | None = None  # default: model.spec.block_size
    mask_id: int | None = None
    eps: float = 1e-3
    mask_range: tuple[float, float] = (0.0, 1.0)
    suppress_mask: bool = False

    def __post_init__(self):
        lo, hi = self.mask_range
        if not 0.0 <= lo < hi <= 1.0:
            raise InvalidInputError(f"mask_range must satisfy 0 <= lo < hi <= 1, got {lo, hi}")

    def __call__(self, model, batch, generator: torch.Generator):
        x1, valid = _split(batch)
        inner = _unwrap(model)
        if not hasattr(inner, "block_forward"):
            raise InvalidInputError("BlockDiffusionObjective needs a model with block_forward")
        size = self.block_size or getattr(getattr(inner, "spec", None), "block_size", None)
        B, L = x1.shape
        if not size or L % size:
            raise InvalidInputError(f"seq_len {L} must be a multiple of block_size {size}")
        path = MaskPath(_mask_id(model, self.mask_id), eps=self.eps)
        nb = L // size
        lo, hi = self.mask_range
        s = lo + (hi - lo) * stratified_uniform(B * nb, generator, x1.device).view(B, nb)
        t = ((1 - self.eps) * (1 - s)).repeat_interleave(size, dim=1)  # (B, L) per token
        sample = path.sample(x1, t, generator=generator, maskable=valid)
        logits = inner.block_forward(sample.x_t, x1, attention_mask=_mask_arg(valid))
        return _diffusion_terms(logits, x1, sample.masked, t, valid, path, self.suppress_mask)


def _next_token_terms(logits: Tensor, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample summed next-token CE, count of targets and correct predictions."""
    target, ok = ids[:, 1:], valid[:, 1:] & valid[:, :-1]  # (B, L-1)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none")
    correct = (logits[:, :-1].argmax(-1) == target) & ok
    return (ce * ok).sum(1), ok.sum(1), correct.sum(1)


@dataclass
class ARObjective:
    """Next-token cross-entropy (mean over each sequence's real targets) for a causal model."""

    def __call__(self, model, batch, generator: torch.Generator):
        ids, valid = _split(batch)
        spec = getattr(_unwrap(model), "spec", None)
        if spec is not None and spec.attention != "causal":
            raise InvalidInputError(
                f"ARObjective needs a causal model (a {spec.attention} one sees the next token)"
            )
        logits = model(ids, attention_mask=_mask_arg(valid))  # (B, L, V)
        total, count, correct = _next_token_terms(logits, ids, valid)
        loss = total / count.clamp_min(1)
        logs = {"acc": float(correct.sum() / count.sum().clamp_min(1))}
        return loss, logs


# ------------------------------------------------------------------------------ held-out


@torch.no_grad()
def masked_nelbo(
    model, batch, *, mask_id: int, grid: int = 16, seed: int = 0, block: bool = False
) -> dict[str, float]:
    """Negative ELBO per real token of a masked (or, with `block`, block) diffusion model.

    Per sequence of n real tokens, ``NELBO = n · E_{m~U{1..n}} [(1/m) Σ_{i∈S} −log p(x^i | x_S
    masked)]`` with S a uniform m-subset (the Bernoulli-mask loss averaged over the masking
    level given S, so it is unbiased for the block NELBO too). The expectation over m is
    stratified into `grid` strata, ``m_k = ⌊(k + u)·n/grid⌋ + 1`` with u ~ U(0, 1): unbiased,
    and exact over m when `grid` is a multiple of n. All draws come from a generator seeded
    with `seed`, so the same model and batch always give the same number. A model that ignores
    its input scores exactly its mean cross-entropy, with no masking noise.
    """
    x1, valid = _split(batch)
    generator = torch.Generator(x1.device).manual_seed(seed)
    inner = _unwrap(model)
    n = valid.sum(1)  # (B,)
    total = torch.zeros((), dtype=torch.float64, device=x1.device)
    for k in range(grid):
        u = torch.rand(n.shape, generator=generator, device=x1.device, dtype=torch.float64)
        m = ((k + u) / grid * n).floor().long().add(1).minimum(n)  # (B,) tokens to mask
        scores = torch.rand(x1.shape, generator=generator, device=x1.device)
        scores = scores.masked_fill(~valid, 2.0)  # padding ranks last
        rank = scores.argsort(1).argsort(1)  # (B, L) rank of each position
        masked = rank < m[:, None]
        x_t = x1.masked_fill(masked, mask_id)
        if block:
            logits = inner.block_forward(x_t, x1, attention_mask=_mask_arg(valid))
        else:
            logits = model(x_t, attention_mask=_mask_arg(valid))
        ce = F.cross_entropy(logits.float().transpose(1, 2), x1, reduction="none")  # (B, L)
        per_row = (ce * masked).sum(1).double() / m.clamp(min=1)  # (1/m) Σ_S CE
        total += (per_row * n).sum()
    nats = float(total / grid / n.sum().clamp(min=1))
    return {"nats_per_token": nats, "bits_per_token": nats / LN2}


@torch.no_grad()
def ar_nll(model, batch) -> dict[str, float]:
    """Next-token negative log-likelihood per predicted token of a causal model."""
    ids, valid = _split(batch)
    logits = model(ids, attention_mask=_mask_arg(valid))
    total, count, _ = _next_token_terms(logits, ids, valid)
    nats = float(total.sum() / count.sum().clamp_min(1))
    return {"nats_per_token": nats, "bits_per_token": nats / LN2}
