"""The adjacent attention sink: past the rolling window the sink's keys are re-rotated to sit
just before the oldest window frame, so every chunk sees the relative positions of training."""

from __future__ import annotations

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.video.dit.model import DiTConfig

from .test_dit import TOL, B, inputs, make, per_frame_t, stream

WINDOW, SINK, CHUNK = 4, 2, 2


def adjacent_and_plain(**kw):
    """A windowed model with an adjacent sink, the same with an absolute sink, and the same
    weights with no window (reads whatever cache it is given)."""
    kw = dict(attention="block_causal", chunk_frames=CHUNK, **kw)
    model = make(window=WINDOW, sink_frames=SINK, sink_position="adjacent", **kw)
    absolute, plain = make(window=WINDOW, sink_frames=SINK, **kw), make(**kw)
    absolute.load_state_dict(model.state_dict())
    plain.load_state_dict(model.state_dict())
    return model, absolute, plain


@pytest.mark.parametrize("text_mode", ["cross", "joint"])
def test_adjacent_sink_sits_just_before_the_window(text_mode):
    """One layer: cached keys depend on their own token and position only, so a chunk at start
    s past the window equals an unbounded model reading the sink at s − window and the window
    frames at their own positions; before that nothing moves."""
    model, absolute, plain = adjacent_and_plain(depth=1, text=text_mode)
    x1, x0, text, mask = inputs(12)
    t = per_frame_t(12)
    with torch.no_grad():
        got = stream(model, x1, x0, t, text, mask)
        fixed = stream(absolute, x1, x0, t, text, mask)
        assert torch.equal(got[:, :, : WINDOW + CHUNK], fixed[:, :, : WINDOW + CHUNK])
        assert (got[:, :, -CHUNK:] - fixed[:, :, -CHUNK:]).abs().max() > 1e-4
        for s in range(WINDOW + CHUNK, 12, CHUNK):
            kept = s - (WINDOW - SINK)  # first window frame
            cache = plain.new_cache()
            for start, end, at in [(0, SINK, s - WINDOW), (kept, s, kept)]:
                plain(x1[:, :, start:end], torch.ones(B), text, mask, frame_offset=at, cache=cache)
                cache.commit()
            a = t[:, None, s : s + CHUNK, None, None]
            xt = a * x1[:, :, s : s + CHUNK] + (1 - a) * x0[:, :, s : s + CHUNK]
            ref = plain(xt, t[:, s : s + CHUNK], text, mask, frame_offset=s, cache=cache)
            assert (got[:, :, s : s + CHUNK] - ref).abs().max() <= TOL, s


def test_sink_rotation_starts_from_the_committed_keys_every_time():
    """Moving the sink step by step lands exactly where one move lands (no accumulated
    rounding), and moving it back to 0 restores the committed keys bit for bit."""
    model, _, _ = adjacent_and_plain()
    x1, x0, text, mask = inputs(4)
    cache = model.new_cache()
    with torch.no_grad():
        model(x1, torch.ones(B), text, mask, cache=cache)
    cache.commit()
    committed = [cache.kv.read(i)[0].clone() for i in range(cache.n_layers)]
    stepwise = cache.clone()
    for shift in range(1, 40):
        stepwise.place_sink(shift, model.rope)
    cache.place_sink(39, model.rope)
    for i in range(cache.n_layers):
        moved, once = stepwise.kv.read(i)[0], cache.kv.read(i)[0]
        assert torch.equal(moved, once)
        assert torch.equal(moved[:, :, SINK * 4 :], committed[i][:, :, SINK * 4 :])  # 4 = 2 × 2
        assert (moved[:, :, : SINK * 4] - committed[i][:, :, : SINK * 4]).abs().max() > 1e-3
    cache.place_sink(0, model.rope)
    assert all(torch.equal(cache.kv.read(i)[0], committed[i]) for i in range(cache.n_layers))


def test_one_forward_may_not_span_two_sink_positions():
    model, absolute, _ = adjacent_and_plain()
    x1, _, text, mask = inputs(12)
    ones = torch.ones(B)
    model(x1[:, :, : WINDOW + CHUNK], ones, text, mask)  # chunk starts 0 … window: shift 0
    absolute(x1, ones, text, mask)  # an absolute sink has no such limit
    with pytest.raises(InvalidInputError, match="one chunk per forward"):
        model(x1, ones, text, mask)
    cache = model.new_cache()
    model(x1[:, :, :6], ones, text, mask, cache=cache)
    cache.commit()
    with pytest.raises(InvalidInputError, match="different positions"):
        model(x1[:, :, 6:10], ones, text, mask, frame_offset=6, cache=cache)
    model(x1[:, :, 6:8], ones, text, mask, frame_offset=6, cache=cache)
    assert cache.sink_shift == 2
    with pytest.raises(InvalidInputError, match="sink_position must be one of"):
        DiTConfig.preset("test", sink_position="relative")
