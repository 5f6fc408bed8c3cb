"""CausalVAE and diffusers' AutoencoderKLWan: folders both ways (single file and sharded), and the
Wan 2.2 VAE (patchify, residual levels) against diffusers' own forward, whole clip and streamed.

Tiny random models in fp32; norm gammas are perturbed so that no weight is at its identity."""

from __future__ import annotations

import json

import pytest
import torch

from mdiff import hub
from mdiff.errors import InvalidInputError
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)

TOL = 1e-5


def _stats(z: int) -> dict:
    return dict(latents_mean=[0.0] * z, latents_std=[1.0] * z)


WAN21 = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, **_stats(4))
# the Wan 2.2 layout, tiny (at full size: base 160, decoder 256, z 48)
WAN22 = dict(
    base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1, is_residual=True, patch_size=2,
    in_channels=12, out_channels=12, scale_factor_spatial=16, **_stats(4),
)  # fmt: skip
# (config, frames, height, width): several base dims, frame counts and non-square sizes
WAN22_CASES = [
    (WAN22, 9, 32, 16),
    (dict(WAN22, base_dim=6, decoder_base_dim=8, z_dim=3, dim_mult=[1, 2, 2], num_res_blocks=2,
          temperal_downsample=[True, True], **_stats(3)), 5, 16, 24),
    (dict(WAN22, base_dim=4, z_dim=2, dim_mult=[1, 2, 2], temperal_downsample=[False, True],
          patch_size=None, in_channels=3, out_channels=3, **_stats(2)), 9, 16, 8),
    (dict(WAN22, base_dim=8, decoder_base_dim=4, z_dim=4), 5, 16, 32),
]  # fmt: skip
CASE_IDS = ["wan22-layout", "2-levels-t4", "no-patchify-t2", "wide-encoder"]


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))


def _reference(kw: dict, seed: int = 0):
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLWan(**kw).eval()
    _perturb(ref, seed + 1)
    return ref


def _ours(kw: dict, seed: int = 0) -> CausalVAE:
    torch.manual_seed(seed)
    vae = CausalVAE(CausalVAEConfig(**kw)).eval()
    _perturb(vae, seed + 1)
    return vae


