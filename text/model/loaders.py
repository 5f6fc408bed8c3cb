"""Load a transformers folder as a text denoiser, its spec picked from the config.

    loaded = load_transformers("path/to/folder")     # -> Loaded(model, tokenizer, summary)
    print(loaded.summary)   # "path/to/folder: llama architecture, spec llada (mask 5, ...)"

How the spec is chosen (``config.json``'s ``model_type`` and ``architectures``; the mask, EOS
and pad ids from the tokenizer, else the config; the vocabulary from the model's logits):

- a registered loader first (`register_loader`): DiffusionGemma (``diffusion_gemma``,
  `mdiff.text.model.gemma.load_diffusion_gemma`) and LLaDA 2 (``llada2*``,
  `mdiff.text.model.llada2.load_llada2`), imported only when such a folder is loaded;
- Dream (``model_type`` "dream", ``DreamModel``): a Qwen2-layout folder → `dream_spec` (logits
  shift 1, bidirectional);
- a decoder architecture (Llama, Qwen2, Mistral, …) with a mask token: LLaDA-style
  (`llada_spec`: no shift, bidirectional), except the Qwen2 family, whose diffusion LMs (Dream,
  DiffuCoder) are AR-initialised → `dream_spec`;
- LLaDA's own layout (``model_type`` "llada", ``LLaDAModelLM``, remote code in the folder):
  its weights read into a Llama (`mdiff.text.model.llada_native`) → `llada_spec`;
- a masked LM (BERT, ModernBERT, RoBERTa, XLM-R, …) → `from_masked_lm`.

A diffusers text pipeline's folder (``DiffusionGemmaPipeline`` / ``LLaDA2Pipeline``
``save_pretrained``: ``model_index.json``, ``model/``, ``tokenizer/`` or ``processor/``) loads
as its ``model/`` folder with that tokenizer (`pipeline_parts`).

Anything else (an AR model without a mask token, an unknown architecture) is a
`CheckpointError` saying to pass ``spec=DenoiserSpec(...)``. Weights are
read from safetensors only (never unpickled) and no remote code runs, unless the caller passes
``trust_remote_code=True`` to a registered loader that needs it (LLaDA 2).

A loader is ``fn(path, **kwargs)`` returning a `Loaded`, ``(model, tokenizer)`` or ``model``:
``model`` exposes a `DenoiserSpec` as ``.spec``; no tokenizer (None) loads the folder's own with
`AutoTokenizer`. A `Loaded` is taken as it is (its model may bring its own `CodeModel` class:
``model.code_model_class()``, used by `CodeModel.from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model.adapters import (
    HFAdapter,
    dream_spec,
    from_masked_lm,
    llada_spec,
    text_vocab,
)
from mdiff.text.model.spec import DenoiserSpec

__all__ = ["HFTokenizer", "Loaded", "is_transformers_folder", "load_transformers",
           "register_loader"]  # fmt: skip

HOW = ("pass spec=DenoiserSpec(vocab_size=..., mask_id=..., eos_ids=..., attention=..., "
       "logits_shift=...) to CodeModel.from_pretrained / load_transformers")  # fmt: skip
QWEN2_FAMILY = ("qwen2", "qwen3")  # Dream / DiffuCoder-style: AR-initialised, shifted logits


@dataclass
class Loaded:
    model: Any  # exposes .spec (a DenoiserSpec); HFAdapter for transformers models
    tokenizer: Any  # HFTokenizer (encode / decode / special_ids / vocab_size / bos_id)
    summary: str  # one line: what was chosen


_REGISTRY: list[tuple[Callable[[dict], bool], Callable | str]] = []


def register_loader(key: str | Callable[[dict], bool], fn: Callable | str) -> None:
    """Route folders to ``fn``: ``key`` is a ``model_type`` or ``predicate(config dict)``;
    ``fn`` a callable or ``"module:function"`` (imported at first use). Later ones win."""
    if isinstance(key, str):
        model_type = key
        key = lambda cfg: cfg.get("model_type") == model_type  # noqa: E731
    if not callable(key) or not (callable(fn) or (isinstance(fn, str) and ":" in fn)):
        raise InvalidInputError("register_loader(model_type or predicate, callable)")
    _REGISTRY.insert(0, (key, fn))


register_loader("diffusion_gemma", "mdiff.text.model.gemma:load_diffusion_gemma")
register_loader(lambda cfg: str(cfg.get("model_type", "")).startswith("llada2"),
                "mdiff.text.model.llada2:load_llada2")  # fmt: skip


def is_transformers_folder(path: str | Path) -> bool:
    """A transformers folder, or a diffusers text pipeline folder holding one (`pipeline_parts`)."""
    path = Path(path)
    parts = pipeline_parts(path)
    return _read_config(parts[0] if parts else path, quiet=True) is not None


def pipeline_parts(path: str | Path) -> tuple[Path, Path] | None:
    """A diffusers text pipeline's folder (``save_pretrained`` of `DiffusionGemmaPipeline`,
    `LLaDA2Pipeline`, …: ``model_index.json`` naming a ``model`` with a transformers
    ``config.json``): the folders of its model and of its tokenizer (component
    ``tokenizer``, else ``processor``, else the model's own); None for any other folder."""
    path = Path(path)
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = index.get("model") if isinstance(index, dict) else None
    if not isinstance(model, list) or not (path / "model" / "config.json").is_file():
        return None  # (its library is named by module: "transformers", "diffusion_gemma", …)
    tok = next((path / c for c in ("tokenizer", "processor") if isinstance(index.get(c), list)
                and (path / c).is_dir()), path / "model")  # fmt: skip
    return path / "model", tok


def load_readable(path: str | Path, **kwargs) -> Loaded:
    """`load_transformers`, with a weights file that cannot be read (truncated, not
    safetensors) refused as a `CheckpointError` naming the folder, and without transformers'
    per-tensor "Loading weights" bar (the CLI and the server say in one line what loaded)."""
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load_transformers(path, **kwargs)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: a weights file cannot be read ({e}); save or "
                              "download it again") from None  # fmt: skip
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_transformers(path: str | Path, *, spec: DenoiserSpec | None = None, device=None,
                      **kwargs) -> Loaded:  # fmt: skip
    """The folder's model behind `HFAdapter` (or a registered loader's model), its tokenizer
    and a one-line summary of the choice (see the module doc)."""
    path, tok_path = Path(path), None
    parts = pipeline_parts(path)
    if parts is not None:  # a diffusers pipeline folder: its model, its tokenizer
        path, tok_path = parts
    cfg = _read_config(path)
    _refuse_pickled_only(path)
    model_type = str(cfg.get("model_type", "?"))
    if spec is None:
        for match, fn in _REGISTRY:
            if match(cfg):
                return _registered(fn, path, cfg, device, kwargs, tok_path or path)
    kwargs.pop("trust_remote_code", None)  # these classes are transformers' own: no code runs
    kind, name = _choose(cfg, spec)
    tok = _tokenizer(tok_path or path)
    if spec is None and kind == "causal" and _mask_id(cfg, tok) is None:
        raise CheckpointError(
            f"{model_type}: an autoregressive model with no mask token is not a diffusion LM; {HOW}"
        )
    if spec is None and kind == "masked-lm" and _mask_id(cfg, tok) is None:
        raise CheckpointError(f"{model_type}: the folder's tokenizer names no mask token; {HOW}")
    model = _load_model(path, cfg, kind, device)
    _check_vocab(path, tok, int(model.config.vocab_size), None if spec else _mask_id(cfg, tok))
    if spec is None and name == "masked-lm":
        adapter = from_masked_lm(model, tok)
    else:
        spec = spec or _spec(name, model.config.vocab_size, cfg, tok)
        adapter = HFAdapter(model, spec)
    s = adapter.spec
    shift = ", logits shift 1" if s.logits_shift else ""
    layout = " (LLaDA's own layout, read as Llama)" if kind == "llada-native" else ""
    summary = (f"{path}: {model_type} architecture{layout}, spec {name} (mask {s.mask_id}, "
               f"{s.attention}{shift})")  # fmt: skip
    return Loaded(adapter, HFTokenizer(tok, s.vocab_size), summary)


