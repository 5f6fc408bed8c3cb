"""Generation settings and results of the text sampler (`mdiff.text.sampling.sampler`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.text.sampling import policies as P
from mdiff.text.sampling.runner import CACHE_MODES

__all__ = ["GenerationConfig", "GenerationOutput"]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampler settings; ``generate(..., **kwargs)`` overrides fields like `transformers`.

    Scores and entropies are taken from the *un-tempered* distribution after top-k / top-p
    (LLaDA's confidence: the plain softmax at the Gumbel-noised proposal); the temperature only
    shapes the proposals.
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
    cfg_scale: float = 0.0  # LLaDA form u + (w + 1)(c − u)
    eos: P.EOSPolicy = field(default_factory=P.EOSPolicy)
    remask: str = "none"  # none | cap | rescale (ReMDM)
    remask_eta: float = 0.0
    cache: str = "auto"  # auto | none | exact | prefix | dual
    measure_drift: bool = False
    seed: int | None = None

    def __post_init__(self):
        def bad(msg):
            raise InvalidInputError(msg)

        if isinstance(self.eos, dict):
            object.__setattr__(self, "eos", P.EOSPolicy(**self.eos))
        for name in ("gen_length", "steps", "block_length", "top_k"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(f"{name} must be a positive int, got {v!r}")
        if self.gen_length is None:
            bad("gen_length must be a positive int")
        checks = [
            (self.schedule in P.SCHEDULES, f"schedule must be one of {P.SCHEDULES}"),
            (self.score in P.SCORES, f"score must be one of {P.SCORES}"),
            (self.remask in P.REMASK_STRATEGIES, f"remask must be one of {P.REMASK_STRATEGIES}"),
            (self.cache in CACHE_MODES, f"cache must be one of {CACHE_MODES}"),
            (isinstance(self.eos, P.EOSPolicy), "eos must be an EOSPolicy"),
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature must be ≥ 0"),
            (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0, "cfg_scale must be ≥ 0"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p must lie in (0, 1]"),
            (math.isfinite(self.remask_eta) and self.remask_eta >= 0, "remask_eta must be ≥ 0"),
            (math.isfinite(self.threshold), "threshold must be finite"),
            (self.entropy_bound >= 0, "entropy_bound must be ≥ 0"),
            (0 < self.eps < 1, "eps must lie in (0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                bad(f"{msg}, got {self!r}")
        if self.remask != "none" and self.schedule not in P.FIXED_SCHEDULES:
            bad(f"ReMDM remasking needs a fixed schedule {P.FIXED_SCHEDULES}")

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
            "guidance": {"cfg_scale": s["cfg_scale"]} if s["cfg_scale"] else {},
            "seed": s["seed"],
            "sizes": {"tokens": int(self.generated.sum())},
            "extra": s,
        }
