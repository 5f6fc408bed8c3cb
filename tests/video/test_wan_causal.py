"""`CausalWanTransformer` + `WanCache` (Self-Forcing / CausVid streaming of Wan weights): the
chunk-by-chunk stream equals one forward over the whole clip under the explicit block-causal
mask (with and without the rolling window + sink), causality, fixed cache size once the window
is full, the few-step grid, a Self-Forcing checkpoint through `mdiff convert`, and the
pipeline's stream / stream_to with provenance."""

from __future__ import annotations

import json

import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer, block_causal_mask
from mdiff.video.dit.wan_keys import config_from_original, to_original

TOL = 1e-5
BASE = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=64)  # fmt: skip


def _wan(seed=0) -> WanTransformer:
    torch.manual_seed(seed)
    model = WanTransformer(WanTransformerConfig(**BASE)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _inputs(frames, seed=1, b=1, h=4, w=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, frames, h, w, generator=g)
    text = torch.randn(b, 5, 16, generator=g)
    t = torch.rand(b, frames, generator=g)  # per frame
    return x, t, text


@torch.no_grad()
def _stream(model, x, t, text, context_t=None):
    """Chunk by chunk: each chunk read once (discard), then committed at `context_t` (default:
    its own t, so the committed keys are those of the full-sequence forward). Returns the
    outputs joined and the cache lengths after each commit."""
    n, cache, outs, lengths = model.causal.num_frame_per_block, model.new_cache(), [], []
    for a in range(0, x.shape[2], n):
        xc, tc = x[:, :, a : a + n], t[:, a : a + n]
        outs.append(model(xc, tc, text, frame_offset=a, cache=cache))
        cache.discard()
        ct = tc if context_t is None else torch.full_like(tc, context_t)
        model(xc, ct, text, frame_offset=a, cache=cache)
        cache.commit()
        lengths.append((cache.length, tuple(cache.k[0].shape)))
    return torch.cat(outs, dim=2), lengths


@pytest.mark.parametrize(
    "causal, frames",
    [(CausalWanConfig(3), 9), (CausalWanConfig(3), 8), (CausalWanConfig(2, 5, 1), 10),
     (CausalWanConfig(3, 6, 0), 12), (CausalWanConfig(1, 3, 1), 6)],
)  # fmt: skip
def test_stream_equals_one_masked_forward(causal, frames):
    """Oracle: streamed chunks (KV cache, window + sink) == one forward of the whole clip under
    `block_causal_mask`, at the same per-frame t."""
    model = CausalWanTransformer.from_wan(_wan(), causal)
    x, t, text = _inputs(frames)
    with torch.no_grad():
        full = model(x, t, text)
    streamed, _ = _stream(model, x, t, text)
    assert (streamed - full).abs().max().item() <= TOL


def test_mask_is_block_causal_with_window_and_sink():
    """The mask itself: blocks of 2, window 5 frames, sink 1 (1 token per frame)."""
    m = block_causal_mask(8, 1, CausalWanConfig(2, 5, 1))
    # frame 6 (block [6, 8)): sink 0, then frames >= 8 - 4 = 4 up to 7
    assert m[6].tolist() == [True, False, False, False, True, True, True, True]
    assert m[1].tolist() == [True, True] + [False] * 6  # block [0, 2) sees itself
    full = block_causal_mask(4, 2, CausalWanConfig(4))
    assert bool(full.all())  # one block: bidirectional


def test_one_block_is_the_bidirectional_transformer():
    """A block as long as the clip and no window: exactly `WanTransformer.forward`."""
    wan = _wan()
    model = CausalWanTransformer.from_wan(wan, CausalWanConfig(4))
    x, t, text = _inputs(4)
    with torch.no_grad():
        assert (model(x, t, text) - wan(x, t, text)).abs().max().item() <= TOL
        one, _ = _stream(model, x, t, text)
        assert (one - wan(x, t, text)).abs().max().item() <= TOL


def test_later_chunks_leave_earlier_ones_unchanged():
    model = CausalWanTransformer.from_wan(_wan(), CausalWanConfig(2, 4, 1))
    x, t, text = _inputs(8)
    y = x.clone()
    y[:, :, 4:] = torch.randn_like(y[:, :, 4:])
    a, _ = _stream(model, x, t, text, context_t=1.0)
    b, _ = _stream(model, y, t, text, context_t=1.0)
    assert torch.equal(a[:, :, :4], b[:, :, :4])
    assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])
    with torch.no_grad():  # the masked full forward too
        fa, fb = model(x, t, text), model(y, t, text)
    assert torch.equal(fa[:, :, :4], fb[:, :, :4])


