"""What fill-in-the-middle needs of a tokenizer — ours, a transformers one, or a duck-typed one.

    view = token_view(tokenizer)       # cached per tokenizer
    view.encode("a <|mask|> b")         # ids; a special token's text in the input is plain text
    view.encode_after("\n    return x")  # ids of text that follows other text (a suffix)
    view.table[i]                       # bytes of token i (byte-level BPE), None for a special
    view.decode(ids)                    # text of generated ids, specials skipped
    view.special, view.mask_id          # special ids, the tokenizer's own mask token (or None)

Byte-level BPE (GPT-2, Qwen2, ours) stores each token as the GPT-2 byte-to-unicode spelling of
its bytes (``"Ġos"`` is the bytes ``b" os"``); `table` undoes that map, so a token that ends
inside a UTF-8 character still has its exact bytes (decoding one such token alone gives
``"\\ufffd"``). `decode` joins the bytes and decodes them once, as the tokenizer's ByteLevel
decoder does (no clean-up of spaces, whatever the tokenizer's setting). `table` is None when
the tokenizer is not byte-level: then healing and decoding go through its text.

A text's start: Llama 2 style SentencePiece tokenizers (Metaspace ``prepend_scheme`` "first" or
"always", or a ``Prepend("▁")`` normalizer) and byte-level ones with ``add_prefix_space`` put a
space before every text they encode, as at the start of a document. A suffix, a middle or a
carry continues the text before it, so `encode_after` encodes it with a copy of the backend
that prepends nothing: ``encode_after("\n    x")`` has no ``"▁"`` token before the newline.

Recognised: `CodeTokenizer` (``.backend``), `mdiff.text.model.loaders.HFTokenizer`
(``.tok``), any transformers fast tokenizer (``.backend_tokenizer``) and a bare
`tokenizers.Tokenizer`; anything else with ``encode(text)`` / ``decode(ids,
skip_special_tokens=...)`` is used as it is.
"""

from __future__ import annotations

import bisect
import contextlib
import weakref
from dataclasses import dataclass, field

__all__ = ["TokenView", "byte_decoder", "token_view"]

_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for
    themselves, the other 68 bytes for the code points 256, 257, … in byte order."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in keep}
    extra = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return {c: b for b, c in chars.items()}


@dataclass(eq=False)
class TokenView:
    tokenizer: object
    hf: object | None  # a transformers tokenizer, if any
    backend: object | None  # its `tokenizers.Tokenizer`, if any
    special: frozenset[int]
    mask_id: int | None
    table: list[bytes | None] | None  # per id; None: not byte-level
    _sorted: tuple[list[bytes], list[int]] | None = field(default=None, repr=False)
    _inner: object = field(default=None, repr=False)  # the backend that prepends nothing

    def starting_with(self, head: bytes) -> list[int]:
        """The ids whose bytes start with ``head`` (byte-level only), in byte order: a range
        of the tokens sorted by their bytes, found by bisection."""
        if self._sorted is None:
            pairs = sorted((b, i) for i, b in enumerate(self.table) if b is not None)
            self._sorted = ([b for b, _ in pairs], [i for _, i in pairs])
        keys, ids = self._sorted
        above = head.rstrip(b"\xff")  # the least bytes after every string starting with head
        above = above[:-1] + bytes([above[-1] + 1]) if above else None
        lo = bisect.bisect_left(keys, head)
        return ids[lo : len(keys) if above is None else bisect.bisect_left(keys, above)]

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, no special token added or recognised."""
        if self.hf is not None:
            ids = self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)
            return list(ids)
        if self.backend is not None and self.backend is self.tokenizer:
            old = self.backend.encode_special_tokens
            self.backend.encode_special_tokens = True
            try:
                return self.backend.encode(text, add_special_tokens=False).ids
            finally:
                self.backend.encode_special_tokens = old
        return list(self.tokenizer.encode(text))

    def encode_after(self, text: str) -> list[int]:
        """Ids of `text` where it follows other text: `encode`, without the space a
        tokenizer prepends to a text's start (see the module doc)."""
        if self._inner is None:
            self._inner = _unprepended(self.backend) or False
        if self._inner is False:
            return self.encode(text)
        return self._inner.encode(text, add_special_tokens=False).ids

    def token_bytes(self, ids) -> bytes:
        """The bytes of `ids` joined (byte-level only); specials and unknown ids add nothing."""
        table, n = self.table, len(self.table)
        parts = (table[j] for j in map(int, ids) if 0 <= j < n)
        return b"".join(b for b in parts if b is not None)

    def decode(self, ids) -> str:
        """The text of generated `ids`, specials skipped."""
        ids = [int(i) for i in ids]
        if self.table is not None:
            return self.token_bytes(ids).decode("utf-8", errors="replace")
        if self.hf is not None:
            ids = [i for i in ids if 0 <= i < len(self.hf)]
            return self.hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if self.backend is not None:
            return self.backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def token_view(tokenizer) -> TokenView:
    """The `TokenView` of `tokenizer` (built once per tokenizer object)."""
    with contextlib.suppress(KeyError, TypeError):
        return _VIEWS[tokenizer]
    view = _build(tokenizer)
    with contextlib.suppress(TypeError):  # not weak-referenceable: rebuilt per call
        _VIEWS[tokenizer] = view
    return view


