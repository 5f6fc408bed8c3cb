"""The bad-input corpus of `mdiff video` / `mdiff image` and the video SDK (tests/corpus.py):
what a new user types or passes, each with the outcome it must have. Every error case exits 4
with one line and leaves nothing behind; the numbers and the output path are checked before the
model loads; nothing that was there is lost."""

# ruff: noqa: F811
from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch

from mdiff import cli, media
from mdiff.provenance import verify
from mdiff.video import io
from mdiff.video.pipeline.video_pipeline import VideoPipeline
from tests import bad_files
from tests.corpus import call, mdiff

# Fixtures come from the shared helper module (imported by name, so ruff sees redefinitions).
from .pipeline_fixtures import PROMPT, SIZE, causal, pipe_dir, stamper  # noqa: F401

torch.set_num_threads(1)

VIDEO = ["video", "--frames", "5", "--steps", "2", "--no-progress"]
BAD_UTF8 = "caf\udcff"  # how Python hands over an argument with the byte 0xff


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pipe_dir):
    """A folder of good and bad input files (and broken model folders) for the cases."""
    d = tmp_path_factory.mktemp("inputs")
    frames = torch.randint(0, 255, (5, SIZE, SIZE, 3), dtype=torch.uint8)
    media.write_mp4(frames, d / "clip.mp4", fps=8)
    media.write_image(frames[0], d / "small.png")
    media.write_image(frames[0], d / "small.jpg")
    media.write_image(torch.zeros(48, 48, 3, dtype=torch.uint8), d / "small48.png")
    bad_files.png_header_bomb(d / "bomb_header.png")
    bad_files.png_real_bomb(d / "bomb_20000.png")
    bad_files.jpeg_sof_bomb(d / "bomb_sof.jpg")
    (d / "garbage.png").write_bytes(b"this is not an image\n" * 10)
    (d / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 and then garbage" * 10)
    (d / "empty.png").write_bytes(b"")
    for name in ("adir.mp4", "adir.png"):
        (d / name).mkdir()
    for name, change in (("huge-dim", {"dim": 1_000_000}), ("huge-depth", {"depth": 10**9})):
        shutil.copytree(pipe_dir, d / name)
        config = d / name / "dit" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    return d


@pytest.fixture
def no_model(monkeypatch):
    """The case must fail before the model loads (a load is a traceback here)."""

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(VideoPipeline, "from_pretrained", loaded)


def run(home, pipe_dir, inputs, out_dir, argv, **kwargs):
    values = {"model": pipe_dir, "in": inputs, "out": out_dir}
    argv = [str(a).format(**values) if isinstance(a, str) else a for a in argv]
    base = ["--threads", "1", "--home", str(home)]
    return mdiff([*base, *VIDEO, "--model", str(pipe_dir), *argv],
                 watch=[inputs, out_dir], **kwargs)  # fmt: skip


# ---------------------------------------------------------------- refused before the model loads

EARLY = [
    ("steps 10^9", ["--steps", "1000000000"]),
    ("steps 0", ["--steps", "0"]),
    ("steps 1001", ["--steps", "1001"]),
    ("frames 10^9+1", ["--frames", "1000000001"]),
    ("frames 10001", ["--frames", "10001"]),
    ("guidance 1e308", ["--guidance", "1e308"]),
    ("guidance 101", ["--guidance", "101"]),
    ("guidance nan", ["--guidance", "nan"]),
    ("seed -1", ["--seed", "-1"]),
    ("seed 2^63", ["--seed", str(2**63)]),
    ("seed 2^64-1", ["--seed", str(2**64 - 1)]),
    ("threads 0 after the command", ["--threads", "0"]),
    ("output folder missing", ["-o", "{out}/missing/a.mp4"]),
    ("output is a directory", ["-o", "{in}/adir.mp4"]),
    ("output exists, no --force", ["-o", "{in}/clip.mp4"]),
    ("--extend onto itself", ["--extend", "{in}/clip.mp4", "-o", "{in}/clip.mp4", "--force"]),
    (
        "--extend onto itself, other spelling",
        ["--extend", "{in}/clip.mp4", "-o", "{in}/../" + "{in.name}/clip.mp4", "--force"],
    ),
    ("--image onto itself", ["--image", "{in}/small.png", "-o", "{in}/small.png", "--force"]),
    ("output .gif", ["-o", "{out}/a.gif"]),
    ("--image and --extend", ["--image", "{in}/small.png", "--extend", "{in}/clip.mp4"]),
]


@pytest.mark.parametrize("name,argv", EARLY, ids=[c[0] for c in EARLY])
def test_refused_before_the_model_loads(name, argv, home, pipe_dir, inputs, tmp_path, no_model):
    if "-o" not in argv:
        argv = [*argv, "-o", "{out}/a.mp4"]
    o = run(home, pipe_dir, inputs, tmp_path, [PROMPT, *argv])
    assert o.kind == "error", o


@pytest.mark.parametrize("prompt,flag", [(BAD_UTF8, None), (PROMPT, "--negative-prompt")])
def test_undecodable_prompt_names_the_argument(prompt, flag, home, pipe_dir, inputs, tmp_path,
                                               no_model):  # fmt: skip
    extra = [flag, BAD_UTF8] if flag else []
    o = run(home, pipe_dir, inputs, tmp_path, [prompt, *extra, "-o", "{out}/a.mp4"])
    assert o.kind == "error", o
    assert ("argument prompt" if flag is None else "--negative-prompt") in o.stderr
    assert "not valid UTF-8" in o.stderr


def test_read_only_output_folder(home, pipe_dir, inputs, tmp_path, no_model):
    """/sys refuses new files even to root (a 0555 folder would not): the check creates a
    temporary file there, before the model loads."""
    o = run(home, pipe_dir, inputs, tmp_path, [PROMPT, "-o", "/sys/a.mp4"])
    assert o.kind == "error", o
    assert "/sys is not writable" in o.stderr and "/sys/a.mp4" in o.stderr


# ---------------------------------------------------------------- refused by the pipeline

LATE = [  # (name, argv, what the message must name)
    ("prompt blank", ["   "], "prompt is empty"),
    (
        "--image PNG header claims 100000²",
        [PROMPT, "--image", "{in}/bomb_header.png"],
        "{in}/bomb_header.png: a 100000×100000 image",
    ),
    (
        "--image real 20000² PNG",
        [PROMPT, "--image", "{in}/bomb_20000.png"],
        "{in}/bomb_20000.png: a 20000×20000 image",
    ),
    (
        "--image JPEG SOF claims 65500²",
        [PROMPT, "--image", "{in}/bomb_sof.jpg"],
        "{in}/bomb_sof.jpg: a 65500×65500 image",
    ),
    ("--image a directory", [PROMPT, "--image", "{in}/adir.png"], "{in}/adir.png is a directory"),
    ("--image missing", [PROMPT, "--image", "{in}/nope.png"], "{in}/nope.png"),
    ("--image garbage", [PROMPT, "--image", "{in}/garbage.png"], "{in}/garbage.png"),
    ("--image empty", [PROMPT, "--image", "{in}/empty.png"], "{in}/empty.png is empty"),
    (
        "--image other size",
        [PROMPT, "--image", "{in}/small48.png", "--height", "32"],
        "{in}/small48.png is 48×48",
    ),
    (
        "--extend garbage",
        [PROMPT, "--extend", "{in}/garbage.mp4", "--frames", "4"],
        "{in}/garbage.mp4",
    ),
    (
        "--extend a directory",
        [PROMPT, "--extend", "{in}/adir.mp4", "--frames", "4"],
        "{in}/adir.mp4 is a directory",
    ),
    ("height 33", [PROMPT, "--height", "33"], "height must be"),
    ("frames 6", [PROMPT, "--frames", "6"], "num_frames must be 1 + 4k"),
    ("config.json dim 1e6", [PROMPT, "--model", "{in}/huge-dim"], "shape mismatches"),
    ("config.json depth 1e9", [PROMPT, "--model", "{in}/huge-depth"], "depth must be at most"),
]


@pytest.mark.parametrize("name,argv,named", LATE, ids=[c[0] for c in LATE])
def test_refused_by_the_pipeline(name, argv, named, home, pipe_dir, inputs, tmp_path):
    o = run(home, pipe_dir, inputs, tmp_path, [*argv, "-o", "{out}/a.mp4"])
    assert o.kind == "error", o
    assert named.format(**{"in": inputs}) in o.stderr, o


# ---------------------------------------------------------------- accepted


def _frames(path, n):
    return lambda o: io.count_frames(path) == n and verify(path).manifest.state != "absent"


@pytest.mark.parametrize(
    "name,argv,frames",
    [
        ("plain", [PROMPT], 5),
        ("--threads after the command", [PROMPT, "--threads", "1"], 5),
        ("a unicode prompt", ["café ☕: a red circle moving right"], 5),
        ("--image PNG", [PROMPT, "--image", "{in}/small.png"], 5),
        ("--image JPEG", [PROMPT, "--image", "{in}/small.jpg"], 5),
        ("--extend", [PROMPT, "--extend", "{in}/clip.mp4", "--frames", "4"], 4),
        ("--stream", [PROMPT, "--stream"], 5),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_accepted(name, argv, frames, home, pipe_dir, inputs, tmp_path):
    out = tmp_path / "a.mp4"
    o = run(home, pipe_dir, inputs, tmp_path, [*argv, "-o", str(out)], check=_frames(out, frames))
    assert o.kind == "accepted", o


@pytest.mark.parametrize("stream", [False, True])
def test_force_replaces_an_existing_output(stream, home, pipe_dir, inputs, tmp_path):
    out = tmp_path / "a.mp4"
    out.write_bytes(b"old")
    argv = [PROMPT, "-o", str(out), "--force", *["--stream"] * stream]
    o = run(home, pipe_dir, inputs, tmp_path, argv, check=_frames(out, 5))
    assert o.kind == "accepted", o


def test_image_command(home, pipe_dir, inputs, tmp_path):
    out = tmp_path / "a.png"
    base = ["--threads", "1", "--home", str(home), "image", PROMPT, "--model", str(pipe_dir)]
    o = mdiff([*base, "--steps", "2", "--no-progress", "-o", str(out)], watch=[tmp_path],
              check=lambda o: media.read_image(out).shape == (1, SIZE, SIZE, 3))  # fmt: skip
    assert o.kind == "accepted", o
    o = mdiff([*base, "--steps", "2", "--no-progress", "-o", str(out)], watch=[tmp_path])
    assert o.kind == "error" and "--force" in o.stderr, o  # no silent replacement


# ---------------------------------------------------------------- full disk, interruptions


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_keeps_the_old_file(home, pipe_dir, inputs, tmp_path, monkeypatch):
    out = tmp_path / "a.mp4"
    out.write_bytes(b"old")
    monkeypatch.setattr(media, "write_mp4", _enospc)
    o = run(home, pipe_dir, inputs, tmp_path, [PROMPT, "-o", str(out), "--force"])
    assert o.kind == "error", o  # the harness checks: a.mp4 unchanged, no temporary file left
    assert f"cannot write {out}: No space left on device" in o.stderr


@pytest.mark.parametrize("existing", [False, True])
def test_stream_onto_a_full_disk_leaves_no_unsigned_file(existing, home, pipe_dir, inputs,
                                                          tmp_path, monkeypatch):  # fmt: skip
    out = tmp_path / "a.mp4"
    if existing:
        out.write_bytes(b"old")
    write = io.FragmentedMP4Writer.write

    def second_chunk_fails(self, frames):
        if self.chunks_written == 1:
            _enospc()
        write(self, frames)

    monkeypatch.setattr(io.FragmentedMP4Writer, "write", second_chunk_fails)
    argv = [PROMPT, "-o", str(out), "--stream", "--force", "--frames", "9"]  # chunks of 5, 4
    o = run(home, pipe_dir, inputs, tmp_path, argv)
    assert o.kind == "error", o  # the harness checks: the old file intact, nothing else left
    assert f"cannot write {out}: No space left on device" in o.stderr
    assert out.exists() == existing


@pytest.mark.parametrize(("existing", "after_chunks"), [(True, 0), (True, 1), (False, 1)])
def test_interrupted_stream(existing, after_chunks, home, pipe_dir, inputs, tmp_path,
                            monkeypatch):  # fmt: skip
    """Ctrl-C leaves a file that was at the path as it was (--force asked for a finished clip);
    a new file keeps the signed finished chunks."""
    out = tmp_path / "a.mp4"
    if existing:
        out.write_bytes(b"old")
    write = io.FragmentedMP4Writer.write

    def interrupted(self, frames):
        if self.chunks_written == after_chunks:
            raise KeyboardInterrupt
        write(self, frames)

    def check(o):
        if existing:
            return out.read_bytes() == b"old"
        report = verify(out)
        return io.count_frames(out) == 5 and report.manifest.record.extra["interrupted"]

    monkeypatch.setattr(io.FragmentedMP4Writer, "write", interrupted)
    argv = [PROMPT, "-o", str(out), "--stream", "--force", "--frames", "9"]  # chunks of 5, 4
    o = run(home, pipe_dir, inputs, tmp_path, argv, codes=(cli.EXIT_INTERRUPTED,), check=check)
    assert o.kind == "accepted", o
    said = "holds the finished chunks (signed)" in o.stderr
    assert o.stderr.strip().splitlines()[-1] == "mdiff: interrupted" and said == (not existing)


# ---------------------------------------------------------------- the SDK


def _raises_then(fn, error, check):
    """Run `fn`, which must raise `error`; then return `check()` (an SDK probe of what is left
    after an interruption)."""
    with pytest.raises(error):
        fn()
    return check()


SDK = [
    ("steps 10^9", dict(steps=10**9)),
    ("guidance 1e308", dict(guidance=1e308)),
    ("guidance -1", dict(guidance=-1.0)),
    ("num_frames 10^9+1", dict(num_frames=10**9 + 1)),
    ("seed 2^64-1", dict(seed=2**64 - 1)),
    ("seed 'abc'", dict(seed="abc")),
    ("negative prompt undecodable", dict(negative_prompt=BAD_UTF8)),
    ("image a directory", dict(image=".")),
]


@pytest.mark.parametrize("name,kwargs", SDK, ids=[c[0] for c in SDK])
def test_sdk_call_refused(name, kwargs, causal):
    assert call(lambda: causal(PROMPT, **{"num_frames": 5, **kwargs})).kind == "error"


def test_sdk_prompt_undecodable(causal):
    o = call(lambda: causal(BAD_UTF8, num_frames=1))
    assert o.kind == "error" and "prompt is not valid UTF-8" in str(o.error), o


@pytest.mark.parametrize("fps", [0, -8.0, float("nan"), 1e9, True])
def test_sdk_fps_is_checked_never_defaulted(fps, stamper, tmp_path):
    from .pipeline_fixtures import make_pipeline

    assert call(lambda: make_pipeline(stamper, causal=True, fps=fps)).kind == "error"
    frames = torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8)
    assert call(lambda: media.write_mp4(frames, tmp_path / "x.mp4", fps=fps)).kind == "error"
    assert call(lambda: io.FragmentedMP4Writer(tmp_path / "y.mp4", fps=fps)).kind == "error"


def test_sdk_odd_frames_are_not_resized(tmp_path):
    frames = torch.zeros(3, 65, 63, 3, dtype=torch.uint8)  # the 63×65 (W×H)
    o = call(lambda: media.write_mp4(frames, tmp_path / "odd.mp4"), watch=[tmp_path])
    assert o.kind == "error" and "63×65" in str(o.error), o


def test_sdk_outputs_are_not_replaced_without_overwrite(causal, inputs, tmp_path):
    out = causal(PROMPT, num_frames=5, steps=2)
    old = tmp_path / "old.mp4"
    old.write_bytes(b"old")
    assert call(lambda: out.save(old), watch=[tmp_path]).kind == "error"
    assert call(lambda: causal.stream_to(old, PROMPT, 5, steps=2), watch=[tmp_path]).kind == "error"
    o = call(lambda: out.save(old, overwrite=True), check=lambda p: io.count_frames(p) == 5)
    assert o.kind == "accepted", o
    clip = tmp_path / "clip.mp4"
    shutil.copy(inputs / "clip.mp4", clip)
    more = causal.extend(str(clip), PROMPT, 4, steps=2)
    assert call(lambda: more.save(clip, overwrite=True), watch=[tmp_path]).kind == "error"
    o = call(lambda: causal.stream_to(clip, PROMPT, 4, steps=2, prefix=str(clip), overwrite=True),
             watch=[tmp_path])  # fmt: skip
    assert o.kind == "error" and "also an input" in str(o.error), o


def test_sdk_interrupted_stream_keeps_the_old_file(causal, tmp_path):
    old = tmp_path / "old.mp4"
    old.write_bytes(b"old")

    def stop(progress):
        raise RuntimeError("stopped before the first chunk")

    def stream():
        causal.stream_to(old, PROMPT, 5, steps=2, overwrite=True, callback=stop)

    o = call(
        lambda: _raises_then(stream, RuntimeError, old.read_bytes), check=lambda b: b == b"old"
    )
    assert o.kind == "accepted", o
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]


def test_unknown_words_are_named_once_and_do_not_stop_generation(home, pipe_dir, inputs,
                                                                 tmp_path, caplog):  # fmt: skip
    out = tmp_path / "a.mp4"
    prompt = f"{PROMPT}, zorbly zorbly and shimmery"
    with caplog.at_level("WARNING", logger="mdiff.video.cli"):
        o = run(home, pipe_dir, inputs, tmp_path, [prompt, "-o", str(out)], check=_frames(out, 5))
    assert o.kind == "accepted", o
    warned = [r.getMessage() for r in caplog.records if "never seen" in r.getMessage()]
    assert len(warned) == 1 and warned[0].endswith("zorbly, shimmery"), warned
