"""Fill-in-the-middle with a masked-diffusion model: ``prefix + [MASK]·n + suffix`` → middle.

No sentinels: the model learned infilling from the masked objective itself. The result is
spliced from the user's own strings (``prefix + middle + suffix``), never from re-decoded
context, so the text around a hole is byte-for-byte what it was.

Length. ``length=n`` fills exactly n tokens. ``length="auto"`` runs a length search: every
candidate length in ``candidates`` becomes a row of one batch, all are denoised together, and
each filled canvas is scored by the model's own masked-diffusion estimate of the middle's
log-likelihood per token (``_score``: the middle re-masked at a few fixed rates, one forward
each, the same masks for every candidate); the best-scoring row wins. Each input is searched
independently, so a batch of inputs works (rows = inputs × candidates).

Token healing (``heal=True``, `sampling.heal`): a prefix that ends in a space or inside a word
gives that tail to the hole, whose first token must then start with it; the tail is cut from
the middle again. ``length`` counts the hole's tokens, the healed one included. With a
byte-level BPE (ours, GPT-2, Qwen2) this works on bytes and the context keeps the tokens the
whole text would have.

Tokenizers (`sampling.token_bytes`): ours, a transformers tokenizer (or the loaders' wrapper),
or any with ``encode``/``decode``. Special ids and the mask token come from the tokenizer; a
model whose ``spec.mask_id`` is not the tokenizer's mask token is refused. The user's text is
encoded with special tokens' spellings as plain text (``"<|mask|>"`` in code stays code).

Several holes: ``fill(model, tok, text, marker="<FILL>")`` fills every marker of one file; holes
are filled left to right, each seeing the holes before it filled and the text after it with the
later markers removed.

Seeds: every row of input i (each candidate length) draws from ``seed + i``, and the sampler
and the score are batch-invariant (a block-causal model's rows are padded to whole blocks), so
an input's result is the same alone or in any batch, and re-running the chosen length alone
reproduces the search's result exactly (the CLI streams that way).

Line endings: the model sees the text with LF line breaks; a middle written into text whose line
breaks are mostly CRLF gets CRLF breaks too (`line_ending`). Everything outside the hole stays
the caller's own characters.

Bounds: at most `MAX_HOLES` markers per ``fill``; a middle must fit the model's window.

Context window: when prefix + middle + suffix exceed the model's ``max_len``, the prefix keeps
its end and the suffix its start (the suffix keeps up to a third of the room, more if the
prefix is short).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.nn.cache import KVCache
from mdiff.record import check_seed
from mdiff.text.sampling.heal import heal as heal_prefix
from mdiff.text.sampling.heal import middle_text
from mdiff.text.sampling.layout import layout, left_pad, pad_multiple
from mdiff.text.sampling.sampler import GenerationConfig, GenerationOutput, denoise
from mdiff.text.sampling.token_bytes import token_view

__all__ = [
    "DEFAULT_CANDIDATES",
    "MARKER",
    "MAX_HOLES",
    "InfillResult",
    "fill",
    "fit_context",
    "infill",
    "line_ending",
    "window",
]

DEFAULT_CANDIDATES = (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64)
MARKER = "<FILL>"
MAX_HOLES = 256  # markers one fill() call fills
_SCORE_RATES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class InfillResult:
    """``text`` = prefix + middle + suffix; ``span`` the middle's characters in ``text``."""

    text: str
    middle: str
    length: int  # tokens generated
    span: tuple[int, int]
    tokens_per_forward: float
    nfe: int
    scores: dict[int, float] = field(default_factory=dict)  # length -> score (auto only)
    settings: dict = field(default_factory=dict)


def _max_len(model) -> int:
    """The positions a canvas may use: the config's, less a RoBERTa-style offset (positions
    start at ``padding_idx + 1``, `adapters.HFAdapter`)."""
    cfg = getattr(model, "config", None)
    n = int(getattr(cfg, "max_len", 0) or getattr(cfg, "max_position_embeddings", 0) or 1024)
    return n - int(getattr(model, "position_offset", 0) or 0)


def window(model, context: int | None = None) -> int:
    """The tokens a FIM canvas may hold: ``context`` (the model's training window), at most
    the model's positions."""
    return min(context or _max_len(model), _max_len(model))