def test_cache_size_is_fixed_once_the_window_is_full():
    """Window 6 frames, sink 1, blocks of 2: at most sink + (6 − 1 − 1) frames stay cached."""
    model = CausalWanTransformer.from_wan(_wan(), CausalWanConfig(2, 6, 1))
    x, t, text = _inputs(16)
    _, lengths = _stream(model, x, t, text)
    tokens = (4 // 2) * (4 // 2)  # 4 × 4 latents, patch 2 × 2
    assert lengths[-1][0] == 5 * tokens
    assert len({n for n, _ in lengths[2:]}) == 1 and len({s for _, s in lengths[2:]}) == 1
    unbounded = CausalWanTransformer.from_wan(_wan(), CausalWanConfig(2))
    _, grow = _stream(unbounded, x, t, text)
    assert [n for n, _ in grow] == [2 * tokens * (j + 1) for j in range(8)]


def test_text_kv_is_kept_per_prompt_and_misuse_is_refused():
    model = CausalWanTransformer.from_wan(_wan(), CausalWanConfig(2))
    x, t, text = _inputs(2)
    cache = model.new_cache()
    with torch.no_grad():
        model(x, t, text, cache=cache)
        kv = cache.text_kv(text)
        assert kv is not None and cache.text_kv(text + 1) is None
        with pytest.raises(InvalidInputError, match="staged"):
            model(x, t, text, cache=cache)
        cache.commit()
        with pytest.raises(InvalidInputError, match="in order"):
            model(x, t, text, frame_offset=0, cache=cache)
        with pytest.raises(InvalidInputError, match="at most"):
            model(torch.randn(1, 4, 3, 4, 4), t[:, :1], text, frame_offset=2, cache=cache)
    with pytest.raises(InvalidInputError):
        CausalWanConfig(3, 3, 1)


def test_self_forcing_checkpoint_converts_and_loads(tmp_path):
    """A .pt in Self-Forcing's layout (`generator_ema` of `model.`-prefixed original Wan names,
    plain tensors) → `mdiff convert --key generator_ema --strip-prefix model. --config` → a
    folder the causal model loads, giving the same stream."""
    from mdiff import cli
    from mdiff.video.pipeline.causal_wan import CAUSAL_CONFIG, CausalWanDenoiser

    wan = _wan(3)
    original = {f"model.{k}": v.clone() for k, v in to_original(wan.state_dict()).items()}
    zeros = {k: torch.zeros_like(v) for k, v in original.items()}
    torch.save({"generator": zeros, "generator_ema": original}, tmp_path / "self_forcing.pt")
    c = wan.config
    config = {"_class_name": "WanModel", "model_type": "t2v", "dim": c.inner_dim,
              "num_heads": c.num_attention_heads, "in_dim": 4, "out_dim": 4, "text_dim": 16,
              "freq_dim": 32, "ffn_dim": 40, "num_layers": 2, "patch_size": [1, 2, 2],
              "cross_attn_norm": True, "eps": 1e-6}  # fmt: skip
    assert config_from_original(config)["attention_head_dim"] == 12
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "sf"
    args = ["--threads", "1", "convert", str(tmp_path / "self_forcing.pt"), str(out),
            "--key", "generator_ema", "--strip-prefix", "model.",
            "--config", str(tmp_path / "config.json")]  # fmt: skip
    assert cli.main(args) == 0
    causal = CausalWanConfig(2, 4, 1)
    loaded = CausalWanTransformer.from_pretrained(out, causal=causal)
    ref = CausalWanTransformer.from_wan(wan, causal)
    x, t, text = _inputs(6)
    assert torch.equal(_stream(loaded, x, t, text)[0], _stream(ref, x, t, text)[0])
    # the folder + a causal_config.json (Self-Forcing's names) is a pipeline's causal DiT
    sf = {"num_frame_per_block": 2, "local_attn_size": 4, "sink_size": 1,
          "denoising_step_list": [1000, 750, 500, 250], "timestep_shift": 5.0}  # fmt: skip
    (out / CAUSAL_CONFIG).write_text(json.dumps(sf))
    dit = CausalWanDenoiser.from_pretrained(out)
    assert dit.transformer.causal == causal and dit.config.attention == "block_causal"
    assert torch.equal(_stream(dit.transformer, x, t, text)[0], _stream(ref, x, t, text)[0])
    (out / CAUSAL_CONFIG).write_text(json.dumps({**sf, "local_attn_size": 2}))
    with pytest.raises(CheckpointError, match="local_attn_size"):
        CausalWanDenoiser.from_pretrained(out)


def test_self_forcing_grid():
    """[1000, 750, 500, 250] warped by shift 5: σ = 5u / (1 + 4u) → t = 1 − σ, closed by 1."""
    from mdiff.video.pipeline.causal_wan import self_forcing_grid

    grid = self_forcing_grid()
    expected = torch.tensor([0.0, 1 - 0.9375, 1 - 2.5 / 3, 1 - 0.625, 1.0], dtype=torch.float64)
    assert torch.allclose(grid, expected, atol=1e-12)
    half = torch.tensor([0, 0.5, 1.0], dtype=torch.float64)
    assert torch.equal(self_forcing_grid([1000, 500], warp=False), half)
    with pytest.raises(InvalidInputError):
        self_forcing_grid([500, 750])


# ---------------------------------------------------------------- the pipeline


def _pipeline(stamper):
    from mdiff.video.pipeline.causal_wan import SELF_FORCING_SETTINGS, CausalWanDenoiser
    from mdiff.video.pipeline.video_pipeline import VideoPipeline
    from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
    from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                    latents_mean=[0.1, -0.2, 0.3, 0.0],
                                    latents_std=[1.5, 0.5, 2.0, 1.0]))  # fmt: skip
    text = ShapesTextEncoder(ShapesTextEncoderConfig(dim=16, heads=2, depth=1))
    model = CausalWanTransformer.from_wan(_wan(), CausalWanConfig(2, 4, 1))
    settings = {**SELF_FORCING_SETTINGS, "num_frames": 17, "height": 32, "width": 32, "fps": 8.0}
    return VideoPipeline(vae, CausalWanDenoiser(model), text, model_id="tiny-causal-wan",
                         stamper=stamper, **settings)  # fmt: skip


