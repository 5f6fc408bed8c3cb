"""Green-list text watermark for masked-diffusion sampling (``mdiff-text-v1``), and its detector.

A keyed hash splits the vocabulary, for every context token ``prev``, into a *green* fraction
``γ`` and a red rest: ``green(prev, cur) = [u(key, prev, cur) < γ]`` with ``u`` uniform in
``[0, 1)``. ``prev = -1`` means "no context" and gives one context-free list.

Embedding (KGW "lefthash", context width 1, adapted to any-order unmasking). An autoregressive
model always knows the left neighbour of the token it emits; a masked-diffusion sampler may
commit a position before its neighbours. For each still-masked position ``i`` the logits get

    + δ·green(x[i-1], v)     if the left neighbour is decoded,
    + δ·green(v, x[i+1])     if the right neighbour is decoded (promote tokens that make it green),
    + δ·green(-1, v)         if neither is,

so every committed bigram had a chance to be pushed green from whichever side was known first.
Ids in ``ignore_ids`` and the mask id are never biased. The sampler calls it by wrapping the
model function, which composes with :func:`mdiff.solvers.unmask` and every policy::

    wm = TextWatermark(key, vocab_size)
    x = unmask(wm.wrap(model, mask_id), x_init, grid, mask_id, policy=...)
    # wm.wrap(model, mask_id) is   lambda x, t, **c: wm.bias(model(x, t, **c), x, mask_id)

Detection counts ``G`` green among the ``N`` *unique* scored bigrams ``(prev, cur)`` (repeats
would let looping text inflate the count) and reports ``z = (G − γN)/√(Nγ(1−γ))`` and the exact
tail ``p = P[Bin(N, γ) ≥ G]``. The tail is exact over random keys; for one fixed key on
low-entropy text recurring bigrams shift the null, so gate a deployed key on an empirical null.

The hash keeps every intermediate below 2⁶³ (32-bit words in int64, multiplications split in
16-bit halves), so it is exact and identical on every device and independent of the batch.
It is a fast mixer, not a PRF: like every KGW scheme, many marked samples leak the lists.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["MIN_TOKENS", "SCHEME", "TextDetection", "TextWatermark", "log_binomial_tail"]

SCHEME = "mdiff-text-v1"
# z ≥ 5 (one-sided p ≈ 3·10⁻⁷ over random keys). Not 4: for one fixed key on code the null is
# wider than the random-key bound (recurring bigrams such as indentation get one colour in
# every file); on 572 stdlib files one fixed key reached z = 3.9.
DEFAULT_THRESHOLD = 5.0
MIN_TOKENS = 50  # fewer scored tokens than this cannot show the mark (z ≥ 5 needs ≈ 4·25 / N)
_M32 = 0xFFFFFFFF
_CHUNK = 2**16  # hash this many pairs at a time (in cache: 4x faster than all at once)
_TABLE_MAX = 4096  # vocabularies up to this size cache the full (V+1, V) green table


def _mul32(h: Tensor, c: int) -> Tensor:
    """``h·c mod 2³²`` for ``0 ≤ h < 2³²`` without int64 overflow: ``c = c_hi·2¹⁶ + c_lo``."""
    lo, hi = c & 0xFFFF, c >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & _M32


def _mix32(h: Tensor) -> Tensor:
    """A bijective 32-bit avalanche mixer (xorshift-multiply, "lowbias32" constants)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def log_binomial_tail(n: int, g: int, p: float) -> float:
    """``log P[Bin(n, p) ≥ g]``, computed stably as a log-sum-exp over ``k = g..n`` of
    ``log C(n, k) + k·log p + (n−k)·log(1−p)``."""
    if g <= 0:
        return 0.0
    if g > n:
        return -math.inf
    k = torch.arange(g, n + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(n + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return float(torch.logsumexp(log_pmf, 0))


@dataclass
class TextDetection:
    """A detector verdict. ``p_value`` is the exact binomial tail (it may underflow to 0)."""

    detected: bool
    z: float
    p_value: float
    n_scored: int
    green: int
    scheme: str = SCHEME

    def to_dict(self) -> dict:
        return asdict(self)


class TextWatermark:
    """A policy the masked-diffusion sampler calls when it scores/commits tokens, and its detector.

    ``key`` (bytes, e.g. from ``mdiff.provenance.keys.watermark_key``) is expanded by
    HMAC-SHA256 into three 32-bit words; ``γ`` is the green fraction, ``δ`` the logit bonus.
    ``right_context=False`` turns off right-neighbour promotion (kept for ablations).
    """

    def __init__(
        self,
        key: bytes,
        vocab_size: int,
        *,
        gamma: float = 0.25,
        delta: float = 2.0,
        ignore_ids: Iterable[int] = (),
        right_context: bool = True,
    ):
        if not isinstance(key, bytes | bytearray) or not key:
            raise InvalidInputError("watermark key must be non-empty bytes")
        if not isinstance(vocab_size, int) or not 2 <= vocab_size < 2**31:
            raise InvalidInputError(f"vocab_size must be an int in [2, 2^31), got {vocab_size!r}")
        if not 0.0 < float(gamma) < 1.0:
            raise InvalidInputError(f"gamma must lie in (0, 1), got {gamma!r}")
        if not math.isfinite(float(delta)) or delta < 0:
            raise InvalidInputError(f"delta must be finite and >= 0, got {delta!r}")
        ignore = sorted({int(i) for i in ignore_ids})
        if ignore and (ignore[0] < 0 or ignore[-1] >= vocab_size):
            raise InvalidInputError("ignore_ids must lie in [0, vocab_size)")
        digest = hmac.new(bytes(key), SCHEME.encode(), hashlib.sha256).digest()
        self._k = [int.from_bytes(digest[4 * j : 4 * j + 4], "little") for j in range(3)]
        self.vocab_size, self.gamma, self.delta = vocab_size, float(gamma), float(delta)
        self.ignore_ids, self.right_context = tuple(ignore), bool(right_context)
        self._threshold = round(self.gamma * 2**32)  # green iff hash < γ·2³²
        self._tables: dict[tuple[torch.device, bool], Tensor] = {}

    # ---- the keyed green list ------------------------------------------------------------------

    def green(self, prev: Tensor, cur: Tensor) -> Tensor:
        """``[mix(mix(mix(k₀ ⊕ (prev+1)) ⊕ k₁ ⊕ cur) + k₂) < γ·2³²]``, broadcast over the inputs.

        ``prev ∈ [-1, V)`` (−1: no context), ``cur ∈ [0, V)``; elementwise, so batch-independent.
        """
        prev, cur = torch.as_tensor(prev), torch.as_tensor(cur)
        if prev.dtype.is_floating_point or cur.dtype.is_floating_point:
            raise InvalidInputError("green() takes integer token ids")
        prev, cur = prev.long(), cur.long()
        self._check_range(cur, 0, "cur")
        self._check_range(prev, -1, "prev")
        k0, k1, k2 = self._k
        h = _mix32((prev + 1) ^ k0)
        h = _mix32(h ^ cur ^ k1)
        h = _mix32((h + k2) & _M32)
        return h < self._threshold

    def _check_range(self, ids: Tensor, low: int, name: str) -> None:
        if ids.numel() and (int(ids.min()) < low or int(ids.max()) >= self.vocab_size):
            raise InvalidInputError(f"{name} ids must lie in [{low}, {self.vocab_size})")

    def _rows(self, ctx: Tensor, right: bool) -> Tensor:
        """Green rows (n, V) for contexts ``ctx`` (n,): ``green(ctx, v)``, or ``green(v, ctx)``."""
        V = self.vocab_size
        if V <= _TABLE_MAX:
            return self._table(ctx.device, right)[ctx + (0 if right else 1)]
        uniq, inverse = torch.unique(ctx, return_inverse=True)  # hash each context once
        vocab, step = torch.arange(V, device=ctx.device), max(1, _CHUNK // V)
        chunks = [uniq[i : i + step, None] for i in range(0, uniq.numel(), step)]
        rows = [self.green(vocab, c) if right else self.green(c, vocab) for c in chunks]
        rows = torch.cat(rows) if rows else torch.zeros(0, V, dtype=torch.bool, device=ctx.device)
        return rows[inverse]

    def _table(self, device: torch.device, right: bool) -> Tensor:
        """The cached green table: (V+1, V) ``[prev+1, cur]`` (row 0 context-free), or for
        ``right`` its transpose without that row, (V, V) ``[cur, prev]`` (contiguous rows)."""
        key = (device, right)
        if key not in self._tables:
            if right:
                self._tables[key] = self._table(device, False)[1:].T.contiguous()
            else:
                V, step = self.vocab_size, max(1, _CHUNK // self.vocab_size)
                cur = torch.arange(V, device=device)
                self._tables[key] = torch.cat(
                    [
                        self.green(torch.arange(p, min(p + step, V), device=device)[:, None], cur)
                        for p in range(-1, V, step)
                    ]
                )
        return self._tables[key]

    # ---- embedding -----------------------------------------------------------------------------

    def bias(self, logits: Tensor, x: Tensor, mask_id: int, *, inplace: bool = False) -> Tensor:
        """Return ``logits`` (B, L, V) plus ``δ`` on the green tokens of every masked position
        (``inplace``: added into ``logits`` itself, for a caller whose tensor it is)."""
        if not torch.is_tensor(logits) or logits.dim() != 3:
            raise InvalidInputError("logits must be a (B, L, V) tensor")
        if logits.shape[-1] != self.vocab_size:
            raise InvalidInputError(
                f"logits have {logits.shape[-1]} classes, the watermark {self.vocab_size}"
            )
        if not torch.is_tensor(x) or x.dtype != torch.long or tuple(x.shape) != logits.shape[:2]:
            raise InvalidInputError("x must be a LongTensor (B, L) matching the logits")
        masked = x == mask_id
        self._check_range(x[~masked], 0, "decoded token")
        fill = torch.full_like(x[:, :1], mask_id)
        at = masked.nonzero(as_tuple=True)  # only masked positions are biased
        left = torch.cat([fill, x[:, :-1]], 1)[at]  # x[i-1], "masked" before the first token
        right = torch.cat([x[:, 1:], fill], 1)[at]  # x[i+1], "masked" after the last token
        has_l = left != mask_id
        has_r = (right != mask_id) & self.right_context
        # the left neighbour's list, or the context-free one (−1) when neither side is known
        boost = self._rows(torch.where(has_l, left, -1), right=False).to(logits.dtype)
        only_r = has_r & ~has_l
        if bool(only_r.any()):
            boost[only_r] = 0
        if bool(has_r.any()):
            boost[has_r] += self._rows(right[has_r], right=True).to(logits.dtype)
        protected = [i for i in (*self.ignore_ids, mask_id) if 0 <= i < self.vocab_size]
        boost[:, protected] = 0
        out = logits if inplace else logits.clone(memory_format=torch.contiguous_format)
        if out.is_contiguous():  # rows of the flat (B·L, V) view: one add per entry, no copies
            out.view(-1, self.vocab_size).index_add_(0, at[0] * x.shape[1] + at[1], boost,
                                                     alpha=self.delta)  # fmt: skip
        else:
            out[at] = out[at] + self.delta * boost
        return out

    def wrap(self, model_fn: Callable[..., Tensor], mask_id: int) -> Callable[..., Tensor]:
        """``model_fn`` with :meth:`bias` on its logits, for :func:`mdiff.solvers.unmask`."""

        def marked(x: Tensor, t: Tensor, **cond) -> Tensor:
            return self.bias(model_fn(x, t, **cond), x, mask_id)

        return marked

    # ---- detection -----------------------------------------------------------------------------

    def detect(
        self, ids, *, min_tokens: int = MIN_TOKENS, threshold: float = DEFAULT_THRESHOLD
    ) -> TextDetection:
        """Score the unique bigrams of ``ids`` (1-D token ids); ids in ``ignore_ids`` are skipped
        as the scored token. Detected iff ``N ≥ min_tokens`` and ``z ≥ threshold``."""
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InvalidInputError(f"ids must be a sequence of token ids: {e}") from None
        if ids.dim() != 1 or (ids.numel() and ids.dtype.is_floating_point):
            raise InvalidInputError("ids must be a 1-D sequence of integer token ids")
        ids = ids.long().cpu()
        self._check_range(ids, 0, "token")
        prev, cur = ids[:-1], ids[1:]
        keep = ~torch.isin(cur, torch.tensor(self.ignore_ids, dtype=torch.long))
        pairs = torch.unique(prev[keep] * self.vocab_size + cur[keep])
        n = pairs.numel()
        g = int(self.green(pairs // self.vocab_size, pairs % self.vocab_size).sum())
        gam = self.gamma
        z = (g - gam * n) / math.sqrt(n * gam * (1 - gam)) if n else 0.0
        p_value = math.exp(log_binomial_tail(n, g, gam))
        return TextDetection(n >= min_tokens and z >= threshold, z, p_value, n, g)
