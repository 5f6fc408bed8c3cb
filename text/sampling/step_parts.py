"""The parts of one step of the text sampler (`mdiff.text.sampling.sampler`), for the rows
stepping (``idx``) at their window columns:

- `process`: the logits proposals are drawn from — [MASK] and the padded rows past the
  tokenizer's vocabulary (``spec.text_vocab``) never proposed (unless literal),
  the EOS policy, the watermark bias (one neighbour of context on each side of the window),
  the restriction of a healed first token;
- `propose`: proposals and their float64 scores (the configured score, or −entropy for the
  entropy schedule; EOS deferred), and the confidences edits are judged by;
- `plan`: the step's selection policy, which rows are at their block's last step, and the
  block clock (revealed fraction before and after the step) that ReMDM's σ reads.

Each takes the sampler's run state (``run``: its config, canvas, layout and per-row plans)."""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff import unmask_rules as R
from mdiff import unmasking as U
from mdiff.errors import InvalidInputError
from mdiff.text.sampling.heal import fit_vocab

__all__ = ["plan", "process", "propose"]


def process(run, logits: Tensor, cols: Tensor, idx=slice(None)) -> Tensor:
    """Logits proposals are drawn from: no [MASK], EOS policy, watermark bias, `restrict`
    (of rows ``idx``, whose logits these are, at columns ``cols``). One copy of ``logits``,
    changed in place; with the watermark it has a row on either side for the window's
    neighbours of context (their values are never read)."""
    B, W, V = logits.shape
    wm = run.watermark is not None
    buf = logits.new_empty(B, W + 2, V) if wm else None
    logits = buf[:, 1:-1].copy_(logits) if wm else logits.clone()
    if not run.literal:
        logits[..., run.mask_id] = -torch.inf
        if run.spec.text_vocab is not None:  # padded rows: no text
            logits[..., run.spec.text_vocab :] = -torch.inf
    logits = run.cfg.eos.process(logits, run.eos_ids, inplace=True)
    if wm:  # one neighbour of context on each side
        L = run.x.shape[1]
        around = torch.cat([cols[:, :1] - 1, cols, cols[:, -1:] + 1], 1)
        inside = (around >= 0) & (around < L)
        at = around.clamp(0, L - 1)
        real = run.lay.real[idx].gather(1, at) & inside
        ctx = torch.where(real, run.x[idx].gather(1, at), run.mask_id)
        logits = run.watermark.bias(buf, ctx, run.mask_id, inplace=True)[:, 1:-1]
    if run.restrict is not None:
        pos, allowed = run.restrict[0][idx], run.restrict[1][idx]
        j = pos - cols[:, 0]  # windows are contiguous columns
        rows = ((pos >= 0) & (j >= 0) & (j < cols.shape[1])).nonzero()[:, 0]
        at = j[rows]
        keep = fit_vocab(allowed[rows], logits.shape[-1])
        logits[rows, at] = logits[rows, at].masked_fill(~keep, -torch.inf)
    return logits


def propose(run, proc: Tensor, eligible: Tensor, editable: Tensor | None = None,
            prop: Tensor | None = None, gens=None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Proposals (B, W) and scores (float64, −inf where neither eligible nor editable): the
    configured score, or −entropy for the entropy schedule, both with EOS deferred; at
    ``editable`` (committed) positions the confidence an edit is judged by. ``prop``: the
    argmax of ``proc`` if already taken."""
    cfg = run.cfg
    prop = proc.argmax(-1) if prop is None else prop.clone()
    sc = torch.full(prop.shape, -torch.inf, dtype=torch.float64, device=prop.device)
    cand = eligible if editable is None else eligible | editable
    rows, cols = cand.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return prop, sc
    flat = proc.reshape(-1, proc.shape[-1])  # (B·W, V); rows, cols in row-major order
    if rows.numel() < flat.shape[0]:  # else every position: the whole window, no copy
        flat = flat.index_select(0, rows * proc.shape[1] + cols)
    lg = R.filter_logits(flat, cfg.top_k, cfg.top_p)  # (N, V)
    if run.greedy:
        p, noise = prop[rows, cols], None  # top-k keeps every maximum: the same argmax
    else:
        p, noise = U.propose_rows(lg, cand.sum(1).tolist(), gens, cfg.temperature,
                                  noise=cfg.score == "random")  # fmt: skip
    if not run.literal and bool((p == run.mask_id).any()):
        raise InvalidInputError("the model gives no finite logit except [MASK] at a position")
    prop[rows, cols] = p
    kind = "neg_entropy" if cfg.schedule == "entropy" else cfg.score
    ed = None if editable is None else editable[rows, cols]
    sl = cfg.eos.score_logits(lg, run.eos_ids)  # a copy only when EOS is deferred
    if ed is not None and kind == "confidence" and sl is lg:  # one score for both
        conf = R.score(kind, lg, p, scratch=run.scratch)
        vals = torch.where(ed, conf, cfg.eos.defer_scores(conf, p, run.eos_ids))
    else:  # the masks' scores; the edits' confidences
        el = slice(None) if ed is None else ~ed
        nz = None if noise is None else noise[el]
        vals = torch.empty(p.shape, dtype=torch.float64, device=p.device)
        vals[el] = cfg.eos.defer_scores(R.score(kind, sl[el], p[el], nz, run.scratch), p[el],
                                        run.eos_ids)  # fmt: skip
        if ed is not None:
            vals[ed] = R.score("confidence", lg[ed], p[ed], scratch=run.scratch)
    sc[rows, cols] = vals
    return prop, sc


def plan(run, idx=slice(None)) -> tuple[U.Policy, bool | Tensor, Tensor | None,
                                      Tensor | None]:  # fmt: skip
    """This step's selection policy for rows ``idx``, those at their block's last step,
    and the step's clock ``t``, ``t_next`` (R,): the block's revealed fraction before and
    after the step (κ(t) = t), which ReMDM's σ reads. Fixed schedules commit the masks
    planned for the step (plus as many as ReMDM reopened); threshold and entropy take what
    their rule accepts."""
    cfg = run.cfg
    if cfg.schedule == "threshold":
        return U.threshold(cfg.threshold, U.precomputed), False, None, None
    if cfg.schedule == "entropy":
        return U.entropy_bound(cfg.entropy_bound, U.precomputed), False, None, None
    step, left, size, spb = run.step[idx], run.left[idx], run.size[idx], run.spb[idx]
    k = step.clamp(max=left.shape[1] - 1)
    after = left.gather(1, k[:, None]).squeeze(1)  # planned masks after this step
    before = torch.where(k > 0, left.gather(1, (k - 1).clamp_min(0)[:, None])[:, 0], size)
    if cfg.schedule == "llada2":  # the step's share of the block, or all above threshold
        n = torch.where(step < spb, before - after, 0)
        policy = U.threshold_floor(lambda state: n, cfg.threshold, U.precomputed)
        return policy, step >= spb - 1, None, None
    size = size.clamp_min(1).double()
    if run.literal:  # the step's share, [MASK] commits included; nothing forced at the end
        policy = U.ranked(lambda state: before - after, U.precomputed)
        return policy, False, (size - before) / size, (size - after) / size
    policy = U.ranked(lambda state: state.masked.sum(1) - after, U.precomputed)
    return policy, step >= spb - 1, (size - before) / size, (size - after) / size