@pytest.fixture(scope="module")
def causal_pipe(home):
    from mdiff.provenance import Stamper

    return _pipeline(Stamper(home=home))


def test_pipeline_is_the_self_forcing_loop(causal_pipe):
    """`pipe(...)` latents == the Self-Forcing recipe written out: per block, 4 steps of x̂1
    prediction + fresh noise at the warped step list, then a clean (t = 1) pass committed."""
    from mdiff.video.pipeline.causal_wan import self_forcing_grid
    from mdiff.video.pipeline.sampling import chunk_generator

    out = causal_pipe("a red circle", seed=5, return_latents=True)
    model = causal_pipe.dit.transformer
    emb, mask = causal_pipe.text_encoder.encode(["a red circle"])
    grid, cache, latents = self_forcing_grid().tolist(), model.new_cache(), []
    with torch.no_grad():
        for j, a in enumerate(range(0, 5, 2)):
            n = min(2, 5 - a)
            x = torch.randn(1, 4, n, 4, 4, generator=chunk_generator(5, j))
            g = chunk_generator(5, j, "renoise")
            for i, t in enumerate(grid[:-1]):
                v = model(x, torch.full((1,), t), emb, mask, frame_offset=a, cache=cache)
                cache.discard()
                x = x + (1 - t) * v  # the data estimate
                if grid[i + 1] < 1:
                    x = grid[i + 1] * x + (1 - grid[i + 1]) * torch.randn(x.shape, generator=g)
            latents.append(x)
            model(x, torch.ones(1), emb, mask, frame_offset=a, cache=cache)
            cache.commit()
    assert (out.latents - torch.cat(latents, dim=2)).abs().max().item() <= TOL
    assert out.record.extra["attention"] == "block_causal" and out.record.steps == 4
    assert "self-forcing" in out.record.extra["scheduler"]


def test_stream_and_live_mp4_with_provenance(causal_pipe, home, tmp_path):
    """stream(): watermarked chunks whose concatenation is `pipe(...)`; stream_to(): a live
    fragmented MP4 that verifies (trusted manifest, watermark found)."""
    from mdiff.provenance import verify

    chunks = list(causal_pipe.stream("a red circle", seed=2))
    offline = causal_pipe("a red circle", seed=2)
    assert [(c.start_frame, c.end_frame) for c in chunks] == [(0, 5), (5, 13), (13, 17)]
    assert torch.equal(torch.cat([c.frames for c in chunks]), offline.frames)
    assert all(c.record == offline.record and c.record.watermark is not None for c in chunks)
    summary = causal_pipe.stream_to(tmp_path / "live.mp4", "a red circle", seed=2)
    assert summary.frames == 17 and summary.chunks == 3
    report = verify(summary.path, home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0
    assert report.manifest.record.model_id == "tiny-causal-wan"


def test_pipeline_folder_and_cli_stream(causal_pipe, home, tmp_path):
    """save_pretrained → a folder (dit/: diffusers' Wan transformer + causal_config.json) that
    `VideoPipeline.from_pretrained` and `mdiff video --stream` read; same frames, signed."""
    from mdiff import cli
    from mdiff.provenance import verify
    from mdiff.video.pipeline.causal_wan import CAUSAL_CONFIG
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    folder = causal_pipe.save_pretrained(tmp_path / "causal-wan")
    config = json.loads((folder / "dit" / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel"
    causal = json.loads((folder / "dit" / CAUSAL_CONFIG).read_text())
    assert causal["num_frame_per_block"] == 2
    assert causal["denoising_step_list"] == [1000, 750, 500, 250]
    loaded = VideoPipeline.from_pretrained(folder, stamper=causal_pipe.stamper)
    loaded.model_id = causal_pipe.model_id
    assert loaded.causal and loaded.settings == causal_pipe.settings
    assert torch.equal(
        loaded("a red circle", seed=4).frames, causal_pipe("a red circle", seed=4).frames
    )
    out = tmp_path / "cli.mp4"
    args = ["--threads", "1", "--home", str(home), "video", "a red circle", "-o", str(out),
            "--model", str(folder), "--stream", "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    report = verify(out, home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0
