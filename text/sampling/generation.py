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
from mdiff.record import check_seed
from mdiff.text.sampling.policies import EOSPolicy
from mdiff.text.sampling.runner import CACHE_MODES

__all__ = [
    "MAX_GEN_LENGTH",
    "MAX_GUIDANCE",
    "MAX_STEPS",
    "GenerationConfig",
    "GenerationOutput",
    "resolve_config",
    "row_generators",
]

MAX_GEN_LENGTH = 32_768  # tokens one call may generate (and the largest block_length)
MAX_STEPS = MAX_GEN_LENGTH  # at most one step per token is taken anyway
MAX_GUIDANCE = 100.0  # a larger CFG scale only overflows the logits


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

    Bounds (checked when the config is made, before any work): ``gen_length`` and
    ``block_length`` at most `MAX_GEN_LENGTH`, ``steps`` at most `MAX_STEPS` (more steps than
    masked tokens are never taken), ``guidance`` and ``cfg_scale`` in [0, `MAX_GUIDANCE`];
    every number finite; ``seed`` in [0, 2^63) (`mdiff.record.check_seed`).

    Token editing (LLaDA 2, `mdiff.unmasking.token_editing`): with ``editing_threshold`` > 0 a
    step also replaces a committed token of the current block when its proposal differs and
    its confidence exceeds the threshold; ``edit_steps`` (≤ `MAX_STEPS`) edit-only steps follow
    a block finished early (LLaDA2Pipeline's ``max_post_steps`` + 1). Off, outputs are unchanged.
    ``schedule="llada2"``: each step commits the top ``max(n_i, #{score > threshold})`` masks.

    ``[MASK]`` is never proposed: its logit is −inf before proposals and scores. LLaDA's own
    ``generate`` takes argmax and softmax over the whole vocabulary; ``allow_mask_token=True``
    does so literally, for parity checks: a committed [MASK] leaves its slot masked but counts
    in the step's share, a block ends after its steps, its open slots stay eligible in later
    blocks, and the output may keep some [MASK] (fixed schedules as LLaDA's; EOS off).
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
    editing_threshold: float | None = None  # token editing (LLaDA 2); None or ≤ 0: off
    edit_steps: int = 0  # edit-only steps a block may take once its masks are committed
    cache: str = "auto"  # auto | none | exact | prefix | dual
    measure_drift: bool = False
    seed: int | None = None
    allow_mask_token: bool = False  # LLaDA's literal generate, for parity checks (see above)

    def __post_init__(self):
        """Refuse any field of the wrong type or out of range, naming the field and the value."""
        if isinstance(self.eos, dict):
            try:
                object.__setattr__(self, "eos", EOSPolicy(**self.eos))
            except (TypeError, ValueError) as e:
                raise InvalidInputError(f"eos: {e}") from None
        if not isinstance(self.eos, EOSPolicy):
            raise InvalidInputError(f"eos must be an EOSPolicy or a dict, got {self.eos!r}")
        for name, cap in _COUNTS:
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL:
                _check_count(name, value, cap)
        for name, choices in _CHOICES:
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise InvalidInputError(
                    f"{name} must be one of {', '.join(choices)}, got {value!r}"
                )
        for name, rule, ok in _REALS:
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL:
                _check_real(name, value, ok, rule)
        ok = isinstance(self.edit_steps, int) and not isinstance(self.edit_steps, bool)
        if not (ok and 0 <= self.edit_steps <= MAX_STEPS):
            raise InvalidInputError(
                f"edit_steps must be an integer in [0, {MAX_STEPS}], got {self.edit_steps!r}"
            )
        if not isinstance(self.allow_mask_token, bool):
            raise InvalidInputError(
                f"allow_mask_token must be True or False, got {self.allow_mask_token!r}"
            )
        if not isinstance(self.measure_drift, bool):
            raise InvalidInputError(
                f"measure_drift must be True or False, got {self.measure_drift!r}"
            )
        if self.seed is not None:
            check_seed(self.seed)
        self._resolve_cfg_scale()
        if self.remask != "none" and self.schedule not in R.FIXED_SCHEDULES:
            raise InvalidInputError(f"ReMDM remasking needs a fixed schedule {R.FIXED_SCHEDULES}")

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


_OPTIONAL = frozenset({"steps", "block_length", "top_k", "top_p", "editing_threshold"})
_COUNTS = (("gen_length", MAX_GEN_LENGTH), ("steps", MAX_STEPS),
           ("block_length", MAX_GEN_LENGTH), ("top_k", None))  # fmt: skip
_CHOICES = (("schedule", R.SCHEDULES), ("score", R.SCORES), ("remask", R.REMASK_STRATEGIES),
            ("cache", CACHE_MODES), ("guidance_method", METHODS))  # fmt: skip
_REALS = (
    ("temperature", "≥ 0", lambda v: v >= 0),
    ("top_p", "in (0, 1]", lambda v: 0 < v <= 1),
    ("remask_eta", "≥ 0", lambda v: v >= 0),
    ("threshold", "", lambda v: True),
    ("entropy_bound", "≥ 0", lambda v: v >= 0),
    ("eps", "in (0, 1)", lambda v: 0 < v < 1),
    ("editing_threshold", "", lambda v: True),
)


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


def _check_count(name: str, value, cap: int | None) -> None:
    """``value`` must be an int in [1, cap] (bools refused)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok or (cap is not None and value > cap):
        bound = f" ≤ {cap}" if cap is not None else ""
        raise InvalidInputError(f"{name} must be a positive integer{bound}, got {value!r}")


def _check_real(name: str, value, ok, rule: str) -> None:
    """``value`` must be a finite real number (bools refused) for which ``ok(value)`` holds."""
    real = isinstance(value, int | float) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and ok(value)):
        rule = f" {rule}" if rule else ""
        raise InvalidInputError(f"{name} must be a finite number{rule}, got {value!r}")


def _check_scale(name: str, value) -> None:
    _check_real(name, value, lambda v: 0 <= v <= MAX_GUIDANCE, f"in [0, {MAX_GUIDANCE:g}]")


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
