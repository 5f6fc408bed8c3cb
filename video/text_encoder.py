"""Text encoders for the video DiT: prompts -> (embeddings (B, S, D), mask (B, S) bool).

    emb, mask = encoder.encode(["a red circle moving left", ""])  # (B, S, D) float, (B, S) bool
    emb, mask = encoder.null(batch)                               # "no prompt", (B, S_null, ·)

`mask` is True on real tokens; embeddings are zero where it is False. They come out on the
encoder's device in its dtype (those of the null embedding).

**No prompt.** A prompt that yields no tokens ("" or whitespace; punctuation only, for the word
tokenizer) means "no prompt": its row is the learned null embedding, a trainable
(null_length, D) parameter with an all-True mask, which is also the unconditional branch of
classifier-free guidance. Caption dropout is therefore replacing captions by "" (see
`drop_captions`), and uncaptioned videos train the unconditional branch. An empty *list* of
prompts is an `InvalidInputError`. Rows are padded to S = the longest row of the batch.

**Frozen.** `HFTextEncoder` (in `text_encoder_hf`) is always frozen; `ShapesTextEncoder`
trains (jointly with the DiT) until `freeze()`. A frozen body has requires_grad False, stays in
eval mode through `.train()` and runs under no_grad; the null embedding stays trainable.

Prompts longer than `max_length` tokens are truncated with a warning, or raise
`InvalidInputError` when `truncation` is off.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.hub import PretrainedMixin
from mdiff.nn import BlockConfig, Dense, RotaryEmbedding, TransformerBlock, arange_positions
from mdiff.video.data import _PHRASES, _TEMPLATES, BACKGROUNDS, COLORS, MOTIONS, SHAPES, SIZES

__all__ = [
    "ShapesTextEncoder",
    "ShapesTextEncoderConfig",
    "TextEncoder",
    "check_prompts",
    "drop_captions",
    "shapes_vocabulary",
    "words",
]

logger = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[UNK]")  # ids 0 and 1 of every ShapesTextEncoder vocabulary
FUNCTION_WORDS = ("a", "an", "and", "the", "with", "of", "in", "on", "at", "is", "two", "one")


def check_prompts(prompts) -> list[str]:
    """A non-empty list of str (a bare str is a batch of one), else `InvalidInputError`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise InvalidInputError(f"prompts must be a list of str, got {type(prompts).__name__}")
    if not prompts:
        raise InvalidInputError("prompts is an empty list; pass '' for 'no prompt'")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInputError(f"prompts[{i}] must be a str, got {type(p).__name__}")
    return list(prompts)


def drop_captions(prompts: list[str], p: float, generator: torch.Generator | None = None):
    """Caption dropout: each prompt becomes "" (→ null embedding) with probability p."""
    prompts = check_prompts(prompts)
    if not 0.0 <= p <= 1.0:
        raise InvalidInputError(f"caption dropout probability must be in [0, 1], got {p}")
    drop = torch.rand(len(prompts), generator=generator) < p
    return ["" if d else s for s, d in zip(prompts, drop.tolist(), strict=True)]


