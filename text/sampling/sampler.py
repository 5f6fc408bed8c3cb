"""The text sampler: blocks, EOS, caches, healing and streaming over the core's unmasking step.

``generate(model, prompts, config)`` appends ``gen_length`` masks to a left-padded prompt batch;
``denoise(model, x, ...)`` fills every ``[MASK]`` of a canvas (B, L), e.g. prefix + masks +
suffix for infilling. A step, for every row that is decoding:

    logits (window of the canvas; runner.py: guidance, caches)  → [MASK] never proposed
    → EOS policy → watermark bias → restriction (token healing) → top-k / top-p
    → proposals (float64 Gumbel, temperature) → scores (EOS deferred)
    → `mdiff.unmasking.unmask_step`: selection (schedule) → optional ReMDM remasking
      → optional token editing (``editing_threshold``) → commit

The schedules, scores, selection rules, ReMDM and top-k / top-p are the core's
(`mdiff.unmask_rules`, `mdiff.unmasking`); this module plans them per row and per block (the
step's logits processing, proposals and policy: `mdiff.text.sampling.step_parts`).

Blocks. Bidirectional model: block k of a row is its masked positions of rank
``k·block_length …`` — LLaDA's semi-AR blocks when the masks sit at the end (a full forward
every step; nothing outside the current block is committed). Block-causal model: blocks are
windows of ``block_length`` slots (a multiple of the model's ``block_size``) from the first model
block holding a mask; a left-padded row's positions are shifted by whole blocks of padding, so
slot blocks are model blocks and the exact cache applies. ``steps`` is the total: each of a
row's n blocks gets ``steps // n`` (≥ 1; default one token per step); the threshold and
entropy schedules take as many steps as they need; ``llada2`` commits the top
``max(n_i, #{score > threshold})`` at step i, ``n_i`` the equal split of the block's width.

Token editing (LLaDA 2, off by default): with ``editing_threshold`` every step also re-decides
the committed tokens of the row's current block (`mdiff.unmasking.token_editing`; proposals and
confidences are drawn for them too); a block whose masks are all committed before its step
budget is spent takes up to ``edit_steps`` more edit-only steps, stopping after one that edits
nothing. EOS ``early_stop`` (LLaDA 2): a row stops after a step that commits or edits in an EOS
while no mask precedes its first generated EOS.

Batching: every row keeps its own block, step and schedule, and draws its randomness from its
own generator (``seed + row``, or a user list) only at its own steps, over its own positions.
With an exact or no cache a row's output is therefore the same alone or in any left-padded
batch. The approximate caches run blocks in lock-step and share windows across rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff import unmask_rules as R
from mdiff import unmasking as U
from mdiff.errors import InvalidInputError
from mdiff.schedules import PolynomialKappa
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling import step_parts as parts
from mdiff.text.sampling.generation import (
    GenerationConfig,
    GenerationOutput,
    resolve_config,
    row_generators,
)
from mdiff.text.sampling.heal import check_restriction
from mdiff.text.sampling.layout import Layout, canvas_from_prompts, check_canvas, layout
from mdiff.text.sampling.ragged import RaggedCache
from mdiff.text.sampling.runner import ModelRunner, resolve_cache_mode
from mdiff.text.sampling.stream import CommitFeed

__all__ = ["GenerationConfig", "GenerationOutput", "denoise", "generate", "prepare"]

LINEAR = PolynomialKappa(1.0)  # κ(t) = t: a block's clock is its revealed fraction


def generate(model, input_ids, attention_mask=None, config: GenerationConfig | None = None, *,
             generators=None, streamer=None, watermark=None,
             **overrides) -> GenerationOutput:  # fmt: skip
    """Append ``gen_length`` masks to each prompt and denoise them.

    ``input_ids``: a left-padded LongTensor (B, P) with ``attention_mask`` (B, P), or a list of
    token-id lists. Rows are left-padded to a common length (for a block-causal model, to a whole
    number of blocks). The new tokens are ``output.sequences[:, -gen_length:]``.
    """
    cfg = resolve_config(config, overrides)
    spec = _spec_of(model)
    x, real = canvas_from_prompts(input_ids, attention_mask, spec, cfg.gen_length, _device(model))
    return denoise(model, x, None if bool(real.all()) else real, cfg, generators=generators,
                   streamer=streamer, watermark=watermark)  # fmt: skip


@torch.no_grad()
def denoise(model, x: Tensor, attention_mask: Tensor | None = None,
            config: GenerationConfig | None = None, *, generators=None, streamer=None,
            watermark=None, restrict=None, **overrides) -> GenerationOutput:  # fmt: skip
    """Fill every ``mask_id`` position of ``x`` (B, L), left-padded per ``attention_mask``.

    ``generators``: one ``torch.Generator`` per row (default ``seed + row``). ``streamer``: one
    per row (see `mdiff.text.sampling.stream`). ``watermark``: an object with
    ``bias(logits, x, mask_id) -> logits`` (e.g. ``TextWatermark``), applied every step.
    ``restrict``: ``(positions (B,), allowed (B, V) bool)`` — row b's token at column
    ``positions[b]`` (−1: none) is drawn only from ``allowed[b]`` (token healing, `heal.py`).
    """
    run = prepare(model, x, attention_mask, config, generators=generators, streamer=streamer,
                  watermark=watermark, restrict=restrict, **overrides)  # fmt: skip
    out, tokens = run.run()
    return run.result(out, tokens)


def prepare(model, x: Tensor, attention_mask: Tensor | None = None,
            config: GenerationConfig | None = None, *, generators=None, streamer=None,
            watermark=None, restrict=None, origin: int | None = None, rows_apart: bool = False,
            **overrides) -> _Run:  # fmt: skip
    """`denoise`'s loop state, not run yet (``run.run()``; or step by step, rows joining and
    leaving, in `mdiff.text.sampling.rows`). ``origin``: `layout`'s. ``rows_apart``: with the
    exact cache, every row steps in its own block each tick (`sampling.ragged`) instead of
    block by block in lock-step — where the model, settings and canvas allow it."""
    cfg = resolve_config(config, overrides)
    spec = _spec_of(model)
    x, real = check_canvas(x, attention_mask, spec)
    lay = layout(real, x == spec.mask_id, spec, cfg.block_length, origin)
    mode = resolve_cache_mode(cfg.cache, spec, model)
    gens, seed = row_generators(cfg, generators, x.shape[0], x.device)
    eos_ids = cfg.eos.ids(spec.eos_ids)
    runner = ModelRunner(model, spec, mode, real, lay.positions, real & ~lay.gen, cfg.guidance,
                         cfg.guidance_method, cfg.measure_drift)  # fmt: skip
    feed = None if streamer is None else CommitFeed(streamer, real, lay.gen, eos_ids,
                                                    cfg.eos.truncate)  # fmt: skip
    bs = int(spec.block_size or 0)
    if rows_apart and mode == "exact" and cfg.guidance == 1 and not cfg.measure_drift and (
            not cfg.allow_mask_token and lay.block_length == bs and x.shape[1] % bs == 0
            and RaggedCache.supports(model)):  # fmt: skip
        runner.ragged = RaggedCache(model, real, bs)
    run = _Run(spec, cfg, x.clone(), lay, runner, gens, watermark, feed,
               mode != "none" and runner.ragged is None,
               check_restriction(restrict, x))  # fmt: skip
    run.settings = {**cfg.to_dict(), "cache": mode, "seed": seed,
                    "watermarked": watermark is not None}  # fmt: skip
    return run


class _Run:
    """The loop's state: per row the current block, step in block and planned schedule."""

    def __init__(self, spec: DenoiserSpec, cfg: GenerationConfig, x: Tensor, lay: Layout,
                 runner: ModelRunner, gens, watermark, feed, sync: bool,
                 restrict: tuple[Tensor, Tensor] | None = None):  # fmt: skip
        self.spec, self.cfg, self.x, self.lay, self.runner = spec, cfg, x, lay, runner
        self.gens, self.watermark, self.feed, self.sync = gens, watermark, feed, sync
        self.mask_id, self.eos_ids = spec.mask_id, cfg.eos.ids(spec.eos_ids)
        B, dev = x.shape[0], x.device
        n_blocks = (lay.n_blocks - lay.first_block).clamp_min(1)  # the row's own blocks
        total = lay.gen.sum(1)
        spb = -(-total // n_blocks) if cfg.steps is None else cfg.steps // n_blocks
        self.spb = spb.clamp_min(1)  # (B,) steps per block
        zeros = torch.zeros(B, dtype=torch.long, device=dev)
        self.left = zeros[:, None].repeat(1, int(self.spb.max()))  # planned masks after a step
        self.cur = lay.first_block - 1  # current block
        self.step = zeros.clone()
        self.size = zeros.clone()  # masks in the block when entered
        self.done = zeros.bool()
        self.forwards = zeros.clone()
        self.per_block: list[list[int]] = [[] for _ in range(B)]
        self.auto = torch.zeros_like(lay.gen)  # filled by the EOS stop rule
        self.fixed = cfg.schedule in R.FIXED_SCHEDULES
        remasking = cfg.remask != "none" and cfg.remask_eta > 0
        self.remask = U.remdm(cfg.remask, cfg.remask_eta) if remasking else None  # ReMDM or None
        self.n_steps, self.last_block = 0, None
        self.restrict = restrict  # (positions (B,), allowed (B, V)) or None
        self.literal = cfg.allow_mask_token  # LLaDA's literal generate (parity checks)
        self.greedy = cfg.temperature == 0 and cfg.score != "random" and (cfg.top_p or 1) >= 1
        tau = cfg.editing_threshold
        self.edit = U.token_editing(tau, U.precomputed) if tau is not None and tau > 0 else None
        self.posting = zeros.bool()  # rows in their block's edit-only steps
        self.post = zeros.clone()  # edit-only steps taken in the current block
        self.scratch = R.Scratch()  # the scores' softmax buffers, reused every step

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> tuple[Tensor, Tensor]:
        self.start(range(self.x.shape[0]))
        while self.tick():
            pass
        return self._output()

    def start(self, rows) -> None:
        """Enter ``rows`` (new rows) into their first block; stream their prompts."""
        self._enter(list(rows))
        if self.feed is not None:
            self.feed.commit(self.x, self._final())

    @torch.no_grad()
    def tick(self) -> bool:
        """One denoising step of the rows whose turn it is; False when every row is done."""
        if bool(self.done.all()):
            return False
        active = ~self.done
        if self.runner.ragged is not None:  # every row in its own block
            rows, bl = active.nonzero().squeeze(1), self.lay.block_length
            starts = self.lay.origin + self.cur[rows] * bl
            logits = self.runner.rows_apart(self.x, starts, bl, rows)
            self._step(logits, starts[:, None] + torch.arange(bl, device=starts.device), active)
            return True
        g = int(self.cur[active].min()) if self.sync else None
        stepping = active & (self.cur == g) if self.sync else active
        s, e = self._window(g, stepping)
        rows = stepping.nonzero().squeeze(1)  # the others rest (exact, none: not run)
        logits = self.runner.logits(self.x, s, e, fresh=g != self.last_block, rows=rows)
        self.last_block = g
        cols = torch.arange(s, e, device=self.x.device).expand(rows.numel(), e - s)
        self._step(logits, cols, stepping)
        return True

    def finish(self) -> GenerationOutput:
        """The output of every row (finished ones; `rows.take` picks them); ends their streams."""
        return self.result(*self._output())

    def result(self, out: Tensor, tokens: Tensor) -> GenerationOutput:
        """The `GenerationOutput` of `_output`'s ``(sequences, kept tokens)``."""
        return GenerationOutput(
            sequences=out, generated=self.lay.gen, nfe=self.runner.nfe, drift=self.runner.drift,
            settings=self.settings, steps_per_block=self.per_block,
            tokens_per_forward=tokens.double() / self.forwards.clamp_min(1).double(),
        )  # fmt: skip

    def _window(self, g, stepping: Tensor) -> tuple[int, int]:
        L, bl, o = self.x.shape[1], self.lay.block_length, self.lay.origin
        if self.spec.attention == "block_causal":  # slot blocks; rows apart: their span
            if g is None:
                cur = self.cur[stepping]
                first = o if self.literal else o + int(cur.min()) * bl
                return first, min(o + (int(cur.max()) + 1) * bl, L)
            s = o + g * bl
            return s, min(s + bl, L)
        if g is None:
            return 0, L
        cols = ((self.lay.blocks == g) & stepping[:, None]).any(0).nonzero().squeeze(1)
        return int(cols.min()), int(cols.max()) + 1

    def _step(self, logits: Tensor, cols: Tensor, stepping: Tensor) -> None:
        """One step of the ``stepping`` rows; ``logits`` (R, W, V) are theirs at their window
        columns ``cols`` (R, W) (one window for all, or each row's own block). All the work
        below is on those rows only (``idx``: all rows, or their indices)."""
        B = self.x.shape[0]
        rows = stepping.nonzero().squeeze(1)
        idx = slice(None) if rows.numel() == B else rows
        gens = self.gens if self.gens is None or rows.numel() == B else [
            self.gens[r] for r in rows.tolist()]  # fmt: skip
        x_r = self.x[idx]
        xw = x_r.gather(1, cols)
        blocks = self.lay.blocks[idx].gather(1, cols)
        cur = self.cur[idx, None]
        # literal LLaDA: a [MASK] committed in an earlier block stays open
        gen = self.lay.gen[idx].gather(1, cols)
        in_block = gen & ((blocks <= cur) if self.literal else (blocks == cur))
        masked = xw == self.mask_id
        proc = parts.process(self, logits, cols, idx)
        prop = proc.max(-1).indices  # = argmax (the first maximum), a faster kernel on CPU
        editable = None if self.edit is None else in_block & ~masked
        if editable is not None and self.greedy and self.remask is None:
            editable &= prop != xw  # only a new argmax can be an edit: score just those
        prop, sc = parts.propose(self, proc, in_block & masked, editable, prop, gens)
        policy, last, t, t_next = parts.plan(self, idx)
        state = U.UnmaskState(xw, in_block & masked, proc, prop, gens, t, t_next, LINEAR,
                              scores=sc, decoded=in_block & ~masked, editable=editable)  # fmt: skip
        new = U.unmask_step(state, self.mask_id, policy, self.remask, last, self.edit)
        changed = torch.zeros_like(self.x, dtype=torch.bool)
        changed[idx] = changed[idx].scatter(1, cols, new != xw)
        self.x[idx] = x_r.scatter(1, cols, new)
        self.forwards += stepping.long()
        if self.feed is not None and self.feed.wants_drafts:
            canvas = self.x.clone()
            still = (new == self.mask_id) & self.lay.real[idx].gather(1, cols)
            canvas[idx] = canvas[idx].scatter(1, cols, torch.where(still, proc.argmax(-1), new))
            self.feed.draft(canvas, self.n_steps)
        self.n_steps += 1
        edited = None
        if state.edited is not None:
            edited = torch.zeros(B, dtype=torch.bool, device=new.device)
            edited[idx] = state.edited.any(1)
        self._advance(stepping, changed, 0, edited)
        if self.feed is not None:
            self.feed.commit(self.x, self._final())

    # ---- bookkeeping --------------------------------------------------------------------------

    def _advance(self, stepping: Tensor, changed: Tensor | None = None, s: int = 0,
                 edited: Tensor | None = None) -> None:  # fmt: skip
        """After a step: count it, apply the EOS rules, move rows whose block is done on.
        ``changed`` (B, W): the window's tokens this step changed, from slot ``s``; ``edited``
        (B,): rows that edited a token."""
        for b in stepping.nonzero().squeeze(1).tolist():
            self.per_block[b][-1] += 1
        self.step += stepping.long()
        in_block = self.lay.gen & (self.lay.blocks == self.cur[:, None])
        finished = stepping & ~(in_block & (self.x == self.mask_id)).any(1)
        if self.literal:  # LLaDA: a block ends after its steps, masks left or not
            finished |= stepping & (self.step >= self.spb)
        if self.edit is not None:
            finished = self._edit_only_steps(finished, stepping, edited)
        if self.cfg.eos.early_stop and self.eos_ids and changed is not None:
            self._confirmed_stop(stepping, changed, s)
        if self.cfg.eos.stop and self.eos_ids:
            is_eos = torch.isin(self.x, torch.tensor(self.eos_ids, device=self.x.device))
            all_eos = finished & in_block.any(1) & ~(in_block & ~is_eos).any(1)
            fill = all_eos[:, None] & self.lay.gen & (self.x == self.mask_id)
            self.x[fill] = self.eos_ids[0]
            self.auto |= fill
            self.done |= all_eos
        self._enter((finished & ~self.done).nonzero().squeeze(1).tolist())

    def _edit_only_steps(self, finished: Tensor, stepping: Tensor,
                         edited: Tensor | None) -> Tensor:  # fmt: skip
        """Rows whose block is done: a block that committed its last mask with steps of its
        budget left takes edit-only steps while they edit, at most ``edit_steps``."""
        was = self.posting & stepping
        self.post += was.long()
        edited = torch.zeros_like(stepping) if edited is None else edited
        end = was & (~edited | (self.post >= self.cfg.edit_steps))
        start = finished & ~self.posting & (self.step < self.spb) & (self.cfg.edit_steps > 0)
        self.posting = (self.posting | start) & ~end
        return finished & ~self.posting

    def _confirmed_stop(self, stepping: Tensor, changed: Tensor, s: int) -> None:
        """LLaDA 2's EOS early stop (`EOSPolicy.confirmed_stop`); a stopped row's remaining
        masks become EOS."""
        stop = self.cfg.eos.confirmed_stop(self.x, self.lay.gen, changed, s, self.mask_id,
                                           self.eos_ids) & stepping & ~self.done  # fmt: skip
        fill = stop[:, None] & self.lay.gen & (self.x == self.mask_id)
        self.x[fill] = self.eos_ids[0]
        self.auto |= fill
        self.done |= stop

    def _enter(self, rows) -> None:
        """Move each row to its next block with masks (done when none is left)."""
        for b in rows:
            self.post[b] = 0
            while True:
                self.cur[b] += 1
                c = int(self.cur[b])
                if c >= int(self.lay.n_blocks[b]):
                    self.done[b] = True
                    break
                self.per_block[b].append(0)
                m = int(((self.lay.blocks[b] == c) & (self.x[b] == self.mask_id)).sum())
                if m:
                    self.size[b], self.step[b] = m, 0
                    if self.fixed or self.cfg.schedule == "llada2":
                        self._plan_block(b, m)
                    break

    def _plan_block(self, b: int, m: int) -> None:
        """Row b's planned masks after each step of its new block of ``m`` masks. ``llada2``
        splits the block's width (LLaDA 2: a block that starts inside the prompt still has
        ``block_length`` shares), so its plan may go below zero."""
        n = int(self.spb[b])
        if self.cfg.schedule == "llada2":
            width = self.lay.block_length if self.spec.attention == "block_causal" else m
            counts = R.equal_split(torch.tensor([width]), n)[0].to(self.x.device)
            self.size[b] = width
            m = width
        else:
            counts = R.transfer_counts(self.cfg.schedule, torch.tensor([m]), n,
                                       self.cfg.eps)[0].to(self.x.device)  # fmt: skip
        self.left[b] = 0
        self.left[b, :n] = m - counts.cumsum(0)

    def _final(self) -> Tensor:
        """Tokens nothing can change any more (streamed): not the current block's while
        remasking or editing may still change them."""
        final = self.lay.real & (self.x != self.mask_id)
        if self.remask is not None or self.edit is not None:
            current = self.lay.gen & (self.lay.blocks == self.cur[:, None]) & ~self.done[:, None]
            final &= ~current
        return final

    def _output(self) -> tuple[Tensor, Tensor]:
        x, kept = self.x, self.lay.gen & ~self.auto
        if self.cfg.eos.truncate and self.eos_ids:
            is_eos = self.lay.gen & torch.isin(x, torch.tensor(self.eos_ids, device=x.device))
            after = self.lay.gen & (is_eos.long().cumsum(1) - is_eos.long() > 0)
            pad = self.spec.pad_id if self.spec.pad_id is not None else self.eos_ids[0]
            x = x.masked_fill(after, pad)
            kept &= ~after
        if self.feed is not None:
            self.feed.end(x)
        return x, kept.sum(1)


# ---- helpers ------------------------------------------------------------------------------------


def _spec_of(model) -> DenoiserSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, DenoiserSpec):
        raise InvalidInputError("the model must expose a DenoiserSpec as `model.spec`")
    return spec


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")
