"""Space-time DiT: streaming with a KV cache vs one masked forward, rolling window, RoPE, per-frame
t, AdaLN-Zero init, text conditioning, checkpoints and input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.nn import KVCache, axial_dims
from mdiff.video.dit.blocks import video_positions, visibility
from mdiff.video.dit.model import DiTConfig, SpaceTimeDiT

from .pipeline_fixtures import randomize

torch.set_num_threads(1)

B, C, S, TEXT_DIM, HW = 2, 4, 5, 16, 4
TOL = 1e-5


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def make(seed: int = 0, **overrides) -> SpaceTimeDiT:
    torch.manual_seed(seed)
    return randomize(SpaceTimeDiT(DiTConfig.preset("test", **overrides)), seed).eval()


def inputs(frames: int, seed: int = 0):
    """Clean latents, noise, text states and a text mask that pads the last tokens of row 1."""
    x1, x0 = randn(B, C, frames, HW, HW, seed=seed), randn(B, C, frames, HW, HW, seed=seed + 1)
    text = randn(B, S, TEXT_DIM, seed=seed + 2)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 3:] = False
    return x1, x0, text, mask


def stream(model, x1, x0, t, text, mask, on_commit=None):
    """Chunk by chunk: velocity of chunk j at per-frame t (B, T) (x_t from x0, x1) reading the
    cache of clean chunks < j; then the clean pass at t = 1 commits chunk j."""
    n, cache, out = model.config.chunk_frames, model.new_cache(), []
    for j in range(x1.shape[2] // n):
        sl = slice(j * n, (j + 1) * n)
        tj = t[:, sl]
        xt = (
            tj[:, None, :, None, None] * x1[:, :, sl]
            + (1 - tj[:, None, :, None, None]) * x0[:, :, sl]
        )
        out.append(model(xt, tj, text, mask, frame_offset=j * n, cache=cache))
        cache.discard()
        model(x1[:, :, sl], torch.ones_like(tj), text, mask, frame_offset=j * n, cache=cache)
        cache.commit()
        if on_commit is not None:
            on_commit(j, cache)
    return torch.cat(out, dim=2)


def teacher_forced(model, x1, x0, t, text, mask):
    """The same velocities without a cache: per chunk j one masked forward over
    [clean chunks < j ; x_t of chunk j], clean frames at t = 1."""
    n, out = model.config.chunk_frames, []
    for j in range(x1.shape[2] // n):
        end = (j + 1) * n
        tt = torch.cat([torch.ones(B, j * n), t[:, j * n : end]], dim=1)  # (B, end)
        a = tt[:, None, :, None, None]
        xt = a * x1[:, :, :end] + (1 - a) * x0[:, :, :end]
        out.append(model(xt, tt, text, mask)[:, :, j * n :])
    return torch.cat(out, dim=2)


def per_frame_t(frames: int, seed: int = 5):
    return torch.rand(B, frames, generator=torch.Generator().manual_seed(seed)) * 0.9


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize(
    "text_mode,patch", [("cross", (1, 2, 2)), ("joint", (1, 2, 2)), ("joint", (2, 2, 2))]
)
def test_cached_streaming_equals_one_masked_forward(text_mode, patch):
    model = make(text=text_mode, patch=patch, attention="block_causal", chunk_frames=2)
    x1, x0, text, mask = inputs(6)
    t = per_frame_t(6) if patch[0] == 1 else per_frame_t(3).repeat_interleave(2, dim=1)
    cached = stream(model, x1, x0, t, text, mask)
    ref = teacher_forced(model, x1, x0, t, text, mask)
    assert cached.abs().mean() > 1e-2
    assert (cached - ref).abs().max() <= TOL
    # the clean passes equal one block-causal forward over the clean clip (structured mask)
    cache, clean = model.new_cache(), model(x1, torch.ones(B), text, mask)
    for j in range(3):
        sl = slice(2 * j, 2 * j + 2)
        v = model(x1[:, :, sl], torch.ones(B), text, mask, frame_offset=2 * j, cache=cache)
        cache.commit()
        assert (v - clean[:, :, sl]).abs().max() <= TOL
    # the absolute frame offset matters: chunk 2 read at offset 0 is wrong
    cache = model.new_cache()
    model(x1[:, :, :4], torch.ones(B), text, mask, cache=cache)
    cache.commit()
    with pytest.raises(InvalidInputError, match="past the cached frames"):
        model(x1[:, :, 4:], torch.ones(B), text, mask, frame_offset=0, cache=cache)
    cache.discard()
    shifted = model(x1[:, :, 4:], torch.ones(B), text, mask, frame_offset=6, cache=cache)
    assert (shifted - clean[:, :, 4:]).abs().max() > 1e-3


def simulate_window(n_frames: int, chunk: int, window: int | None, sink: int):
    """Frames each chunk sees in the cache: a list kept as first `sink` + last `window − sink`."""
    cache, seen = [], []
    for start in range(0, n_frames, chunk):
        seen.append(list(cache))
        cache += list(range(start, min(start + chunk, n_frames)))
        if window is not None and len(cache) > window:
            cache = cache[:sink] + cache[len(cache) - (window - sink) :]
    return seen


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_visibility_rule_matches_a_simulated_rolling_cache(chunk):
    n = 10
    frames = torch.arange(n)
    for window in [None, 1, 2, 3, 4, 6]:
        for sink in range(0, min(2, window or 0) + 1):
            seen = simulate_window(n, chunk, window, sink)
            got = visibility(
                frames, frames, block_causal=True, chunk_frames=chunk, window=window, sink=sink
            )
            for q in range(n):
                own = range(q // chunk * chunk, (q // chunk + 1) * chunk)
                expected = [k in seen[q // chunk] or k in own for k in range(n)]
                assert got[q].tolist() == expected, (chunk, window, sink, q)
    text_and_video = torch.tensor([-1, -1, 0, 1, 2])
    got = visibility(text_and_video, text_and_video, block_causal=True, chunk_frames=1)
    assert got[:, :2].all() and not got[:2, 2:].any()  # video sees text; text sees no video
    bidir = visibility(text_and_video, text_and_video, block_causal=False, chunk_frames=1)
    assert bidir.all()


@pytest.mark.parametrize("text_mode", ["cross", "joint"])
def test_rolling_window_streaming_equals_windowed_forward(text_mode):
    model = make(text=text_mode, attention="block_causal", chunk_frames=2, window=3, sink_frames=1)
    x1, x0, text, mask = inputs(8)
    t = per_frame_t(8)
    expected = simulate_window(8, 2, 3, 1)[1:] + [None]
    held = []
    cached = stream(model, x1, x0, t, text, mask, on_commit=lambda j, c: held.append(c.frames))
    assert held[:3] == expected[:3] == [[0, 1], [0, 2, 3], [0, 4, 5]]
    assert (cached - teacher_forced(model, x1, x0, t, text, mask)).abs().max() <= TOL
    unbounded = make(text=text_mode, attention="block_causal", chunk_frames=2)
    unbounded.load_state_dict(model.state_dict())
    full = stream(unbounded, x1, x0, t, text, mask)
    assert (full[:, :, :4] - cached[:, :, :4]).abs().max() <= TOL  # window not yet full
    assert (full[:, :, 4:] - cached[:, :, 4:]).abs().max() > 1e-3  # frames evicted


@pytest.mark.parametrize("text_mode", ["cross", "joint"])
def test_a_batch_of_streams_equals_each_stream_alone(text_mode):
    """The sampler streams both CFG branches through one cache of batch 2, the shorter text
    padded: each row must equal its own stream with a batch-1 cache and unpadded text."""
    model = make(text=text_mode, attention="block_causal", chunk_frames=2, window=3, sink_frames=1)
    x1, x0, text, mask = inputs(6)
    t = per_frame_t(6)
    together = stream(model, x1, x0, t, text, mask)
    assert (together[0] - together[1]).abs().max() > 1e-2
    for r, length in enumerate(mask.sum(1).tolist()):
        rows = slice(r, r + 1)
        alone = stream(model, x1[rows], x0[rows], t[rows], text[rows, :length], mask[rows, :length])
        assert (alone - together[rows]).abs().max() <= TOL


def test_a_cache_projects_the_prompt_once_and_only_for_equal_text():
    """Cross mode: a cache keeps each layer's text keys and values (no-grad only) and reuses
    them only for text states equal to those they came from."""
    model = make(text="cross", attention="block_causal", chunk_frames=2)
    x1, x0, text, mask = inputs(4)
    other, t = randn(B, S, TEXT_DIM, seed=9), per_frame_t(4)
    with torch.no_grad():
        kept = stream(model, x1, x0, t, text, mask)
        assert (kept - teacher_forced(model, x1, x0, t, text, mask)).abs().max() <= TOL
        cache, x, tc = model.new_cache(), x1[:, :, :2], t[:, :2]

        def cached(states):
            v = model(x, tc, states, mask, cache=cache)
            cache.discard()
            return v

        a = cached(text)
        assert cache.text_kv(text) is not None and cache.text_kv(other) is None
        b = cached(other)
        assert (b - model(x, tc, other, mask)).abs().max() <= TOL
        assert (a - b).abs().max() > 1e-3
        other.add_(1.0)  # changed in place: the kept copy must not follow
        assert (cached(other) - model(x, tc, other, mask)).abs().max() <= TOL
    cache = model.new_cache()
    model(x, tc, text, mask, cache=cache)
    assert cache.text_kv(text) is None  # with autograd on, nothing is kept across calls


def test_one_layer_rolling_window_equals_forward_over_kept_frames():
    """With one layer cached keys depend on their own token only, so the window's result equals
    an unbounded model reading a cache built from the kept frames alone (explicit offsets)."""
    kw = dict(depth=1, attention="block_causal", chunk_frames=2)
    model = make(window=3, sink_frames=1, **kw)
    plain = make(**kw)
    plain.load_state_dict(model.state_dict())
    x1, x0, text, mask = inputs(8)
    t = per_frame_t(8)
    cached = stream(model, x1, x0, t, text, mask)
    cache, ones = plain.new_cache(), torch.ones(B)
    for start, end in [(0, 1), (4, 6)]:  # chunk 3 (frames 6, 7) keeps frames 0, 4, 5
        plain(x1[:, :, start:end], ones, text, mask, frame_offset=start, cache=cache)
        cache.commit()
    a = t[:, None, 6:, None, None]
    xt = a * x1[:, :, 6:] + (1 - a) * x0[:, :, 6:]
    ref = plain(xt, t[:, 6:], text, mask, frame_offset=6, cache=cache)
    assert (cached[:, :, 6:] - ref).abs().max() <= TOL


# ---------------------------------------------------------------- RoPE, time, init


def test_rope_split_and_frame_offset_rotate_time_only():
    assert DiTConfig(dim=256, heads=2).rope_dims == (44, 42, 42) == axial_dims(128)
    model = make()
    assert sum(model.rope.axes_dims) == model.config.head_dim == 16
    assert model.rope.axes_dims == (8, 4, 4)
    assert DiTConfig.preset("test", rope_axes=(4, 6, 6)).rope_dims == (4, 6, 6)
    for bad in [(4, 4, 4), (5, 5, 6), (8, 8)]:
        with pytest.raises(InvalidInputError, match="summing to the head dim"):
            DiTConfig.preset("test", rope_axes=bad)
    p0, p5 = video_positions((2, 3, 4), 0), video_positions((2, 3, 4), 5)
    assert torch.equal(p5[:, 0], p0[:, 0] + 5) and torch.equal(p5[:, 1:], p0[:, 1:])
    (c0, s0), (c5, s5) = model.rope.freqs(p0), model.rope.freqs(p5)  # (N, 8)
    n_t = model.rope.axes_dims[0] // 2
    assert torch.equal(c0[:, n_t:], c5[:, n_t:]) and torch.equal(s0[:, n_t:], s5[:, n_t:])
    assert not torch.allclose(c0[:, :n_t], c5[:, :n_t])
    # video-only attention is relative in time; joint text sits at position 0, so it is not
    x1, _, text, mask = inputs(2)
    for mode, same in [("cross", True), ("joint", False)]:
        m = make(text=mode)
        a, b = m(x1, torch.full((B,), 0.5), text, mask), m(x1, torch.full((B,), 0.5), text, mask, 7)
        assert ((a - b).abs().max() <= TOL) == same


def test_per_frame_t_changes_only_what_may_see_that_frame():
    x1, _, text, mask = inputs(6)
    t = per_frame_t(6)
    for attention in ["block_causal", "bidirectional"]:
        model = make(attention=attention, chunk_frames=2, text="joint")
        uniform = model(x1, torch.full((B, 6), 0.3), text, mask)
        assert (uniform - model(x1, torch.full((B,), 0.3), text, mask)).abs().max() <= TOL
        base = model(x1, t, text, mask)
        t2 = t.clone()
        t2[:, 3] += 0.5  # frame 3, chunk 1
        diff = (model(x1, t2, text, mask) - base).abs().amax(dim=(0, 1, 3, 4))  # (T,)
        if attention == "block_causal":
            assert diff[:2].max() <= 1e-6 and diff[2:].min() > 1e-4
        else:
            assert diff.min() > 1e-4


def test_fresh_model_outputs_zero_and_its_blocks_are_identity():
    torch.manual_seed(0)
    for mode in ["cross", "joint"]:
        model = SpaceTimeDiT(DiTConfig.preset("test", text=mode)).eval()
        x1, _, text, mask = inputs(2)
        t = per_frame_t(2)
        assert torch.equal(model(x1, t, text, mask), torch.zeros_like(x1))
        randomize(model.final, seed=3)  # blocks still zero-gated: output = head(patch tokens)
        cond = model.time_embed(t).repeat_interleave(4, dim=1)  # (B, N, D)
        tokens = model.patch_embed(x1)  # (B, N, D)
        head = model.final(tokens, cond).view(B, 2, 2, 2, 1, 2, 2, C)  # (B, T', H', W', p.., C)
        expected = head.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x1.shape)
        out = model(x1, t, text, mask)
        assert out.abs().max() > 1e-3 and (out - expected).abs().max() <= TOL


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("text_mode", ["cross", "joint"])
@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_text_conditions_and_padding_is_ignored(text_mode, attention):
    model = make(text=text_mode, attention=attention, chunk_frames=2)
    x1, _, text, mask = inputs(4)
    t = torch.full((B,), 0.4)
    out = model(x1, t, text, mask)
    padded = text.clone()
    padded[1, 3:] = randn(2, TEXT_DIM, seed=9) * 5  # masked-out tokens of row 1
    assert (model(x1, t, padded, mask) - out).abs().max() <= 1e-6
    assert (model(x1, t, padded) - out)[1].abs().max() > 1e-3  # without the mask they count
    real = text.clone()
    real[1, 0] += 1.0
    changed = (model(x1, t, real, mask) - out).abs().amax(dim=(1, 2, 3, 4))  # (B,)
    assert changed[0] == 0 and changed[1] > 1e-3


# ---------------------------------------------------------------- checkpoints, presets


def test_save_pretrained_round_trip(tmp_path):
    model = make(text="joint", attention="block_causal", chunk_frames=2, window=4, sink_frames=1)
    x1, _, text, mask = inputs(4)
    t = per_frame_t(4)
    model.save_pretrained(tmp_path / "dit")
    loaded = SpaceTimeDiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config
    assert torch.equal(loaded(x1, t, text, mask), model(x1, t, text, mask))


def test_presets():
    tiny = DiTConfig.preset("shapes-tiny")
    n = sum(p.numel() for p in SpaceTimeDiT(tiny).parameters())
    assert 2e6 <= n <= 6e6 and 192 <= tiny.dim <= 256 and 6 <= tiny.depth <= 8
    assert tiny.in_channels == 16 and tiny.patch == (1, 2, 2)
    stream_cfg = DiTConfig.preset("shapes-tiny-stream")
    assert stream_cfg.attention == "block_causal" and stream_cfg.window is not None
    with pytest.raises(InvalidInputError, match="unknown preset"):
        DiTConfig.preset("nope")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change,rule",
    [
        (dict(x=(B, 3, 2, 4, 4)), "in_channels=4"),
        (dict(x=(B, C, 2, 5, 4)), "height H=5 must be a positive multiple of the patch size 2"),
        (dict(x=(B, C, 2, 4, 6), patch=(1, 2, 4)), "width W=6 .* patch size 4"),
        (dict(x=(B, C, 3, 4, 4), patch=(2, 2, 2)), "frames T=3 .* patch size 2"),
        (dict(x=(B, C, 2, 32, 32)), "exceeds max_size"),
        (dict(x=(B, C, 40, 4, 4)), "exceed max_frames"),
        (dict(text=(B, S, 12)), "text dim mismatch.*text_dim=16"),
        (dict(t=(B, 3)), r"t must be \(B,\)"),
        (dict(mask=(B, S + 1)), "text_mask must be"),
        (dict(offset=-1), "frame_offset must be"),
    ],
)
def test_bad_inputs_raise(change, rule):
    model = make(patch=change.get("patch", (1, 2, 2)), max_frames=32)
    x = randn(*change.get("x", (B, C, 2, 4, 4)))
    t = torch.rand(*change.get("t", (B,)))
    text = randn(*change.get("text", (B, S, TEXT_DIM)))
    mask = torch.ones(*change.get("mask", (B, S)), dtype=torch.bool)
    with pytest.raises(InvalidInputError, match=rule):
        model(x, t, text, mask, frame_offset=change.get("offset", 0))


def test_bad_configs_and_cache_misuse_raise():
    for bad, rule in [
        (dict(text="both"), "text must be one of"),
        (dict(attention="causal"), "attention must be one of"),
        (dict(dim=30, heads=4), "even integer"),
        (dict(window=4), "needs attention='block_causal'"),
        (dict(attention="block_causal", window=2, sink_frames=3), "sink_frames <= window"),
        (dict(sink_frames=1), "needs a window"),
        (dict(patch=(2, 2, 2), attention="block_causal", chunk_frames=3), "temporal patch"),
    ]:
        with pytest.raises(InvalidInputError, match=rule):
            DiTConfig.preset("test", **bad)
    model = make(attention="block_causal", chunk_frames=2, patch=(2, 2, 2))
    x1, _, text, mask = inputs(4)
    with pytest.raises(InvalidInputError, match="equal within each temporal patch"):
        model(x1, per_frame_t(4), text, mask)
    with pytest.raises(InvalidInputError, match="DiTCache from model.new_cache"):
        model(x1, torch.ones(B), text, mask, cache=KVCache(2))
    cache = model.new_cache()
    model(x1[:, :, :2], torch.ones(B), text, mask, cache=cache)
    with pytest.raises(InvalidInputError, match="commit\\(\\) or discard\\(\\)"):
        model(x1[:, :, :2], torch.ones(B), text, mask, cache=cache)
    cache.commit()
    with pytest.raises(InvalidInputError, match="latent height and width"):
        model(randn(B, C, 2, 8, 8), torch.ones(B), text, mask, frame_offset=2, cache=cache)
    other = dataclasses.replace(model.config, window=4, sink_frames=2)
    with pytest.raises(InvalidInputError, match="does not match the model"):
        model(x1[:, :, 2:], torch.ones(B), text, mask, 2, SpaceTimeDiT(other).new_cache())
