"""`WanT5Encoder`: UMT5 text states exactly as diffusers' WanPipeline makes them.

    encoder = WanT5Encoder(umt5_encoder_model, tokenizer)      # max_length 512
    emb, mask = encoder.encode(["a cat"])    # (1, 512, D): the states of the real tokens, zeros
    emb, mask = encoder.null(1)              # the states of "" (WanPipeline's negative prompt)

WanPipeline (`_get_t5_prompt_embeds`) cleans each prompt (ftfy when installed, HTML entities
unescaped twice, whitespace runs to one space), tokenizes it padded to `max_sequence_length`
(512) with the tokenizer's special tokens (T5's EOS), runs the encoder with the attention mask,
and keeps the states of the real tokens followed by zeros up to 512. Its unconditional branch
is the negative prompt, "" by default, encoded the same way (for T5: the EOS token alone).
So here, unlike `TextEncoder`'s "no prompt" rule, "" is encoded by UMT5 and `null` is that
encoding; the base class's learned null embedding is unused (kept at zero, so the weights hash
is a function of the folder). The mask is True on the real tokens; the Wan transformer reads
no mask, and zero rows are what it sees in diffusers too.

A folder of its own (`save_pretrained` / `from_pretrained`, a component of a pipeline folder):

    text_encoder.json   {"_class_name": "WanT5Encoder", "max_length": 512}
    config.json, model.safetensors (or shards + index)   transformers' UMT5EncoderModel
    tokenizer/          the tokenizer (AutoTokenizer's files; or those files beside config.json)

so a diffusers Wan folder's ``text_encoder/`` and ``tokenizer/`` are its parts unchanged.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from mdiff.atomic import atomic_dir
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import read_json_object
from mdiff.video.text_encoders.base import check_prompts
from mdiff.video.text_encoders.hf import HF_SETTINGS, HFTextEncoder

__all__ = ["WanT5Encoder", "load_umt5", "prompt_clean"]

MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default
TOKENIZER_DIR = "tokenizer"


def prompt_clean(text: str) -> str:
    """WanPipeline's `prompt_clean`: ftfy (if installed), HTML unescaped twice, whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanT5Encoder(HFTextEncoder):
    """A frozen UMT5 encoder + tokenizer with WanPipeline's padding and empty-prompt rules."""

    def __init__(self, model, tokenizer, max_length: int = MAX_SEQUENCE_LENGTH):
        super().__init__(model, tokenizer, max_length, padding="max_length")
        with torch.no_grad():
            self.null_embedding.zero_()

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts (B,) -> states (B, max_length, D) zero past each prompt's tokens, mask."""
        prompts = [prompt_clean(p) for p in check_prompts(prompts)]
        self._check_lengths([len(ids) for ids in self.tokenizer(prompts)["input_ids"]])
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                               truncation=True, add_special_tokens=True,
                               return_attention_mask=True, return_tensors="pt")  # fmt: skip
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.no_grad():
            hidden = self.model(ids, mask).last_hidden_state  # (B, L, D)
        keep = torch.arange(ids.shape[1], device=self.device) < mask.gt(0).sum(1, keepdim=True)
        hidden = hidden.to(self.dtype).masked_fill(~keep[..., None], 0.0)
        return hidden, keep  # (B, L, D), (B, L) bool

    def null(self, batch: int) -> tuple[Tensor, Tensor]:
        """The unconditional branch: the encoding of "" (WanPipeline's default negative)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidInputError(f"batch must be a positive int, got {batch!r}")
        return self.encode([""] * batch)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The UMT5 folder, the tokenizer in ``tokenizer/`` and ``text_encoder.json``."""
        settings = {"_class_name": type(self).__name__, "max_length": self.max_length}
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            (tmp / HF_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return Path(directory)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, max_length: int | None = None, *,
                        device=None, dtype=None, tokenizer=None) -> WanT5Encoder:  # fmt: skip
        """A folder `save_pretrained` wrote, or a transformers UMT5 encoder folder with the
        tokenizer in `tokenizer` (default: its ``tokenizer/`` subfolder, else the folder)."""
        directory = Path(path)
        settings = read_json_object(directory / HF_SETTINGS) if (
            directory / HF_SETTINGS).is_file() else {}  # fmt: skip
        saved = settings.get("_class_name", cls.__name__)
        if saved != cls.__name__:
            raise CheckpointError(f"{directory / HF_SETTINGS} is a {saved!r}, not a {cls.__name__}")
        unknown = sorted(set(settings) - {"_class_name", "max_length"})
        if unknown:
            raise CheckpointError(f"{directory / HF_SETTINGS} has keys unknown to {cls.__name__}: "
                                  f"{', '.join(unknown)}")  # fmt: skip
        if tokenizer is None:
            tokenizer = directory / TOKENIZER_DIR
            tokenizer = tokenizer if tokenizer.is_dir() else directory
        model, tok = load_umt5(directory, Path(tokenizer))
        length = max_length or settings.get("max_length", MAX_SEQUENCE_LENGTH)
        try:
            encoder = cls(model.to(dtype=dtype), tok, int(length))
        except (InvalidInputError, TypeError, ValueError) as e:
            raise CheckpointError(f"{directory}: {e}") from e
        return encoder.to(device=device).eval()


def load_umt5(model_dir: Path, tokenizer_dir: Path):
    """transformers' UMT5EncoderModel (safetensors only) and AutoTokenizer, read locally;
    `CheckpointError` naming the class when the config is not UMT5's."""
    import transformers

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json: not a transformers model folder")
    config = read_json_object(config_path)
    kind, arch = config.get("model_type"), config.get("architectures") or ["UMT5EncoderModel"]
    if kind != "umt5" or arch != ["UMT5EncoderModel"]:
        raise CheckpointError(
            f"{config_path}: model_type {kind!r}, architectures {arch}; Wan's text encoder is "
            "transformers' UMT5EncoderModel (model_type 'umt5'), the only one mdiff reads here"
        )
    try:
        model = transformers.UMT5EncoderModel.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot load the UMT5 text encoder of {model_dir}: {e}") from e
    return model, tokenizer
