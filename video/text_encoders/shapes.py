"""`ShapesTextEncoder`: a word tokenizer over the shapes captions' vocabulary and a small
bidirectional transformer, trained jointly with the DiT (see `base` for the encoder contract)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.hub import PretrainedMixin
from mdiff.nn import BlockConfig, Dense, RotaryEmbedding, TransformerBlock, arange_positions
from mdiff.video.captions import FILLERS, SYNONYM_OF, free_form_phrases
from mdiff.video.data import BACKGROUNDS, COLORS, MOTIONS, PHRASES, SHAPES, SIZES, TEMPLATES
from mdiff.video.text_encoders.base import TextEncoder, check_prompts

__all__ = ["ShapesTextEncoder", "ShapesTextEncoderConfig", "shapes_vocabulary", "words"]

logger = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[UNK]")  # ids 0 and 1 of every ShapesTextEncoder vocabulary
FUNCTION_WORDS = ("a", "an", "and", "the", "with", "of", "in", "on", "at", "is", "two", "one")


def words(text: str) -> list[str]:
    """The word tokenizer's normaliser: lower-case runs of letters/digits; the rest separates."""
    return re.findall(r"[^\W_]+", text.lower())


def shapes_vocabulary(free_form: bool = True) -> tuple[str, ...]:
    """Specials, then every word the shapes captions (video.data) can contain, sorted; with
    ``free_form`` also the words of the free-form captions (video.captions) but its fillers,
    which stay unknown."""
    parts = [*COLORS, *BACKGROUNDS, *SHAPES, *SIZES, *MOTIONS, *TEMPLATES, *FUNCTION_WORDS]
    parts += [phrase for phrases in PHRASES.values() for phrase in phrases]
    parts += free_form_phrases() if free_form else []
    vocab = {w for part in parts for w in words(part.replace("{objects}", "").replace("{bg}", ""))}
    return SPECIALS + tuple(sorted(vocab - set(FILLERS)))


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

    def unknown_words(self, prompts: list[str]) -> list[str]:
        """The words of ``prompts`` outside the vocabulary (they become ``[UNK]``), in order."""
        seen = [w for p in check_prompts(prompts) for w in words(p) if w not in self.ids]
        return list(dict.fromkeys(seen))

    @torch.no_grad()
    def load_with_vocabulary(self, source: ShapesTextEncoder) -> int:
        """Copy ``source``'s weights into this encoder, whose vocabulary may differ: a word's
        embedding row is copied by word; a word ``source`` lacks starts at the row of the word
        it stands for (`SYNONYM_OF`: "ball" at "circle") or keeps its fresh initialisation.
        Every other weight must match in shape. Returns how many rows had no source."""
        state = {k: v for k, v in source.state_dict().items() if k != "embed.weight"}
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a shape differs
            raise InvalidInputError(f"encoder weights differ beyond the vocabulary: {e}") from e
        if unexpected or [k for k in missing if k != "embed.weight"]:
            raise InvalidInputError(
                f"encoder weights differ beyond the vocabulary: {[*missing, *unexpected][:5]}"
            )
        old, fresh = source.embed.weight, 0
        for word, row in self.ids.items():
            origin = source.ids.get(word, source.ids.get(SYNONYM_OF.get(word, ""), None))
            if origin is None:
                fresh += 1
            else:
                self.embed.weight[row] = old[origin]
        logger.info("vocabulary transfer: %d of %d words start fresh", fresh, len(self.ids))
        return fresh

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
