"""The DiT training objective: flow matching with CondOT, caption dropout, diffusion forcing.

    model = TextConditionedDiT(SpaceTimeDiT(...), ShapesTextEncoder(...))  # trained jointly
    loss, logs = DiTObjective(shift=token_shift(n_tokens))(model, batch, generator)  # loss (B,)
    figures = heldout_loss(ema_model, heldout_latents)                      # fixed noise and t

t = 0 is noise and t = 1 data: x1 = the clip's latents, x0 ~ N(0, I), t = shift(sigmoid(N(m, s²)),
α) (`mdiff.time`), x_t = t·x1 + (1 − t)·x0, loss = mean((v_θ(x_t, t, caption) − (x1 − x0))²)
per sample. Captions become "" (the text encoder's learned null embedding, the unconditional
branch of CFG) with probability ``caption_dropout``. For block-causal DiTs (diffusion forcing)
every chunk of ``chunk_frames`` latent frames draws its own t, passed per frame as (B, T').
With probability ``clean_context`` a sample is teacher-forced instead: a random chunk k ≥ 1
keeps its t while the chunks before it are clean (t = 1) and carry no loss (their target holds
the unknowable noise). Streaming generation conditions every chunk on clean finished chunks;
independent t alone almost never shows the model that context, and the measured result was
backgrounds that change from chunk to chunk.
``first_chunk_weight`` w weights the first chunk's frames w times in that per-sample mean. The
first chunk is the only one generated without context (text-to-image), yet gets about a tenth
of the loss: with teacher forcing it is always clean.
``distill`` (with the DiT frozen and ``teacher`` set to the init pipeline's text encoder)
regresses the teacher's own velocity, ``dit(x_t, t, teacher(template caption))``, instead of
x1 − x0: a free-form caption is taught to mean what the clip's template caption meant to the
shipped model, and a template caption to keep meaning it. The target has no noise term, so
the signal on the few words that set colour and motion is not buried in the flow-matching
noise (round 2 of the free-form fine-tune measured direction 57.5 % with the plain target).
α defaults to SD3's token-count rule √(n/256), never below 1: SD3 trained its 256-token base
without a shift (its latent tokens hold 2·2·16 values, as ours do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.losses import fm_mse
from mdiff.paths import AffinePath
from mdiff.time import TimeSampler, sd3_alpha
from mdiff.video.dit.latent_cache import LatentDataset
from mdiff.video.dit.model import SpaceTimeDiT
from mdiff.video.text_encoders import ShapesTextEncoder

__all__ = ["EVAL_TIMES", "DiTObjective", "TextConditionedDiT", "heldout_loss", "token_shift"]

HELDOUT_SEED = 1_000_003  # the shapes seed of held-out clips and of their evaluation noise
EVAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def token_shift(n_tokens: int, base_tokens: int = 256) -> float:
    """The training (and sampling) shift α for `n_tokens` DiT tokens: √(n/256), at least 1."""
    return max(1.0, sd3_alpha(n_tokens, base_tokens))


class TextConditionedDiT(nn.Module):
    """The trainable pair: `model(x_t, t, captions) -> velocity` (captions: list of str)."""

    def __init__(self, dit: SpaceTimeDiT, text_encoder: ShapesTextEncoder):
        super().__init__()
        if text_encoder.dim != dit.config.text_dim:
            raise InvalidInputError(
                f"text encoder width {text_encoder.dim} != DiT text_dim {dit.config.text_dim}"
            )
        self.dit, self.text_encoder = dit, text_encoder

    def forward(self, x_t: Tensor, t: Tensor, captions: list[str]) -> Tensor:
        text, mask = self.text_encoder.encode(captions)  # (B, S, D), (B, S)
        return self.dit(x_t, t, text, mask)  # (B, C, T', h, w)


# ------------------------------------------------------------------------------ objective


@dataclass
class DiTObjective:
    """``objective(model, batch, generator) -> (loss [B], logs)`` for the core `Trainer`;
    ``batch = {"latents": (B, C, T', h, w), "captions": [str] * B}``, and
    ``model(x_t, t, captions)`` returns the velocity. See the module docstring."""

    logit_mean: float = 0.0  # m of t = sigmoid(N(m, s²))
    logit_std: float = 1.0  # s
    shift: float = 1.0  # α applied after sampling (1 = none)
    caption_dropout: float = 0.1
    chunk_frames: int | None = None  # diffusion forcing: one t per chunk of latent frames
    clean_context: float = 0.0  # P(teacher forcing: clean chunks before a noisy one)
    first_chunk_weight: float = 1.0  # loss weight of the first chunk's frames (diffusion forcing)
    distill: bool = False  # regress the teacher's velocity on the template caption (see above)

    def __post_init__(self):
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise InvalidInputError(
                f"caption_dropout must be in [0, 1], got {self.caption_dropout}"
            )
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise InvalidInputError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if not 0.0 <= self.clean_context <= 1.0:
            raise InvalidInputError(f"clean_context must be in [0, 1], got {self.clean_context}")
        if not self.first_chunk_weight > 0:
            raise InvalidInputError(
                f"first_chunk_weight must be > 0, got {self.first_chunk_weight}"
            )
        if self.first_chunk_weight != 1 and self.chunk_frames is None:
            raise InvalidInputError("first_chunk_weight needs chunks (a block-causal DiT)")
        self.sampler = TimeSampler("logit_normal", self.logit_mean, self.logit_std, self.shift)
        self.teacher: ShapesTextEncoder | None = None  # set by the recipe when distilling

    def target(self, model, path, t: Tensor, batch: dict, drop: list[bool]) -> Tensor:
        """x1 − x0, or (``distill``) the frozen DiT's velocity under the teacher encoder's
        states of each clip's template caption (dropped captions stay dropped)."""
        if not self.distill:
            return path.target
        if self.teacher is None:
            raise InvalidInputError("distill needs a teacher text encoder (the init pipeline's)")
        templates = ["" if d else c for c, d in zip(batch["templates"], drop, strict=True)]
        dit = getattr(model, "module", model).dit
        with torch.no_grad():
            text, mask = self.teacher.encode(templates)  # (B, S, D), (B, S)
            return dit(path.x_t, t, text, mask).detach()

    def sample_t(self, batch: int, frames: int, generator: torch.Generator) -> Tensor:
        """(B,) times, or (B, frames) constant within each chunk for diffusion forcing."""
        device = generator.device
        if self.chunk_frames is None:
            return self.sampler(batch, generator=generator, device=device)
        chunks = -(-frames // self.chunk_frames)
        t = self.sampler(batch * chunks, generator=generator, device=device).view(batch, chunks)
        if self.clean_context > 0 and chunks > 1:
            forced = torch.rand(batch, generator=generator, device=device) < self.clean_context
            k = torch.randint(1, chunks, (batch,), generator=generator, device=device)
            before = torch.arange(chunks, device=device)[None] < k[:, None]  # (B, chunks)
            t = torch.where(forced[:, None] & before, torch.ones_like(t), t)
        return t.repeat_interleave(self.chunk_frames, dim=1)[:, :frames]  # (B, T')

    def __call__(self, model, batch: dict, generator: torch.Generator):
        x1, captions = batch["latents"].float(), list(batch["captions"])
        b = x1.shape[0]
        drop = torch.rand(b, generator=generator, device=generator.device) < self.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        t = self.sample_t(b, x1.shape[2], generator).to(x1.device)
        x0 = torch.randn(x1.shape, generator=generator, device=generator.device).to(x1.device)
        t_full = t[:, None, :, None, None] if t.dim() == 2 else t  # per frame -> (B,1,T',1,1)
        path = AffinePath().sample(x0, x1, t_full)  # CondOT: x_t = t·x1 + (1 − t)·x0
        v = model(path.x_t, t, captions)
        target = self.target(model, path, t, batch, drop.tolist())
        if t.dim() == 2 and (self.clean_context > 0 or self.first_chunk_weight != 1):
            err = (v.float() - target.float()).square().mean((1, 3, 4))  # (B, T')
            weight = (t < 1).float()  # no loss on clean context frames
            weight[:, : self.chunk_frames] *= self.first_chunk_weight
            loss = (err * weight).sum(1) / weight.sum(1).clamp_min(1e-6)  # (B,)
        else:
            loss = fm_mse(v, target)  # (B,), target x1 − x0 (or the teacher's)
        logs = {"caption_dropped": float(drop.float().mean())}
        return loss, logs


@torch.no_grad()
def heldout_loss(
    model,
    data: LatentDataset,
    *,
    times: tuple[float, ...] = EVAL_TIMES,
    seed: int = HELDOUT_SEED,
    batch_size: int = 8,
) -> dict[str, float]:
    """Flow-matching loss of `model` on every clip of `data` at each fixed t (uniform over the
    frames), with fixed noise drawn from `seed`: per t, the mean, and the mean without captions
    ("heldout_fm_uncond": their gap is what the text conditioning buys)."""
    device = next(model.parameters()).device
    x1 = data.latents.float()
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(seed))
    out: dict[str, float] = {}
    for uncond in (False, True):
        per_t = []
        for t_value in times:
            total = 0.0
            for s in range(0, len(data), batch_size):
                a, b = x1[s : s + batch_size].to(device), x0[s : s + batch_size].to(device)
                t = torch.full((a.shape[0],), float(t_value), device=device)
                caps = [""] * a.shape[0] if uncond else data.captions[s : s + batch_size]
                path = AffinePath().sample(b, a, t)
                total += float(fm_mse(model(path.x_t, t, caps), path.target).sum())
            per_t.append(total / len(data))
            if not uncond:
                out[f"heldout_fm_t{t_value:g}"] = round(per_t[-1], 6)
        out["heldout_fm_uncond" if uncond else "heldout_fm"] = round(sum(per_t) / len(per_t), 6)
    return out
