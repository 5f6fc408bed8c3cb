"""Video pipeline output on disk: the live fragmented MP4 (finished and interrupted), signed
and verified, and the `mdiff video` / `mdiff image` commands."""

# ruff: noqa: F811
from __future__ import annotations

import pytest
import torch

from mdiff import cli, demo
from mdiff.provenance import verify

# Fixtures come from the shared helper module (imported by name, so ruff sees redefinitions).
from .pipeline_fixtures import (  # noqa: F401
    PROMPT,
    SIZE,
    bidirectional,
    causal,
    decode_all,
    pipe_dir,
    psnr,
    stamper,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- live MP4


def test_stream_to_writes_a_signed_playable_fragmented_mp4(causal, home, tmp_path):
    summary = causal.stream_to(tmp_path / "live.mp4", PROMPT, seed=3)
    assert summary.frames == 17 and summary.chunks == 3
    assert 0 < summary.time_to_first_frame <= summary.seconds and summary.fps > 0
    frames = decode_all(summary.path)
    assert frames.shape == (17, SIZE, SIZE, 3)
    assert psnr(frames, causal(PROMPT, seed=3).frames) > 25
    report = verify(summary.path, home=home)
    assert report.manifest.state == "trusted"
    assert "interrupted" not in report.manifest.record.extra


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_stream_leaves_the_finished_chunks_signed(causal, home, tmp_path, error):
    def stop(progress):
        if progress.chunk == 2:  # chunks 0 and 1 are written, chunk 2 is being denoised
            raise error("stop")

    path = tmp_path / "cut.mp4"
    with pytest.raises(error):
        causal.stream_to(path, PROMPT, seed=3, callback=stop)
    frames = decode_all(path)
    assert frames.shape[0] == 13  # 5 + 8 frames of the two finished chunks
    assert psnr(frames, causal(PROMPT, seed=3).frames[:13]) > 25
    report = verify(path, home=home)
    assert report.manifest.state == "trusted"
    assert report.manifest.record.extra["interrupted"] is True
    assert report.manifest.record.extra["frames_written"] == 13


# ---------------------------------------------------------------- CLI


def run_cli(home, *args) -> int:
    return cli.main(["--threads", "1", "--home", str(home), *args])


@pytest.mark.parametrize("stream", [False, True])
def test_cli_video_writes_a_signed_mp4(home, pipe_dir, tmp_path, capsys, stream):
    out = tmp_path / "out.mp4"
    args = ["video", PROMPT, "-o", str(out), "--model", str(pipe_dir), "--frames", "9",
            "--steps", "2", "--seed", "4", "--no-progress"] + ["--stream"] * stream  # fmt: skip
    assert run_cli(home, *args) == 0
    printed = capsys.readouterr().out
    assert "time to first frame" in printed and "frames/s" in printed
    assert decode_all(out).shape[0] == 9
    report = verify(out, home=home)
    assert report.manifest.state == "trusted" and report.manifest.record.seed == 4


def test_cli_video_extends_a_clip(home, pipe_dir, causal, tmp_path, capsys):
    first, more = tmp_path / "first.mp4", tmp_path / "more.mp4"
    common = ["--model", str(pipe_dir), "--steps", "2", "--seed", "4", "--no-progress"]
    assert run_cli(home, "video", PROMPT, "-o", str(first), "--frames", "9", *common) == 0
    args = ["video", "the circle keeps moving", "-o", str(more), "--extend", str(first), *common]
    assert run_cli(home, *args, "--frames", "8", "--stream") == 0
    frames = decode_all(more)
    assert frames.shape == (8, SIZE, SIZE, 3)  # only the new frames
    sdk = causal.extend(str(first), "the circle keeps moving", 8, steps=2, seed=4).frames
    assert psnr(frames, sdk) > 25  # the same continuation, through H.264
    assert verify(more, home=home).manifest.state == "trusted"
    capsys.readouterr()
    png = tmp_path / "f.png"
    assert run_cli(home, "image", PROMPT, "-o", str(png), *common) == 0
    bad = ["video", PROMPT, "-o", str(tmp_path / "x.mp4"), "--extend", str(first), *common]
    assert run_cli(home, *bad, "--image", str(png)) == cli.EXIT_ERROR
    assert run_cli(home, *bad, "--frames", "9") == cli.EXIT_ERROR  # new frames: multiples of 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("mdiff: error:") for line in err)
    assert not (tmp_path / "x.mp4").exists()


def test_cli_image_writes_a_signed_png(home, pipe_dir, tmp_path):
    out = tmp_path / "out.png"
    args = ["image", PROMPT, "-o", str(out), "--model", str(pipe_dir), "--steps", "2"]
    assert run_cli(home, *args, "--no-progress", "--guidance", "3", "--guidance-method", "apg") == 0
    report = verify(out, home=home)
    assert report.manifest.state == "trusted" and report.manifest.record.modality == "image"
    assert report.manifest.record.guidance == {"kind": "apg", "scale": 3.0}  # the flag arrives


def test_cli_missing_model_and_bad_input_give_one_line(
    home, tmp_path, capsys, pipe_dir, bidirectional, monkeypatch
):
    from mdiff import hub

    monkeypatch.setattr(hub, "BUILTIN_PACKAGES", ())  # as if the built-in were not installed
    assert run_cli(home, "video", PROMPT, "-o", str(tmp_path / "x.mp4")) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shapes-t2v" in err
    args = ["video", PROMPT, "-o", str(tmp_path / "y.mp4"), "--model", str(pipe_dir)]
    assert run_cli(home, *args, "--frames", "10") == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 + 4k" in err
    assert not (tmp_path / "y.mp4").exists()
    whole = bidirectional.save_pretrained(tmp_path / "bidirectional")
    args = ["video", PROMPT, "-o", str(tmp_path / "z.mp4"), "--model", str(whole), "--stream"]
    assert run_cli(home, *args) == cli.EXIT_ERROR
    assert "--stream needs a block-causal model" in capsys.readouterr().err


def test_demo_streams_the_builtin_video_model(pipe_dir, home, stamper, tmp_path, monkeypatch):
    import shutil

    from mdiff import hub

    pkg = tmp_path / "site" / "fake_video_frontend"
    shutil.copytree(pipe_dir, pkg / "checkpoints" / "shapes-t2v")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(hub, "BUILTIN_PACKAGES", ("fake_video_frontend",))
    (path,) = demo.stream_video(tmp_path, stamper, 0)
    assert path.name == "streamed.mp4" and decode_all(path).shape[0] == 17
    assert verify(path, home=home).exit_code == 0