class HFTokenizer:
    """A transformers tokenizer with the interface of `CodeTokenizer` that the text frontend
    uses: ``encode(text) -> ids`` (no special tokens added), ``decode(ids,
    skip_special_tokens)``, ``special_ids``, ``vocab_size`` (the model's logits width) and
    ``bos_id``."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tok, self.vocab_size = tokenizer, int(vocab_size)
        names = getattr(tokenizer, "special_tokens_map", {}) or {}
        ids = {
            n: tokenizer.convert_tokens_to_ids(t) for n, t in names.items() if isinstance(t, str)
        }
        self.special_ids = {n: int(i) for n, i in ids.items() if isinstance(i, int)}
        self.bos_id = _first_id(tokenizer, "bos_token_id", "cls_token_id", "eos_token_id")

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        n = len(self.tok)
        ids = [int(i) for i in ids if 0 <= int(i) < n]
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


# ---- choosing ----------------------------------------------------------------------------------


def _choose(cfg: dict, spec: DenoiserSpec | None) -> tuple[str, str]:
    """(which transformers class family to load, the spec's name)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED,
    )

    mt = str(cfg.get("model_type", "")).lower()
    archs = " ".join(str(a) for a in cfg.get("architectures") or [])
    if mt == "dream" or "Dream" in archs:
        return "dream", "dream" if spec is None else "given"
    if mt == "llada" or "LLaDAModelLM" in archs:  # its own layout, read as a Llama
        return "llada-native", "llada" if spec is None else "given"
    if mt in MASKED and not (mt in CAUSAL and ("ForCausalLM" in archs or cfg.get("is_decoder"))):
        return "masked-lm", "masked-lm" if spec is None else "given"
    if mt in CAUSAL:
        if spec is not None:
            return "causal", "given"
        return "causal", "dream" if mt in QWEN2_FAMILY else "llada"
    raise CheckpointError(f"no text denoiser is known for model_type {mt!r} ({archs}); {HOW}")


