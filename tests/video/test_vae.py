"""Causal 3D VAE: diffusers parity, streaming invariance, causality, errors, tiling, checkpoints."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import read_config
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig
from mdiff.video.vae.stream import Tiling

torch.set_num_threads(1)

TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
TINY_STATS = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
PARITY_CONFIGS = [
    dict(TINY, latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
    dict(
        base_dim=4, z_dim=2, dim_mult=[1, 1, 1], num_res_blocks=2,
        temperal_downsample=[True, False], latents_mean=[0.0] * 2, latents_std=[1.0] * 2,
    ),
    dict(
        base_dim=6, decoder_base_dim=8, z_dim=3, dim_mult=[1, 2], num_res_blocks=1,
        temperal_downsample=[True], latents_mean=[0.0] * 3, latents_std=[1.0] * 3,
    ),
]  # fmt: skip


def make_vae(seed: int = 0, **overrides) -> CausalVAE:
    torch.manual_seed(seed)
    return CausalVAE(CausalVAEConfig(**{**TINY, **TINY_STATS, **overrides})).eval()


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    return make_vae()


def video(t: int, seed: int = 1, hw: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, hw, hw, generator=g) * 2 - 1


def latents(t: int, seed: int = 2, c: int = 4, hw: int = 4) -> torch.Tensor:
    return torch.randn(1, c, t, hw, hw, generator=torch.Generator().manual_seed(seed))


def run(session, x: torch.Tensor, plan: list[int]) -> torch.Tensor:
    assert sum(plan) == x.shape[2]
    outs, start = [], 0
    for n in plan:
        outs.append(session.push(x[:, :, start : start + n]))
        start += n
    return torch.cat(outs, dim=2)


# ---------------------------------------------------------------- diffusers parity


@pytest.mark.parametrize("kw", PARITY_CONFIGS, ids=["wan-like", "2-levels", "1-level"])
@torch.no_grad()
def test_parity_with_diffusers(kw):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(**kw).eval()
    ours = CausalVAE(CausalVAEConfig(**kw)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same names and shapes
    ref.load_state_dict(ours.state_dict(), strict=True)
    f, s = ours.temporal_factor, ours.spatial_factor
    x = video(1 + 2 * f, hw=4 * s)
    a = ref.encode(x).latent_dist.mean
    b = ours.encode(x, normalize=False)
    assert a.shape == b.shape == (1, kw["z_dim"], 3, 4, 4)
    assert (a - b).abs().max() <= 1e-5
    z = latents(3, c=kw["z_dim"]) * 3
    a, b = ref.decode(z).sample, ours.decode(z, normalize=False)
    assert a.shape == b.shape == (1, 3, 1 + 2 * f, 4 * s, 4 * s)
    assert a.abs().max() > 0.05  # not trivially equal
    assert (a - b).abs().max() <= 1e-5


def test_wan21_default_matches_diffusers_keys_and_size():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        ours = CausalVAE(CausalVAEConfig())
        ref = diffusers.AutoencoderKLWan()
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    count = sum(p.numel() for p in ours.parameters())
    assert abs(count - 126.89e6) < 0.01e6, count
    assert abs(sum(p.numel() for p in ours.encoder.parameters()) - 53.6e6) < 0.05e6


def test_diffusers_config_json_loads(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    kw = PARITY_CONFIGS[1]
    diffusers.AutoencoderKLWan(**kw).save_pretrained(tmp_path)
    config = read_config(CausalVAEConfig, tmp_path)
    assert config == CausalVAEConfig(**kw)


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("plan", [[1, 4, 4, 4, 4], [1, 8, 8], [1, 16], [5, 12], [9, 4, 4]])
@torch.no_grad()
def test_encode_chunk_plan_invariance(vae, plan):
    x = video(17)
    whole = vae.encode(x)
    chunked = run(vae.encode_stream(), x, plan)
    assert chunked.shape == whole.shape == (1, 4, 5, 4, 4)
    assert (chunked - whole).abs().max() <= 1e-5


PLAIN_PLANS = [[1, 1, 1, 1, 1], [1, 2, 2], [1, 4], [2, 3], [5]]
REANCHORED_PLANS = [[11], [1] * 11, [2, 3, 4, 2], [4, 7], [5, 1, 5], [3, 8]]  # crossing anchors


@pytest.mark.parametrize(
    ("trained", "plan"), [(None, p) for p in PLAIN_PLANS] + [(13, p) for p in REANCHORED_PLANS]
)
@torch.no_grad()
def test_decode_chunk_plan_invariance(vae, trained13, trained, plan):
    model, n = (vae if trained is None else trained13), sum(plan)
    z = latents(n)
    whole = model.decode(z)
    chunked = run(model.decode_stream(), z, plan)
    assert chunked.shape == whole.shape == (1, 3, 1 + 4 * (n - 1), 32, 32)
    assert (chunked - whole).abs().max() <= 1e-5


@torch.no_grad()
def test_encode_is_strictly_causal(vae):
    x = video(17)
    y = x.clone()
    y[:, :, 9:] = torch.rand_like(y[:, :, 9:])  # frames ≥ 9 feed latents ≥ 3
    a, b = vae.encode(x), vae.encode(y)
    assert torch.equal(a[:, :, :3], b[:, :, :3])
    assert not torch.equal(a[:, :, 3], b[:, :, 3])


@torch.no_grad()
def test_decode_is_strictly_causal(vae):
    z = latents(5)
    w = z.clone()
    w[:, :, 3:] = torch.randn_like(w[:, :, 3:])  # latents ≥ 3 give frames ≥ 9
    a, b = vae.decode(z), vae.decode(w)
    assert torch.equal(a[:, :, :9], b[:, :, :9])
    assert not torch.equal(a[:, :, 9:], b[:, :, 9:])


@torch.no_grad()
def test_interleaved_sessions_are_independent(vae):
    x1, x2 = video(9, seed=3), video(9, seed=4)
    s1, s2 = vae.encode_stream(), vae.encode_stream()
    a = [s1.push(x1[:, :, :1]), s2.push(x2[:, :, :1]), s2.push(x2[:, :, 1:5])]
    a += [s1.push(x1[:, :, 1:5]), s1.push(x1[:, :, 5:]), s2.push(x2[:, :, 5:])]
    assert torch.equal(torch.cat([a[0], a[3], a[4]], 2), run(vae.encode_stream(), x1, [1, 4, 4]))
    assert torch.equal(torch.cat([a[1], a[2], a[5]], 2), run(vae.encode_stream(), x2, [1, 4, 4]))


@torch.no_grad()
def test_decode_state_does_not_grow(vae):
    session, z = vae.decode_stream(), latents(8)

    def state_bytes():
        tails = [v for c in session.state.caches.values() for v in c.values()]
        return sum(v.numel() * v.element_size() for v in tails if isinstance(v, torch.Tensor))

    session.push(z[:, :, :1])
    session.push(z[:, :, 1:2])
    after_two = state_bytes()
    for i in range(2, 8):
        session.push(z[:, :, i : i + 1])
    assert state_bytes() == after_two > 0
    assert (session.state.frames_in, session.state.frames_out) == (8, 29)


# ---------------------------------------------------------------- re-anchored decoding


@pytest.fixture(scope="module")
def trained13() -> CausalVAE:
    """A VAE that says it was trained on 13-frame clips: segments of 4 latents, a new key
    frame every 2 latents from latent 4 on."""
    return make_vae(seed=3, trained_frames=13)


def test_decode_segment_follows_the_training_length(trained13):
    assert trained13.decode_segment == 4
    vae = make_vae()
    for frames, segment in [(None, None), (5, None), (8, None), (9, 3), (17, 5), (129, 33)]:
        vae.trained_frames = frames
        assert vae.decode_segment == segment, frames
    assert vae.config.trained_frames == 129  # the attribute is the config field
    for bad in (0, -3, 9.0, True, "9"):
        with pytest.raises(InvalidInputError, match="trained_frames"):
            CausalVAEConfig(trained_frames=bad)


@torch.no_grad()
def test_trained_frames_lives_in_config_json_and_the_log_is_provenance(trained13, tmp_path):
    """`CausalVAE(config)` and its saved folder decode alike: the training length round-trips
    through config.json, and a training log beside it changes nothing."""
    folder = trained13.save_pretrained(tmp_path / "vae")
    assert json.loads((folder / "config.json").read_text())["trained_frames"] == 13
    (folder / "training_log.json").write_text(json.dumps({"data": {"frames": 9}}))
    loaded = CausalVAE.from_pretrained(folder)
    assert loaded.config == trained13.config and loaded.decode_segment == 4
    z = latents(11)
    assert torch.equal(loaded.decode(z), trained13.decode(z))
    assert not torch.allclose(loaded.decode(z), loaded.decode(z, reanchor=False), atol=1e-2)


def _old_layout(folder, log) -> None:
    """Make a saved VAE folder look like an older export: no trained_frames in config.json."""
    config = json.loads((folder / "config.json").read_text())
    config.pop("trained_frames", None)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "training_log.json").write_text(json.dumps(log))


@torch.no_grad()
def test_old_layout_takes_trained_frames_from_the_training_log(trained13, tmp_path, caplog):
    folder = trained13.save_pretrained(tmp_path / "vae")
    _old_layout(folder, {"data": {"frames": 13}})
    with caplog.at_level(logging.INFO, logger="mdiff.configs"):
        loaded = CausalVAE.from_pretrained(folder)
    (line,) = [r.getMessage() for r in caplog.records if "old layout" in r.getMessage()]
    assert "trained_frames=13" in line and "training_log.json" in line
    assert loaded.config == trained13.config
    z = latents(11)
    assert torch.equal(loaded.decode(z), trained13.decode(z))
    _old_layout(folder, {"data": {"frames": "13"}})
    with pytest.raises(CheckpointError, match="trained_frames"):
        CausalVAE.from_pretrained(folder)
    _old_layout(folder, {"data": {"size": 64}})  # an old log without the length: unknown
    assert CausalVAE.from_pretrained(folder).trained_frames is None


@pytest.mark.parametrize("trained", [13, 17])
@torch.no_grad()
def test_reanchored_decode_is_each_segment_decoded_as_a_clip_from_its_key_frame(trained):
    """Oracle: after every boundary b the frames are the plain decode of [encode(the frame
    decoded last for latent b - 2), latent b - 1, latents b … b + segment - 3], minus its
    first 5 frames (segments 4 and 5; the last one cut short)."""
    vae = make_vae(seed=3)
    vae.trained_frames = trained
    segment = vae.decode_segment
    n = segment + 3 * (segment - 2) + 1
    z = latents(n)
    ours = vae.decode(z, normalize=False)
    ref = vae.decode(z[:, :, :segment], normalize=False, reanchor=False)
    for b in range(segment, n, segment - 2):
        key = vae.encode(ref[:, :, 4 * (b - 2) : 4 * (b - 2) + 1], normalize=False)
        clip = torch.cat([key, z[:, :, b - 1 : b + segment - 2]], dim=2)
        ref = torch.cat([ref, vae.decode(clip, normalize=False, reanchor=False)[:, :, 5:]], 2)
    assert ours.shape == ref.shape == (1, 3, 1 + 4 * (n - 1), 32, 32)
    assert (ours - ref).abs().max() <= 1e-5
    plain = vae.decode(z, normalize=False, reanchor=False)
    inside = 1 + 4 * (segment - 1)
    assert (ours[:, :, :inside] - plain[:, :, :inside]).abs().max() <= 1e-5  # as it was
    assert (ours[:, :, inside:] - plain[:, :, inside:]).abs().max() > 1e-2  # re-anchored


@torch.no_grad()
def test_reanchored_decode_state_does_not_grow(trained13):
    session, z = trained13.decode_stream(), latents(16)
    sizes = []
    for i in range(16):
        session.push(z[:, :, i : i + 1])
        tails = [v for c in session.state.caches.values() for v in c.values()]
        kept = [*tails, *session.ends, session.last_latent]
        sizes.append(sum(v.numel() for v in kept if isinstance(v, torch.Tensor)))
    assert max(sizes[4:]) == max(sizes[1:4]) > 0  # never more than the first clip carried
    assert (session.state.frames_in, session.state.frames_out) == (16, 61)


def test_reanchoring_needs_three_latent_frames(trained13):
    from mdiff.video.vae.stream import DecodeSession

    for segment in (2, 0, True, 3.0):
        with pytest.raises(InvalidInputError, match="at least 3 latent frames"):
            DecodeSession(trained13, True, None, None, segment)


@pytest.mark.parametrize(
    ("kind", "plan", "rule"),
    [
        ("encode", [2], "first chunk has 1 \\+ 4k frames"),
        ("encode", [10], "first chunk has 1 \\+ 4k frames"),
        ("encode", [1, 3], "later chunk of 3"),
        ("encode", [5, 6], "later chunk of 6"),
        ("decode", [1, 0], "empty"),
    ],
)
@torch.no_grad()
def test_invalid_plans_raise(vae, kind, plan, rule):
    if kind == "encode":
        x, session = video(sum(plan)), vae.encode_stream()
    else:
        x, session = latents(sum(plan)), vae.decode_stream()
    with pytest.raises(InvalidInputError, match=rule):
        run(session, x, plan)


@torch.no_grad()
def test_invalid_shapes_raise(vae):
    with pytest.raises(InvalidInputError, match="1 \\+ 4k"):
        vae.encode(video(10))
    with pytest.raises(InvalidInputError, match="multiples of 8"):
        vae.encode(video(5, hw=36))
    with pytest.raises(InvalidInputError, match="4 channels"):
        vae.decode(latents(2, c=3))
    session = vae.decode_stream()
    session.push(latents(1))
    with pytest.raises(InvalidInputError, match="keep"):
        session.push(latents(1, hw=8))


# ---------------------------------------------------------------- tiling, precision


@torch.no_grad()
def test_tile_covering_the_input_is_identical(vae):
    x, z = video(5), latents(2)
    big = Tiling(tile=64, stride=32)
    assert torch.equal(vae.encode(x, tiling=big), vae.encode(x))
    assert torch.equal(vae.decode(z, tiling=big), vae.decode(z))


@torch.no_grad()
def test_overlapping_tiles_cover_the_frame(vae):
    x, z = video(5, hw=48), latents(2, hw=6)
    tiles = Tiling(tile=32, stride=16)
    enc = vae.encode(x, tiling=tiles)
    assert enc.shape == vae.encode(x).shape and torch.isfinite(enc).all()
    dec = vae.decode(z, tiling=tiles)
    full = vae.decode(z)
    assert dec.shape == full.shape and not torch.equal(dec, full)
    # a streamed tiled decode equals the whole-clip tiled decode
    assert (run(vae.decode_stream(tiling=tiles), z, [1, 1]) - dec).abs().max() <= 1e-5


@torch.no_grad()
def test_bf16_decode_with_fp32_encode(vae):
    z = vae.encode(video(5))
    assert z.dtype == torch.float32
    full = vae.decode(z)
    low = vae.decode(z, dtype=torch.bfloat16)
    assert low.shape == full.shape
    assert 0 < (low.float() - full).abs().max() < 0.25


# ---------------------------------------------------------------- images, normalisation, hub


@torch.no_grad()
def test_image_is_a_one_frame_video(vae):
    x = video(5)
    z1 = vae.encode(x[:, :, :1])
    assert z1.shape == (1, 4, 1, 4, 4)
    assert (z1 - vae.encode(x)[:, :, :1]).abs().max() <= 1e-6  # same values, other conv shapes
    img = vae.decode(z1)
    assert img.shape == (1, 3, 1, 32, 32) and img.abs().max() <= 1


@torch.no_grad()
def test_latent_normalisation_applied_once(vae):
    x = video(5)
    raw, norm = vae.encode(x, normalize=False), vae.encode(x)
    mean = torch.tensor(TINY_STATS["latents_mean"]).view(1, -1, 1, 1, 1)
    std = torch.tensor(TINY_STATS["latents_std"]).view(1, -1, 1, 1, 1)
    assert torch.allclose(norm, (raw - mean) / std, atol=1e-6)
    assert torch.allclose(vae.decode(norm), vae.decode(raw, normalize=False), atol=1e-5)


@torch.no_grad()
def test_save_load_round_trip(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    loaded = CausalVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == vae.config
    for k, v in vae.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = video(5)
    assert torch.equal(loaded.encode(x), vae.encode(x))


def test_frame_counts(vae):
    assert [vae.latent_frames(t) for t in (1, 5, 17)] == [1, 2, 5]
    assert [vae.pixel_frames(t) for t in (1, 2, 5)] == [1, 5, 17]
    with pytest.raises(InvalidInputError, match="1 \\+ 4k"):
        vae.latent_frames(8)
    with pytest.raises(InvalidInputError, match="multiple of patch_size"):
        CausalVAEConfig(is_residual=True, patch_size=2)  # Wan 2.2 needs in_channels = 3·2²


def test_forward_reconstructs_with_gradients():
    """forward = decode(posterior mean), or decode(mean + std·noise) with a generator, unclamped;
    gradients reach the encoder and the decoder (an identity or a mean-only forward fails)."""
    model = make_vae().train()
    x = video(5, hw=16)
    plain = dict(normalize=False, reanchor=False)
    with torch.no_grad():
        mean, logvar = model.encode_moments(x)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
        sampled = model.decode(mean + (0.5 * logvar).exp() * noise, **plain)
        assert torch.allclose(model(x).clamp(-1, 1), model.decode(mean, **plain), atol=1e-6)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.allclose(out.detach().clamp(-1, 1), sampled, atol=1e-6)
    assert not torch.allclose(sampled, model.decode(mean, **plain), atol=1e-3)  # noise is used
    out.square().mean().backward()
    for param in (model.encoder.conv_in.weight, model.decoder.conv_out.weight):
        assert param.grad is not None and bool(param.grad.abs().sum() > 0)
