"""Token editing and LLaDA 2's commit rule in the core unmasking step (`mdiff.unmasking`).

Oracle: diffusers' `BlockRefinementScheduler.step` (greedy) on random logits and blocks: our
``unmask_step`` with ``threshold_floor`` + ``token_editing`` gives its ``prev_sample``, its
``transfer_index`` and its ``editing_transfer_index``.
"""

from __future__ import annotations

import pytest
import torch

from mdiff import unmask_rules as R
from mdiff import unmasking as U
from mdiff.errors import InvalidInputError
from mdiff.text.sampling.generation import GenerationConfig

torch.set_num_threads(1)
MASK = 9  # the last id; its logit is −inf, so neither side proposes it


def _case(seed: int, B: int = 3, L: int = 8, V: int = 10):
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(B, L, V, generator=g, dtype=torch.float64)
    logits[..., MASK] = -torch.inf
    x = torch.randint(0, MASK, (B, L), generator=g)
    x[torch.rand(B, L, generator=g) < 0.5] = MASK
    prompt = torch.zeros(L, dtype=torch.bool)
    prompt[: int(torch.randint(0, 3, (1,), generator=g))] = True
    x[:, prompt] = torch.randint(0, MASK, (B, int(prompt.sum())), generator=g)
    return logits, x, prompt


def _ours(logits, x, prompt, n: int, tau: float, tau_edit: float | None):
    masked = x == MASK
    proposal = logits.argmax(-1)
    scores = R.score("confidence", logits, proposal)
    state = U.UnmaskState(x, masked, logits, proposal, None, scores=scores,
                          editable=~masked & ~prompt[None])  # fmt: skip
    count = torch.full((x.shape[0],), n, dtype=torch.long)
    policy = U.threshold_floor(lambda s: count, tau, U.precomputed)
    edit = None if tau_edit is None else U.token_editing(tau_edit, U.precomputed)
    new = U.unmask_step(state, MASK, policy, edit=edit)
    edited = torch.zeros_like(masked) if state.edited is None else state.edited
    return new, masked & (new != MASK), edited


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tau,tau_edit,step", [(0.7, 0.5, 0), (0.3, 0.2, 1), (0.95, None, 2),
                                               (1.5, 0.6, 0), (0.5, -1.0, 3)])  # fmt: skip
def test_step_matches_block_refinement_scheduler(seed, tau, tau_edit, step):
    from diffusers import BlockRefinementScheduler

    logits, x, prompt = _case(seed)
    sched = BlockRefinementScheduler()
    sched.set_timesteps(4, block_length=x.shape[1])
    ref = sched.step(logits, step, x.clone(), mask_token_id=MASK, threshold=tau,
                     editing_threshold=tau_edit, prompt_mask=prompt)  # fmt: skip
    n = int(sched._transfer_schedule[step])
    new, committed, edited = _ours(logits, x, prompt, n, tau, tau_edit)
    assert torch.equal(new, ref.prev_sample)
    assert torch.equal(committed, ref.transfer_index)
    assert torch.equal(edited, ref.editing_transfer_index)
    if tau_edit is not None and tau_edit > 0 and seed == 0:
        assert bool(edited.any())  # the case exercises editing


def test_editing_changes_only_confident_differing_editable_tokens():
    logits, x, prompt = _case(7)
    proposal = logits.argmax(-1)
    conf = R.score("confidence", logits, proposal)
    editable = (x != MASK) & ~prompt[None]
    state = U.UnmaskState(x, x == MASK, logits, proposal, None, editable=editable)
    got = U.token_editing(0.5)(state)
    want = editable & (proposal != x) & (conf > 0.5)
    assert torch.equal(got, want) and bool(want.any())
    for off in (0.0, -0.5):
        assert not bool(U.token_editing(off)(state).any())


def test_edits_apply_on_a_last_step_and_reopening_wins():
    logits, x, prompt = _case(3)
    proposal = logits.argmax(-1)
    editable = (x != MASK) & ~prompt[None]
    never = U.ranked(lambda s: torch.zeros(x.shape[0], dtype=torch.long), U.precomputed)
    state = U.UnmaskState(x, x == MASK, logits, proposal, None, editable=editable,
                          scores=torch.zeros_like(logits[..., 0]))  # fmt: skip
    new = U.unmask_step(state, MASK, never, last=True, edit=U.token_editing(1e-9))
    moved = editable & (proposal != x)
    assert bool(moved.any())
    assert torch.equal(new, torch.where((x == MASK) | moved, proposal, x))
    state.decoded = editable
    reopened = U.unmask_step(state, MASK, never, remask=lambda s: s.decoded,
                             edit=U.token_editing(1e-9))  # fmt: skip
    assert bool((reopened[editable] == MASK).all())


def test_without_edit_the_step_is_the_plain_one():
    logits, x, prompt = _case(5)
    proposal = logits.argmax(-1)
    scores = R.score("confidence", logits, proposal)
    policy = U.threshold(0.6, U.precomputed)
    plain = U.unmask_step(U.UnmaskState(x, x == MASK, logits, proposal, None, scores=scores),
                          MASK, policy)  # fmt: skip
    st = U.UnmaskState(x, x == MASK, logits, proposal, None, scores=scores,
                       editable=(x != MASK))  # fmt: skip
    assert torch.equal(U.unmask_step(st, MASK, policy), plain) and st.edited is None


@pytest.mark.parametrize("bad", [dict(editing_threshold=float("nan")),
                                 dict(editing_threshold="0.5"), dict(edit_steps=-1),
                                 dict(edit_steps=True), dict(edit_steps=1.5)])  # fmt: skip
def test_config_refuses_bad_editing_settings(bad):
    with pytest.raises(InvalidInputError, match=next(iter(bad))):
        GenerationConfig(**bad)


def test_config_defaults_leave_editing_off():
    cfg = GenerationConfig()
    assert cfg.editing_threshold is None and cfg.edit_steps == 0 and not cfg.eos.early_stop


def test_core_loop_edits_a_token_the_model_changes_its_mind_about():
    """`mdiff.solvers.unmask` with ``edit``: the model predicts 0 on an empty canvas and 1 once
    anything is decoded, so the first commit (0) is re-decided to 1 only with editing."""
    from mdiff.solvers import unmask

    mask = 3

    def model_fn(x, t):
        decoded = (x != mask).any(1)  # (B,)
        best = torch.where(decoded, 1, 0)
        logits = torch.full((*x.shape, 4), -20.0, dtype=torch.float64)
        logits.scatter_(-1, best[:, None, None].expand(*x.shape, 1), 20.0)
        logits[..., mask] = -torch.inf
        return logits

    x0 = torch.full((2, 5), mask)
    grid = torch.linspace(0, 1, 6)
    one = U.ranked(lambda s: torch.ones(s.x.shape[0], dtype=torch.long), U.score_by("confidence"))
    plain = unmask(model_fn, x0, grid, mask, policy=one, temperature=0)
    edited = unmask(model_fn, x0, grid, mask, policy=one, temperature=0,
                    edit=U.token_editing(0.5))  # fmt: skip
    assert torch.equal(plain[:, 0], torch.zeros(2, dtype=torch.long))
    assert bool((plain[:, 1:] == 1).all()) and bool((edited == 1).all())
