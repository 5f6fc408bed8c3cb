"""Code corpora and token datasets for training the text models.

    corpus = Corpus.from_folder()                       # the running Python's standard library
    train_ids = cached_tokens(run / "tokens_train.safetensors", tok, corpus, corpus.train_files)
    data = TokenWindows(train_ids, seq_len=256, crop_fraction=0.01)      # masked diffusion
    data = TokenWindows(train_ids, seq_len=256, fim_rate=0.5)            # the FIM AR baseline

Corpus: every file matching a glob (default ``*.py``) under a folder, skipping test folders,
``site-packages`` and caches. The held-out split is by file and deterministic: a file is held
out when the SHA-256 of its relative path, read as a number in [0, 1), is below the fraction
(so adding files never moves an existing one between splits). A corpus of at least two files
always holds out at least one.

Tokens: each file is encoded and followed by ``[EOS]``; the documents are concatenated into one
int32 array, cached as safetensors in the run folder with a fingerprint of the tokenizer and the
files, and rebuilt when either changes.

Windows: item ``i`` is the ``seq_len`` tokens from ``i·stride``, a pure function of ``i`` (and the
seed), so the trainer's exact resume holds. A fraction of the items is cropped to a random length
U{1..L}, the rest padded with ``[PAD]`` and masked out (LLaDA's fix for length bias). With
``fim_rate`` > 0 an item becomes, with that probability, a FIM sequence for the autoregressive
baseline (cut points uniform over the window), in ``fim_order``:

    psm   [PRE] prefix [SUF] suffix [MID] middle [EOS]
    spm   [PRE] [SUF] suffix [MID] prefix middle [EOS]   (Code Llama's SPM: the middle goes on
          straight from the prefix, so a small model need not learn to jump back to it)
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from torch.utils.data import Dataset

from mdiff.atomic import atomic_file
from mdiff.errors import InvalidInputError
from mdiff.text.model.tokenizer import CodeTokenizer

__all__ = [
    "EXCLUDED_DIRS",
    "Corpus",
    "TokenWindows",
    "cached_tokens",
    "eval_windows",
    "FIM_ORDERS",
    "fim_transform",
    "find_sources",
    "heldout_score",
    "split_files",
    "stdlib_root",
    "tokenize_files",
]

logger = logging.getLogger(__name__)

EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", ".git"}
)
PAD_ID, EOS_ID, PRE_ID, SUF_ID, MID_ID = 0, 2, 4, 5, 6  # CodeTokenizer's fixed ids
FIM_ORDERS = ("psm", "spm")


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def find_sources(
    root: str | os.PathLike, pattern: str = "*.py", exclude_dirs=EXCLUDED_DIRS
) -> list[str]:
    """Sorted POSIX paths relative to `root` of files matching `pattern`, outside `exclude_dirs`."""
    root = Path(root)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise InvalidInputError(f"corpus folder {root} {problem}")
    found = []
    for path in root.rglob(pattern):
        rel = path.relative_to(root)
        if path.is_file() and not set(rel.parts[:-1]) & set(exclude_dirs):
            found.append(rel.as_posix())
    return sorted(found)


def heldout_score(relpath: str) -> float:
    """A number in [0, 1) fixed by the relative path: the first 8 bytes of its SHA-256."""
    digest = hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_files(files: Sequence[str], fraction: float = 0.02) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: disjoint, deterministic, each in the order of `files`."""
    if not 0.0 <= fraction < 1.0:
        raise InvalidInputError(f"held-out fraction must be in [0, 1), got {fraction}")
    held = {f for f in files if heldout_score(f) < fraction}
    if not held and fraction > 0 and len(files) >= 2:
        held = {min(files, key=heldout_score)}
    return [f for f in files if f not in held], [f for f in files if f in held]


@dataclass
class Corpus:
    """Source files under `root`, split by file into training and held-out sets."""

    root: Path
    train_files: list[str]
    heldout_files: list[str]

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike | None = None,
        pattern: str = "*.py",
        heldout_fraction: float = 0.02,
    ) -> Corpus:
        """Files matching `pattern` under `root` (default: the standard library)."""
        root = Path(root) if root is not None else stdlib_root()
        files = find_sources(root, pattern)
        if not files:
            raise InvalidInputError(f"no files matching {pattern!r} under {root}")
        train, heldout = split_files(files, heldout_fraction)
        return cls(root, train, heldout)

    def read(self, relpath: str) -> str | None:
        """The text of a file (UTF-8, newlines untouched), or None when it is not UTF-8 or
        cannot be read (a warning says which)."""
        try:
            return (self.root / relpath).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            logger.warning("skipping %r: not UTF-8", relpath)
        except OSError as e:
            logger.warning("skipping %r: %s", relpath, e.strerror or e)
        return None

    def texts(self, files: Sequence[str]) -> list[str]:
        return [t for t in (self.read(f) for f in files) if t is not None]