def _build(tokenizer) -> TokenView:
    from tokenizers import Tokenizer

    hf = None
    for obj in (tokenizer, getattr(tokenizer, "tok", None)):
        if getattr(obj, "backend_tokenizer", None) is not None:
            hf = obj
            break
    backend = hf.backend_tokenizer if hf is not None else getattr(tokenizer, "backend", None)
    if isinstance(tokenizer, Tokenizer):
        backend = tokenizer
    if not isinstance(backend, Tokenizer):
        backend = None
    special = set(getattr(tokenizer, "special_ids", {}).values())
    added = backend.get_added_tokens_decoder() if backend is not None else {}
    special |= {i for i, t in added.items() if t.special}
    if hf is not None:
        special |= set(hf.all_special_ids)
        special |= {i for i, t in hf.added_tokens_decoder.items() if t.special}
    mask = getattr(hf, "mask_token_id", None) if hf is not None else None
    mask = getattr(tokenizer, "mask_id", None) if mask is None else mask
    mask = int(mask) if isinstance(mask, int) else None
    table = _table(backend, added, special) if backend is not None else None
    return TokenView(tokenizer, hf, backend, frozenset(special), mask, table)


def _unprepended(backend):
    """A copy of `backend` that prepends no space to a text (special tokens in the input read
    as text), or None when `backend` prepends none."""
    import json

    from tokenizers import Tokenizer

    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    changed = False

    def strip(node, pre: bool):
        nonlocal changed
        if isinstance(node, list):
            kept = [strip(n, pre) for n in node]
            return [n for n in kept if n is not None]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if kind == "Prepend":  # Llama 2's legacy normalizer: Prepend("▁"), Replace(" ", "▁")
            changed = True
            return None
        if kind == "Metaspace" and node.get("prepend_scheme", "never") != "never":
            changed, node = True, {**node, "prepend_scheme": "never"}
        if kind in ("Metaspace", "ByteLevel") and pre and node.get("add_prefix_space"):
            changed, node = True, {**node, "add_prefix_space": False}
        return {k: strip(v, pre) for k, v in node.items()}

    for key in ("normalizer", "pre_tokenizer"):
        if spec.get(key) is not None:
            spec[key] = strip(spec[key], key == "pre_tokenizer")
            if isinstance(spec[key], dict) and spec[key].get("type") == "Sequence":
                inner = spec[key].get("normalizers", spec[key].get("pretokenizers"))
                spec[key] = spec[key] if inner else None
    if not changed:
        return None
    try:
        inner = Tokenizer.from_str(json.dumps(spec))
    except Exception:  # a pipeline this tokenizers version cannot rebuild: encode as is
        return None
    inner.encode_special_tokens = True
    return inner


def _table(backend, added: dict, special: set[int]) -> list[bytes | None] | None:
    """Bytes per id of a byte-level `backend` (None when it is not byte-level)."""
    if type(backend.decoder).__name__ != "ByteLevel":
        return None
    inverse = byte_decoder()
    size = backend.get_vocab_size(with_added_tokens=True)
    table: list[bytes | None] = [None] * size
    for token, i in backend.get_vocab(with_added_tokens=False).items():
        try:
            table[i] = bytes(inverse[c] for c in token)
        except KeyError:  # a token outside the byte alphabet: not byte-level after all
            return None
    for i, t in added.items():
        if i < size:
            table[i] = None if i in special or t.special else t.content.encode("utf-8")
    return table
