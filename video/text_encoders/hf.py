"""`HFTextEncoder`: any transformers text encoder and tokenizer, used frozen (T5/UMT5, CLIP,
BERT-like), with the learned null embedding of `TextEncoder` for classifier-free guidance.
Real models plug in by path: ``HFTextEncoder.from_pretrained("/models/umt5-xxl")``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mdiff.atomic import atomic_dir
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import load_state_dict, read_json_object, save_state_dict
from mdiff.video.text_encoders.base import TextEncoder

__all__ = ["HFTextEncoder"]

logger = logging.getLogger(__name__)


_HF_CLASSES = {  # config.model_type -> the transformers class of the text encoder alone
    "t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel",
    "clip": "CLIPTextModel", "clip_text_model": "CLIPTextModel",
    "siglip": "SiglipTextModel", "siglip_text_model": "SiglipTextModel",
}  # fmt: skip
HF_SETTINGS = "text_encoder.json"
HF_NULL_WEIGHTS = "null_embedding.safetensors"


class HFTextEncoder(TextEncoder):
    """A frozen transformers encoder + tokenizer; embeddings are its `last_hidden_state`.

    padding: "longest" (pad to the batch's longest prompt) or "max_length" (always max_length).
    max_length defaults to the tokenizer's `model_max_length`, else the model's position
    limit, else 512.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        max_length: int | None = None,
        *,
        null_length: int = 4,
        truncation: bool = True,
        padding: str = "longest",
    ):
        config = getattr(model, "config", None)
        dim = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if not isinstance(dim, int):
            raise InvalidInputError(f"{type(model).__name__} has no config.hidden_size")
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise InvalidInputError("the tokenizer has no pad token; set tokenizer.pad_token")
        if padding not in ("longest", "max_length"):
            raise InvalidInputError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if max_length is None:
            limit = getattr(tokenizer, "model_max_length", None)
            max_length = limit if isinstance(limit, int) and limit < 100_000 else None
            max_length = max_length or getattr(config, "max_position_embeddings", None) or 512
        p = next(model.parameters())
        super().__init__(dim, null_length, max_length, truncation, device=p.device, dtype=p.dtype)
        self.model, self.tokenizer, self.padding = model, tokenizer, padding
        self.freeze()

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        self._check_lengths([len(ids) for ids in self.tokenizer(prompts)["input_ids"]])
        batch = self.tokenizer(prompts, padding=self.padding, truncation=True,
                               max_length=self.max_length, return_tensors="pt")  # fmt: skip
        ids = batch["input_ids"].to(self.device)  # (B, L)
        mask = batch["attention_mask"].to(self.device).bool()  # (B, L)
        out = self.model(input_ids=ids, attention_mask=mask.long(), return_dict=True)
        hidden = getattr(out, "last_hidden_state", None)
        if not isinstance(hidden, Tensor):
            raise InvalidInputError(f"{type(self.model).__name__} returns no last_hidden_state")
        return hidden, mask  # (B, L, D), (B, L)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The transformers folder (model + tokenizer) plus our settings and null embedding."""
        settings = {"_class_name": type(self).__name__, "max_length": self.max_length,
                    "null_length": self.null_length, "truncation": self.truncation,
                    "padding": self.padding}  # fmt: skip
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / HF_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
            save_state_dict({"null_embedding": self.null_embedding}, tmp / HF_NULL_WEIGHTS)
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, max_length: int | None = None, *,
        null_length: int | None = None, truncation: bool | None = None,
        device: str | torch.device | None = None, dtype: torch.dtype | None = None,
    ) -> HFTextEncoder:  # fmt: skip
        """Load a local transformers folder (config.json, safetensors weights, tokenizer).

        The class comes from the config's model_type (T5/mT5/UMT5 → the encoder-only model,
        CLIP/SigLIP → the text tower, else AutoModel, taking the encoder of an encoder-decoder).
        A folder written by `save_pretrained` also restores the settings and null embedding;
        arguments given here override the settings.
        """
        import transformers

        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise CheckpointError(f"{directory} is not a transformers model folder")
        try:
            config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
            klass = getattr(transformers, _HF_CLASSES.get(config.model_type, "AutoModel"))
            model = klass.from_pretrained(directory, local_files_only=True, use_safetensors=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot load a text encoder from {directory}: {e}") from e
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        saved = _read_settings(directory)
        given = {"max_length": max_length, "null_length": null_length, "truncation": truncation}
        kwargs = {k: saved[k] for k in ("max_length", "null_length", "truncation", "padding")
                  if k in saved}  # fmt: skip
        kwargs.update({k: v for k, v in given.items() if v is not None})
        encoder = cls(model.to(dtype=dtype), tokenizer, **kwargs)
        if (directory / HF_NULL_WEIGHTS).is_file():
            null = load_state_dict(directory / HF_NULL_WEIGHTS).get("null_embedding")
            if null is None or null.shape != encoder.null_embedding.shape:
                shape = None if null is None else tuple(null.shape)
                raise CheckpointError(f"null embedding {shape} in {directory} does not fit "
                                      f"{tuple(encoder.null_embedding.shape)}")  # fmt: skip
            encoder.null_embedding.data.copy_(null)
        return encoder.to(device=device).eval()


def _read_settings(directory: Path) -> dict:
    """The settings `HFTextEncoder.save_pretrained` wrote, or {} for a plain transformers folder."""
    path = directory / HF_SETTINGS
    if not path.is_file():
        return {}
    return read_json_object(path)


# ---------------------------------------------------------------- the built-in shapes encoder
