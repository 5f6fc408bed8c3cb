"""`GemmaCodeModel`: `CodeModel`'s SDK (generate / infill / fill, watermark, record, signed save)
on a DiffusionGemma folder, driven by `gemma_runner` and `gemma_fim` instead of the masked
sampler. `CodeModel.from_pretrained(dir)` returns one for a ``diffusion_gemma`` folder.

    cm = CodeModel.from_pretrained("path/to/diffusiongemma")   # -> GemmaCodeModel
    done = cm.generate("def add(a, b):", gen_length=64)        # whole canvases, stops at EOS
    done = cm.fill("def add(a, b):\\n    return <FILL>\\n", length=8)

Prompts get the model's BOS first (Gemma's convention; the tokenizer's ``encode`` adds no
special tokens). Settings are `gemma_settings.GemmaSettings` fields (``steps`` = denoising steps
per canvas); the EOS policy defaults to the model's own: stop after a canvas with EOS, nothing
kept after it.
"""

from __future__ import annotations

from mdiff.errors import InvalidInputError
from mdiff.record import check_seed
from mdiff.text.fim.infilling import MARKER, MAX_HOLES
from mdiff.text.pipeline import CodeModel, Completion
from mdiff.text.sampling.gemma_fim import infill_gemma
from mdiff.text.sampling.gemma_runner import generate_gemma
from mdiff.text.sampling.gemma_settings import GemmaSettings
from mdiff.text.sampling.generation import GenerationConfig
from mdiff.text.sampling.policies import EOSPolicy
from mdiff.text.sampling.token_bytes import token_view

__all__ = ["GemmaCodeModel"]

MODEL_EOS = EOSPolicy(stop=True, truncate=True)
RECORD = {"schedule": "diffusion_gemma_entropy_bound", "score": "entropy"}


