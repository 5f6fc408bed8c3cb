"""Run DiffusionGemma (`mdiff.text.model.gemma.DiffusionGemmaLM`) the way its own ``generate``
does, with the text frontend's extras: per-row randomness (batch invariance), left-padded
batches, EOS policies, the text watermark, two-channel streaming and pinned canvas tokens (FIM).

Per canvas (C = ``canvas_length``; canvases run until ``max_new_tokens`` is covered or every row
stopped): the context's new tokens are encoded into the exact KV cache, the canvas starts as
uniform random ids, and for n = N … 1 (N = ``max_denoising_steps``):

    logits = decoder(canvas, self-conditioning = previous step's processed logits, cache)
    processed = (EOS policy → watermark bias)(logits) / (t_min + (t_max − t_min)·n/N)
    draw ~ softmax(processed) per position;  argmax = argmax(processed)
    accept the k lowest-entropy positions with  Σ_{i<k} H_i ≤ entropy_bound  (≥ 1 always)
    canvas = accepted ? draw : fresh uniform id            (every position re-judged each step)
    a row stops when its argmax canvas is unchanged for ``stability_threshold`` steps and its
    mean entropy < ``confidence_threshold``

The canvas's output is the last argmax canvas. With a ``watermark`` (`TextWatermark` of the
model's vocabulary), the draws see each slot biased given its left neighbour in the previous
step's argmax canvas, and the argmax canvas is chosen left to right, each slot biased given the
slot just chosen (C small bias calls per step), so every output bigram had its green push.

Row b draws, in the model's order (init, then per step the draws and the renoise), from its own
generator (``seed + b``), only while it runs, so its output is the same alone or in any padded
batch; with one row and the generator seeded like `torch.manual_seed`, it is the model's own
``generate`` token for token.

Positions: a left-padded row's tokens get ``cumsum(mask) − 1`` (the model's ``generate`` gives every
row the slot index whatever its padding, and draws a batch from one global stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.text.sampling.gemma_settings import GemmaSettings, resolve_settings
from mdiff.text.sampling.gemma_stream import Feed, prompts_batch
from mdiff.text.sampling.seeded_draw import multinomial_at

__all__ = ["GemmaOutput", "Pinned", "denoise_canvas", "generate_gemma", "row_generators"]


@dataclass
class GemmaOutput:
    """``sequences`` (B, P + K·C): left-padded prompts + K canvases (pad after a stop or, with
    ``truncate``, after the first EOS); ``generated`` (B, ·) the canvas slots a row ran;
    ``tokens_per_forward`` (B,) kept generated tokens / decoder forwards of the row; ``nfe``
    decoder forwards of the batch; ``steps_per_canvas`` per row; ``settings``."""

    sequences: Tensor
    attention_mask: Tensor
    generated: Tensor
    tokens_per_forward: Tensor
    nfe: int
    steps_per_canvas: list[list[int]]
    settings: dict


@dataclass
class Pinned:
    """Canvas tokens that never change (``mask`` (B, C) bool, ``ids`` (B, C)): a FIM suffix."""

    mask: Tensor
    ids: Tensor


def row_generators(seed, generators, batch: int, device):
    """One generator per row and the base seed (None when the user passed generators)."""
    if generators is not None:
        gens = [generators] if isinstance(generators, torch.Generator) else list(generators)
        if len(gens) != batch or not all(isinstance(g, torch.Generator) for g in gens):
            raise InvalidInputError(f"need one torch.Generator per row ({batch}), got {gens!r}")
        return gens, None
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    return [torch.Generator(device=device).manual_seed(seed + b) for b in range(batch)], seed


class Context:
    """The encoded context of a batch: KV cache, key mask (B, T), next position per row (B,).
    ``exact=False`` keeps the ids and re-encodes all of them into a fresh cache at every canvas
    (the uncached reference the exact cache is measured against)."""

    def __init__(self, lm, exact: bool = True):
        self.lm, self.exact = lm, exact
        self.cache, self.mask, self.ids, self.pos, self.pending = None, None, None, None, 0

    def append(self, ids: Tensor, real: Tensor) -> None:
        """Queue ``ids`` (B, N) with ``real`` (B, N) for encoding before the next canvas."""
        real = real.bool()
        if self.mask is None:
            self.mask, self.ids = real, ids
            self.pos = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        else:
            self.mask, self.ids = torch.cat([self.mask, real], 1), torch.cat([self.ids, ids], 1)
        self.pending += ids.shape[1]

    def flush(self) -> None:
        """Encode what is queued: the new tokens (exact cache) or everything (no cache)."""
        if not self.pending:
            return
        if self.exact and self.cache is not None:
            n, start = self.pending, self.pos
        else:
            n, start = self.ids.shape[1], torch.zeros_like(self.pos)
            self.cache = self.lm.new_cache()
        real = self.mask[:, -n:]
        positions = (start[:, None] + real.long().cumsum(1) - 1).clamp_min(0)
        self.lm.encode(self.ids[:, -n:], self.mask, positions, self.cache)
        self.pos = start + real.long().sum(1)
        self.pending = 0


def _bias(lm, watermark, logits: Tensor, ctx: Tensor) -> Tensor:
    """``logits`` (B, C, V) plus the watermark's bias of each slot given its left neighbour
    ``ctx`` (B, C) (the model's pad id = none known: the context-free list)."""
    b, c, v = logits.shape
    none = lm.pad_id if lm.pad_id is not None else 0
    x = torch.stack([ctx, torch.full_like(ctx, none)], -1).reshape(b * c, 2)  # [prev, slot]
    two = torch.stack([torch.zeros_like(logits), logits], 2).reshape(b * c, 2, v)
    return watermark.bias(two, x, none, inplace=True)[:, 1].reshape(b, c, v)


def _marked(lm, watermark, logits, left, prev, pinned):
    """The logits draws and self-conditioning use: each slot biased given its left neighbour
    in the previous step's argmax canvas (none at the first step; the context's last token
    for slot 0)."""
    none = lm.pad_id if lm.pad_id is not None else 0
    ctx = torch.full(logits.shape[:2], none, dtype=torch.long, device=logits.device)
    ctx[:, 0] = left
    if prev is not None:
        ctx[:, 1:] = prev[:, :-1]
    marked = _bias(lm, watermark, logits, ctx)
    return marked if pinned is None else torch.where(pinned.mask[..., None], logits, marked)


def _marked_argmax(lm, watermark, logits, left, pinned) -> Tensor:
    """The argmax canvas (B, C), left to right, each slot biased given the slot chosen just
    before it: so every bigram of the output had its green push."""
    out = torch.empty(logits.shape[:2], dtype=torch.long, device=logits.device)
    prev = left
    for i in range(logits.shape[1]):
        a = _bias(lm, watermark, logits[:, i : i + 1], prev[:, None])[:, 0].argmax(-1)
        if pinned is not None:
            a = torch.where(pinned.mask[:, i], pinned.ids[:, i], a)
        out[:, i] = prev = a
    return out


@torch.no_grad()
def denoise_canvas(lm, ctx: Context, st: GemmaSettings, gens, active: Tensor, *, eos_ids=(),
                   watermark=None, pinned: Pinned | None = None, on_draft=None):  # fmt: skip
    """One canvas for the rows in ``active`` (B,): returns ``(argmax canvas (B, C), steps (B,),
    last raw logits (B, C, V))``; inactive rows get no draws and an unchanged canvas."""
    ctx.flush()
    B, dev, V = active.shape[0], active.device, lm.vocab_size
    C = pinned.mask.shape[1] if pinned is not None else lm.canvas_length
    rows = active.nonzero().squeeze(1).tolist()
    canvas = torch.zeros(B, C, dtype=torch.long, device=dev)
    for b in rows:
        canvas[b] = torch.randint(0, V, (C,), generator=gens[b], device=dev)
    if pinned is not None:
        canvas = torch.where(pinned.mask, pinned.ids, canvas)
    mask = torch.cat([ctx.mask, torch.ones(B, C, dtype=torch.bool, device=dev)], 1)
    positions = ctx.pos[:, None] + torch.arange(C, device=dev)
    mask = lm.decoder_mask(canvas, mask, ctx.cache, positions)  # once per canvas
    left = ctx.ids[:, -1]  # the last context token (prompts are left-padded)
    sc, argmax, raw = None, canvas.clone(), None
    done, steps = ~active, torch.zeros(B, dtype=torch.long, device=dev)
    history = None
    N = st.max_denoising_steps
    for n in range(N, 0, -1):
        raw = lm.denoise(canvas, sc, mask, positions, ctx.cache, check=False)
        temp = st.t_min + (st.t_max - st.t_min) * (torch.tensor(n, dtype=torch.int32) / N)
        base = st.eos.process(raw, eos_ids)
        proc = base
        if watermark is not None:
            proc = _marked(lm, watermark, base, left, None if sc is None else argmax, pinned)
        proc = proc / temp
        run = (~done).nonzero().squeeze(1).tolist()
        new_argmax = proc.max(-1).indices  # = argmax (first max)
        if watermark is not None:
            new_argmax = _marked_argmax(lm, watermark, base, left, pinned)
        ent = _entropy(proc)  # (B, C)
        if pinned is not None:
            ent = ent.masked_fill(pinned.mask, torch.inf)
        srt, idx = torch.sort(ent, dim=-1)
        take = torch.zeros_like(ent, dtype=torch.bool).scatter(
            -1, idx, torch.cumsum(srt, -1) - srt <= st.entropy_bound
        )
        new = canvas.clone()
        for b in run:  # the model's draw over every slot, kept at the taken ones; then noise
            new[b, take[b]] = multinomial_at(_probs(proc[b]), take[b], gens[b])
            noise = torch.randint(0, V, (C,), generator=gens[b], device=dev)
            new[b] = torch.where(take[b], new[b], noise)
        if pinned is not None:
            new = torch.where(pinned.mask, pinned.ids, new)
            new_argmax = torch.where(pinned.mask, pinned.ids, new_argmax)
        if len(run) == B:
            canvas, argmax, sc = new, new_argmax, proc
        else:  # finished rows keep their canvas, draft and self-conditioning
            keep = done[:, None]
            canvas, argmax = torch.where(keep, canvas, new), torch.where(keep, argmax, new_argmax)
            sc = proc if sc is None else torch.where(keep[..., None], sc, proc)
        steps += (~done).long()
        if st.adaptive_stop:
            stable, history = _stable(history, argmax, st.stability_threshold)
            if pinned is None:
                mean_h = ent.mean(-1)
            else:
                free = (~pinned.mask).sum(1).clamp_min(1)
                mean_h = ent.masked_fill(pinned.mask, 0.0).sum(-1) / free
            done = done | (stable & (mean_h < st.confidence_threshold))
        if on_draft is not None:
            on_draft(argmax, N - n)
        if bool(done.all()):
            break
    return argmax, steps, raw


def _probs(logits: Tensor):
    """The draw's probabilities of the rows ``index`` of ``logits`` (C, V)."""
    return lambda index: torch.softmax(logits[index], dim=-1, dtype=torch.float32)


def _entropy(logits: Tensor) -> Tensor:
    """``torch.distributions.Categorical(logits=logits).entropy()`` bit for bit (the same ops,
    the model's ``generate`` uses it), without the distribution's argument validation."""
    norm = logits - logits.logsumexp(dim=-1, keepdim=True)
    p = torch.softmax(norm, dim=-1)
    return -norm.clamp_(min=torch.finfo(norm.dtype).min).mul_(p).sum(-1)  # in place: no copies


def _stable(history, argmax: Tensor, k: int):
    """Rows whose argmax canvas equals each of the last ``k`` ones (always True for k = 0)."""
    if k == 0:
        return torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device), None
    if history is None:
        history = torch.full((k, *argmax.shape), -1, dtype=argmax.dtype, device=argmax.device)
    stable = (history == argmax[None]).all(-1).all(0)
    history = torch.cat([history[1:], argmax[None]])
    return stable, history


