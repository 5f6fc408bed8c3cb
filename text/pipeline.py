"""`CodeModel`: the SDK face of the text frontend — load a model, complete code, save it signed.

    cm = CodeModel.from_pretrained("code-tiny")             # built-in name or a directory
    done = cm.fill("def add(a, b):\\n    return <FILL>\\n")  # every <FILL> marker
    print(done.text)
    done.save("add.py")                                     # + add.py.c2pa (signed manifest)
    done.save("add.py", overwrite=True)                     # replace an earlier add.py

Every completion goes through `mdiff.provenance`: the sampler biases every committed token with
the text watermark of the user's key, the `GenerationRecord` names the model (id and weights
hash), the sampler settings, the seed, the SHA-256 of the input and the character spans the
model wrote (so `mdiff verify` scores exactly those), and ``save`` signs a sidecar manifest.
Completing a user's file is an edit of their input (``c2pa.edited``); ``generate`` from a
prompt is a creation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import mdiff.text.fim.infilling as _infill
from mdiff import hub, media
from mdiff.atomic import check_target, write_error
from mdiff.errors import CheckpointError, InvalidInputError, WriteError
from mdiff.provenance.sign import sidecar_path
from mdiff.record import GenerationRecord, check_seed
from mdiff.text.model.denoiser import TextDenoiser
from mdiff.text.model.tokenizer import TOKENIZER_FILE, CodeTokenizer
from mdiff.text.sampling.sampler import GenerationConfig, generate
from mdiff.text.sampling.token_bytes import token_view

__all__ = ["CodeModel", "Completion", "check_output"]


def check_output(path: str | os.PathLike, *, overwrite: bool = False, inputs=(),
                 replace_hint: str = "pass overwrite=True") -> Path:  # fmt: skip
    """``path`` as a `Path` if a text output and its ``.c2pa`` sidecar may be written there,
    checked before any work: `mdiff.atomic.check_target` (its folder exists and is writable,
    it is not a folder nor one of ``inputs``, an existing file only with ``overwrite``), the
    same for the sidecar, and a text suffix (`mdiff.media.TEXT_SUFFIXES`)."""
    if not isinstance(path, str | os.PathLike):
        raise InvalidInputError(
            f"an output path must be a str or a path, got {type(path).__name__}"
        )
    path = check_target(path, overwrite=overwrite, inputs=inputs, replace_hint=replace_hint)
    sidecar = sidecar_path(path)
    if sidecar.is_dir():
        raise InvalidInputError(f"{sidecar} is a directory: it cannot take {path.name}'s manifest")
    if sidecar.exists() and not overwrite:
        raise InvalidInputError(f"{sidecar} already exists: {replace_hint} to replace it")
    try:
        text = media.kind_of(path) == "text"
    except InvalidInputError:
        text = False
    if not text:
        raise InvalidInputError(
            f"{path.name}: a completion is text, save it as source code, markup or configuration "
            "(.py, .c, .sh, .yaml, … or a name without a suffix)"
        )
    return path


@dataclass
class Completion:
    """A finished completion: the whole text, what was generated where, and its record."""

    text: str
    middles: list[str]
    spans: list[tuple[int, int]]  # characters of ``text`` the model wrote
    record: GenerationRecord
    stamped: object  # mdiff.provenance.stamp.Stamped
    stamper: object
    tokens_per_forward: float
    nfe: int

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the text and its signed ``.c2pa`` sidecar, atomically: an existing file or
        sidecar is replaced only with ``overwrite=True`` (`check_output`), and a failed write
        (a full disk: `WriteError` naming ``path``) leaves what was there as it was."""
        path = check_output(path, overwrite=overwrite)
        try:
            return self.stamper.save(self.stamped, path)
        except WriteError:
            raise
        except OSError as e:
            raise write_error(path, e) from None