class GemmaCodeModel(CodeModel):
    """A `CodeModel` whose ``model`` is a `mdiff.text.model.gemma.DiffusionGemmaLM`."""

    @property
    def context(self) -> int | None:
        return None

    def _tok(self):
        if self.tokenizer is None:
            raise InvalidInputError(
                f"{self.model_id} has no tokenizer: use mdiff.text.sampling.gemma_runner."
                "generate_gemma / gemma_fim.infill_gemma with token ids"
            )
        return self.tokenizer

    def _ids(self, text: str, name: str, after: bool = False) -> list[int]:
        """Ids of `text`; ``after``: text that follows other text (a suffix: no space
        prepended, `TokenView.encode_after`)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"{name} must be a str, got {type(text).__name__}")
        if after:
            return token_view(self._tok()).encode_after(text)
        return list(self._tok().encode(text))

    def _bos(self, ids: list[int]) -> list[int]:
        bos = self.model.bos_id
        return ids if bos is None or (ids and ids[0] == bos) else [bos, *ids]

    def generate(self, prompt: str, gen_length: int = 128, *, seed: int = 0, streamer=None,
                 config=None, **settings) -> Completion:  # fmt: skip
        """Continue `prompt` by whole canvases covering `gen_length` tokens."""
        check_seed(seed)
        ids = self._bos(self._ids(prompt, "prompt"))
        settings = _with_config(config, settings)
        if "settings" not in settings:
            settings.setdefault("eos", MODEL_EOS)
        out = generate_gemma(self.model, [ids], max_new_tokens=gen_length, seed=seed,
                             streamer=streamer, watermark=self.watermark, **settings)  # fmt: skip
        new = out.sequences[0][out.generated[0]].tolist()
        eos = set(out_eos(out, self.model))
        new = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
        middle = self.tokenizer.decode(new, skip_special_tokens=True)
        text = prompt + middle
        return self._finish(text, [middle], [(len(prompt), len(text))], prompt,
                            {**out.settings, **RECORD}, out.nfe,
                            float(out.tokens_per_forward[0]), edited=False,
                            seed=seed)  # fmt: skip

    def _middle(self, prefix: str, suffix: str, length, seed: int, settings: dict,
                streamer=None):  # fmt: skip
        settings = dict(settings)
        settings = _with_config(settings.pop("config", None), settings)
        r = infill_gemma(self.model, self._bos(self._ids(prefix, "prefix")),
                         self._ids(suffix, "suffix", after=True), length, seed=seed,
                         watermark=self.watermark, streamer=streamer, **settings)  # fmt: skip
        return r, self.tokenizer.decode(r.middle, skip_special_tokens=True)

    def infill(self, prefix: str, suffix: str, length: int | str = "auto", *, seed: int = 0,
               streamer=None, **settings) -> Completion:  # fmt: skip
        """The middle between `prefix` and `suffix` (``length`` slots or ``"auto"``), spliced
        into the user's own strings."""
        check_seed(seed)
        r, middle = self._middle(prefix, suffix, length, seed, settings, streamer)
        text = prefix + middle + suffix
        span = (len(prefix), len(prefix) + len(middle))
        tpf = len(r.middle) / max(r.nfe, 1)
        return self._finish(text, [middle], [span], prefix + "\0" + suffix,
                            {**r.settings, **RECORD}, r.nfe, tpf, edited=True,
                            seed=seed)  # fmt: skip

    def fill(self, text: str, *, marker: str = MARKER, length: int | str = "auto",
             seed: int = 0, source: str | None = None, streamer_factory=None,
             **settings) -> Completion:  # fmt: skip
        """Fill every `marker` of `text` left to right: each hole sees the holes before it
        filled and the text after it with the later markers removed. ``streamer_factory(n)``
        makes the streamer of a hole of n slots (the chosen length is re-run streamed)."""
        if not isinstance(text, str) or not isinstance(marker, str) or not marker:
            raise InvalidInputError("text and marker must be strings (marker non-empty)")
        if source is not None and not isinstance(source, str):
            raise InvalidInputError(f"source must be a file name (str), got {source!r}")
        if streamer_factory is not None and not callable(streamer_factory):
            raise InvalidInputError(f"streamer_factory must be callable, got {streamer_factory!r}")
        check_seed(seed)
        parts = text.split(marker)
        if len(parts) < 2 or len(parts) - 1 > MAX_HOLES:
            raise InvalidInputError(f"text needs 1 to {MAX_HOLES} {marker!r} markers")
        done, middles, spans, nfe, tokens, last = parts[0], [], [], 0, 0, {}
        for i, after in enumerate(parts[1:]):
            rest = "".join([after, *parts[i + 2 :]])
            r, middle = self._middle(done, rest, length, seed + i, settings)
            if streamer_factory is not None:  # the chosen length again, streamed: same middle
                scores = r.scores
                r, middle = self._middle(done, rest, r.length, seed + i, settings,
                                         streamer_factory(r.length))  # fmt: skip
                r.scores = scores
            spans.append((len(done), len(done) + len(middle)))
            done += middle + after
            middles.append(middle)
            nfe, tokens, last = nfe + r.nfe, tokens + len(r.middle), r.settings
        return self._finish(done, middles, spans, text, {**last, **RECORD}, nfe,
                            tokens / max(nfe, 1), edited=True,
                            inputs=(source,) if source else (), seed=seed)  # fmt: skip


def _with_config(config, settings: dict) -> dict:
    """Settings with ``config``: `GemmaSettings` as they are; the masked sampler's
    `GenerationConfig` (what ``mdiff complete`` passes) gives only its ``steps`` (denoising
    steps per canvas) — its schedule, score and temperature have no DiffusionGemma meaning."""
    if config is None:
        return settings
    if isinstance(config, GemmaSettings):
        return {"settings": config, **settings}
    if isinstance(config, GenerationConfig):
        if config.steps is not None:
            settings = {"max_denoising_steps": config.steps, **settings}
        return settings
    raise InvalidInputError(f"config must be GemmaSettings, got {type(config).__name__}")


def out_eos(out, lm) -> tuple[int, ...]:
    eos = out.settings["eos"]
    return tuple(eos["eos_ids"]) if eos.get("eos_ids") is not None else tuple(lm.eos_ids)
