"""Settings of the DiffusionGemma runner (`gemma_runner`), resolved like the model's own
``generate``: keyword overrides > the model's generation config > built-in defaults.

The names are `DiffusionGemmaGenerationConfig`'s: ``max_new_tokens`` (always run as whole
canvases), ``max_denoising_steps`` N, the entropy-bound sampler's ``entropy_bound``, the linear
temperature schedule ``t_min``..``t_max`` (step n of N, counted down, divides the logits by
``t_min + (t_max − t_min)·n/N``), and the adaptive stop (``stability_threshold`` steps with an
unchanged argmax canvas AND mean entropy < ``confidence_threshold``; either None = no stop).
Ours: ``eos`` (an `EOSPolicy`: ``forbid`` / ``penalty`` act on the logits; ``stop`` ends a
row after a canvas holding EOS; ``truncate`` pads after its first EOS — the model's own
behaviour with ``eos_token_id`` and ``pad_token_id`` set is ``stop=True, truncate=True``, the
default when its generation config names them; ``max_length`` is not read, give
``max_new_tokens``),
``seed`` (row b draws from ``seed + b``) and ``cache`` (False re-encodes the whole context at
every canvas: the reference the exact cache is measured against).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from mdiff.errors import InvalidInputError
from mdiff.record import check_seed
from mdiff.text.sampling.policies import EOSPolicy

__all__ = ["DEFAULTS", "GemmaSettings", "resolve_settings"]

# DiffusionGemmaGenerationConfig._get_default_generation_params (transformers 5.25)
DEFAULTS = {
    "max_new_tokens": 256,
    "max_denoising_steps": 48,
    "entropy_bound": 0.1,
    "t_min": 0.4,
    "t_max": 0.8,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
}
MAX_NEW_TOKENS = 32_768


@dataclass(frozen=True)
class GemmaSettings:
    max_new_tokens: int = DEFAULTS["max_new_tokens"]
    max_denoising_steps: int = DEFAULTS["max_denoising_steps"]
    entropy_bound: float = DEFAULTS["entropy_bound"]
    t_min: float = DEFAULTS["t_min"]
    t_max: float = DEFAULTS["t_max"]
    stability_threshold: int | None = DEFAULTS["stability_threshold"]
    confidence_threshold: float | None = DEFAULTS["confidence_threshold"]
    eos: EOSPolicy = field(default_factory=EOSPolicy)
    seed: int | None = None
    cache: bool = True

    def __post_init__(self):
        if isinstance(self.eos, dict):
            try:
                object.__setattr__(self, "eos", EOSPolicy(**self.eos))
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"eos: {e}") from None
        if not isinstance(self.eos, EOSPolicy):
            raise InvalidInputError(f"eos must be an EOSPolicy or a dict, got {self.eos!r}")
        if self.eos.defer:
            raise InvalidInputError(
                "EOSPolicy(defer=True) orders masked commits; DiffusionGemma re-judges every "
                "position each step and has no commit order: use forbid, penalty, stop, truncate"
            )
        _count("max_new_tokens", self.max_new_tokens, MAX_NEW_TOKENS)
        _count("max_denoising_steps", self.max_denoising_steps, MAX_NEW_TOKENS)
        if self.stability_threshold is not None:
            _count("stability_threshold", self.stability_threshold, None, low=0)
        _real("entropy_bound", self.entropy_bound, lambda v: v > 0, "> 0")
        _real("t_min", self.t_min, lambda v: v >= 0, "≥ 0")
        _real("t_max", self.t_max, lambda v: v > 0 and v >= self.t_min,
              f"> 0 and ≥ t_min ({self.t_min})")  # fmt: skip
        if self.confidence_threshold is not None:
            _real("confidence_threshold", self.confidence_threshold, lambda v: v > 0, "> 0")
        if self.seed is not None:
            check_seed(self.seed)
        if not isinstance(self.cache, bool):
            raise InvalidInputError(f"cache must be True or False, got {self.cache!r}")

    @property
    def adaptive_stop(self) -> bool:
        return self.stability_threshold is not None and self.confidence_threshold is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _count(name, value, cap, low=1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (cap is not None and value > cap):
        raise InvalidInputError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _real(name, value, ok, rule) -> None:
    real = isinstance(value, int | float) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and ok(value)):
        raise InvalidInputError(f"{name} must be a finite number {rule}, got {value!r}")


def _from_generation_config(gc) -> dict:
    """The fields a `DiffusionGemmaGenerationConfig` sets (None fields left out)."""
    if gc is None:
        return {}
    out = {}
    for name in ("max_new_tokens", "max_denoising_steps", "t_min", "t_max",
                 "stability_threshold", "confidence_threshold"):  # fmt: skip
        value = getattr(gc, name, None)
        if value is not None:
            out[name] = value
    sampler = getattr(gc, "sampler_config", None)
    if sampler is not None and getattr(sampler, "entropy_bound", None) is not None:
        out["entropy_bound"] = sampler.entropy_bound
    if getattr(gc, "eos_token_id", None) is not None:  # generate stops there, pads if it can
        out["eos"] = EOSPolicy(stop=True, truncate=getattr(gc, "pad_token_id", None) is not None)
    return out


def resolve_settings(settings: GemmaSettings | None, generation_config, overrides: dict):
    """``settings`` (default: built from the model's ``generation_config`` over `DEFAULTS`)
    with keyword ``overrides``; ``steps`` is an alias of ``max_denoising_steps``."""
    if settings is None:
        settings = GemmaSettings(**{**DEFAULTS, **_from_generation_config(generation_config)})
    if not isinstance(settings, GemmaSettings):
        raise InvalidInputError(f"settings must be GemmaSettings, got {type(settings).__name__}")
    overrides = dict(overrides)
    if "steps" in overrides:
        overrides["max_denoising_steps"] = overrides.pop("steps")
    names = {f.name for f in dataclasses.fields(GemmaSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InvalidInputError(f"unknown DiffusionGemma settings: {', '.join(unknown)}")
    return dataclasses.replace(settings, **overrides) if overrides else settings