def fit_context(
    pre: list[int], suf: list[int], n: int, max_len: int
) -> tuple[list[int], list[int]]:
    """Trim token lists so ``pre + n + suf`` fits `max_len`: the prefix keeps its end, the
    suffix its start; the suffix keeps up to a third of the room, more if the prefix is short."""
    room = max_len - n
    if room < 0:
        raise InvalidInputError(f"a {n}-token middle does not fit the model's {max_len} positions")
    s = min(len(suf), max(room // 3, room - len(pre)))
    p = min(len(pre), room - s)
    return pre[len(pre) - p :], suf[:s]


@torch.no_grad()
def _score(model, x: Tensor, real: Tensor, gen: Tensor, mask_id: int) -> Tensor:
    """Mean log-likelihood per middle token (B,): the middle re-masked at fixed rates (the
    first ⌈r·n⌉ middle tokens of a fixed permutation of the row's own middle, the same in any
    batch), log p of the masked tokens. Positions are the sampler's (`layout`), so the score
    sees the canvas as the sampler did.

    For a block-causal model with our `KVCache` the whole blocks before a row's middle see
    nothing after them, so they are computed once, not once per rate (`_prefix_cache`); rows
    are grouped by that prefix, a property of the row alone, so a row's score is the same in
    any batch."""
    pos = layout(real, gen, model.spec, None).positions
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    count = torch.zeros(x.shape[0], dtype=torch.float64)
    rank = torch.full(x.shape, x.shape[1], dtype=torch.long, device=x.device)
    for b in range(x.shape[0]):
        cols = gen[b].nonzero().squeeze(1)
        order = torch.rand(cols.numel(), generator=torch.Generator().manual_seed(0))
        rank[b, cols] = order.argsort().argsort().to(x.device)
    for rows, k0 in _prefix_groups(model, gen, real):
        part = [None if t is None else t[rows] for t in (x, real, pos)]
        got, hidden = _rates(model, *part, gen[rows], rank[rows], mask_id, k0)
        total[rows.cpu()], count[rows.cpu()] = got, hidden
    return total / count.clamp_min(1)


def _rates(model, x, real, pos, gen, rank, mask_id: int, k0: int) -> tuple[Tensor, Tensor]:
    """(sum of log p over the hidden tokens, their count) per row, over `_SCORE_RATES`; the
    first ``k0`` columns read from a cache when ``k0 > 0``."""
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    count = torch.zeros(x.shape[0], dtype=torch.float64)
    n = gen.sum(1, keepdim=True)
    cols = gen.any(0).nonzero()
    k = int(cols[0]) if cols.numel() and getattr(model, "takes_logits_from", False) is True else 0
    cache = _prefix_cache(model, x, real, pos, k0) if k0 else None
    for r in _SCORE_RATES:
        hide = gen & (rank < torch.ceil(r * n))
        xr = x.masked_fill(hide, mask_id)
        if cache is None:  # no head on the columns before every middle
            logits = model(xr, attention_mask=real, position_ids=pos,
                           **({"logits_from": k} if k else {}))  # fmt: skip
        else:
            logits = model(xr[:, k0:], attention_mask=real, cache=cache, logits_from=k - k0,
                           position_ids=None if pos is None else pos[:, k0:])  # fmt: skip
            cache.discard()
        at = hide[:, k:].nonzero(as_tuple=True)  # only the hidden positions' log-softmax
        logp = torch.log_softmax(logits[at].double(), -1).gather(-1, x[:, k:][at][:, None])
        total.index_add_(0, at[0].cpu(), logp[:, 0].cpu())
        count += hide.sum(1).cpu()
    return total, count


def _prefix_groups(model, gen: Tensor, real: Tensor | None) -> list[tuple[Tensor, int]]:
    """Rows grouped by ``k0``, the whole blocks before the row's first middle token that a
    cache can hold (0: none — not a block-causal model with our `KVCache`, or no such block)."""
    spec, new = model.spec, getattr(model, "new_cache", None)
    cacheable = (spec.attention == "block_causal" and bool(spec.block_size) and callable(new)
                 and getattr(model, "takes_logits_from", False) is True and real is not None
                 and isinstance(new(), KVCache))  # fmt: skip
    first = torch.where(gen.any(1), gen.int().argmax(1), 0)
    k0 = first // spec.block_size * spec.block_size if cacheable else torch.zeros_like(first)
    return [((k0 == v).nonzero().squeeze(1), int(v)) for v in torch.unique(k0)]


def _prefix_cache(model, x: Tensor, real: Tensor, pos: Tensor | None, k0: int) -> KVCache:
    """The keys of columns [0, k0) — whole blocks before every row's middle — in a cache."""
    cache = model.new_cache()
    model(x[:, :k0], attention_mask=real[:, :k0], cache=cache, logits_from=k0 - 1,
          position_ids=None if pos is None else pos[:, :k0])  # fmt: skip
    cache.commit()
    return cache


def infill(model, tokenizer, prefix: str | list[str], suffix: str | list[str],
           length: int | str = "auto", *, config: GenerationConfig | None = None,
           candidates=DEFAULT_CANDIDATES, seed: int = 0, watermark=None, streamer=None,
           context: int | None = None, heal: bool = True, **overrides):  # fmt: skip
    """Fill the middle between `prefix` and `suffix` (one string each, or lists for a batch).

    `context`: tokens of prefix + middle + suffix the model sees (default its ``max_len``; a
    model trained on shorter windows does best at its training length). `config`/`overrides`
    are sampler settings (`GenerationConfig`); ``gen_length`` is ignored. `heal`: token
    healing at the hole's left edge (see the module doc).
    """
    single = isinstance(prefix, str)
    prefixes, suffixes = _texts("prefix", prefix), _texts("suffix", suffix)
    if single != isinstance(suffix, str) or len(prefixes) != len(suffixes) or not prefixes:
        raise InvalidInputError("need as many prefixes as suffixes (at least one)")
    lengths = _lengths(length, candidates)
    check_seed(seed)
    if context is not None and (not isinstance(context, int) or isinstance(context, bool)
                                or context < 1):  # fmt: skip
        raise InvalidInputError(f"context must be a positive integer or None, got {context!r}")
    eols = [line_ending(p + s) for p, s in zip(prefixes, suffixes, strict=True)]
    spec, view = model.spec, token_view(tokenizer)
    if view.mask_id is not None and view.mask_id != spec.mask_id:
        raise InvalidInputError(
            f"the model's mask id {spec.mask_id} is not its tokenizer's mask token "
            f"{view.mask_id}: build the spec with the tokenizer's mask_token_id"
        )
    limit = window(model, context)
    if length == "auto":  # a short window: the candidates that fit it (with a token of context)
        lengths = [n for n in lengths if n < limit]
        if not lengths:
            raise InvalidInputError(f"no candidate length fits the model's {limit} positions")
    heals = [heal_prefix(tokenizer, _lf(p), enabled=bool(heal)) for p in prefixes]
    c = fim_canvas(spec, view, [(h[0], s, lengths) for h, s in zip(heals, suffixes, strict=True)],
                   heals, limit)  # fmt: skip
    device = next(model.parameters()).device
    x, real = c.x.to(device), c.real.to(device)
    gens = [torch.Generator(device).manual_seed(seed + i) for i, _, _ in c.parts]
    parts, restrict = c.parts, c.restrict
    out = denoise(model, x, None if bool(real.all()) else real, config, generators=gens,
                  watermark=watermark, streamer=streamer, restrict=restrict,
                  **overrides)  # fmt: skip
    search = len(lengths) > 1
    scores = _score(model, out.sequences, real, out.generated, spec.mask_id) if search else None
    results = []
    for i, (p, s) in enumerate(zip(prefixes, suffixes, strict=True)):
        idx = [j for j, part in enumerate(parts) if part[0] == i]
        by_length = {parts[j][1]: float(scores[j]) for j in idx} if search else {}
        best = max(idx, key=lambda j: float(scores[j])) if search else idx[0]
        r = _result(out, best, parts[best][1], p, s, tokenizer, by_length, heals[i][1])
        results.append(_with_line_ending(r, eols[i], p, s))
    return results[0] if single else results


@dataclass
class FimCanvas:
    """Rows ``prefix + [MASK]·n + suffix`` of several inputs, left-padded (`pad_multiple`).

    ``parts[r] = (input, n, prefix tokens)`` of row r; ``restrict`` is `denoise`'s argument
    for the healed rows."""

    x: Tensor  # (R, W) ids
    real: Tensor  # (R, W) bool, not padding
    rows: list[list[int]]
    parts: list[tuple[int, int, int]]
    restrict: tuple[Tensor, Tensor] | None


def fim_canvas(spec, view, inputs, heals, limit: int) -> FimCanvas:
    """The canvas of ``inputs`` = ``[(healed prefix, suffix, lengths)]`` (``heals`` from
    `sampling.heal.heal`, one per input), each row fitted to ``limit`` tokens (`fit_context`).
    One function for `infill` and the server's batcher, so a batched row is laid out exactly
    as it is alone."""
    rows, parts = [], []
    for i, (kept, suffix, lengths) in enumerate(inputs):
        pre, suf = view.encode(kept), view.encode_after(_lf(suffix))
        for n in lengths:
            a, b = fit_context(pre, suf, n, limit)
            rows.append(a + [spec.mask_id] * n + b)
            parts.append((i, n, len(a)))
    pad = spec.fill_id
    x, real = left_pad(rows, pad, pad_multiple(spec))
    return FimCanvas(x, real, rows, parts, _restrict(heals, parts, rows, x.shape[1]))


def _texts(name: str, value) -> list[str]:
    """``value`` as a list of strings (a str is one), else `InvalidInputError`."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError(
            f"{name} must be a str or a list of str, got {type(value).__name__}"
        )
    return list(texts)


def _lengths(length, candidates) -> list[int]:
    """The middle lengths to try: ``length`` itself, or every candidate for ``"auto"``."""
    count = isinstance(length, int) and not isinstance(length, bool)
    if count and length >= 1:
        return [length]
    if length != "auto" or count:
        raise InvalidInputError(f"length must be a positive int or 'auto', got {length!r}")
    try:
        lengths = [int(c) for c in candidates]
    except (TypeError, ValueError):
        lengths = []
    if not lengths or min(lengths) < 1:
        raise InvalidInputError(f"candidates must be positive token counts, got {candidates!r}")
    return lengths


def line_ending(text: str) -> str:
    """The line break most of ``text``'s are: ``"\\r\\n"``, ``"\\r"`` (classic Mac) or
    ``"\\n"``."""
    crlf = text.count("\r\n")
    cr, lf = text.count("\r") - crlf, text.count("\n") - crlf
    if cr > max(crlf, lf):
        return "\r"
    return "\r\n" if crlf and crlf >= lf else "\n"


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n")


def _with_line_ending(r: InfillResult, eol: str, prefix: str, suffix: str) -> InfillResult:
    """``r`` with its middle's line breaks written as ``eol``."""
    if eol == "\n" or "\n" not in r.middle:
        return r
    r.middle = _lf(r.middle).replace("\n", eol)
    r.text = prefix + r.middle + suffix
    r.span = (len(prefix), len(prefix) + len(r.middle))
    return r


def _restrict(heals, parts, rows, width: int):
    """`denoise`'s ``restrict`` for healed rows: the hole's first column, after left padding."""
    if all(allowed is None for _, _, allowed in heals):
        return None
    V = max(len(allowed) for _, _, allowed in heals if allowed is not None)
    pos = torch.full((len(rows),), -1, dtype=torch.long)
    allowed = torch.ones(len(rows), V, dtype=torch.bool)
    for r, ((i, _, start), row) in enumerate(zip(parts, rows, strict=True)):
        if heals[i][2] is not None:
            pos[r], allowed[r] = width - len(row) + start, heals[i][2]
    return pos, allowed


def _result(out: GenerationOutput, row: int, n: int, prefix: str, suffix: str, tokenizer,
            scores: dict, carry: str = "") -> InfillResult:  # fmt: skip
    ids = out.sequences[row][out.generated[row]].tolist()
    middle = middle_text(tokenizer, ids, carry, prefix)  # the carry is the prefix's own tail
    span = (len(prefix), len(prefix) + len(middle))
    tpf = float(out.tokens_per_forward[row])
    return InfillResult(prefix + middle + suffix, middle, n, span, tpf, out.nfe, scores,
                        out.settings)  # fmt: skip


def fill(model, tokenizer, text: str, *, marker: str = MARKER, length: int | str = "auto",
         streamer_factory=None, **kwargs) -> tuple[str, list[InfillResult]]:  # fmt: skip
    """Fill every `marker` in `text`, left to right; returns the text and one result per hole
    (each result's ``span`` is relative to the returned text).

    ``streamer_factory(n)`` (optional) makes the streamer of a hole of n tokens; with
    ``length="auto"`` the search runs first, then the chosen length is streamed (same seed,
    same result)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(marker, str) or not marker:
        raise InvalidInputError(f"marker must be a non-empty str, got {marker!r}")
    if streamer_factory is not None and not callable(streamer_factory):
        raise InvalidInputError(f"streamer_factory must be callable, got {streamer_factory!r}")
    pieces = text.split(marker)
    if len(pieces) < 2:
        raise InvalidInputError(f"no {marker} marker in the text")
    if len(pieces) - 1 > MAX_HOLES:
        raise InvalidInputError(f"{len(pieces) - 1} {marker} markers: at most {MAX_HOLES} per call")
    filled, results = pieces[0], []
    for k in range(1, len(pieces)):
        later = "".join(pieces[k:])  # the rest, other holes removed: they stay unknown
        r = infill(model, tokenizer, filled, later, length, **kwargs)
        if streamer_factory is not None:
            streamer = streamer_factory(r.length)
            scores = r.scores
            r = infill(model, tokenizer, filled, later, r.length, streamer=streamer, **kwargs)
            r.scores = scores
        start = len(filled)
        filled = filled + r.middle + pieces[k]
        r.span = (start, start + len(r.middle))
        r.text = filled + "".join(pieces[k + 1 :])
        results.append(r)
    return filled, results
