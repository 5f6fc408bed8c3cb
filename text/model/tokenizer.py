"""A byte-level BPE tokenizer for source code, trained with the `tokenizers` library.

    tok = train_tokenizer(["a.py", "b.py"], vocab_size=4096)   # or strings of code
    ids = tok.encode(source)                                    # plain ids, no specials added
    assert tok.decode(ids) == source                            # exact, for any text
    tok.save("runs/text")                                       # runs/text/tokenizer.json
    tok = CodeTokenizer.load("runs/text")

Exactness: no normalizer, a byte-level pre-tokenizer without a prefix space (GPT-2 split
regex) and the byte-level decoder, so every string — tabs, CRLF, trailing whitespace, any
unicode — encodes to bytes and decodes back unchanged.

Specials have fixed ids 0..6: ``[PAD] [BOS] [EOS] [MASK]`` and the fill-in-the-middle sentinels
``[PRE] [SUF] [MID]`` of the autoregressive baseline. They are never produced from text: a
file that contains the string ``"[MASK]"`` encodes it as ordinary bytes, so only code that
inserts the ids on purpose can put a special into a sequence.

Training is deterministic: the same texts in the same order give the same ``tokenizer.json``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mdiff.atomic import write_text_atomic
from mdiff.errors import CheckpointError, InvalidInputError

__all__ = ["SPECIAL_TOKENS", "TOKENIZER_FILE", "CodeTokenizer", "train_tokenizer"]

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[PRE]", "[SUF]", "[MID]")
TOKENIZER_FILE = "tokenizer.json"


class CodeTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` with the specials of `SPECIAL_TOKENS`."""

    def __init__(self, tokenizer: Tokenizer):
        for i, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != i:
                raise InvalidInputError(
                    f"tokenizer must map {token} to id {i}, got {tokenizer.token_to_id(token)}"
                )
        tokenizer.encode_special_tokens = True  # "[MASK]" in text is text, not the special
        self._tok = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = 0, 1, 2, 3
        self.pre_id, self.suf_id, self.mid_id = 4, 5, 6

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> dict[str, int]:
        """``{"[PAD]": 0, …}``."""
        return {token: i for i, token in enumerate(SPECIAL_TOKENS)}

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (for batch encoding or a transformers wrapper)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no special token is added or recognised."""
        if not isinstance(text, str):
            raise InvalidInputError(f"encode takes a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of each text (the library parallelises this)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """The text of `ids`; specials appear as their names unless `skip_special_tokens`."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInputError(
                f"token ids outside the vocabulary ({self.vocab_size}): {bad[:5]}"
            )
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<directory>/tokenizer.json`` atomically; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CodeTokenizer:
        """Load a directory holding ``tokenizer.json`` (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"no tokenizer at {path}")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the Rust error type is not exported
            raise CheckpointError(f"{path} is not a valid tokenizer.json: {exc}") from exc
        return cls(tokenizer)

    def __repr__(self) -> str:
        return f"CodeTokenizer(vocab_size={self.vocab_size})"


def _texts(files_or_texts: Iterable[str | os.PathLike]) -> Iterable[str]:
    """Paths (`Path`, or str naming an existing file) are read as UTF-8; other str are text."""
    for item in files_or_texts:
        if isinstance(item, os.PathLike) or (
            isinstance(item, str) and "\n" not in item and len(item) < 4096 and os.path.isfile(item)
        ):
            try:
                yield Path(item).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"cannot read {item} as UTF-8: {exc}") from exc
        elif isinstance(item, str):
            yield item
        else:
            raise InvalidInputError(f"expected a path or a str, got {type(item).__name__}")


def train_tokenizer(
    files_or_texts: Iterable[str | os.PathLike],
    vocab_size: int = 4096,
    *,
    min_frequency: int = 2,
) -> CodeTokenizer:
    """Train a byte-level BPE of (at most) `vocab_size` ids, specials included.

    `files_or_texts` mixes paths and strings of code; a str naming an existing file is read.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise InvalidInputError(
            f"vocab_size must hold the 256 bytes and {len(SPECIAL_TOKENS)} specials, "
            f"got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(files_or_texts), trainer=trainer)
    return CodeTokenizer(tokenizer)
