"""The discrete unmasking step and its pluggable policies (the loop is `mdiff.solvers.unmask`).

One step of an absorbing-state ([MASK]) sampler, whatever drives it (the core loop over a time
grid, or the text sampler's blocks):

    propose   a token for every position to fill: float64 Gumbel-max on the logits
              (``sample_categorical``; ``propose_rows`` draws row by row over chosen positions)
    score     a number per position, higher commits first (``score_by(kind)``, or scores the
              caller computed and put in ``UnmaskState.scores``)
    select    a policy picks the masked positions that commit: how many (a count rule) and
              which (by score) — ``ranked``; or a rule on the scores — ``threshold``,
              ``entropy_bound``; a count with a threshold above it (LLaDA 2) — ``threshold_floor``;
              or the exact ancestral step of the mask path — ``stochastic_euler``
    edit      optionally, an edit policy re-decides committed tokens (token editing, LLaDA 2:
              ``token_editing``): an editable position takes its proposal; off, nothing changes
    remask    optionally, a remask policy reopens decoded positions (ReMDM: ``remdm``); a
              ranked policy then commits as many more, so the masked count keeps its schedule
    commit    ``unmask_step``: proposals where selected or edited, [MASK] where reopened; at a
              row's last step every masked position commits and none is reopened

Randomness: ``generator`` is one ``torch.Generator`` or a list with one per row; with a list, row
b draws only from generator b, so a row's result does not depend on the rest of the batch.
The tensor rules the policies use live in `mdiff.unmask_rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff import unmask_rules as R
from mdiff.errors import InvalidInputError
from mdiff.schedules import ConvexSchedule

__all__ = [
    "Edit",
    "Generators",
    "Policy",
    "Remask",
    "UnmaskState",
    "entropy_bound",
    "precomputed",
    "propose_rows",
    "ranked",
    "remdm",
    "sample_categorical",
    "schedule_count",
    "score_by",
    "stochastic_euler",
    "threshold",
    "threshold_floor",
    "token_editing",
    "uniform_like",
    "unmask_step",
]

Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


# ---- propose ------------------------------------------------------------------------------------


def _row_generator(generator: Generators, b: int) -> torch.Generator | None:
    return generator[b] if isinstance(generator, list | tuple) else generator


def uniform_like(shape: tuple[int, ...], generator: Generators, device) -> Tensor:
    """float64 uniforms of ``shape`` (B, ...). A list of B generators draws row b from the b-th,
    so a row's randomness does not depend on which other rows share the batch."""
    if not isinstance(generator, list | tuple):
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    if len(generator) != shape[0]:
        raise InvalidInputError(f"{len(generator)} generators for a batch of {shape[0]} rows")
    rows = [
        torch.rand(shape[1:], generator=g, device=device, dtype=torch.float64) for g in generator
    ]
    return torch.stack(rows)