class CodeModel:
    """A text denoiser with its tokenizer, its id and a `Stamper` for provenance.

    How it infills comes from the model's config: `context` and `fim_order`."""

    def __init__(self, model: TextDenoiser, tokenizer: CodeTokenizer, model_id: str, *,
                 stamper=None, weights_sha256: str | None = None):  # fmt: skip
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self._stamper, self._wm = stamper, None
        self.weights_sha256 = weights_sha256 or hub.weights_sha256(model)

    summary: str | None = None  # what a transformers folder was loaded as (one line)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike = "code-tiny", *, device=None,
                        stamper=None, spec=None,
                        trust_remote_code: bool = False) -> CodeModel:  # fmt: skip
        """A built-in name, one of our folders, or a transformers folder (its spec picked from
        its config, or ``spec``; `mdiff.text.model.loaders`; the choice is logged and kept
        in ``summary``). ``trust_remote_code``: let a folder whose model exists only as code
        in the folder (LLaDA 2's ``LLaDA2MoeModelLM``) run that code."""
        if not isinstance(name_or_path, str | os.PathLike):
            kind = type(name_or_path).__name__
            raise InvalidInputError(f"a model is a built-in name or a folder, got {kind}")
        directory = hub.resolve(name_or_path)
        from mdiff.text.model import loaders

        if spec is not None or loaders.is_transformers_folder(directory):
            extra = {"trust_remote_code": True} if trust_remote_code else {}
            loaded = loaders.load_readable(directory, spec=spec, device=device, **extra)
            factory = getattr(loaded.model, "code_model_class", None)  # e.g. DiffusionGemma
            cls = factory() if callable(factory) else cls
            weights = (loaders.pipeline_parts(directory) or (directory,))[0]
            cm = cls(loaded.model, loaded.tokenizer, str(directory), stamper=stamper,
                     weights_sha256=hub.weights_sha256(weights))  # fmt: skip
            cm.summary = loaded.summary
            logging.getLogger("mdiff").info("model %s", loaded.summary)
            return cm
        if not (directory / TOKENIZER_FILE).is_file():
            raise CheckpointError(
                f"{directory} has neither {TOKENIZER_FILE} nor a transformers config.json (with "
                "a model_type): not a text model folder"
            )
        model = TextDenoiser.from_pretrained(directory, device=device)
        tokenizer = CodeTokenizer.load(directory / TOKENIZER_FILE)
        model_id = str(name_or_path) if not Path(name_or_path).exists() else str(directory)
        return cls(model, tokenizer, model_id, stamper=stamper,
                   weights_sha256=hub.weights_sha256(directory / hub.WEIGHTS_NAME))  # fmt: skip

    @property
    def context(self) -> int | None:
        """Tokens the model sees when infilling (its training window; None = its max_len)."""
        return getattr(getattr(self.model, "config", None), "context", None)

    @property
    def fim_order(self) -> str:
        """The FIM prompt order of an autoregressive baseline ("psm" | "spm")."""
        return getattr(getattr(self.model, "config", None), "fim_order", "psm")

    # ---------------------------------------------------------------- provenance plumbing

    @property
    def stamper(self):
        if self._stamper is None:
            from mdiff.provenance.stamp import Stamper

            self._stamper = Stamper()
        return self._stamper

    @property
    def watermark(self):
        """The sampler's watermark policy (the user's key; special tokens never biased)."""
        if self._wm is None:
            specials = list(self.tokenizer.special_ids.values())
            self._wm = self.stamper.text_watermark(self.tokenizer.vocab_size, specials)
        return self._wm

    def count_tokens(self, middle: str) -> int:
        """Tokens of `middle` as it reads after the text before it (no space a tokenizer
        prepends to a text's start; `TokenView.encode_after`)."""
        return len(token_view(self.tokenizer).encode_after(middle))

    def _finish(self, text, middles, spans, source_text, settings, nfe, tpf, *, edited,
                inputs=(), seed=None, tokens: int | None = None) -> Completion:  # fmt: skip
        """The signed `Completion`; ``tokens``: the holes' generated tokens (default: the
        middles re-encoded, for a middle cut after generating)."""
        if tokens is None:
            tokens = sum(self.count_tokens(m) for m in middles)
        extra = {
            "vocab_size": self.tokenizer.vocab_size,
            "generated_spans": [list(s) for s in spans],
            "sampler_settings": settings,
        }
        record = GenerationRecord.create(
            "code", self.model_id, prompt=source_text, weights_sha256=self.weights_sha256,
            sampler=f"mdiff.text/{settings.get('schedule')}/{settings.get('score')}",
            steps=nfe, seed=seed, sizes={"tokens": tokens}, inputs=inputs, edited=edited,
            extra=extra,
        )  # fmt: skip
        stamped = self.stamper.text(text, record, self.watermark)
        return Completion(text, middles, spans, record, stamped, self.stamper, tpf, nfe)

    # ----------------------------------------------------------------------- generation

    def fill(self, text: str, *, marker: str = _infill.MARKER, length: int | str = "auto",
             seed: int = 0, source: str | None = None, streamer_factory=None,
             **settings) -> Completion:  # fmt: skip
        """Fill every `marker` in `text` (see `mdiff.text.fim.infilling.fill`); ``source`` names
        the file it came from in the record."""
        if source is not None and not isinstance(source, str):
            raise InvalidInputError(f"source must be a file name (str), got {source!r}")
        out, results = _infill.fill(self.model, self.tokenizer, text, marker=marker,
                                    length=length, seed=seed, watermark=self.watermark,
                                    streamer_factory=streamer_factory, context=self.context,
                                    **settings)  # fmt: skip
        spans = [r.span for r in results]
        nfe = sum(r.nfe for r in results)
        tokens = sum(r.length for r in results)  # the holes' slots, as generated
        return self._finish(out, [r.middle for r in results], spans, text,
                            results[-1].settings, nfe, tokens / max(nfe, 1), edited=True,
                            inputs=(source,) if source else (), seed=seed,
                            tokens=tokens)  # fmt: skip

    def infill(self, prefix: str, suffix: str, length: int | str = "auto", *, seed: int = 0,
               streamer=None, **settings) -> Completion:  # fmt: skip
        """Fill one hole between `prefix` and `suffix` (strings); a signed `Completion`."""
        for name, value in (("prefix", prefix), ("suffix", suffix)):
            if not isinstance(value, str):
                raise InvalidInputError(
                    f"{name} must be a str (one hole), got {type(value).__name__}; for a batch "
                    "of holes use mdiff.text.fim.infilling.infill(cm.model, cm.tokenizer, "
                    "prefixes, suffixes)"
                )
        r = _infill.infill(self.model, self.tokenizer, prefix, suffix, length, seed=seed,
                           watermark=self.watermark, streamer=streamer, context=self.context,
                           **settings)  # fmt: skip
        return self._finish(r.text, [r.middle], [r.span], prefix + "\0" + suffix, r.settings,
                            r.nfe, r.tokens_per_forward, edited=True, seed=seed,
                            tokens=r.length)  # fmt: skip

    def generate(self, prompt: str, gen_length: int = 128, *, seed: int = 0, streamer=None,
                 config: GenerationConfig | None = None, **settings) -> Completion:  # fmt: skip
        """Continue `prompt` by `gen_length` tokens (stops at EOS by the default EOS policy)."""
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be a str, got {type(prompt).__name__}")
        check_seed(seed)
        ids = self.tokenizer.encode(prompt) or [self.tokenizer.bos_id]
        room = _infill.window(self.model)  # the model's positions
        if type(gen_length) is int:  # (other values: the sampler says what is wrong)
            if gen_length >= room:
                raise InvalidInputError(f"a {gen_length}-token continuation leaves no room for "
                                        f"the prompt in the model's {room} positions")  # fmt: skip
            ids = ids[max(0, len(ids) + gen_length - room) :]  # the prompt's end, as FIM cuts
        with torch.no_grad():
            out = generate(self.model, [ids], config=config, gen_length=gen_length, seed=seed,
                           streamer=streamer, watermark=self.watermark, **settings)  # fmt: skip
        new = out.sequences[0][out.generated[0]].tolist()
        eos = set(self.model.spec.eos_ids)
        new = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
        middle = self.tokenizer.decode(new, skip_special_tokens=True)
        text = prompt + middle
        return self._finish(text, [middle], [(len(prompt), len(text))], prompt, out.settings,
                            out.nfe, float(out.tokens_per_forward[0]), edited=False,
                            seed=seed)  # fmt: skip
