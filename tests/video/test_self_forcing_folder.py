"""One command from a Self-Forcing checkpoint to a runnable pipeline folder:

    mdiff convert sf.pt OUT --self-forcing --base WAN_T2V_DIFFUSERS_DIR

on a diffusers `WanPipeline` folder of tiny random components (diffusers' own
`save_pretrained`) and a `.pt` in Self-Forcing's layout (`torch.save` of {"generator",
"generator_ema", "critic"}: plain tensors, ``model.`` + original Wan names). The oracle is the
pipeline assembled by hand in Python from the same parts: the folder's stream equals it chunk
for chunk (exactly), with the Self-Forcing settings by default and provenance on the output."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mdiff import cli
from mdiff.errors import CheckpointError
from mdiff.provenance import Stamper, verify
from mdiff.video.dit.wan import WanTransformer
from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer
from mdiff.video.dit.wan_keys import from_original, to_original
from mdiff.video.pipeline import VideoPipeline
from mdiff.video.pipeline.causal_wan import (
    CAUSAL_CONFIG,
    SELF_FORCING_SETTINGS,
    CausalWanDenoiser,
)
from mdiff.video.text_encoders.wan_t5 import WanT5Encoder
from mdiff.video.vae.model import CausalVAE

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from tests.video.test_wan_pipeline import FLOW, PROMPT, wan_pipeline  # noqa: E402

torch.set_num_threads(1)
SIZE, FRAMES = 32, 17  # 5 latent frames of 4 × 4: blocks of 3 + 2


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(base folder, Self-Forcing .pt, the generator_ema state dict as saved)."""
    root = tmp_path_factory.mktemp("sf")
    pipe = wan_pipeline(diffusers.UniPCMultistepScheduler(flow_shift=3.0, **FLOW))
    pipe.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(7)
    ours = {k: torch.randn(v.shape, generator=g) * 0.3
            for k, v in pipe.transformer.state_dict().items()}  # fmt: skip
    ema = {f"model.{k}": v for k, v in to_original(ours).items()}
    ckpt = {"generator": {k: torch.zeros_like(v) for k, v in ema.items()}, "generator_ema": ema,
            "critic": {"model.head.head.weight": torch.ones(2, 2)}}  # fmt: skip
    torch.save(ckpt, root / "self_forcing_dmd.pt")
    return root / "base", root / "self_forcing_dmd.pt", ema


@pytest.fixture(scope="module")
def folder(made, tmp_path_factory):
    """The one command's output folder."""
    base, pt, _ = made
    out = tmp_path_factory.mktemp("out") / "sf-pipeline"
    args = ["--threads", "1", "convert", str(pt), str(out), "--self-forcing", "--base", str(base)]
    assert cli.main(args) == 0
    return out


@pytest.fixture(scope="module")
def stamper(home):
    return Stamper(home=home)


def by_hand(made, stamper, model_id):
    """The same pipeline assembled in Python from the checkpoint dict and the base's parts."""
    base, _, ema = made
    wan = WanTransformer.from_pretrained(base / "transformer")
    wan.load_state_dict(from_original({k.removeprefix("model."): v for k, v in ema.items()}))
    dit = CausalWanDenoiser(CausalWanTransformer.from_wan(wan, CausalWanConfig(3, -1, 0)))
    text = WanT5Encoder(
        transformers.UMT5EncoderModel.from_pretrained(base / "text_encoder"),
        transformers.AutoTokenizer.from_pretrained(base / "tokenizer"),
    )
    vae = CausalVAE.from_pretrained(base / "vae")
    settings = dict(SELF_FORCING_SETTINGS, num_frames=81, height=480, width=832)
    return VideoPipeline(vae, dit.eval(), text.eval(), model_id=model_id, stamper=stamper,
                         **settings)  # fmt: skip


def test_the_folder_holds_the_parts(made, folder):
    base = made[0]
    spec = json.loads((folder / "pipeline.json").read_text())
    classes = {k: v["class"] for k, v in spec["components"].items()}
    assert classes == {"vae": "CausalVAE", "dit": "CausalWanDenoiser",
                       "text_encoder": "WanT5Encoder"}  # fmt: skip
    assert spec["chunking"] == {"chunk_frames": 3} and spec["settings"]["solver"] == "renoise"
    causal = json.loads((folder / "dit" / CAUSAL_CONFIG).read_text())
    assert causal == {"num_frame_per_block": 3, "local_attn_size": -1, "sink_size": 0,
                      "denoising_step_list": [1000, 750, 500, 250], "timestep_shift": 5.0,
                      "warp_denoising_step": True}  # fmt: skip
    assert spec["converted_from"]["key"] == "generator_ema"
    # the base's VAE and text encoder files are hard links, not second copies
    for mine, theirs in [("vae/diffusion_pytorch_model.safetensors", "vae/"),
                         ("text_encoder/model.safetensors", "text_encoder/"),
                         ("text_encoder/tokenizer/tokenizer.json", "tokenizer/")]:  # fmt: skip
        src = base / theirs / os.path.basename(mine)
        assert os.path.samefile(folder / mine, src) and os.stat(src).st_nlink >= 2