def generate_gemma(lm, input_ids, attention_mask=None, settings: GemmaSettings | None = None,
                   *, generators=None, streamer=None, watermark=None,
                   **overrides) -> GemmaOutput:  # fmt: skip
    """Continue each prompt by whole canvases (see the module docstring).

    ``input_ids``: a left-padded LongTensor (B, P) with ``attention_mask``, or token-id lists.
    ``streamer``: one per row (or one for a batch of one), `mdiff.text.sampling.stream`'s
    interface: ``put`` gets the prompt, then each finished canvas's kept tokens; ``put_draft``
    the row's committed tokens + argmax draft after every step. ``watermark``: a
    `TextWatermark` of the model's vocabulary (each slot biased green given its left
    neighbour in the previous step's argmax canvas)."""
    st = resolve_settings(settings, lm.generation_config, overrides)
    ids, real = prompts_batch(input_ids, attention_mask, lm)
    B, dev, C = ids.shape[0], ids.device, lm.canvas_length
    gens, seed = row_generators(st.seed, generators, B, dev)
    eos_ids = st.eos.ids(lm.eos_ids)
    eos_t = torch.tensor(eos_ids, dtype=torch.long, device=dev)
    pad = lm.pad_id if lm.pad_id is not None else (eos_ids[0] if eos_ids else 0)
    truncate = st.eos.truncate and bool(eos_ids)
    feed = Feed(streamer, ids, real) if streamer is not None else None
    ctx = Context(lm, exact=st.cache)
    ctx.append(ids, real)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    seen_eos = torch.zeros(B, dtype=torch.bool, device=dev)
    forwards = torch.zeros(B, dtype=torch.long, device=dev)
    outs, gen, kept, per, nfe = [], [], [], [[] for _ in range(B)], 0
    for _ in range(-(-st.max_new_tokens // C)):
        draft = None if feed is None else (lambda a, i, act=active: feed.draft(a, i, act))
        canvas, steps, _ = denoise_canvas(lm, ctx, st, gens, active, eos_ids=eos_ids,
                                          watermark=watermark, on_draft=draft)  # fmt: skip
        forwards += steps
        nfe += int(steps.max())
        for b in active.nonzero().squeeze(1).tolist():
            per[b].append(int(steps[b]))
        is_eos = torch.isin(canvas, eos_t) & active[:, None]
        keep = active[:, None].expand(B, C)
        if truncate:
            keep = keep & ~(seen_eos[:, None] | (is_eos.long().cumsum(1) - is_eos.long() > 0))
            seen_eos |= is_eos.any(1)
        outs.append(canvas.masked_fill(~keep, pad))
        gen.append(active[:, None].expand(B, C).clone())
        kept.append(keep)
        if feed is not None:
            feed.commit(outs[-1], keep)
        ctx.append(canvas, torch.ones_like(canvas, dtype=torch.bool))
        if st.eos.stop and eos_ids:
            active = active & ~is_eos.any(1)
        if not bool(active.any()):
            break
    if feed is not None:
        feed.end()
    n_kept = torch.cat(kept, 1).sum(1)
    settings_out = {**st.to_dict(), "seed": seed, "watermarked": watermark is not None,
                    "canvas_length": C}  # fmt: skip
    return GemmaOutput(
        sequences=torch.cat([ids, *outs], 1),
        attention_mask=torch.cat([real, torch.ones_like(torch.cat(gen, 1))], 1),
        generated=torch.cat([torch.zeros_like(real), *gen], 1), nfe=nfe,
        tokens_per_forward=n_kept.double() / forwards.clamp_min(1).double(),
        steps_per_canvas=per, settings=settings_out,
    )  # fmt: skip