def sample_categorical(logits: Tensor, generator: Generators = None, temperature=1.0) -> Tensor:
    """Draw token ids from logits (B, ..., V) by the Gumbel-max trick in float64.

    float64 matters: float32/bf16 Gumbel noise truncates the tail and biases low-temperature
    sampling. ``temperature = 0`` is argmax. ``generator`` may be one per row (see
    :func:`uniform_like`).
    """
    if temperature == 0:
        return logits.argmax(-1)
    u = uniform_like(tuple(logits.shape), generator, logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(-1)


def propose_rows(logits: Tensor, counts: list[int], generators: Generators, temperature: float,
                 noise: bool = False) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Proposals for N positions stacked row by row: ``logits`` (N, V), the first ``counts[0]``
    of row 0, then row 1, …. Row b draws from its own generator only — its Gumbel noise, then
    (``noise``) one uniform per position for the random score — so its draws depend on its own
    positions alone. Returns tokens (N,) and the uniforms (N,) float64 or None."""
    if temperature == 0 and not noise:
        return logits.argmax(-1), None
    tokens, uniforms = [], []
    for b, seg in enumerate(logits.split(counts)):
        if seg.shape[0]:
            gen = _row_generator(generators, b)
            tokens.append(sample_categorical(seg, gen, temperature))
            if noise:
                uniforms.append(torch.rand(seg.shape[0], generator=gen, device=seg.device,
                                           dtype=torch.float64))  # fmt: skip
    return torch.cat(tokens), (torch.cat(uniforms) if noise else None)


# ---- the state a policy sees --------------------------------------------------------------------


@dataclass
class UnmaskState:
    """What the policies of one step see (all tensors batch-first).

    ``t``, ``t_next`` and ``kappa`` place the step on a mask path (revealed fraction κ(t) before,
    κ(t_next) after); rules that do not use time may leave them None. ``editable`` marks the
    committed positions an edit policy may re-decide (their ``proposal`` and ``scores`` are what
    an edit would take and how sure it is); ``edited`` is set by `unmask_step`.
    """

    x: Tensor  # (B, L) current tokens
    masked: Tensor  # (B, L) bool: the [MASK] positions this step may fill
    logits: Tensor  # (B, L, V) model output
    proposal: Tensor  # (B, L) the token each position would commit
    generator: Generators
    t: Tensor | None = None  # (B,) current time
    t_next: Tensor | None = None  # (B,) time after this step
    kappa: ConvexSchedule | None = None
    scores: Tensor | None = None  # (B, L) float64 scores the caller computed (see `precomputed`)
    decoded: Tensor | None = None  # (B, L) bool: decoded positions a remask policy may reopen
    remasked: Tensor | None = None  # (B, L) bool: set by `unmask_step`, what was reopened
    editable: Tensor | None = None  # (B, L) bool: committed positions an edit policy may change
    edited: Tensor | None = None  # (B, L) bool: set by `unmask_step`, what was re-decided

    def revealed(self) -> tuple[Tensor, Tensor]:
        """κ(t) and κ(t_next) per row, float64."""
        if self.t is None or self.t_next is None or self.kappa is None:
            raise InvalidInputError("this policy needs the step's t, t_next and kappa")
        return self.kappa.kappa(self.t.double()), self.kappa.kappa(self.t_next.double())


Policy = Callable[[UnmaskState], Tensor]  # -> (B, L) bool, the positions that commit
Count = Callable[[UnmaskState], Tensor]  # -> (B,) long, how many commit
Score = Callable[[UnmaskState], Tensor]  # -> (B, L) float, higher commits first
Remask = Callable[[UnmaskState], Tensor]  # -> (B, L) bool, decoded positions to reopen
Edit = Callable[[UnmaskState], Tensor]  # -> (B, L) bool, editable positions that take the proposal


# ---- scores and counts --------------------------------------------------------------------------


def precomputed(state: UnmaskState) -> Tensor:
    """The scores the caller put in ``state.scores``."""
    if state.scores is None:
        raise InvalidInputError("this policy scores with state.scores, which is not set")
    return state.scores


def score_by(kind: str) -> Score:
    """A score of `mdiff.unmask_rules.SCORES` from the state's logits and proposal; ``random``
    draws its uniforms from the state's generator(s)."""
    if kind not in R.SCORES:
        raise InvalidInputError(f"unknown score {kind!r}; one of {R.SCORES}")

    def fn(state: UnmaskState) -> Tensor:
        noise = None
        if kind == "random":
            noise = uniform_like(tuple(state.masked.shape), state.generator, state.masked.device)
        return R.score(kind, state.logits, state.proposal, noise)

    return fn


def schedule_count(state: UnmaskState) -> Tensor:
    """How many to commit per row so the revealed fraction follows κ: ``round(n_masked·p)``."""
    k0, k1 = state.revealed()
    p = ((k1 - k0) / (1 - k0).clamp_min(1e-12)).clamp(0, 1)
    return torch.round(state.masked.sum(1).double() * p).long()


# ---- select ---------------------------------------------------------------------------------


def stochastic_euler(state: UnmaskState) -> Tensor:
    """Commit each masked position independently with probability ``(κ' − κ)/(1 − κ)``.

    This is the exact transition of the absorbing path from t to t' (the discrete Euler step
    with its jump probability taken in closed form), so at ``t' = 1`` every position commits.
    """
    k0, k1 = (k[:, None] for k in state.revealed())
    p = ((k1 - k0) / (1 - k0).clamp_min(1e-12)).clamp(0, 1)
    u = uniform_like(tuple(state.masked.shape), state.generator, state.masked.device)
    return state.masked & (u < p)


def ranked(count: Count, score: Score) -> Policy:
    """Commit, per row, the ``count(state)`` masked positions of highest ``score(state)``, plus
    as many as the remask policy reopened this step (ties: leftmost first)."""

    def policy(state: UnmaskState) -> Tensor:
        k = count(state)
        if state.remasked is not None:
            k = k + state.remasked.sum(1)
        return R.top_n(score(state), state.masked, k.clamp(min=0))

    return policy


def threshold(tau: float, score: Score) -> Policy:
    """Fast-dLLM: per row the best masked position plus every one scoring ≥ ``tau``."""
    return lambda state: R.threshold_accept(score(state), state.masked, tau)


def threshold_floor(count: Count, tau: float, score: Score) -> Policy:
    """LLaDA 2 (``BlockRefinementScheduler``): per row the ``max(count, #{score > tau})`` masked
    positions of highest score — every one above ``tau``, and at least the scheduled count."""
    return lambda state: R.scheduled_threshold_accept(score(state), state.masked, count(state), tau)


def entropy_bound(bound: float, score: Score) -> Policy:
    """DiffusionGemma's entropy bound on ``score`` = −entropy: lowest entropy first, while the
    entropy of the others accepted with a position stays ≤ ``bound`` (always ≥ 1 per row)."""
    return lambda state: R.entropy_bound_accept(-score(state), state.masked, bound)


# ---- remask ---------------------------------------------------------------------------------


def remdm(strategy: str, eta: float) -> Remask:
    """ReMDM: reopen each decoded position with probability σ (`unmask_rules.remask_sigma`, with
    α = κ(t) before and κ(t_next) after the step), drawn per row from the row's generator."""
    if strategy not in R.REMASK_STRATEGIES:
        raise InvalidInputError(f"unknown remask strategy {strategy!r}; one of "
                                f"{R.REMASK_STRATEGIES}")  # fmt: skip

    def policy(state: UnmaskState) -> Tensor:
        decoded = state.decoded
        out = torch.zeros_like(decoded)
        sigma = R.remask_sigma(strategy, eta, *state.revealed())
        for b in (decoded.any(1) & (sigma > 0)).nonzero().squeeze(1).tolist():
            idx = decoded[b].nonzero().squeeze(1)
            u = torch.rand(idx.numel(), generator=_row_generator(state.generator, b),
                           dtype=torch.float64, device=idx.device)  # fmt: skip
            out[b, idx[u < sigma[b]]] = True
        return out

    return policy


# ---- edit ---------------------------------------------------------------------------------------


def token_editing(tau: float, score: Score | None = None) -> Edit:
    """LLaDA 2's token editing: an editable (committed) position whose proposal differs from its
    token and whose ``score`` (default: the confidence p(proposal)) exceeds ``tau`` takes the
    proposal. ``tau`` ≤ 0 edits nothing (LLaDA 2's "off")."""
    score = score_by("confidence") if score is None else score

    def policy(state: UnmaskState) -> Tensor:
        if state.editable is None or not tau > 0:
            return torch.zeros_like(state.masked)
        return R.edit_accept(score(state), state.proposal, state.x, state.editable, tau)

    return policy


# ---- commit -------------------------------------------------------------------------------------


def unmask_step(state: UnmaskState, mask_id: int, policy: Policy, remask: Remask | None = None,
                last: bool | Tensor = False, edit: Edit | None = None) -> Tensor:  # fmt: skip
    """select → optional remask → optional edit → commit; the new tokens (B, L).

    ``last`` (a bool, or (B,) per row): the step after which nothing may stay masked — those rows
    commit every masked position and reopen none (on an all-last step the select and remask
    policies are not called, so they draw nothing; ``edit`` still runs). ``remask`` runs first,
    on ``state.decoded``; what it reopens is put in ``state.remasked`` for the policy to see.
    ``edit`` re-decides ``state.editable`` positions (put in ``state.edited``); a position both
    edited and reopened is reopened. Without ``edit`` the result is the plain step's.
    """
    state.edited = None
    if edit is not None and state.editable is not None:
        state.edited = edit(state) & state.editable & ~state.masked
    per_row = torch.is_tensor(last)
    if not per_row and last:
        return torch.where(_taken(state, state.masked), state.proposal, state.x)
    state.remasked = None
    if remask is not None and state.decoded is not None:
        state.remasked = remask(state) & state.decoded
        if per_row:
            state.remasked &= ~last[:, None]
    commit = policy(state) & state.masked
    if per_row:
        commit = torch.where(last[:, None], state.masked, commit)
    new = torch.where(_taken(state, commit), state.proposal, state.x)
    if state.remasked is None:
        return new
    return torch.where(state.remasked, torch.full_like(new, mask_id), new)


def _taken(state: UnmaskState, commit: Tensor) -> Tensor:
    """Positions that take their proposal: the commits and the edits."""
    return commit if state.edited is None else commit | state.edited
