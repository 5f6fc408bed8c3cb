"""The shipped VAE (`video/checkpoints/shapes-vae`): it loads by name, is small, logged, and
reconstructs unseen shapes clips well at every frame (random weights give ≈ 10 dB)."""

import json

import pytest
import torch

from mdiff import hub
from mdiff.video.data import ShapesDataset
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

SHIPPED = "shapes-vae" in hub.list_builtin()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="shapes-vae is not shipped in this tree")
UNSEEN_SEED = 2_000_003  # neither the training (0) nor the held-out (1_000_003) seed


@pytest.fixture(scope="module")
def vae():
    return CausalVAE.from_pretrained("shapes-vae").eval()


def test_shipped_vae_is_small_and_logged():
    folder = hub.resolve("shapes-vae")
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 30 * 2**20
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert log["step"] > 0 and log["evals"] and log["init_log"]["evals"]
    assert len(log["heldout"]["psnr_per_frame"]) == 17


def test_shipped_vae_reconstructs_unseen_clips_at_every_frame(vae):
    clips = ShapesDataset(16, num_frames=17, height=64, width=64, seed=UNSEEN_SEED)
    x = torch.stack([clips[i]["pixels"] for i in range(16)])
    with torch.no_grad():
        y = vae.decode(vae.encode(x)).clamp(-1, 1)
    mse = (y - x).square().mean(dim=(0, 1, 3, 4))  # per frame; pixels in [-1, 1]
    per_frame = (10 * torch.log10(4 / mse)).tolist()
    assert sum(per_frame) / 17 > 30.0, per_frame
    early, late = sum(per_frame[1:5]) / 4, sum(per_frame[13:17]) / 4
    assert late > early - 1.5, per_frame  # no decay along the clip: the caches work


def test_shipped_vae_holds_its_quality_on_long_clips(vae):
    """Past its 17-frame training clips the decoder re-anchors (`DecodeSession`): a 65-frame
    round trip keeps the first clip's quality to the end (the decoder alone falls to ≈ 23 dB
    after frame 24)."""
    clips = ShapesDataset(4, num_frames=65, height=64, width=64, seed=UNSEEN_SEED)
    x = torch.stack([clips[i]["pixels"] for i in range(4)])
    with torch.no_grad():
        y = vae.decode(vae.encode(x))
    mse = (y - x).square().mean(dim=(0, 1, 3, 4))
    per_frame = (10 * torch.log10(4 / mse)).tolist()
    first, rest = sum(per_frame[1:17]) / 16, sum(per_frame[17:]) / 48
    assert rest > 30.0 and rest > first - 1.5, per_frame


@torch.no_grad()
def test_shipped_vae_config_alone_re_anchors_like_the_loaded_model(vae, caplog):
    """The training clip length is a config field: `CausalVAE(config)` with the shipped weights
    decodes a 9-latent stream (re-anchored after 5 latents) exactly as `from_pretrained`."""
    folder = hub.resolve("shapes-vae")
    config = hub.read_config(CausalVAEConfig, folder)
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert config.trained_frames == 17 == log["data"]["frames"]
    built = CausalVAE(config).eval()
    hub.load_weights(built, folder / hub.WEIGHTS_NAME)
    z = torch.randn(1, 16, 9, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = built.decode(z)
    assert built.decode_segment == vae.decode_segment == 5
    assert torch.equal(ours, vae.decode(z))
    assert not torch.allclose(ours, built.decode(z, reanchor=False), atol=1e-2)
    caplog.set_level("INFO", logger="mdiff.configs")
    assert CausalVAE.from_pretrained("shapes-vae").config == config
    assert not [r for r in caplog.records if "old layout" in r.getMessage()]