def _video(t: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _latents(shape, seed: int = 4) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def _max_errors(ref, ours: CausalVAE, t: int, h: int, w: int) -> tuple[float, float]:
    """Encode (posterior mean) and decode max abs differences on one clip and one latent."""
    x = _video(t, h, w)
    mean_ref = ref.encode(x).latent_dist.mean
    mean = ours.encode(x, normalize=False)
    assert mean.shape == mean_ref.shape
    assert mean_ref.abs().max() > 0.02  # not trivially equal
    z = _latents(mean.shape)
    frames_ref, frames = ref.decode(z).sample, ours.decode(z, normalize=False)
    assert frames.shape == frames_ref.shape == x.shape
    assert (frames_ref.abs() < 0.999).float().mean() > 0.5  # mostly not clamped
    enc = (mean - mean_ref).abs().max().item()
    return enc, (frames - frames_ref).abs().max().item()


# ---------------------------------------------------------------- the Wan 2.2 VAE


@pytest.mark.parametrize(("kw", "t", "h", "w"), WAN22_CASES, ids=CASE_IDS)
def test_wan22_matches_diffusers_encode_and_decode(kw, t, h, w):
    ref = _reference(kw)
    ours = CausalVAE(CausalVAEConfig(**kw)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers' names and shapes
    ref.load_state_dict(ours.state_dict(), strict=True)
    enc, dec = _max_errors(ref, ours, t, h, w)
    assert enc <= TOL and dec <= TOL, (enc, dec)
    with torch.no_grad():  # the log-variance too (the posterior a trainer samples)
        x = _video(t, h, w)
        logvar = ours.encode_moments(x)[1]
        assert (logvar - ref.encode(x).latent_dist.logvar).abs().max() <= TOL


def test_wan22_full_size_has_diffusers_keys_and_size():
    """The real Wan 2.2 config on the meta device (nothing allocated): same names and shapes as
    diffusers, 704.7M parameters, 16× spatial and 4× temporal compression into 48 channels."""
    kw = dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, patch_size=2,
              in_channels=12, out_channels=12, scale_factor_spatial=16,
              latents_mean=[0.0] * 48, latents_std=[1.0] * 48)  # fmt: skip
    with torch.device("meta"):
        ours, ref = CausalVAE(CausalVAEConfig(**kw)), diffusers.AutoencoderKLWan(**kw)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert abs(sum(p.numel() for p in ours.parameters()) - 704.7e6) < 0.1e6
    assert (ours.spatial_factor, ours.temporal_factor, ours.pixel_channels) == (16, 4, 3)
    assert ours.latent_frames(81) == 21


def _run(session, x: torch.Tensor, plan: list[int]) -> torch.Tensor:
    assert sum(plan) == x.shape[2]
    outs, start = [], 0
    for n in plan:
        outs.append(session.push(x[:, :, start : start + n]))
        start += n
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("plan", [[1, 4, 4, 4, 4], [1, 8, 8], [5, 12], [9, 4, 4]])
@torch.no_grad()
def test_wan22_encode_stream_matches_the_whole_clip(plan):
    vae = _ours(WAN22)
    x = _video(17, 32, 16)
    whole = vae.encode(x)
    chunked = _run(vae.encode_stream(), x, plan)
    assert chunked.shape == whole.shape == (1, 4, 5, 2, 1)
    assert (chunked - whole).abs().max() <= TOL


@pytest.mark.parametrize(
    ("trained", "plan"),
    [(None, [1] * 6), (None, [2, 4]), (None, [1, 2, 3]), (None, [3, 3]),
     (13, [1] * 6), (13, [2, 4]), (13, [4, 2])],  # 13 frames: re-anchored after 4 latents
)  # fmt: skip
@torch.no_grad()
def test_wan22_decode_stream_matches_the_whole_clip(trained, plan):
    vae = _ours(dict(WAN22, trained_frames=trained))
    assert vae.decode_segment == (None if trained is None else 4)
    z = _latents((1, 4, 6, 2, 1))
    whole = vae.decode(z)
    chunked = _run(vae.decode_stream(), z, plan)
    assert chunked.shape == whole.shape == (1, 3, 21, 32, 16)
    assert (chunked - whole).abs().max() <= TOL


@torch.no_grad()
def test_wan22_is_strictly_causal():
    vae = _ours(WAN22)
    x = _video(17, 32, 16)
    y = x.clone()
    y[:, :, 9:] = -y[:, :, 9:]  # frames ≥ 9 feed latents ≥ 3
    a, b = vae.encode(x), vae.encode(y)
    assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.allclose(a[:, :, 3:], b[:, :, 3:])
    z = _latents((1, 4, 5, 2, 1))
    w = z.clone()
    w[:, :, 3:] += 1.0  # latents ≥ 3 feed frames ≥ 9
    a, b = vae.decode(z), vae.decode(w)
    assert torch.equal(a[:, :, :9], b[:, :, :9]) and not torch.allclose(a[:, :, 9:], b[:, :, 9:])


def test_wan22_config_errors():
    with pytest.raises(InvalidInputError, match=r"in_channels .* multiple of patch_size² = 4"):
        CausalVAEConfig(**dict(WAN22, in_channels=3))
    with pytest.raises(InvalidInputError, match="patch_size must be"):
        CausalVAEConfig(**dict(WAN22, patch_size=0))
    with pytest.raises(InvalidInputError, match="encoder level 3: 16 channels .*residual shortcut"):
        CausalVAEConfig(**dict(WAN22, dim_mult=[1, 2, 4, 8]))  # 16 channels cannot average into 32
    CausalVAEConfig(**dict(WAN22, dim_mult=[1, 2, 4, 8], is_residual=False))  # fine for 2.1
    vae = _ours(WAN22)
    with pytest.raises(InvalidInputError, match="3 channels"):
        vae.encode(torch.zeros(1, 12, 1, 32, 32))  # frames are RGB, not patchified
    with pytest.raises(InvalidInputError, match="multiples of 16"):
        vae.encode(torch.zeros(1, 3, 1, 24, 32))


# ---------------------------------------------------------------- folders, both ways


FOLDER_CASES = [(WAN21, 5, 16, 24), (WAN22, 5, 32, 16)]


@pytest.mark.parametrize("shard", [None, "4KB"], ids=["one-file", "sharded"])
@pytest.mark.parametrize(("kw", "t", "h", "w"), FOLDER_CASES, ids=["wan21", "wan22"])
def test_diffusers_folder_loads_into_causal_vae(tmp_path, kw, t, h, w, shard):
    ref = _reference(kw, seed=5)
    ref.save_pretrained(tmp_path / "pipe" / "vae", max_shard_size=shard or "10GB")
    folder = tmp_path / "pipe" / "vae"
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if shard:
        assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
        assert len(shards) > 2, shards
    else:
        assert shards == ["diffusion_pytorch_model.safetensors"]
    ours = CausalVAE.from_pretrained(tmp_path / "pipe", subfolder="vae")
    assert ours.config == CausalVAEConfig(**kw)
    assert _same_weights(ours, ref)
    assert hub.weights_sha256(folder) == hub.weights_sha256(ref)
    enc, dec = _max_errors(ref, ours, t, h, w)
    assert enc <= TOL and dec <= TOL, (enc, dec)


@pytest.mark.parametrize("shard", [None, 4000], ids=["one-file", "sharded"])
@pytest.mark.parametrize(("kw", "t", "h", "w"), FOLDER_CASES, ids=["wan21", "wan22"])
def test_causal_vae_folder_loads_into_diffusers(tmp_path, kw, t, h, w, shard):
    ours = _ours(dict(kw, trained_frames=17), seed=6)
    folder = ours.save_pretrained(tmp_path / "vae", max_shard_size=shard)
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLWan" and config["_diffusers_version"]
    if shard:
        assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
        assert len(list(folder.glob("*.safetensors"))) > 2
    else:
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.json",
            "diffusion_pytorch_model.safetensors",
        ]
    ref = diffusers.AutoencoderKLWan.from_pretrained(folder).eval()
    assert _same_weights(ref, ours)
    assert dict(ref.config)["is_residual"] == kw.get("is_residual", False)
    enc, dec = _max_errors(ref, ours, t, h, w)
    assert enc <= TOL and dec <= TOL, (enc, dec)
    again = CausalVAE.from_pretrained(folder)  # and back: trained_frames kept
    assert again.config == ours.config and _same_weights(again, ours)


@torch.no_grad()
def test_shipped_vae_keeps_its_layout_and_re_saves_for_diffusers(tmp_path):
    """The built-in shapes-vae ships as model.safetensors and loads from it unchanged; saved
    again it is a diffusers folder, which diffusers decodes as we do."""
    if "shapes-vae" not in hub.list_builtin():
        pytest.skip("shapes-vae is not shipped in this tree")
    shipped = hub.resolve("shapes-vae")
    assert hub.find_weights(shipped).name == "model.safetensors"
    vae = CausalVAE.from_pretrained("shapes-vae")
    assert hub.weights_sha256(vae) == hub.weights_sha256(shipped)
    ref = diffusers.AutoencoderKLWan.from_pretrained(vae.save_pretrained(tmp_path / "v")).eval()
    z = _latents((1, 16, 3, 2, 3))
    a, b = ref.decode(vae.denormalize_latents(z)).sample, vae.decode(z, reanchor=False)
    assert (a - b).abs().max() <= TOL
