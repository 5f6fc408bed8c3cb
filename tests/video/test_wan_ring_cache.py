"""`WanRingCache` (fixed-shape KV cache for `CausalWanTransformer` streaming): the same outputs as
the growing `WanCache` while the window evicts (with and without sink frames), buffers that keep
their shape and storage, no recompilation of a compiled chunk step as the stream grows, and the
pipeline's stream with `CausalWanDenoiser(fixed_cache=True)` unchanged."""

from __future__ import annotations

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
from mdiff.video.dit.wan_cache import WanCache
from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer
from mdiff.video.dit.wan_ring_cache import WanRingCache

TOL = 1e-5
BASE = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=40, num_layers=2, rope_max_seq_len=64)  # fmt: skip


def _model(causal: CausalWanConfig, seed=0) -> CausalWanTransformer:
    torch.manual_seed(seed)
    wan = WanTransformer(WanTransformerConfig(**BASE)).eval()
    with torch.no_grad():
        for p in wan.parameters():
            p.normal_(0, 0.2)
    return CausalWanTransformer.from_wan(wan, causal)


def _inputs(frames, b=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, frames, 4, 6, generator=g)
    return x, torch.rand(b, frames, generator=g), torch.randn(b, 5, 16, generator=g)


@torch.no_grad()
def _stream(model, cache, x, t, text, on_commit=None):
    """Two reading passes per chunk (discarded), then a commit at t = 1 (clean context, so the
    committed keys differ from the read ones). Returns the reading outputs joined."""
    n, outs = model.causal.num_frame_per_block, []
    for a in range(0, x.shape[2], n):
        xc, tc = x[:, :, a : a + n], t[:, a : a + n]
        for scale in (1.0, 0.5):
            out = model(xc * scale, tc * scale, text, frame_offset=a, cache=cache)
            cache.discard()
        outs.append(out)
        model(xc, torch.ones_like(tc), text, frame_offset=a, cache=cache)
        cache.commit()
        if on_commit is not None:
            on_commit(cache)
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize(
    "causal, frames, batch",
    [(CausalWanConfig(2, 5, 1), 12, 1), (CausalWanConfig(3, 6, 0), 14, 2),
     (CausalWanConfig(1, 3, 1), 7, 1), (CausalWanConfig(3, 8, 2), 16, 1),
     (CausalWanConfig(1, 1, 0), 5, 1)],
)  # fmt: skip
def test_ring_equals_growing_cache_while_evicting(causal, frames, batch):
    """Oracle: every streamed chunk with the ring cache == with `WanCache` (window smaller than
    the stream, so frames are evicted; sink or none; a short last chunk in some cases)."""
    model = _model(causal)
    x, t, text = _inputs(frames, batch)
    kept = []
    ref = _stream(model, model.new_cache(), x, t, text, lambda c: kept.append(c.frames))
    ring = model.new_cache(fixed=True)
    assert isinstance(ring, WanRingCache)
    got = []
    out = _stream(model, ring, x, t, text, lambda c: got.append(c.frames))
    assert (out - ref).abs().max().item() <= TOL
    assert got == kept  # the same frames held after every commit
    assert max(len(f) for f in kept) < frames  # eviction happened


def test_buffers_keep_shape_and_storage():
    """After the first chunk the k/v buffers and the mask keep their shapes and data_ptrs."""
    model = _model(CausalWanConfig(2, 5, 1))
    x, t, text = _inputs(12)
    cache, seen = model.new_cache(fixed=True), []

    def record(c):
        tensors = [c.k[0], c.v[0], c.k[1], c.attn_mask.mask]
        seen.append([(tuple(a.shape), a.data_ptr()) for a in tensors])

    _stream(model, cache, x, t, text, record)
    assert len(seen) == 6 and all(s == seen[0] for s in seen)
    # (B, H, (sink 1 + rolling 3 + chunk 2) frames · 6 tokens, hd)
    assert seen[0][0][0] == (1, 2, 36, 12)
    assert cache.frames == [0, 9, 10, 11] and cache.length == 4 * 6


def _count_compiles(model, cache, x, t, text) -> list[int]:
    """Compile the chunk step with a backend that counts graphs; the count after each chunk."""
    torch._dynamo.reset()
    graphs, counts = [], []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model.compile_stream(backend=backend, fullgraph=False)
    try:
        out = _stream(model, cache, x, t, text, lambda c: counts.append(len(graphs)))
    finally:
        model._compiled = None
        torch._dynamo.reset()
    return counts, out


@pytest.mark.compile
def test_compiled_stream_does_not_recompile():
    """torch.compile of the chunk step: with the ring cache the graphs compiled for the first
    chunk serve the 5 chunks after it (and give the eager outputs); with the growing
    `WanCache` (control) the same stream compiles again."""
    torch.set_num_threads(1)
    model = _model(CausalWanConfig(2, 5, 1))
    x, t, text = _inputs(12)
    eager = _stream(model, model.new_cache(fixed=True), x, t, text)
    counts, out = _count_compiles(model, model.new_cache(fixed=True), x, t, text)
    assert counts[0] >= 1 and counts == [counts[0]] * 6
    assert (out - eager).abs().max().item() <= TOL
    growing, _ = _count_compiles(model, model.new_cache(), x, t, text)
    assert growing[-1] > growing[0]


def test_bad_use_is_refused():
    model = _model(CausalWanConfig(2, 5, 1))
    with pytest.raises(InvalidInputError, match="finite window"):
        _model(CausalWanConfig(2)).new_cache(fixed=True)
    x, t, text = _inputs(4)
    cache = model.new_cache(fixed=True)
    with torch.no_grad():
        model(x[:, :, :2], t[:, :2], text, frame_offset=2, cache=cache)
        cache.commit()
        with pytest.raises(InvalidInputError, match="in order"):
            model(x[:, :, :2], t[:, :2], text, frame_offset=0, cache=cache)
        with pytest.raises(InvalidInputError, match="tokens per frame"):
            model(x[:, :, :2, :2], t[:, :2], text, frame_offset=4, cache=cache)
    with pytest.raises(InvalidInputError, match="inference"):
        model(x[:, :, :2], t[:, :2], text, frame_offset=4, cache=cache)
    assert isinstance(model.new_cache(), WanCache)


@torch.no_grad()
def test_pipeline_stream_with_fixed_cache(home):
    """`CausalWanDenoiser(fixed_cache=True)`: the pipeline's latents equal the default's."""
    from mdiff.provenance import Stamper
    from mdiff.video.pipeline.causal_wan import SELF_FORCING_SETTINGS, CausalWanDenoiser
    from mdiff.video.pipeline.video_pipeline import VideoPipeline
    from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
    from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                    latents_mean=[0.0] * 4, latents_std=[1.0] * 4))  # fmt: skip
    text = ShapesTextEncoder(ShapesTextEncoderConfig(dim=16, heads=2, depth=1))
    model = _model(CausalWanConfig(1, 3, 1))
    settings = {**SELF_FORCING_SETTINGS, "num_frames": 21, "height": 32, "width": 32}
    outs = []
    for fixed in (False, True):
        dit = CausalWanDenoiser(model, fixed_cache=fixed)
        pipe = VideoPipeline(vae, dit, text, stamper=Stamper(home=home), **settings)
        assert type(dit.new_cache()) is (WanRingCache if fixed else WanCache)
        outs.append(pipe("a red circle", seed=3, return_latents=True).latents)
    assert outs[0].shape[2] == 6  # 6 latent frames, window 3: eviction
    assert (outs[0] - outs[1]).abs().max().item() <= TOL
