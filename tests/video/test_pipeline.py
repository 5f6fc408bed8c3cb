"""Video pipeline: stream == offline exactly (and == an uncached reference), seeds, guidance,
image-to-video and extension anchors, input rules, save/load and records."""

# ruff: noqa: F811
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mdiff import media
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.provenance import Stamped, verify
from mdiff.record import GenerationRecord, sha256_text
from mdiff.time import shifted_grid
from mdiff.video.io import frames_to_pixels
from mdiff.video.pipeline.sampling import chunk_generator
from mdiff.video.pipeline.video_pipeline import PIPELINE_FILE, VideoPipeline

# Fixtures come from the shared helper module (imported by name, so ruff sees redefinitions).
from .pipeline_fixtures import (  # noqa: F401
    PROMPT,
    SIZE,
    bidirectional,
    causal,
    make_pipeline,
    pipe_dir,
    stamper,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- streaming


def test_stream_concatenated_equals_offline_exactly_and_arrives_chunk_by_chunk(causal):
    events = []
    chunks = []
    for chunk in causal.stream(PROMPT, seed=3, callback=lambda p: events.append(("step", p.chunk))):
        events.append(("chunk", chunk.index))
        chunks.append(chunk)
    offline = causal(PROMPT, seed=3)
    assert torch.equal(torch.cat([c.frames for c in chunks]), offline.frames)
    assert offline.frames.shape == (17, SIZE, SIZE, 3) and offline.frames.dtype == torch.uint8
    # 5 latent frames in chunks of 2: 1 + 4, 4 + 4, 4 frames
    assert [(c.start_frame, c.end_frame) for c in chunks] == [(0, 5), (5, 13), (13, 17)]
    assert all(c.record == offline.record for c in chunks)
    # each chunk is yielded before the next one is denoised (3 steps per chunk)
    expected = [e for j in range(3) for e in [("step", j)] * 3 + [("chunk", j)]]
    assert events == expected
    assert set(chunks[0].timings) >= {"denoise", "decode", "watermark", "since_start"}


def guided_velocity(method: str, w: float, c, u, x, t: float):
    """The core's guidance rules written out for one sample (B = 1): CFG ``u + w(c − u)``;
    CFG-Zero* ``s·u + w(c − s·u)``, ``s = ⟨c, u⟩/‖u‖²``; APG (η = 0) in data space on the CondOT
    path, ``x1 = x + (1 − t)v``: ``x1_c + (w − 1)(Δ − ⟨Δ, x1_c⟩/‖x1_c‖²·x1_c)``, back to v."""
    if method == "cfg":
        return u + w * (c - u)
    if method == "cfg_zero_star":
        su = (c * u).sum() / (u * u).sum() * u
        return su + w * (c - su)
    c1, u1 = x + (1 - t) * c, x + (1 - t) * u
    delta = c1 - u1
    g1 = c1 + (w - 1) * (delta - (delta * c1).sum() / (c1 * c1).sum() * c1)
    return (g1 - x) / (1 - t)


@torch.no_grad()
def reference_latents(pipe: VideoPipeline, prompt: str, seed: int, frames: int,
                      method: str = "cfg") -> torch.Tensor:  # fmt: skip
    """The block-causal sampler without a KV cache: chunk j is denoised by full forwards over
    [chunks < j at t = 1 − σ ; chunk j at t] (the block-causal mask keeps earlier frames from
    seeing later ones, which is what the cache computes), guidance written out, Euler steps.
    With σ = context_noise > 0 the earlier chunks are seen as σ·ε + (1 − σ)·x, ε of the chunk's
    "context" generator; σ = 0: clean."""
    s, dit = pipe.settings, pipe.dit
    sigma = s.context_noise
    text, mask = pipe.text_encoder.encode([prompt])
    null, null_mask = pipe.text_encoder.null(1)
    grid = shifted_grid(s.steps, s.shift, dtype=torch.float64).tolist()
    n, chunk = pipe.vae.latent_frames(frames), dit.config.chunk_frames
    done, seen = torch.zeros(1, 4, 0, 4, 4), torch.zeros(1, 4, 0, 4, 4)
    for j, a in enumerate(range(0, n, chunk)):
        b = min(a + chunk, n)
        x = torch.randn(1, 4, b - a, 4, 4, generator=chunk_generator(seed, j))
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            xs = torch.cat([seen, x], dim=2)
            ts = torch.cat([torch.full((1, a), 1 - sigma), torch.full((1, b - a), t)], dim=1)
            c = dit(xs, ts, text, mask)[:, :, a:]
            u = dit(xs, ts, null, null_mask)[:, :, a:]
            x = x + (t_next - t) * guided_velocity(method, s.guidance, c, u, x, t)
        done = torch.cat([done, x], dim=2)
        eps = torch.randn(x.shape, generator=chunk_generator(seed, j, "context"))
        seen = torch.cat([seen, (1 - sigma) * x + sigma * eps if sigma else x], dim=2)
    return done


@pytest.mark.parametrize("text", ["cross", "joint"])  # joint: the prompt lives in the cache
def test_cached_chunked_sampling_matches_the_uncached_reference(stamper, text):
    pipe = make_pipeline(stamper, causal=True, dit={"text": text})
    out = pipe(PROMPT, seed=8, return_latents=True)
    ref = reference_latents(pipe, PROMPT, 8, 17)
    assert out.latents.shape == ref.shape == (1, 4, 5, 4, 4)
    assert torch.allclose(out.latents, ref, atol=1e-4, rtol=1e-4)


METHODS = ["cfg", "cfg_zero_star", "apg"]


@pytest.mark.parametrize("method", METHODS)
def test_guidance_method_by_name_follows_the_core_rule(stamper, causal, method):
    """Per call or in the settings, the named method is applied, and no other."""
    out = causal(PROMPT, seed=8, guidance_method=method, return_latents=True)
    for name in METHODS:
        ref = reference_latents(causal, PROMPT, 8, 17, name)
        assert torch.allclose(out.latents, ref, atol=1e-4, rtol=1e-4) == (name == method), name
    assert out.record.guidance == {"kind": method, "scale": 3.0}
    pipe = make_pipeline(stamper, causal=True, guidance_method=method)
    assert torch.equal(pipe(PROMPT, seed=8, return_latents=True).latents, out.latents)
    assert torch.equal(torch.cat([c.frames for c in pipe.stream(PROMPT, seed=8)]),
                       pipe(PROMPT, seed=8).frames)  # fmt: skip
    with pytest.raises(InvalidInputError, match="guidance_method must be one of"):
        causal(PROMPT, guidance_method="pag")
    with pytest.raises(InvalidInputError, match="guidance_method must be one of"):
        make_pipeline(stamper, causal=True, guidance_method="CFG")


@pytest.mark.parametrize("method", ["cfg_zero_star", "apg"])
def test_every_guidance_method_keeps_the_image_anchor(causal, method):
    image = torch.full((SIZE, SIZE, 3), 90, dtype=torch.uint8)
    out = causal(PROMPT, num_frames=9, image=image, guidance_method=method, return_latents=True)
    with torch.no_grad():
        anchor = causal.vae.encode(frames_to_pixels(image[None])[None])
    assert torch.equal(out.latents[:, :, :1], anchor)


def test_context_noise_matches_the_reference_and_keeps_stream_equal_offline(stamper, causal):
    pipe = make_pipeline(stamper, causal=True, context_noise=0.3)
    out = pipe(PROMPT, seed=8, return_latents=True)
    ref = reference_latents(pipe, PROMPT, 8, 17)
    assert torch.allclose(out.latents, ref, atol=1e-4, rtol=1e-4)
    clean = causal(PROMPT, seed=8, return_latents=True).latents  # same weights, σ = 0
    assert torch.equal(out.latents[:, :, :2], clean[:, :, :2])  # the first chunk reads nothing
    assert (out.latents[:, :, 2:] - clean[:, :, 2:]).abs().max() > 1e-3  # later chunks do
    streamed = torch.cat([c.frames for c in pipe.stream(PROMPT, seed=8)])
    assert torch.equal(streamed, pipe(PROMPT, seed=8).frames)
    assert out.record.extra["context_noise"] == 0.3
    for bad in (-0.1, 1.0, "0.2", True):
        with pytest.raises(InvalidInputError, match="context_noise must be a number in"):
            make_pipeline(stamper, causal=True, context_noise=bad)


def test_stream_needs_a_block_causal_dit(bidirectional):
    with pytest.raises(InvalidInputError, match="block-causal"):
        bidirectional.stream(PROMPT)


@pytest.mark.parametrize("layout", ["causal", "bidirectional"])
def test_same_seed_same_frames_other_seed_other_frames(layout, request):
    pipe = request.getfixturevalue(layout)
    a, b, c = (pipe(PROMPT, num_frames=9, seed=s).frames for s in (5, 5, 6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    x, y = (pipe(PROMPT, num_frames=1, generator=torch.Generator().manual_seed(1)) for _ in "ab")
    assert x.record.seed == y.record.seed and torch.equal(x.frames, y.frames)  # seed drawn


def test_guidance_and_negative_prompt_change_the_output(causal):
    base = causal(PROMPT, num_frames=5, seed=0).frames
    assert not torch.equal(base, causal(PROMPT, num_frames=5, seed=0, guidance=1.0).frames)
    negative = causal(PROMPT, num_frames=5, seed=0, negative_prompt="a blue square")
    assert not torch.equal(base, negative.frames)
    assert negative.record.guidance["negative_prompt"] is True  # given, its text not published
    assert sha256_text("a blue square") not in json.dumps(negative.record.to_dict())


# ---------------------------------------------------------------- image-to-video, extension


@pytest.mark.parametrize("layout", ["causal", "bidirectional"])
def test_image_to_video_keeps_the_first_latent_frame_exactly(layout, request, tmp_path):
    pipe = request.getfixturevalue(layout)
    image = torch.randint(0, 256, (SIZE, SIZE, 3), generator=torch.Generator().manual_seed(4),
                          dtype=torch.uint8)  # fmt: skip
    path = media.write_image(image, tmp_path / "first.png")
    out = pipe(PROMPT, num_frames=9, image=path, seed=1, return_latents=True)
    with torch.no_grad():
        anchor = pipe.vae.encode(frames_to_pixels(image[None])[None])  # (1, C, 1, h, w)
    assert out.latents.shape == (1, 4, 3, 4, 4)
    assert torch.equal(out.latents[:, :, :1], anchor)
    assert out.record.edited and out.record.inputs == (str(path),)
    plain = pipe(PROMPT, num_frames=9, seed=1, return_latents=True)
    assert not torch.equal(plain.latents[:, :, :1], anchor)


@pytest.mark.parametrize("solver", ["midpoint", "heun"])
def test_second_order_solvers_with_auto_shift_keep_the_anchor(stamper, solver):
    pipe = make_pipeline(stamper, causal=True, solver=solver, shift="auto", steps=2)
    image = torch.full((SIZE, SIZE, 3), 200, dtype=torch.uint8)
    out = pipe(PROMPT, num_frames=9, image=image, return_latents=True)
    with torch.no_grad():
        anchor = pipe.vae.encode(frames_to_pixels(image[None])[None])
    assert torch.equal(out.latents[:, :, :1], anchor)
    assert out.record.extra["shift"] == "auto" and out.record.sampler.endswith(solver)
    assert out.record.inputs == () and out.record.extra["conditioning"]["kind"] == "image"


def test_extend_prefills_the_clip_and_returns_only_new_frames(causal):
    clip = causal(PROMPT, num_frames=17, seed=2).frames  # 5 latent frames: 2 chunks + 1 frame
    out = causal.extend(clip, "the circle keeps moving", num_frames=8, seed=2,
                        return_latents=True)  # fmt: skip
    with torch.no_grad():
        given = causal.vae.encode(frames_to_pixels(clip)[None])
    assert out.frames.shape == (8, SIZE, SIZE, 3)
    assert out.latents.shape[2] == 7 and torch.equal(out.latents[:, :, :5], given)
    assert out.record.edited and out.record.sizes["frames"] == 8
    streamed = list(causal.stream("the circle keeps moving", 8, prefix=clip, seed=2))
    assert torch.equal(torch.cat([c.frames for c in streamed]), out.frames)
    assert streamed[0].start_frame == 0


# ---------------------------------------------------------------- input rules


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        (dict(num_frames=10), r"num_frames must be 1 \+ 4k"),
        (dict(num_frames=0), r"num_frames must be 1 \+ 4k"),
        (dict(height=40), "height must be a positive multiple of 16"),
        (dict(width=16), "width must be at least 32"),
        (dict(height=512), "exceeds the DiT's largest frame"),
        (dict(prompt=[]), "empty list"),
        (dict(prompt=" "), "prompt is empty"),
        (dict(prompt=["a", "b"]), "one prompt per call"),
        (dict(steps=-1), r"steps must be an integer in \[1, 1000\]"),
        (dict(guidance=-2.0), r"guidance must be a number in \[0, 100\]"),
        (dict(seed=-1), "seed must be an int"),
        (dict(image="no/such/first.png"), "image file not found"),
        (dict(image=torch.zeros(64, 64, 3, dtype=torch.uint8), height=32), "resize it"),
        (dict(image=torch.zeros(32, 32, 3)), "uint8"),
        (dict(prefix=torch.zeros(9, 32, 32, 3, dtype=torch.uint8), num_frames=5),
         "positive multiple of 4"),
        (dict(prefix=torch.zeros(8, 32, 32, 3, dtype=torch.uint8), num_frames=4),
         r"prefix clip must have 1 \+ 4k frames"),
        (dict(prefix=torch.zeros(5, 32, 32, 3, dtype=torch.uint8),
              image=torch.zeros(32, 32, 3, dtype=torch.uint8)), "not both"),
        (dict(num_frames=4 * 70 + 1), "max_frames"),  # 71 latent frames > 64
        (dict(guidence=2.0), r"unknown argument\(s\) guidence; the pipeline takes steps, guidance"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_naming_the_rule(causal, kwargs, rule):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(InvalidInputError, match=rule):
        causal(**kwargs)
    with pytest.raises(InvalidInputError, match=rule):
        causal.stream(**kwargs)  # checked at the call, before the first chunk


def test_long_clips_decode_re_anchored(causal, monkeypatch, tmp_path):
    from mdiff.video.io import pixels_to_frames
    from mdiff.video.vae.model import CausalVAE

    folder = causal.vae.save_pretrained(tmp_path / "vae")
    assert CausalVAE.from_pretrained(folder).trained_frames is None  # config.json says unknown
    (folder / "training_log.json").write_text(json.dumps({"data": {"frames": 9}}))
    assert CausalVAE.from_pretrained(folder).trained_frames is None  # a log is provenance only
    config = json.loads((folder / "config.json").read_text())
    del config["trained_frames"]  # the old layout: the length only in the training log
    (folder / "config.json").write_text(json.dumps(config))
    assert CausalVAE.from_pretrained(folder).trained_frames == 9
    (folder / "training_log.json").write_text("{not json")
    assert CausalVAE.from_pretrained(folder).trained_frames is None
    assert CausalVAE.from_pretrained("shapes-vae").trained_frames == 17

    monkeypatch.setattr(causal.vae, "trained_frames", 9)  # re-anchor from latent 3 on
    out = causal(PROMPT, num_frames=21, seed=3, return_latents=True)
    streamed = torch.cat([c.frames for c in causal.stream(PROMPT, num_frames=21, seed=3)])
    assert torch.equal(streamed, out.frames)
    with torch.no_grad():
        decoded = [causal.vae.decode(out.latents, reanchor=r)[0] for r in (True, False)]
    anchored, plain = map(pixels_to_frames, decoded)

    def gap(a, b):
        return (a[9:].float() - b[9:].float()).abs().mean()

    assert gap(out.frames, anchored) * 4 < gap(out.frames, plain)  # only the watermark apart


def test_bad_settings_and_output_paths(stamper, causal, tmp_path):
    with pytest.raises(InvalidInputError, match="unknown solver"):
        make_pipeline(stamper, causal=True, solver="rk4")
    with pytest.raises(InvalidInputError, match="shift"):
        make_pipeline(stamper, causal=True, shift=0)
    with pytest.raises(InvalidInputError, match=".mp4"):
        causal.stream_to(tmp_path / "live.gif", PROMPT)
    with pytest.raises(InvalidInputError, match="folder does not exist"):
        causal.stream_to(tmp_path / "missing" / "live.mp4", PROMPT)


# ---------------------------------------------------------------- checkpoints and records


def test_save_load_round_trip_gives_the_same_output(causal, pipe_dir, stamper):
    spec = json.loads((pipe_dir / PIPELINE_FILE).read_text())
    assert spec["format"] == "mdiff-video-pipeline/1"
    assert spec["components"]["dit"] == {"class": "SpaceTimeDiT", "path": "dit"}
    assert spec["settings"]["steps"] == 3
    loaded = VideoPipeline.from_pretrained(pipe_dir, stamper=stamper)
    assert loaded.settings == causal.settings and loaded.causal
    assert loaded.weights_sha256 == causal.weights_sha256
    a = causal(PROMPT, num_frames=9, seed=7, return_latents=True)
    b = loaded(PROMPT, num_frames=9, seed=7, return_latents=True)
    assert torch.equal(a.latents, b.latents)
    assert b.record.model_id == str(pipe_dir)
    loaded.model_id = causal.model_id  # the watermark payload hashes the record, model id too
    assert torch.equal(a.frames, loaded(PROMPT, num_frames=9, seed=7).frames)


def test_pipeline_json_may_carry_more_keys_but_not_another_format(pipe_dir, tmp_path, stamper):
    copy = shutil.copytree(pipe_dir, tmp_path / "copy")
    spec = json.loads((copy / PIPELINE_FILE).read_text())
    spec.update(vae="vae", dit="dit", chunking={"chunk_frames": 2}, text_encoder_class="x")
    (copy / PIPELINE_FILE).write_text(json.dumps(spec))
    assert VideoPipeline.from_pretrained(copy, stamper=stamper).causal
    (copy / PIPELINE_FILE).write_text(json.dumps({**spec, "format": "mdiff-video-pipeline/9"}))
    with pytest.raises(CheckpointError, match="format"):
        VideoPipeline.from_pretrained(copy)


def test_loading_errors_are_checkpoint_errors(tmp_path, pipe_dir, monkeypatch):
    from mdiff import hub

    monkeypatch.setattr(hub, "BUILTIN_PACKAGES", ())  # as if nothing were installed
    with pytest.raises(CheckpointError, match="shapes-t2v"):
        VideoPipeline.from_pretrained("shapes-t2v")
    with pytest.raises(CheckpointError, match=PIPELINE_FILE):
        VideoPipeline.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    spec = json.loads((pipe_dir / PIPELINE_FILE).read_text())
    spec["components"]["vae"]["path"] = "../elsewhere"
    (bad / PIPELINE_FILE).write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="subfolder"):
        VideoPipeline.from_pretrained(bad)


def test_record_describes_the_generation(causal):
    out = causal(PROMPT, num_frames=9, seed=11, steps=2)
    r = out.record
    assert (r.modality, r.model_id, r.steps, r.seed) == ("video", "tiny-test", 2, 11)
    assert r.weights_sha256 == causal.weights_sha256 and len(r.weights_sha256) == 64
    assert r.sampler == "mdiff.video/flow-matching/euler"
    assert r.guidance == {"kind": "cfg", "scale": 3.0}
    assert r.sizes == {"width": SIZE, "height": SIZE, "frames": 9, "fps": 8.0}
    assert r.prompt_sha256 is None and r.prompt is None  # the prompt is committed, keyed
    assert r.prompt_commitment["scheme"] == "mdiff-prompt-hmac-v1"
    assert sha256_text(PROMPT) not in json.dumps(r.to_dict())
    assert r.inputs == () and not r.edited and r.watermark is not None
    assert out.fps == 8.0


def test_one_frame_is_an_image_saved_as_signed_png(causal, home, tmp_path):
    out = causal(PROMPT, num_frames=1, seed=0)
    assert out.frames.shape == (1, SIZE, SIZE, 3)
    assert out.record.modality == "image" and out.record.sizes == {"width": SIZE, "height": SIZE}
    path = out.save(tmp_path / "x.png")
    assert verify(path, home=home).manifest.state == "trusted"


def test_stamper_join_takes_only_stamped_parts_of_one_record(stamper):
    frames = torch.full((2, SIZE, SIZE, 3), 128, dtype=torch.uint8)
    one = GenerationRecord.create("video", "m", seed=1)
    a, b = stamper.frames(frames, one), stamper.frames(frames, one)
    assert torch.equal(stamper.join([a, b]).frames, torch.cat([a.frames, b.frames]))
    with pytest.raises(InvalidInputError, match="one record"):
        stamper.join([a, stamper.frames(frames, GenerationRecord.create("video", "m", seed=2))])
    with pytest.raises(InvalidInputError, match="at least one"):
        stamper.join([])
    with pytest.raises(InvalidInputError, match="Stamper.frames"):
        stamper.join([Stamped(one, frames=frames)])