def _spec(name: str, vocab: int, cfg: dict, tok) -> DenoiserSpec:
    mask = _mask_id(cfg, tok)
    if mask is None:
        raise CheckpointError(f"the folder's tokenizer and config name no mask token; {HOW}")
    eos = _ids(getattr(tok, "eos_token_id", None)) or _ids(cfg.get("eos_token_id"))
    pad = _first_id(tok, "pad_token_id")
    pad = cfg.get("pad_token_id") if pad is None else pad
    pad = None if pad is None or pad == mask or not 0 <= pad < vocab else int(pad)
    eos = tuple(i for i in eos if i != mask)
    bos = _first_id(tok, "bos_token_id")
    make = dream_spec if name == "dream" else llada_spec
    spec = make(vocab_size=vocab, mask_id=mask, eos_ids=eos, pad_id=pad, bos_id=bos)
    return dataclasses.replace(spec, text_vocab=text_vocab(tok, vocab))


def _check_vocab(path: Path, tok, vocab: int, mask: int | None = None) -> None:
    """A tokenizer whose own vocabulary (added tokens aside) is larger than the model's is not
    the model's; a mask token past the model's rows was added without resizing them (each a
    `CheckpointError`)."""
    base = getattr(tok, "vocab_size", None)
    if isinstance(base, int) and base > vocab:
        raise CheckpointError(
            f"{path}: the tokenizer has {base} tokens, the model's vocabulary {vocab}: they "
            "do not belong together (is the tokenizer the model's?)"
        )
    if mask is not None and not 0 <= mask < vocab:
        raise CheckpointError(
            f"{path}: the mask token (id {mask}) is past the model's {vocab} embedding rows: it "
            "was added to the tokenizer without `model.resize_token_embeddings(len(tokenizer))`"
            " (and the model never learned it)"
        )


