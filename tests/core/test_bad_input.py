"""The bad-input corpus of the core (tests/corpus.py): exit codes and usage errors of every
command, Ctrl-C during start-up, decompression bombs and limits of `mdiff.media`, failed writes
of `mdiff.atomic`, and checkpoints whose config does not fit their weights."""

from __future__ import annotations

import errno
import json
import time

import pytest
import torch

from mdiff import atomic, cli, media
from mdiff.errors import WriteError
from tests import bad_files
from tests.corpus import call, mdiff, mdiff_subprocess

# ---------------------------------------------------------------- exit codes, usage errors

USAGE = [
    ("--threads 0 before the command", ["--threads", "0", "verify", "f.png"]),
    ("--threads 0 after the command", ["doctor", "--threads", "0"]),
    ("--threads x", ["--threads", "x", "doctor"]),
    ("unknown global flag", ["--nope", "verify", "f.png"]),
    ("unknown command", ["nosuchcommand"]),
    ("verify without a file", ["verify"]),
    ("verify, unknown flag", ["verify", "--nope", "f.png"]),
    ("verify a missing file, --threads after", ["verify", "--threads", "1", "missing.png"]),
    ("video without -o", ["video", "a red circle"]),
    ("train vae, bad flag value", ["train", "vae", "--frames", "6"]),
    ("eval without a task", ["eval"]),
]


@pytest.mark.parametrize("name,argv", USAGE, ids=[c[0] for c in USAGE])
def test_usage_errors_exit_4_for_every_command(name, argv, tmp_path, monkeypatch):
    """A usage error never exits 2, which `mdiff verify` documents as "tampered"."""
    monkeypatch.chdir(tmp_path)
    o = mdiff(argv)
    assert o.kind == "error" and o.code == cli.EXIT_ERROR == 4, o


def test_help_documents_the_exit_codes():
    o = mdiff(["--help"], check=lambda o: all(f"\n  {c} " in o.stdout for c in (0, 4, 130, 141)))
    assert o.kind == "accepted", o
    assert "1-3  mdiff verify's verdicts only" in o.stdout


def test_global_flags_after_the_command(tmp_path):
    o = mdiff(["doctor", "--threads", "1", "-v", "--home", str(tmp_path)],
              check=lambda o: "threads" in o.stdout)  # fmt: skip
    assert o.kind == "accepted", o


@pytest.mark.parametrize(
    "argv,module",
    [
        (["train", "vae", "--steps", "1", "--out", "{tmp}/run"], "torch"),  # parsing imports it
        (["video", "a red circle", "-o", "{tmp}/a.mp4", "--frames", "1"], "safetensors"),  # imports
    ],
    ids=["while torch imports", "while the video pipeline imports"],
)
def test_ctrl_c_during_start_up(argv, module, tmp_path):
    env = bad_files.sigint_env(tmp_path, module)
    argv = [a.format(tmp=tmp_path) for a in argv]
    o = mdiff_subprocess(argv, env=env, timeout=120, codes=(cli.EXIT_INTERRUPTED,),
                         check=lambda o: o.stderr == "mdiff: interrupted\n")  # fmt: skip
    assert o.kind == "accepted", o


# ---------------------------------------------------------------- media: bombs and limits


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bombs")
    return {
        "100000² PNG header": bad_files.png_header_bomb(d / "header.png"),
        "20000² real PNG": bad_files.png_real_bomb(d / "real.png"),
        "65500² JPEG SOF": bad_files.jpeg_sof_bomb(d / "sof.jpg"),
    }


@pytest.mark.parametrize("name", ["100000² PNG header", "20000² real PNG", "65500² JPEG SOF"])
def test_read_image_refuses_bombs_from_the_header(name, bombs):
    start = time.perf_counter()
    o = call(lambda: media.read_image(bombs[name]))
    assert o.kind == "error", o
    side = name.split("²")[0]
    assert f"{bombs[name]}: a {side}×{side} image" in str(o.error)
    assert time.perf_counter() - start < 2  # refused before decoding


