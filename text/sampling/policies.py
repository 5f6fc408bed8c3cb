"""The text sampler's EOS policy: what `sampler` does with end-of-sequence ids.

The generic rules of a step (count schedules, scores, selection, ReMDM, top-k / top-p) are the
core's (`mdiff.unmask_rules`, `mdiff.unmasking`); what is text-specific is EOS: forbidding or
penalising it, deferring it behind every other proposal of a block, stopping a row whose block
is all EOS, and truncating after the first EOS.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["EOSPolicy"]

DEFERRED = -1e6  # offset that puts a deferred (EOS) proposal behind every other (|score| ≤ 1e5)


@dataclass(frozen=True)
class EOSPolicy:
    """What the sampler does with end-of-sequence ids (``spec.eos_ids`` unless ``eos_ids``).

    ``forbid``: EOS logits −inf (never proposed). ``penalty``: subtracted from EOS logits.
    ``defer``: EOS stays proposable but is scored without EOS in the softmax and committed only
    after every other proposal of the block (the intended, fixed form of LLaDA's
    ``confidence_eos_eot_inf``, which only suppressed EoT). ``stop``: a row whose current block
    decodes to EOS only stops; its remaining masks become EOS. ``truncate``: generated tokens after
    a row's first generated EOS become padding in the output (and are not streamed).
    ``early_stop`` (LLaDA 2's ``eos_early_stop``): a row stops after a step that commits (or
    edits in) an EOS while no mask precedes its first generated EOS; its remaining masks become
    EOS. (LLaDA2Pipeline leaves them [MASK] in ``sequences``, and never stops a row whose prompt
    holds an EOS, since it looks for the first EOS from the prompt's start.)
    """

    forbid: bool = False
    defer: bool = False
    penalty: float = 0.0
    stop: bool = False
    truncate: bool = False
    early_stop: bool = False
    eos_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if not math.isfinite(float(self.penalty)):
            raise InvalidInputError(f"EOS penalty must be finite, got {self.penalty!r}")
        if self.eos_ids is not None:
            object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))

    def ids(self, spec_ids: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(spec_ids) if self.eos_ids is None else self.eos_ids

    def process(self, logits: Tensor, ids: tuple[int, ...], *, inplace: bool = False) -> Tensor:
        """Logits with EOS forbidden and/or penalised (what proposals are drawn from);
        ``inplace``: changed in ``logits`` itself, for a caller whose tensor it is."""
        if not ids or not (self.forbid or self.penalty):
            return logits
        logits = logits if inplace else logits.clone()
        if self.forbid:
            logits[..., list(ids)] = -torch.inf
        else:
            logits[..., list(ids)] -= self.penalty
        return logits

    def score_logits(self, logits: Tensor, ids: tuple[int, ...]) -> Tensor:
        """Logits the score is computed from: without EOS when deferring."""
        if not (self.defer and ids) or self.forbid:
            return logits
        return logits.clone().index_fill_(-1, torch.tensor(ids, device=logits.device), -torch.inf)

    def defer_scores(self, s: Tensor, proposal: Tensor, ids: tuple[int, ...]) -> Tensor:
        """Put positions proposing EOS behind all others (their relative order is kept)."""
        if not (self.defer and ids):
            return s
        is_eos = torch.isin(proposal, torch.tensor(ids, device=proposal.device))
        return torch.where(is_eos, DEFERRED + s.nan_to_num(neginf=0.0).clamp(-1e5, 1e5), s)

    def confirmed_stop(self, x: Tensor, gen: Tensor, changed: Tensor, s: int, mask_id: int,
                       ids: tuple[int, ...]) -> Tensor:  # fmt: skip
        """``early_stop``'s rule, (B,) bool: rows whose step changed a token of the window
        ``changed`` (B, W) from slot ``s`` into an EOS, with no mask among the generated slots
        ``gen`` (B, L) before the row's first generated EOS in ``x`` (B, L)."""
        eos = torch.tensor(ids, device=x.device)
        hit = (changed & torch.isin(x[:, s : s + changed.shape[1]], eos)).any(1)
        is_eos = gen & torch.isin(x, eos)
        before = is_eos.long().cumsum(1) == 0
        return hit & is_eos.any(1) & ~(gen & (x == mask_id) & before).any(1)

    def to_dict(self) -> dict:
        return asdict(self)