def _mask_id(cfg: dict, tok) -> int | None:
    mask = getattr(tok, "mask_token_id", None)
    mask = cfg.get("mask_token_id") if mask is None else mask
    if mask is None and cfg.get("model_type") == "llada":  # LLaDA-8B's, if its vocabulary
        from mdiff.text.model.llada_native import LLADA_MASK_ID, LLADA_VOCAB

        mask = LLADA_MASK_ID if cfg.get("embedding_size") == LLADA_VOCAB else None
    return None if mask is None else int(mask)


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(i) for i in value) if isinstance(value, list | tuple) else (int(value),)


def _first_id(obj, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int):
            return value
    return None


# ---- reading -----------------------------------------------------------------------------------


def _read_config(path: Path, quiet: bool = False) -> dict | None:
    file = path / "config.json"
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        if quiet:
            return None
        raise CheckpointError(f"{path}: no readable transformers config.json ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        if quiet:
            return None
        raise CheckpointError(f"{file} has no model_type: not a transformers folder")
    return cfg


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")  # fmt: skip


def _refuse_pickled_only(path: Path) -> None:
    """Refuse a folder whose weights are pickled only, saying how to convert them."""
    if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
        return
    pickled = sorted(p.name for pattern in PICKLED for p in path.glob(pattern))
    if not pickled:
        return  # transformers names what is missing
    index = next(iter(sorted(path.glob("*.bin.index.json"))), None)
    main = next((n for n in pickled if n.startswith(("pytorch_model", "model."))), pickled[0])
    how = f"mdiff convert {index} {path}" if index is not None else \
        f"mdiff convert {path / main} {path / 'model.safetensors'}"  # fmt: skip
    names = ", ".join(pickled[:4])
    raise CheckpointError(f"{path}: its weights are pickled only ({names}), and mdiff never "
                          f"unpickles weights; convert them first: {how}")  # fmt: skip


def _tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.utils import logging as hf_logging

    # a model type transformers does not know (llada, Dream): its config is read as a plain
    # one, with a warning that the model "may yield errors" — not so for the tokenizer
    known = (_read_config(path, quiet=True) or {}).get("model_type") in CONFIG_MAPPING_NAMES
    spm = (path / "tokenizer.model").is_file() and not (path / "tokenizer.json").is_file()
    if spm and importlib.util.find_spec("sentencepiece") is None:
        raise CheckpointError(
            f"{path}: its tokenizer is a SentencePiece model (tokenizer.model, no tokenizer.json)"
            ", which needs `pip install sentencepiece` to read — or save the tokenizer as "
            "tokenizer.json (`AutoTokenizer.from_pretrained(...).save_pretrained(...)` where "
            "sentencepiece is installed)"
        )
    level = hf_logging.get_verbosity()
    if not known:
        hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=False)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as e:
        plain = _plain_tokenizer(path)  # a tokenizer class in the folder's code (Dream's)
        if plain is not None:
            return plain
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise CheckpointError(
                f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, …); copy the "
                "tokenizer of the model it was trained from into the folder"
            ) from None
        files = "tokenizer.json or vocab.json + merges.txt"
        why = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: cannot load its tokenizer (no {files} to read "
                              f"without the folder's code: {why})") from None  # fmt: skip
    finally:
        hf_logging.set_verbosity(level)