def test_stream_equals_the_pipeline_assembled_by_hand(made, folder, stamper):
    pipe = VideoPipeline.from_pretrained(folder, stamper=stamper)
    assert pipe.causal and isinstance(pipe.text_encoder, WanT5Encoder)
    s = pipe.settings
    assert (s.steps, s.solver, s.guidance, s.shift, s.context_noise) == (4, "renoise", 1.0, 5.0,
                                                                         0.0)  # fmt: skip
    assert (s.num_frames, s.height, s.width, s.fps) == (81, 480, 832, 16.0)
    hand = by_hand(made, stamper, pipe.model_id)
    assert hand.weights_sha256 == pipe.weights_sha256
    ours = list(pipe.stream(PROMPT, FRAMES, SIZE, SIZE, seed=3))
    ref = list(hand.stream(PROMPT, FRAMES, SIZE, SIZE, seed=3))
    assert [(c.start_frame, c.end_frame) for c in ours] == [(0, 9), (9, 17)]
    assert [(c.start_frame, c.end_frame) for c in ref] == [(0, 9), (9, 17)]
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.frames, b.frames)
        assert a.record == b.record and a.record.watermark is not None
    # the converted weights are the ones that ran (not the base's transformer)
    hand.dit.transformer.load_state_dict(WanTransformer.from_pretrained(
        made[0] / "transformer").state_dict())  # fmt: skip
    other = next(iter(hand.stream(PROMPT, FRAMES, SIZE, SIZE, seed=3)))
    assert (other.latents - ours[0].latents).abs().max() > 0.1
    r = ours[0].record
    assert r.steps == 4 and r.extra["attention"] == "block_causal"
    assert "self-forcing" in r.extra["scheduler"] and len(r.weights_sha256) == 64


def test_live_mp4_and_cli_stream_are_signed(folder, stamper, home, tmp_path):
    pipe = VideoPipeline.from_pretrained(folder, stamper=stamper)
    summary = pipe.stream_to(tmp_path / "live.mp4", PROMPT, num_frames=FRAMES, height=SIZE,
                            width=SIZE, seed=1)  # fmt: skip
    assert summary.frames == FRAMES and summary.chunks == 2
    report = verify(summary.path, home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0
    out = tmp_path / "cli.mp4"
    args = ["--threads", "1", "--home", str(home), "video", PROMPT, "-o", str(out), "--model",
            str(folder), "--stream", "--frames", str(FRAMES), "--height", str(SIZE), "--width",
            str(SIZE), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    report = verify(out, home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0
    assert report.manifest.record.weights_sha256 == pipe.weights_sha256


def test_save_pretrained_round_trip_keeps_the_stream(folder, stamper, tmp_path):
    # a pipeline folder holds a WanT5Encoder (UMT5 + tokenizer/) both ways
    pipe = VideoPipeline.from_pretrained(folder, stamper=stamper)
    again = VideoPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"), stamper=stamper)
    again.model_id = pipe.model_id
    assert (tmp_path / "copy" / "text_encoder" / "tokenizer").is_dir()
    assert again.weights_sha256 == pipe.weights_sha256 and again.settings == pipe.settings
    a = pipe(PROMPT, FRAMES, SIZE, SIZE, seed=2, return_latents=True)
    b = again(PROMPT, FRAMES, SIZE, SIZE, seed=2, return_latents=True)
    assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize(
    "extra, match",
    [(["--key", "critic"], "critic.*fit no Wan transformer layout|missing"),
     (["--key", "nothing"], "no key 'nothing'"),
     (["--frames-per-block", "0"], "num_frame_per_block"),
     (["--local-attn-size", "2"], "local_attn_size")],
)  # fmt: skip
def test_bad_conversions_are_refused_by_name(made, tmp_path, extra, match):
    base, pt, _ = made
    from mdiff.video.pipeline.self_forcing import write_self_forcing_folder

    flags = dict(zip(extra[::2], extra[1::2], strict=True))
    kw = {"--key": ("key", str), "--frames-per-block": ("num_frame_per_block", int),
          "--local-attn-size": ("local_attn_size", int)}  # fmt: skip
    kwargs = {kw[f][0]: kw[f][1](v) for f, v in flags.items()}
    with pytest.raises(Exception, match=match) as info:
        write_self_forcing_folder(pt, tmp_path / "out", base, **kwargs)
    assert info.type.__module__ == "mdiff.errors" and not (tmp_path / "out").exists()
    args = ["convert", str(pt), str(tmp_path / "o2"), "--self-forcing", "--base", str(base), *extra]
    assert cli.main(args) == cli.EXIT_ERROR


def test_the_base_must_be_wan_t2v(made, tmp_path):
    import shutil

    base, pt, _ = made
    bad = tmp_path / "ti2v"
    shutil.copytree(base, bad)
    index = json.loads((bad / "model_index.json").read_text())
    (bad / "model_index.json").write_text(json.dumps({**index, "expand_timesteps": True}))
    from mdiff.video.pipeline.self_forcing import write_self_forcing_folder

    with pytest.raises(CheckpointError, match="WanPipeline with expand_timesteps"):
        write_self_forcing_folder(pt, tmp_path / "out", bad)
    assert cli.main(["convert", str(pt), str(tmp_path / "o"), "--self-forcing"]) == cli.EXIT_ERROR