def tokenize_files(tokenizer: CodeTokenizer, corpus: Corpus, files: Sequence[str]) -> np.ndarray:
    """All `files` encoded, each followed by ``[EOS]``, as one int32 array."""
    parts = []
    for ids in tokenizer.encode_batch(corpus.texts(files)):
        parts.append(np.asarray(ids, dtype=np.int32))
        parts.append(np.asarray([tokenizer.eos_id], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _fingerprint(tokenizer: CodeTokenizer, corpus: Corpus, files: Sequence[str]) -> str:
    h = hashlib.sha256(tokenizer.to_json().encode("utf-8"))
    for f in files:
        st = (corpus.root / f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_tokens(
    path: str | os.PathLike, tokenizer: CodeTokenizer, corpus: Corpus, files: Sequence[str]
) -> np.ndarray:
    """`tokenize_files`, cached in a safetensors file that is rebuilt when stale."""
    path = Path(path)
    fingerprint = _fingerprint(tokenizer, corpus, files)
    if path.is_file():
        with safe_open(str(path), "np") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                return f.get_tensor("tokens")
        logger.info("token cache %s is stale; rebuilding", path)
    tokens = tokenize_files(tokenizer, corpus, files)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"fingerprint": fingerprint, "files": str(len(files))}
    with atomic_file(path) as tmp:
        save_file({"tokens": tokens}, str(tmp), metadata=meta)
    return tokens


def fim_transform(
    content: np.ndarray,
    rng: np.random.Generator,
    *,
    pre_id: int = PRE_ID,
    suf_id: int = SUF_ID,
    mid_id: int = MID_ID,
    eos_id: int = EOS_ID,
    order: str = "psm",
) -> np.ndarray:
    """A FIM sequence in `order` (see the module doc) from `content` cut at two uniform points
    (4 tokens longer than `content`)."""
    a, b = np.sort(rng.integers(0, len(content) + 1, size=2))
    pre, mid, suf = content[:a], content[a:b], content[b:]
    if order == "psm":
        pieces = ([pre_id], pre, [suf_id], suf, [mid_id], mid, [eos_id])
    elif order == "spm":
        pieces = ([pre_id, suf_id], suf, [mid_id], pre, mid, [eos_id])
    else:
        raise InvalidInputError(f"fim order must be one of {FIM_ORDERS}, got {order!r}")
    return np.concatenate([np.asarray(p, dtype=content.dtype) for p in pieces])


class TokenWindows(Dataset):
    """Fixed-length windows of a token array, deterministic by index (see the module doc).

    Items are ``{"input_ids": (L,) int64, "attention_mask": (L,) bool}`` (True = real token).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        *,
        stride: int | None = None,
        crop_fraction: float = 0.0,
        fim_rate: float = 0.0,
        seed: int = 0,
        pad_id: int = PAD_ID,
        fim_ids: dict[str, int] | None = None,
        fim_order: str = "psm",
    ):
        if seq_len < 8:
            raise InvalidInputError(f"seq_len must be at least 8, got {seq_len}")
        if not (0.0 <= crop_fraction <= 1.0 and 0.0 <= fim_rate <= 1.0):
            raise InvalidInputError("crop_fraction and fim_rate must be in [0, 1]")
        if fim_order not in FIM_ORDERS:
            raise InvalidInputError(f"fim_order must be one of {FIM_ORDERS}, got {fim_order!r}")
        self.tokens = np.asarray(tokens)
        self.seq_len, self.stride = seq_len, stride or seq_len
        if len(self.tokens) < seq_len:
            raise InvalidInputError(
                f"{len(self.tokens)} tokens are fewer than one window of {seq_len}"
            )
        self.crop_fraction, self.fim_rate, self.seed, self.pad_id = (
            crop_fraction, fim_rate, seed, pad_id,
        )  # fmt: skip
        self.fim_ids, self.fim_order = fim_ids or {}, fim_order

    def __len__(self) -> int:
        return (len(self.tokens) - self.seq_len) // self.stride + 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        L = self.seq_len
        rng = np.random.default_rng([self.seed, index])  # a pure function of the index
        start = index * self.stride
        if self.fim_rate and rng.random() < self.fim_rate:
            ids = fim_transform(self.tokens[start : start + L - 4], rng, **self.fim_ids,
                                order=self.fim_order)  # fmt: skip
        else:
            ids = self.tokens[start : start + L]
        ids = torch.from_numpy(ids.astype(np.int64))
        mask = torch.ones(L, dtype=torch.bool)
        if self.crop_fraction and rng.random() < self.crop_fraction:
            length = int(rng.integers(1, L + 1))
            ids[length:] = self.pad_id
            mask[length:] = False
        return {"input_ids": ids, "attention_mask": mask}


def eval_windows(
    tokens: np.ndarray, seq_len: int, max_windows: int = 64, *, pad_id: int = PAD_ID
) -> dict[str, torch.Tensor]:
    """A fixed evaluation batch: up to `max_windows` evenly spaced, non-overlapping windows
    (one padded window when there are fewer than `seq_len` tokens)."""
    tokens = np.asarray(tokens)
    if len(tokens) == 0:
        raise InvalidInputError("no held-out tokens to evaluate on")
    n = max(1, min(max_windows, len(tokens) // seq_len))
    starts = (np.arange(n) * (len(tokens) // seq_len // n) * seq_len).tolist()
    ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.bool)
    for row, s in enumerate(starts):
        chunk = torch.from_numpy(tokens[s : s + seq_len].astype(np.int64))
        ids[row, : len(chunk)], mask[row, : len(chunk)] = chunk, True
    return {"input_ids": ids, "attention_mask": mask}
