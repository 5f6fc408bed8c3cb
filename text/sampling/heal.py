"""Token healing at a hole's left edge.

A byte-level BPE glues a word to the space before it (``"import os"`` is ``import`` + `` os``)
and keeps the last space of an indentation for the word that follows (``"\\n    return"`` is
``\\n   `` + `` return``). A prefix that stops right before the hole (``"import "``,
``"    "``, ``"os.pa"``) therefore ends in a token the model has rarely seen there, and it fills
the hole badly. Healing moves that tail (the *carry*) from the prefix into the hole and lets
the hole's first token be only a token whose text starts with the carry; the carry is then
cut from the middle again, so the result still splices exactly onto the user's prefix.

    kept, carry = split_prefix("x = ")        # ("x =", " ")
    allowed = first_token_mask(tok, carry)    # (V,) bool: tokens that start with " "

Carried: one trailing space, or a trailing partial word (letters, digits, ``_``) with the space
before it. Nothing else is carried, and nothing is when no token is longer than the carry and
starts with it (then no token crosses the boundary: e.g. a character-level tokenizer).
"""

from __future__ import annotations

import contextlib
import re
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = [
    "check_restriction",
    "first_token_mask",
    "fit_vocab",
    "heal",
    "split_prefix",
    "strip_carry",
    "true_length",
]

_WORD = re.compile(r" ?[A-Za-z0-9_]+\Z")
_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> token texts


def split_prefix(prefix: str) -> tuple[str, str]:
    """``(kept, carry)`` with ``kept + carry == prefix`` (see the module doc)."""
    if prefix.endswith(" "):
        return prefix[:-1], " "
    m = _WORD.search(prefix)
    return (prefix[: m.start()], m.group()) if m else (prefix, "")


def _token_texts(tokenizer) -> list[str]:
    try:
        return _TEXTS[tokenizer]
    except (KeyError, TypeError):
        pass
    special = set(getattr(tokenizer, "special_ids", {}).values())
    size = getattr(tokenizer, "vocab_size", 0)  # none: no healing
    texts = ["" if i in special else tokenizer.decode([i]) for i in range(size)]
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed per call
        _TEXTS[tokenizer] = texts
    return texts


def first_token_mask(tokenizer, carry: str) -> Tensor | None:
    """(V,) bool: the tokens whose text starts with `carry`. None when no token is longer than
    the carry and starts with it: then nothing could cross the boundary, and healing is moot
    (a character-level tokenizer is never healed)."""
    texts = _token_texts(tokenizer)
    if not any(len(t) > len(carry) and t.startswith(carry) for t in texts):
        return None
    return torch.tensor([t.startswith(carry) for t in texts])


def heal(tokenizer, prefix: str, *, enabled: bool = True) -> tuple[str, str, Tensor | None]:
    """``(kept, carry, allowed)``: the prefix to encode, the text the middle must start with
    (and loses again), and the first hole token's allowed set (None: no healing, as when not
    `enabled`)."""
    if not enabled:
        return prefix, "", None
    kept, carry = split_prefix(prefix)
    allowed = first_token_mask(tokenizer, carry) if carry else None
    return (kept, carry, allowed) if allowed is not None else (prefix, "", None)


def true_length(tokenizer, prefix: str, middle: str, *, healed: bool = True) -> int:
    """Tokens a hole needs to hold `middle` after `prefix` (healed or not): the oracle
    length of FIM evaluation."""
    carry = heal(tokenizer, prefix, enabled=healed)[1]
    return max(1, len(tokenizer.encode(carry + middle)))


def strip_carry(middle: str, carry: str) -> str:
    """The middle without the carry it starts with (its first token was restricted to it)."""
    return middle[len(carry) :] if carry and middle.startswith(carry) else middle


def fit_vocab(allowed: Tensor, size: int) -> Tensor:
    """``allowed`` (..., V) bool cut or padded with False to a model's `size` logits."""
    return F.pad(allowed.bool(), (0, max(size - allowed.shape[-1], 0)))[..., :size]


def check_restriction(restrict, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """The sampler's ``restrict`` argument checked against the canvas x (B, L): positions (B,)
    long (−1: none) and allowed tokens (B, V) bool, or None."""
    if restrict is None:
        return None
    pos, allowed = (torch.as_tensor(r, device=x.device) for r in restrict)
    B, L = x.shape
    if pos.shape != (B,) or allowed.dim() != 2 or allowed.shape[0] != B:
        raise InvalidInputError(f"restrict needs positions ({B},) and allowed ({B}, V)")
    if bool(((pos < -1) | (pos >= L)).any()):
        raise InvalidInputError(f"restrict positions must be -1 or columns 0..{L - 1}")
    allowed = allowed.bool()
    on = pos >= 0
    if bool((on & ~allowed.any(1)).any()):
        raise InvalidInputError("restrict allows no token at some position")
    return pos.long(), allowed