def _plain_tokenizer(path: Path):
    """The folder's tokenizer read from its files alone when its ``tokenizer_class`` is code
    in the folder (Dream's ``DreamTokenizer`` is a Qwen2 BPE): ``tokenizer.json`` as a fast
    tokenizer, else ``vocab.json`` + ``merges.txt`` as Qwen2's; the special tokens from
    ``tokenizer_config.json``. None when neither is there (no code is ever run)."""
    import transformers as T

    try:
        conf = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        conf = {}
    names = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
    special = {k: conf[k] for k in names if isinstance(conf.get(k), str)}
    try:
        if (path / "tokenizer.json").is_file():
            return T.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"),
                                             **special)  # fmt: skip
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return T.Qwen2Tokenizer(vocab_file=str(path / "vocab.json"),
                                    merges_file=str(path / "merges.txt"), **special)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def _load_model(path: Path, cfg: dict, kind: str, device):
    import transformers as T

    kw: dict[str, Any] = dict(local_files_only=True, trust_remote_code=False, use_safetensors=True)
    if kind == "llada-native":
        from mdiff.text.model.llada_native import load_llada_native

        return load_llada_native(path, cfg, device)
    try:
        if kind == "dream":  # Dream's weights use Qwen2's layout and names
            fields = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures",
                                                                 "auto_map")}  # fmt: skip
            kw["config"] = T.Qwen2Config(**fields)
            cls = T.Qwen2ForCausalLM
        else:
            cls = T.AutoModelForMaskedLM if kind == "masked-lm" else T.AutoModelForCausalLM
        quiet = T.logging.get_verbosity()
        T.logging.set_verbosity_error()  # its load report: what it says is refused below
        try:
            model, info = cls.from_pretrained(str(path), output_loading_info=True, **kw)
        finally:
            T.logging.set_verbosity(quiet)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot load the model ({e})") from None
    _check_complete(path, model, info)
    return model.to(device).eval() if device is not None else model.eval()


def _check_complete(path: Path, model, info: dict) -> None:
    """Refuse a model some of whose tensors the folder lacks (transformers would start them at
    random: a base model without its LM head, a config with more layers than the weights)."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        shown = ", ".join(missing[:3]) + more
        raise CheckpointError(
            f"{path}: the weights lack {len(missing)} tensor(s) {type(model).__name__} needs "
            f"({shown}); they would start at random — is this a base model without its "
            "language-model head, or a config.json that does not match its weights?"
        )


def _takes(fn, name: str) -> bool:
    """Whether ``fn`` accepts the keyword ``name``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _registered(fn, path: Path, cfg: dict, device, kwargs, tok_path: Path) -> Loaded:
    """Run a registered loader (importing it first when named by a string)."""
    label = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
    if isinstance(fn, str):
        module, name = fn.split(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            raise CheckpointError(
                f"{path}: model_type {cfg.get('model_type')!r} needs {label}, which this "
                "install does not have"
            ) from None
    if device is not None:
        kwargs = {**kwargs, "device": device}
    if "trust_remote_code" in kwargs and not _takes(fn, "trust_remote_code"):
        kwargs = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}  # runs no code
    out = fn(path, **kwargs)
    if isinstance(out, Loaded):
        if out.tokenizer is None and tok_path != path:  # the pipeline's own tokenizer folder
            vocab = getattr(out.model, "vocab_size", None) or out.model.spec.vocab_size
            out = dataclasses.replace(out, tokenizer=HFTokenizer(_tokenizer(tok_path), vocab))
        return out
    model, tok = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, DenoiserSpec):
        raise CheckpointError(f"{label} returned a model without a DenoiserSpec .spec")
    if tok is None:
        tok = _tokenizer(tok_path)
    if not isinstance(tok, HFTokenizer) and not hasattr(tok, "special_ids"):
        tok = HFTokenizer(tok, spec.vocab_size)
    shift = ", logits shift 1" if spec.logits_shift else ""
    summary = (f"{path}: {cfg.get('model_type')} architecture, loader {label} "
               f"(mask {spec.mask_id}, {spec.attention}{shift})")  # fmt: skip
    return Loaded(model, tok, summary)
