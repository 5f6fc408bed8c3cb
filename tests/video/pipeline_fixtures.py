"""Shared pieces of the video pipeline tests: a tiny random pipeline (bidirectional or
block-causal) and helpers to read back what was written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdiff.provenance import Stamper
from mdiff.video.dit.model import DiTConfig, SpaceTimeDiT
from mdiff.video.pipeline.video_pipeline import VideoPipeline
from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

PROMPT = "a red circle moving right"
SIZE = 32  # the watermark's smallest frame; latents 4 × 4, DiT tokens 2 × 2 per frame
SETTINGS = dict(steps=3, guidance=3.0, num_frames=17, height=SIZE, width=SIZE, fps=8.0)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values for every parameter (zero-initialised ones too), scaled like a trained net,
    so the DiT's velocity depends on its inputs (a fresh DiT outputs exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (p[0].numel() ** -0.5))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + ("norm" in name))
    return model


def make_pipeline(stamper: Stamper, causal: bool, dit=None, **settings) -> VideoPipeline:
    """A tiny random pipeline (VAE base 8, z 4; DiT preset "test" + `dit` overrides)."""
    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                    latents_mean=[0.1, -0.2, 0.3, 0.0],
                                    latents_std=[1.5, 0.5, 2.0, 1.0]))  # fmt: skip
    layout = dict(attention="block_causal", chunk_frames=2) if causal else {}
    dit = randomize(SpaceTimeDiT(DiTConfig.preset("test", **layout, **(dit or {}))), seed=1)
    text = ShapesTextEncoder(ShapesTextEncoderConfig(dim=16, heads=2, depth=1))
    return VideoPipeline(vae, dit, text, model_id="tiny-test", stamper=stamper,
                         **{**SETTINGS, **settings})  # fmt: skip


@pytest.fixture(scope="module")
def stamper(home) -> Stamper:
    return Stamper(home=home)


@pytest.fixture(scope="module")
def causal(stamper) -> VideoPipeline:
    return make_pipeline(stamper, causal=True)


@pytest.fixture(scope="module")
def bidirectional(stamper) -> VideoPipeline:
    return make_pipeline(stamper, causal=False)


@pytest.fixture(scope="module")
def pipe_dir(causal, tmp_path_factory):
    return causal.save_pretrained(tmp_path_factory.mktemp("pipes") / "tiny-t2v")


def decode_all(path) -> torch.Tensor:
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-10))).item()
