"""How the sampler calls a denoiser: padding, classifier-free guidance, KV caches, drift.

`ModelRunner.logits(x, s, e, fresh)` returns the guided logits (B, e − s, V) of window [s, e) of
the canvas x (B, L) and counts one model forward. Cache modes:

    none    every step runs the whole canvas (LLaDA; future blocks just stay masked); a
            block-causal model only [0, e), what the window's blocks can see
    exact   block-causal models (BD3-LM): the cache holds the finished blocks [0, s). A step
            feeds [cache end, e): the first step of a block also carries the clean blocks
            finished since, which are committed (then the cache is cropped to s), so a finished
            block costs no extra forward. Exact, because block j never sees blocks > j.
            The other steps of a block run only the rows still stepping in it, each against
            its own rows of the cache (`cache.select`, when the cache has it).
    prefix  bidirectional (Fast-dLLM): at a block's first step a full forward fills the cache;
            it keeps [0, s), and later steps feed [s, L) against it. Approximate.
    dual    like prefix, but the cache keeps every position and a step feeds only [s, e),
            spliced over the cached window (``cache_at=s``). Approximate.

``measure_drift`` re-runs the full canvas without a cache at each cached step and records
max |logits_cached − logits_full| over the window (≈ 0 for exact; the approximation error else).

Guidance (LLaDA's unsupervised CFG): the unconditional canvas has every fixed (prompt or
context) token replaced by ``[MASK]``. Both halves run as one batch, with or without an
attention mask, and are combined by the core's rule (`mdiff.guidance.combine`, the one
convention: scale ``w``, off at 1; ``cfg`` is ``l = u + w(c − u)``). Each position's logits are
one prediction: CFG-Zero*'s ``s`` and APG's projection are taken per position over the
vocabulary, and APG acts on the logits themselves (no path conversion, no momentum).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.guidance import combine

__all__ = ["CACHE_MODES", "ModelRunner", "resolve_cache_mode"]

CACHE_MODES = ("auto", "none", "exact", "prefix", "dual")


def resolve_cache_mode(mode: str, spec, model) -> str:
    """``auto`` → ``exact`` for a block-causal model with a cache, else ``none``."""
    if mode not in CACHE_MODES:
        raise InvalidInputError(f"cache must be one of {CACHE_MODES}, got {mode!r}")
    can = bool(spec.supports_cache) and callable(getattr(model, "new_cache", None))
    if mode == "auto":
        return "exact" if can and spec.attention == "block_causal" else "none"
    if mode != "none" and not can:
        raise InvalidInputError(f"cache={mode!r} needs a model with supports_cache and new_cache()")
    if mode == "exact" and spec.attention != "block_causal":
        raise InvalidInputError(
            "cache='exact' needs a block_causal model; a bidirectional one has only the "
            "approximate 'prefix' and 'dual' caches"
        )
    return mode


class ModelRunner:
    """Calls ``model`` on windows of a canvas; owns the cache and the forward / drift counters.

    ``real`` (B, L) marks non-padding slots; ``positions`` (B, L) or None (slots are positions);
    ``fixed`` (B, L) marks the context tokens that the unconditional branch masks; ``guidance``
    is the core's scale (1 = off) and ``guidance_method`` one of `mdiff.guidance.METHODS`.
    """

    def __init__(self, model, spec, mode: str, real: Tensor, positions: Tensor | None,
                 fixed: Tensor, guidance: float = 1.0, guidance_method: str = "cfg",
                 measure_drift: bool = False):  # fmt: skip
        self.model, self.mask_id, self.mode = model, spec.mask_id, mode
        self.upto = spec.attention == "block_causal"  # uncached: run [0, e) only
        self.narrow = getattr(model, "takes_logits_from", False) is True  # logits_from=k
        self.real = None if bool(real.all()) else real
        self.positions, self.fixed = positions, fixed
        self.w, self.method, self.guided = float(guidance), guidance_method, guidance != 1
        self.cache = None
        self.ragged = None  # a RaggedCache: exact, a length per row (`prepare(rows_apart=True)`)
        self.nfe = 0
        self.drift: list[float] | None = [] if measure_drift else None

    def logits(self, x: Tensor, s: int, e: int, fresh: bool, rows: Tensor | None = None) -> Tensor:
        """Guided logits (B, e − s, V) for window [s, e); ``fresh`` = first step of a block.

        ``rows``: the rows that need logits (the ones still stepping); the result is then
        theirs only, (len(rows), e − s, V). Cache mode none runs just these; exact runs just
        these against their rows of the cache (`select`) at a step that commits nothing. Rows
        are independent, so their logits do not change. The approximate modes run every row."""
        L = x.shape[1]
        self.nfe += 1
        some = rows is not None and rows.numel() < x.shape[0]
        if self.mode == "none":
            end = e if self.upto else L  # block-causal: slots ≥ e are in later blocks, unseen
            return self._guide(self._call(x, 0, end, rows=rows if some else None, keep=s))[
                :, : e - s
            ]
        if self.mode == "exact" and some and self._reads_only(s):
            sel = torch.cat([rows, rows + x.shape[0]]) if self.guided else rows
            out = self._call(x, s, e, self.cache.select(sel), rows=rows)
            if self.drift is not None:
                ref = self._call(x, 0, L, rows=rows)[:, s:e]  # not counted in nfe
                self.drift.append(float((out.double() - ref.double()).abs().max()))
            return self._guide(out)
        out = self._all(x, s, e, fresh)
        return out[rows] if some else out

    def rows_apart(self, x: Tensor, starts: Tensor, width: int, rows: Tensor) -> Tensor:
        """Logits (R, width, V) of each of ``rows`` at its own window [starts, starts + width)
        (`sampling.ragged`); one forward per ride-along length, counted as one step."""
        self.nfe += 1
        return self.ragged.logits(x, self.real, self.positions, starts, width, rows, self.narrow)

    def _all(self, x: Tensor, s: int, e: int, fresh: bool) -> Tensor:
        """Every row's guided logits of window [s, e) (the cached modes)."""
        L = x.shape[1]
        approx = self.mode in ("prefix", "dual")
        if approx and fresh:  # refresh: one full forward fills a new cache
            self.cache = self.model.new_cache()
            out = self._call(x, 0, L, self.cache)
            self.cache.commit()
            if self.mode == "prefix":
                self.cache.crop(s)
            return self._guide(out[:, s:e])
        if self.mode == "exact":
            if self.cache is None:
                self.cache = self.model.new_cache()
            c = self.cache.length
            if c > s:
                raise InvalidInputError(f"exact cache holds {c} positions past the window at {s}")
            out = self._call(x, c, e, self.cache, keep=s - c)
            if c < s:  # clean finished blocks rode along: keep them, drop the window's keys
                self.cache.commit()
                self.cache.crop(s)
            else:
                self.cache.discard()
        elif self.mode == "prefix":
            out = self._call(x, s, L, self.cache)[:, : e - s]
            self.cache.discard()
        else:  # dual
            out = self._call(x, s, e, self.cache, cache_at=s)
        if self.drift is not None:
            ref = self._call(x, 0, L)[:, s:e]  # not counted in nfe
            self.drift.append(float((out.double() - ref.double()).abs().max()))
        return self._guide(out)

    # ---- helpers ------------------------------------------------------------------------------

    def _reads_only(self, s: int) -> bool:
        """An exact-mode step at window ``s`` commits nothing (the cache already ends at s) and
        the cache can hand out some of its rows."""
        c = self.cache
        return c is not None and c.length == s and callable(getattr(c, "select", None))

    def _call(self, x: Tensor, start: int, end: int, cache=None, cache_at=None,
              rows: Tensor | None = None, keep: int = 0) -> Tensor:  # fmt: skip
        """Raw model logits for slots [start + keep, end) of `rows` (default all; (2B, ·, V)
        with guidance) from a forward over [start, end). A model with ``takes_logits_from``
        is asked for just those (``logits_from=keep``: e.g. no LM head on the rest)."""
        pick = (lambda t: t) if rows is None else (lambda t: None if t is None else t[rows])
        x, real, positions = pick(x), pick(self.real), pick(self.positions)
        ids = x[:, start:end]
        if self.guided:
            uncond = torch.where(pick(self.fixed), torch.full_like(x, self.mask_id), x)
            ids = torch.cat([ids, uncond[:, start:end]])
        keys = None
        if real is not None:
            stop = x.shape[1] if cache_at is not None else end
            keys = real[:, :stop] if cache is not None else real[:, start:end]
            keys = torch.cat([keys, keys]) if self.guided else keys
        pos = None
        if positions is not None:
            pos = positions[:, start:end]
            pos = torch.cat([pos, pos]) if self.guided else pos
        narrow = {"logits_from": keep} if keep and self.narrow else {}
        out = self.model(ids, attention_mask=keys, position_ids=pos, cache=cache,
                         cache_at=cache_at, **narrow)  # fmt: skip
        want = (ids.shape[0], ids.shape[1] - keep) if narrow else tuple(ids.shape)
        if not torch.is_tensor(out) or tuple(out.shape[:2]) != want:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise InvalidInputError(f"the model must return logits {(*want, 'V')}, got {got}")
        return out if narrow else out[:, keep:]

    def _guide(self, out: Tensor) -> Tensor:
        """The guided logits (B, W, V) from the two halves (2B, W, V), position by position."""
        if not self.guided:
            return out
        cond, uncond = out.chunk(2)
        V = out.shape[-1]
        g = combine(self.method, cond.reshape(-1, V), uncond.reshape(-1, V), self.w)
        return g.reshape(cond.shape)
