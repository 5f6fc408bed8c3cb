"""Generation settings and results of the text sampler (`mdiff.text.sampling.sampler`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from mdiff import unmask_rules as R
from mdiff.errors import InvalidInputError
from mdiff.guidance import METHODS, from_llada_scale
from mdiff.text.sampling.policies import EOSPolicy
from mdiff.text.sampling.runner import CACHE_MODES

__all__ = ["GenerationConfig", "GenerationOutput", "resolve_config", "row_generators"]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampler settings; ``generate(..., **kwargs)`` overrides fields like `transformers`.

    Scores and entropies are taken from the *un-tempered* distribution after top-k / top-p
    (LLaDA's confidence: the plain softmax at the Gumbel-noised proposal); the temperature only
    shapes the proposals.

    Guidance has the core's convention (`mdiff.guidance`): ``guidance`` = w in
    ``u + w(c − u)``, 1 = off, combined by ``guidance_method`` (cfg, cfg_zero_star, apg).
    ``cfg_scale`` is LLaDA's form of the same scale, ``u + (s + 1)(c − u)`` with 0 = off: when
    given it sets ``guidance = cfg_scale + 1`` (`mdiff.guidance.from_llada_scale`); give one
    or the other (or both, agreeing).
    """

    gen_length: int = 128  # masks appended by generate()
    steps: int | None = None  # total steps (None: one token per step)
    block_length: int | None = None  # None: one block (block-causal: the model's block_size)
    schedule: str = "equal"  # equal | dream | cosine | threshold | entropy
    threshold: float = 0.9  # schedule="threshold"
    entropy_bound: float = 0.1  # schedule="entropy"
    eps: float = 1e-3  # schedule="dream"
    score: str = "confidence"  # confidence | margin | neg_entropy | random
    temperature: float = 0.0  # 0 = argmax proposals
    top_k: int | None = None
    top_p: float | None = None
    guidance: float = 1.0  # the core's CFG scale w: u + w(c − u), 1 = off
    guidance_method: str = "cfg"  # cfg | cfg_zero_star | apg
    cfg_scale: float | None = None  # LLaDA's form u + (s + 1)(c − u): sets guidance = s + 1
    eos: EOSPolicy = field(default_factory=EOSPolicy)
    remask: str = "none"  # none | cap | rescale (ReMDM)
    remask_eta: float = 0.0
    cache: str = "auto"  # auto | none | exact | prefix | dual
    measure_drift: bool = False
    seed: int | None = None

    def __post_init__(self):
        def bad(msg):
            raise InvalidInputError(msg)

        if isinstance(self.eos, dict):
            object.__setattr__(self, "eos", EOSPolicy(**self.eos))
        self._resolve_cfg_scale()
        for name in ("gen_length", "steps", "block_length", "top_k"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(f"{name} must be a positive int, got {v!r}")
        if self.gen_length is None:
            bad("gen_length must be a positive int")
        checks = [
            (self.schedule in R.SCHEDULES, f"schedule must be one of {R.SCHEDULES}"),
            (self.score in R.SCORES, f"score must be one of {R.SCORES}"),
            (self.remask in R.REMASK_STRATEGIES, f"remask must be one of {R.REMASK_STRATEGIES}"),
            (self.cache in CACHE_MODES, f"cache must be one of {CACHE_MODES}"),
            (isinstance(self.eos, EOSPolicy), "eos must be an EOSPolicy"),
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be ≥ 0"),
            (self.guidance_method in METHODS, f"guidance_method must be one of {METHODS}"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must lie in (0, 1]"),
            (math.isfinite(self.remask_eta) and self.remask_eta >= 0, "remask_eta must be ≥ 0"),
            (math.isfinite(self.threshold), "threshold must be finite"),
            (self.entropy_bound >= 0, "entropy_bound must be ≥ 0"),
            (0 < self.eps < 1, "eps must lie in (0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                bad(f"{msg}, got {self!r}")
        if self.remask != "none" and self.schedule not in R.FIXED_SCHEDULES:
            bad(f"ReMDM remasking needs a fixed schedule {R.FIXED_SCHEDULES}")

    def _resolve_cfg_scale(self) -> None:
        """Check both scales and set ``guidance`` from ``cfg_scale`` when that is given."""
        _check_scale("guidance", self.guidance)
        if self.cfg_scale is None:
            return
        _check_scale("cfg_scale", self.cfg_scale)
        w = from_llada_scale(self.cfg_scale)
        if self.guidance not in (1.0, w):
            raise InvalidInputError(
                f"guidance={self.guidance} and cfg_scale={self.cfg_scale} disagree: cfg_scale is "
                f"LLaDA's form of the same scale (guidance = cfg_scale + 1); give one of them"
            )
        object.__setattr__(self, "guidance", w)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationOutput:
    """``sequences`` (B, L) the filled canvas; ``generated`` (B, L) the positions the sampler
    filled; ``tokens_per_forward`` (B,) kept generated tokens / forwards the row took part in;
    ``nfe`` model forwards (a guided forward runs both halves as one batch); ``steps_per_block``
    per row; ``drift`` max |Δlogits| per cached step when asked; ``settings`` what produced it."""

    sequences: Tensor
    generated: Tensor
    tokens_per_forward: Tensor
    nfe: int
    steps_per_block: list[list[int]]
    drift: list[float] | None
    settings: dict

    def record_fields(self) -> dict:
        """Keyword fields for ``mdiff.record.GenerationRecord.create``."""
        s = self.settings
        return {
            "sampler": f"mdiff.text.denoise/{s['schedule']}/{s['score']}",
            "steps": self.nfe,
            "guidance": _guidance_record(s),
            "seed": s["seed"],
            "sizes": {"tokens": int(self.generated.sum())},
            "extra": s,
        }


def _check_scale(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidInputError(f"{name} must be a number ≥ 0, got {value!r}")
    if not math.isfinite(value):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")


def _guidance_record(settings: dict) -> dict:
    """The record's guidance: method and scale in the core's form (and LLaDA's, if given)."""
    if settings["guidance"] == 1:
        return {}
    out = {"kind": settings["guidance_method"], "scale": settings["guidance"]}
    if settings["cfg_scale"] is not None:
        out["cfg_scale"] = settings["cfg_scale"]
    return out


def resolve_config(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    """``config`` (default: the defaults) with keyword ``overrides``; ``max_new_tokens`` is
    transformers' name of ``gen_length``, and a scale given in one form (``guidance`` or LLaDA's
    ``cfg_scale``) replaces one given in the other."""
    cfg = config if config is not None else GenerationConfig()
    if not isinstance(cfg, GenerationConfig):
        raise InvalidInputError(f"config must be a GenerationConfig, got {type(cfg).__name__}")
    overrides = dict(overrides)
    if "max_new_tokens" in overrides:  # the transformers name
        overrides["gen_length"] = overrides.pop("max_new_tokens")
    if "guidance" in overrides or "cfg_scale" in overrides:  # one scale replaces the other
        overrides.setdefault("cfg_scale", None)
        overrides.setdefault("guidance", 1.0)
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InvalidInputError(f"unknown generation settings: {', '.join(unknown)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def row_generators(cfg: GenerationConfig, generators, batch: int, device):
    """One generator per row and the base seed (None when the user passed generators)."""
    if generators is not None:
        gens = [generators] if isinstance(generators, torch.Generator) else list(generators)
        if len(gens) != batch or not all(isinstance(g, torch.Generator) for g in gens):
            raise InvalidInputError(f"need one torch.Generator per row ({batch}), got {gens!r}")
        return gens, None
    random = cfg.temperature > 0 or cfg.score == "random" or cfg.remask_eta > 0
    if cfg.seed is None and not random:
        return None, None  # greedy: nothing to draw
    seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,)))
    return [torch.Generator(device=device).manual_seed(seed + b) for b in range(batch)], seed
