"""DiffusionGemma (`transformers.DiffusionGemmaForBlockDiffusion`) behind one small interface.

DiffusionGemma is a *uniform-state* block-diffusion LM: no ``[MASK]`` token. A causal encoder
writes the prompt (and every finished canvas) into a KV cache; a bidirectional decoder denoises
a canvas of ``canvas_length`` tokens that starts as uniform random ids, reading that cache
read-only and conditioned on the previous step's logits (self-conditioning). It does not fit
the masked sampler's contract (`mdiff.text.model.spec`), so `mdiff.text.sampling.gemma_runner`
drives it; this module only wraps its two halves::

    lm = load_diffusion_gemma_model("path/to/folder")    # or DiffusionGemmaLM(model)
    cache = lm.new_cache()
    lm.encode(ids, mask, positions, cache)               # (B, N) new tokens -> cache grows by N
    logits = lm.denoise(canvas, sc, mask, positions, cache)   # (B, C) -> (B, C, V) float32

``mask`` is the 2-D key mask over ``[cache ; new]`` (True = real token, left padding allowed);
``positions`` are the new tokens' absolute positions (B, N). The cache is exact: committed
canvases are encoded once and their keys reused by every later step (what the model's own
``generate`` does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model.gemma_native import NativeDecoder, NativePlan

__all__ = [
    "ARCHITECTURE",
    "MODEL_TYPE",
    "DiffusionGemmaLM",
    "is_diffusion_gemma",
    "load_diffusion_gemma",
    "load_diffusion_gemma_model",
]

MODEL_TYPE = "diffusion_gemma"
ARCHITECTURE = "DiffusionGemmaForBlockDiffusion"


def _read_config(path: str | os.PathLike) -> dict | None:
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable config ({e})") from None


def is_diffusion_gemma(config_or_path) -> bool:
    """True for a DiffusionGemma config (object or dict) or a folder whose config.json is one
    (``model_type == "diffusion_gemma"`` or the architecture `ARCHITECTURE`)."""
    if isinstance(config_or_path, str | os.PathLike):
        config_or_path = _read_config(config_or_path)
        if config_or_path is None:
            return False
    get = config_or_path.get if isinstance(config_or_path, dict) else (
        lambda k, d=None: getattr(config_or_path, k, d)
    )  # fmt: skip
    return get("model_type") == MODEL_TYPE or ARCHITECTURE in (get("architectures") or ())


class DiffusionGemmaLM(nn.Module):
    """A `DiffusionGemmaForBlockDiffusion` with its ids: ``vocab_size``, ``canvas_length``,
    ``pad_id``, ``bos_id``, ``eos_ids`` (generation config first, then the text config)."""

    def __init__(self, model: nn.Module, *, native: bool = True):
        super().__init__()
        config = getattr(model, "config", None)
        if config is None or not is_diffusion_gemma(config):
            raise InvalidInputError(
                f"DiffusionGemmaLM wraps a {ARCHITECTURE}, got {type(model).__name__}"
            )
        self.model = model
        text = config.get_text_config()
        gen = getattr(model, "generation_config", None)
        self.vocab_size = int(text.vocab_size)
        self.canvas_length = int(config.canvas_length)
        self.pad_id = _first_id(getattr(gen, "pad_token_id", None), text.pad_token_id)
        self.bos_id = _first_id(getattr(gen, "bos_token_id", None), text.bos_token_id)
        eos = getattr(gen, "eos_token_id", None)
        eos = text.eos_token_id if eos is None else eos
        self.eos_ids = tuple(int(i) for i in ([] if eos is None else _as_list(eos)))
        # the decoder as plain tensor code (`gemma_native`; same outputs), where supported
        self.native, self._stamp = None, None
        if native and NativeDecoder.unsupported(model) is None:
            self.native, self._stamp = NativeDecoder(model), self._weights_stamp()

    def _weights_stamp(self) -> tuple:
        """Where and at which version every weight is: the native decoder's fused copies are
        rebuilt when it changes (``.to(device)``, ``load_state_dict``, in-place edits)."""
        return tuple((p.data_ptr(), p._version, p.device) for p in self.model.parameters())

    @property
    def spec(self):
        """No `DenoiserSpec`: the masked sampler cannot drive a uniform-state model."""
        raise InvalidInputError(
            "DiffusionGemma is a uniform-state block-diffusion model (no [MASK] token): run it "
            "with mdiff.text.sampling.gemma_runner.generate_gemma (gemma_fim.infill_gemma), or "
            "CodeModel.from_pretrained(folder), not the masked sampler"
        )

    @staticmethod
    def code_model_class():
        """The `CodeModel` subclass that drives this model (`CodeModel.from_pretrained`)."""
        from mdiff.text.sampling.gemma_code import GemmaCodeModel

        return GemmaCodeModel

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def generation_config(self):
        return getattr(self.model, "generation_config", None)

    def new_cache(self):
        """An empty `transformers.DynamicCache` laid out for this model's layers."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config.get_text_config(decoder=True))

    def _check(self, ids: Tensor, mask: Tensor, positions: Tensor, cache) -> None:
        if not torch.is_tensor(ids) or ids.dtype != torch.long or ids.dim() != 2:
            raise InvalidInputError("token ids must be a LongTensor (B, N)")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise InvalidInputError(f"token ids must lie in [0, {self.vocab_size})")
        b, n = ids.shape
        if tuple(positions.shape) != (b, n):
            raise InvalidInputError(f"positions must be (B, N) = {(b, n)}")
        total = cache.get_seq_length() + n
        if torch.is_tensor(mask) and tuple(mask.shape) != (b, total):
            raise InvalidInputError(f"mask must be (B, cache + N) = {(b, total)}")

    @torch.no_grad()
    def encode(self, ids: Tensor, mask: Tensor, positions: Tensor, cache) -> None:
        """Append ``ids`` (B, N) at ``positions`` (B, N) to ``cache`` (causal encoder)."""
        self._check(ids, mask, positions, cache)
        self.model.model.encoder(
            input_ids=ids, attention_mask=mask.bool(), cache=cache, position_ids=positions
        )

    def decoder_mask(self, canvas: Tensor, mask: Tensor, cache, positions: Tensor | None = None):
        """The decoder's attention masks per layer kind for ``canvas`` (B, C) and the key mask
        ``mask`` (B, cache + C), built once per canvas (as the model's ``generate`` does).
        With the canvas ``positions`` (B, C) and the native decoder: its `NativePlan` (masks,
        rotary tables, key/value buffers) instead; `denoise` takes either."""
        masks = self.model.model.decoder.create_diffusion_decoder_attention_mask(
            config=self.model.config, inputs_embeds=canvas[..., None], cache=cache,
            decoder_attention_mask=mask.bool(),
        )  # fmt: skip
        if self.native is None or positions is None:
            return masks
        stamp = self._weights_stamp()
        if stamp != self._stamp:
            self.native, self._stamp = NativeDecoder(self.model), stamp
        return self.native.plan(masks, positions, cache)

    @torch.no_grad()
    def denoise(self, canvas: Tensor, self_conditioning: Tensor | None, mask: Tensor,
                positions: Tensor, cache, *, check: bool = True) -> Tensor:  # fmt: skip
        """Decoder logits (B, C, V) float32 for ``canvas`` (B, C) at ``positions`` (B, C),
        conditioned on ``self_conditioning`` (B, C, V) logits of the previous step or None;
        ``mask`` (B, cache + C) or its `decoder_mask`. The cache is read, never written.
        ``check=False`` (the runner's inner loop) skips the shape and id checks."""
        if check:
            self._check(canvas, mask, positions, cache)
        if self_conditioning is not None:
            if check and tuple(self_conditioning.shape) != (*canvas.shape, self.vocab_size):
                raise InvalidInputError("self-conditioning logits must be (B, C, V)")
            # the model's generate keeps them in the embeddings' dtype
            self_conditioning = self_conditioning.to(self.model.model.decoder.embed_tokens.weight)
        if torch.is_tensor(mask):
            mask = self.decoder_mask(canvas, mask, cache, positions)
        if isinstance(mask, NativePlan):
            if not _hooked(self.model.model.decoder):
                return self.native(canvas, self_conditioning, mask)
            mask = mask.mapping  # hooks on the decoder (counters, probes) see its forward
        out = self.model(
            decoder_input_ids=canvas, self_conditioning_logits=self_conditioning,
            decoder_attention_mask=mask, cache=cache, decoder_position_ids=positions,
        )  # fmt: skip
        return out.logits


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has forward (pre-)hooks, its own or global ones."""
    from torch.nn.modules import module as m

    return bool(module._forward_pre_hooks or module._forward_hooks
                or m._global_forward_pre_hooks or m._global_forward_hooks)  # fmt: skip


def _as_list(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _first_id(*values) -> int | None:
    for v in values:
        if v is not None:
            return int(_as_list(v)[0])
    return None


def load_diffusion_gemma_model(path: str | os.PathLike, *, device=None,
                               dtype=None) -> DiffusionGemmaLM:  # fmt: skip
    """Load a DiffusionGemma folder (config.json with ``model_type == "diffusion_gemma"``,
    safetensors weights, optional generation_config.json) as a `DiffusionGemmaLM` in eval mode.

    Raises `CheckpointError` for a folder that is missing, not DiffusionGemma, or unloadable."""
    if not isinstance(path, str | os.PathLike):
        raise InvalidInputError(f"a model folder is a path, got {type(path).__name__}")
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    config = _read_config(folder)
    if config is None:
        raise CheckpointError(f"{folder} has no config.json: not a transformers model folder")
    if not is_diffusion_gemma(config):
        raise CheckpointError(
            f"{folder} holds a {config.get('model_type')!r} model, not {MODEL_TYPE!r}"
        )
    from transformers import DiffusionGemmaForBlockDiffusion

    try:
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype or "auto"
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load DiffusionGemma ({e})") from None
    if device is not None:
        model = model.to(device)
    return DiffusionGemmaLM(model.eval())


def load_diffusion_gemma(path: str | os.PathLike, *, device=None, dtype=None):
    """The loader registered in `mdiff.text.model.loaders` for ``diffusion_gemma`` folders:
    a `loaders.Loaded` with the `DiffusionGemmaLM`, the folder's tokenizer (`HFTokenizer`;
    None when the folder has none) and a one-line summary. `CodeModel.from_pretrained` turns it
    into a `mdiff.text.sampling.gemma_code.GemmaCodeModel` (``DiffusionGemmaLM.code_model_class``).
    """
    from mdiff.text.model import loaders

    lm = load_diffusion_gemma_model(path, device=device, dtype=dtype)
    tok = None
    if any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        tok = loaders.HFTokenizer(loaders._tokenizer(Path(path)), lm.vocab_size)
    summary = (f"{path}: diffusion_gemma architecture, DiffusionGemma runner (uniform-state "
               f"block diffusion, canvas {lm.canvas_length}, no mask token)")  # fmt: skip
    return loaders.Loaded(lm, tok, summary)