@pytest.mark.parametrize("name", ["100000² PNG header", "65500² JPEG SOF"])
def test_sign_refuses_bombs(name, bombs, home, tmp_path):
    o = mdiff(["--home", home, "sign", bombs[name], "-o", tmp_path / "x.png"], watch=[tmp_path])
    assert o.kind == "error" and str(bombs[name]) in o.stderr, o


def test_header_size_of_ordinary_images(tmp_path):
    frame = torch.zeros(24, 40, 3, dtype=torch.uint8)
    sizes = [media.header_size(media.write_image(frame, tmp_path / f"a.{s}")) for s in ("png",
             "jpg")]  # fmt: skip
    assert sizes == [(40, 24), (40, 24)]
    assert call(lambda: media.read_image(tmp_path / "a.png"),
                check=lambda f: f.shape == (1, 24, 40, 3)).kind == "accepted"  # fmt: skip


def test_directory_is_not_a_missing_file(tmp_path):
    o = call(lambda: media.read_image(tmp_path))
    assert o.kind == "error" and "is a directory" in str(o.error), o


def test_video_frames_past_the_pixel_limit(tmp_path, monkeypatch):
    clip = media.write_mp4(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), tmp_path / "c.mp4")
    monkeypatch.setattr(media, "MAX_FRAME_PIXELS", 32 * 31)
    o = call(lambda: media.read_video_head(clip))
    assert o.kind == "error" and "32×32 frames exceed" in str(o.error), o


@pytest.mark.parametrize("fps", [0, -1, float("inf"), float("nan"), 1e6, "16"])
def test_fps_is_checked(fps):
    assert call(lambda: media.check_fps(fps)).kind == "error"


# ---------------------------------------------------------------- atomic writes


def test_full_disk_inside_a_writer_names_the_target(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def write():
        with atomic.atomic_file(target) as tmp, atomic.atomic_file(tmp):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    o = call(write, watch=[tmp_path])
    assert o.kind == "error" and isinstance(o.error, WriteError) and o.error.errno == errno.ENOSPC
    assert str(o.error) == f"cannot write {target}: No space left on device"


def test_check_target(tmp_path):
    (tmp_path / "old.txt").write_text("old")
    refused = [tmp_path, tmp_path / "missing" / "a.txt", tmp_path / "old.txt"]
    for path in refused:
        assert call(lambda p=path: atomic.check_target(p), watch=[tmp_path]).kind == "error"
    o = call(lambda: atomic.check_target(tmp_path / "old.txt", overwrite=True,
                                         inputs=[tmp_path / "x" / ".." / "old.txt"]))  # fmt: skip
    assert o.kind == "error" and "also an input" in str(o.error), o
    ok = call(lambda: atomic.check_target(tmp_path / "old.txt", overwrite=True))
    assert ok.kind == "accepted", ok


# ---------------------------------------------------------------- checkpoints


def test_a_config_that_does_not_fit_its_weights_fails_before_allocating(tmp_path):
    """A config.json of dim 1e6 would allocate tens of GB; the header check refuses it first."""
    from mdiff.video.dit.model import DiTConfig, SpaceTimeDiT

    folder = SpaceTimeDiT(DiTConfig.preset("test")).save_pretrained(tmp_path / "dit")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dim": 1_000_000}))
    start = time.perf_counter()
    o = call(lambda: SpaceTimeDiT.from_pretrained(folder))
    assert o.kind == "error" and "do not fit SpaceTimeDiT" in str(o.error), o
    assert time.perf_counter() - start < 10


def test_an_unforeseen_system_error_is_one_line(monkeypatch, tmp_path):
    """A system refusal no check caught (here: reading the file to verify fails with EIO)."""
    from mdiff.provenance import cli as provenance_cli

    def broken(args):
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "clip.mp4"))

    monkeypatch.setattr(provenance_cli, "run_verify", broken)  # read when the parser is built
    o = mdiff(["verify", str(tmp_path / "clip.mp4")])
    assert o.kind == "error" and "Input/output error" in o.stderr and "clip.mp4" in o.stderr, o