class TextEncoder(nn.Module):
    """Base class: subclasses implement `_encode_text(prompts) -> (hidden (B, L, D), mask)`."""

    def __init__(self, dim: int, null_length: int, max_length: int, truncation: bool, **kw):
        super().__init__()
        for name, value in (("dim", dim), ("null_length", null_length), ("max_length", max_length)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        self.dim, self.max_length, self.truncation, self.frozen = dim, max_length, truncation, False
        self.null_embedding = nn.Parameter(torch.empty(null_length, dim, **kw))
        nn.init.normal_(self.null_embedding, std=0.02)

    @property
    def null_length(self) -> int:
        return self.null_embedding.shape[0]

    @property
    def device(self) -> torch.device:
        return self.null_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.null_embedding.dtype

    def null(self, batch: int) -> tuple[Tensor, Tensor]:
        """The null embedding repeated: (batch, null_length, D), mask all True."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidInputError(f"batch must be a positive int, got {batch!r}")
        emb = self.null_embedding[None].expand(batch, -1, -1)  # (B, S_null, D)
        return emb, torch.ones(batch, self.null_length, dtype=torch.bool, device=self.device)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts (B,) -> embeddings (B, S, D), mask (B, S) bool; see the module docstring."""
        prompts = check_prompts(prompts)
        text = [i for i, p in enumerate(prompts) if p.strip()]
        if text:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                hidden, tmask = self._encode_text([prompts[i] for i in text])  # (n, L, D), (n, L)
            hidden = hidden.to(self.dtype).masked_fill(~tmask[..., None], 0.0)
            text = [i for i, ok in zip(text, tmask.any(1).tolist(), strict=True) if ok]
            hidden, tmask = hidden[tmask.any(1)], tmask[tmask.any(1)]  # rows with tokens
        empty = sorted(set(range(len(prompts))) - set(text))
        s = max(tmask.shape[1] if text else 0, self.null_length if empty else 0)
        emb = torch.zeros(len(prompts), s, self.dim, dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(prompts), s, dtype=torch.bool, device=self.device)
        if text:
            emb[text, : hidden.shape[1]], mask[text, : hidden.shape[1]] = hidden, tmask
        if empty:
            emb[empty, : self.null_length] = self.null_embedding  # (n_empty, S_null, D)
            mask[empty, : self.null_length] = True
        return emb, mask

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return self.encode(prompts)

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _check_lengths(self, lengths: list[int]) -> None:
        long = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if long and not self.truncation:
            i, n = long[0]
            raise InvalidInputError(
                f"prompt {i} has {n} tokens, more than max_length={self.max_length} "
                "(truncation is off)"
            )
        if long:
            logger.warning("%d prompt(s) truncated to %d tokens", len(long), self.max_length)

    def freeze(self) -> TextEncoder:
        """Freeze the encoder body (not the null embedding): no grad, eval mode."""
        self.frozen = True
        for p in self.parameters():
            if p is not self.null_embedding:
                p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if getattr(self, "frozen", False):
            for child in self.children():
                child.eval()
        return self


# ---------------------------------------------------------------- transformers encoders


def words(text: str) -> list[str]:
    """The word tokenizer's normaliser: lower-case runs of letters/digits; the rest separates."""
    return re.findall(r"[^\W_]+", text.lower())


def shapes_vocabulary() -> tuple[str, ...]:
    """Specials, then every word the shapes captions (video.data) can contain, sorted."""
    parts = [*COLORS, *BACKGROUNDS, *SHAPES, *SIZES, *MOTIONS, *_TEMPLATES, *FUNCTION_WORDS]
    parts += [phrase for phrases in _PHRASES.values() for phrase in phrases]
    vocab = {w for part in parts for w in words(part.replace("{objects}", "").replace("{bg}", ""))}
    return SPECIALS + tuple(sorted(vocab))


@dataclass
class ShapesTextEncoderConfig:
    vocab: tuple[str, ...] = field(default_factory=shapes_vocabulary)  # saved in config.json
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    max_length: int = 32  # tokens (words) per prompt
    null_length: int = 4
    positions: str = "rope"  # "rope" (1-D RoPE in every block) or "learned" (added embedding)
    rope_theta: float = 10000.0
    dropout: float = 0.0  # on the token embeddings
    truncation: bool = True
    backend: str = "auto"  # attention kernel, see mdiff.nn.attention

    def __post_init__(self):
        self.vocab = tuple(self.vocab)
        if self.vocab[:2] != SPECIALS or len(set(self.vocab)) != len(self.vocab):
            raise InvalidInputError(f"vocab must start with {SPECIALS} and have no duplicates")
        bad = [w for w in self.vocab[2:] if not isinstance(w, str) or words(w) != [w]]
        if bad:
            raise InvalidInputError(f"vocab words must be lower-case alphanumeric: {bad[:5]}")
        if self.positions not in ("rope", "learned"):
            raise InvalidInputError(
                f"positions must be 'rope' or 'learned', not {self.positions!r}"
            )
        if self.positions == "rope" and (self.dim // self.heads) % 2:
            raise InvalidInputError(f"head dim {self.dim}/{self.heads} must be even for RoPE")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout}")
        self.block_config()  # validates dim / heads

    def block_config(self) -> BlockConfig:
        return BlockConfig(dim=self.dim, heads=self.heads, mlp_ratio=self.mlp_ratio)


class ShapesTextEncoder(TextEncoder, PretrainedMixin):
    """Word tokenizer over the shapes vocabulary + a small bidirectional transformer encoder:
    embed (+ learned positions) → depth × TransformerBlock (no AdaLN) → LayerNorm."""

    config_class = ShapesTextEncoderConfig

    def __init__(self, config: ShapesTextEncoderConfig):
        c = config
        super().__init__(c.dim, c.null_length, c.max_length, c.truncation)
        self.config = c
        self.ids = {w: i for i, w in enumerate(c.vocab)}
        self.embed = nn.Embedding(len(c.vocab), c.dim)
        self.pos = nn.Embedding(c.max_length, c.dim) if c.positions == "learned" else None
        self.rope = (
            RotaryEmbedding(c.dim // c.heads, theta=c.rope_theta) if self.pos is None else None
        )
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.block_config(), c.backend) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts -> ids (B, L) long (0 = [PAD], unknown words 1 = [UNK]), mask (B, L) bool."""
        rows = [[self.ids.get(w, 1) for w in words(p)] for p in check_prompts(prompts)]
        self._check_lengths([len(r) for r in rows])
        rows = [r[: self.max_length] for r in rows]
        width = max(1, max(len(r) for r in rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask = torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]
        return ids.to(self.device), mask.to(self.device)

    def embed_ids(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) True = real token -> hidden states (B, L, D)."""
        if ids.dim() != 2 or tuple(mask.shape) != tuple(ids.shape) or mask.dtype != torch.bool:
            raise InvalidInputError("need ids (B, L) and a bool mask of the same shape")
        if ids.shape[1] > self.max_length:
            raise InvalidInputError(f"{ids.shape[1]} tokens exceed max_length={self.max_length}")
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < len(self.config.vocab):
            raise InvalidInputError(f"token ids must lie in [0, {len(self.config.vocab)})")
        length = ids.shape[1]
        x = self.embed(ids)  # (B, L, D)
        if self.pos is not None:
            x = x + self.pos.weight[:length]  # (B, L, D)
        x = self.drop(x)
        rope = None if self.rope is None else self.rope.freqs(arange_positions(length, 0, x.device))
        keys = Dense(mask[:, None, None, :])  # (B, 1, 1, L): padding keys are never seen
        for block in self.blocks:
            x = block(x, rope=rope, mask=keys)  # (B, L, D)
        return self.norm(x)  # (B, L, D)

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenize(prompts)  # (B, L), (B, L)
        return self.embed_ids(ids, mask), mask
