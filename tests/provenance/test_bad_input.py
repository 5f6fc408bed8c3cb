"""The bad-input corpus of `mdiff sign`, `mdiff verify` and `mdiff keys` (`tests/corpus.py`,
issue 27 points 1-3), and SDK probes of the record and the signer.

Every case asserts its outcome: ``error`` (one clean line, exit 4; an `MdiffError` in Python)
or ``accepted`` with its own check (``verify``'s verdict codes where a case expects one).
Watched folders must not lose, change or gain files on a refusal, and a message names the
user's path, never a temporary file.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from pathlib import Path

import pytest
import torch

from mdiff import media
from mdiff.provenance import keys
from tests.corpus import call, mdiff


@pytest.fixture
def folder(tmp_path, media):
    """A work folder holding a copy of the 64×64 test PNG as ``in.png``."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.png").write_bytes(media["png"].read_bytes())
    return work


def _read_only_folder(tmp_path) -> Path:
    """A folder where no file can be created (root writes through 0o555: use /sys there)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    pytest.skip("no read-only folder available")


def _make(name: str, folder: Path) -> Path:
    """The input file of a sign case (see SIGN_INPUTS)."""
    path = folder / name
    if name == "folder.png":
        path.mkdir()
    elif name == "empty.txt":
        path.write_bytes(b"")
    elif name == "latin1.txt":
        path.write_bytes("café crème\n".encode("latin-1"))
    elif name == "fake.png":
        path.write_text("not a picture\n", encoding="utf-8")
    elif name == "table.xyz":
        path.write_bytes(b"a,b\n1,2\n")
    return path


# ---- sign: the input ----------------------------------------------------------------------

SIGN_INPUTS = [  # (name, input file name, words the one-line error must hold)
    ("missing file", "missing.png", "missing.png: no such file"),
    ("a folder", "folder.png", "folder.png: not a regular file"),
    ("empty text", "empty.txt", "empty.txt: empty file"),
    ("non-UTF-8 text", "latin1.txt", "latin1.txt: not UTF-8 text"),
    ("text named .png", "fake.png", "fake.png"),
    ("unsupported type", "table.xyz", "unsupported file type '.xyz'"),
]  # fmt: skip


@pytest.mark.parametrize("name, file, words", SIGN_INPUTS, ids=[c[0] for c in SIGN_INPUTS])
def test_sign_bad_inputs(home, folder, name, file, words):
    path = _make(file, folder)
    o = mdiff(["--home", home, "sign", path], watch=[folder])
    assert o.kind == "error", o
    assert words in o.stderr and "/." not in o.stderr, o  # the user's path, not a temp file


# ---- sign: the output path, checked before any work -----------------------------------------

SIGN_OUTPUTS = [  # (name, -o relative to the folder, extra flags, words of the error)
    ("missing folder", "no/such/out.png", [], "destination folder does not exist"),
    ("a directory", "outdir.png", [], "is a directory"),
    ("the input itself", "in.png", [], "is also an input"),
    ("the input even with --force", "in.png", ["--force"], "is also an input"),
    ("an existing file", "old.png", [], "use --force"),
    ("a text name for an image", "out.txt", [], "not an image file name"),
    ("unknown source type", "out.png", ["--source-type", "robot"], "invalid choice: 'robot'"),
]  # fmt: skip


@pytest.mark.parametrize("name, out, extra, words", SIGN_OUTPUTS, ids=[c[0] for c in SIGN_OUTPUTS])
def test_sign_bad_outputs(home, folder, name, out, extra, words):
    (folder / "outdir.png").mkdir()
    (folder / "old.png").write_bytes(b"precious")
    o = mdiff(["--home", home, "sign", folder / "in.png", "-o", folder / out, *extra],
              watch=[folder])  # fmt: skip
    assert o.kind == "error", o
    assert words in o.stderr, o


def test_sign_into_a_read_only_folder(home, folder, tmp_path):
    ro = _read_only_folder(tmp_path)
    o = mdiff(["--home", home, "sign", folder / "in.png", "-o", ro / "out.png"], watch=[folder])
    assert o.kind == "error", o
    assert f"cannot write {ro / 'out.png'}" in o.stderr, o


def test_sign_force_replaces_an_existing_output(home, folder):
    old = folder / "old.png"
    old.write_bytes(b"precious")
    o = mdiff(["--home", home, "sign", folder / "in.png", "-o", old, "--force"],
              check=lambda r: media.read_image(old).shape == (1, 64, 64, 3))  # fmt: skip
    assert o.kind == "accepted", o


def test_sign_on_a_full_disk_keeps_the_old_output(home, folder, monkeypatch):
    old = folder / "old.png"
    old.write_bytes(b"precious")

    def full(frame, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(media, "write_image", full)
    o = mdiff(["--home", home, "sign", folder / "in.png", "-o", old, "--force"], watch=[folder])
    assert o.kind == "error", o
    assert f"cannot write {old}" in o.stderr and "No space left" in o.stderr, o


def test_sign_with_a_home_that_is_a_file(folder, tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder\n")
    o = mdiff(["--home", home, "sign", folder / "in.png"], watch=[tmp_path])
    assert o.kind == "error", o
    assert f"{home} is a file, not a folder" in o.stderr, o


# ---- keys -------------------------------------------------------------------------------------


def test_keys_init_with_a_home_that_is_a_file(tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder\n")
    o = mdiff(["--home", home, "keys", "init"], watch=[tmp_path])
    assert o.kind == "error", o
    assert f"{home} is a file, not a folder" in o.stderr, o


def test_keys_init_with_a_read_only_home(tmp_path):
    ro = _read_only_folder(tmp_path)
    o = mdiff(["--home", ro, "keys", "init"])
    assert o.kind == "error", o
    assert f"cannot create {ro / 'identity'}" in o.stderr, o


def test_keys_init_twice_needs_force(tmp_path):
    assert mdiff(["--home", tmp_path / "h", "keys", "init"]).kind == "accepted"
    o = mdiff(["--home", tmp_path / "h", "keys", "init"], watch=[tmp_path])
    assert o.kind == "error" and "force" in o.stderr, o


def test_keys_list_reads_only(tmp_path):
    home = tmp_path / "never-made"
    o = mdiff(["--home", home, "keys", "list"], check=lambda r: "0 key(s)" in r.stdout)
    assert o.kind == "accepted" and not home.exists(), o


# ---- verify -----------------------------------------------------------------------------------


def test_verify_with_a_missing_home_creates_nothing(media, tmp_path):
    home = tmp_path / "missing-home"
    o = mdiff(["--home", home, "verify", media["png"]], codes=(3,))
    assert o.kind == "accepted" and o.code == 3, o
    assert not home.exists()


def _idat(data: bytes) -> tuple[int, int]:
    off = 8
    while off < len(data):
        n, kind = struct.unpack(">I4s", data[off : off + 8])
        if kind == b"IDAT":
            return off + 8, off + 8 + n
        off += 12 + n
    raise AssertionError("no IDAT")


def test_verify_a_tampered_png_that_no_longer_decodes_is_tampered(home, folder):
    """One flipped bit in IDAT: c2pa says dataHash.mismatch; the pixels do not decode. The
    verdict is the manifest's (2, tampered), not "cannot read image" (4)."""
    from mdiff.errors import MdiffError

    assert mdiff(["--home", home, "sign", folder / "in.png"]).kind == "accepted"
    data = (folder / "in-signed.png").read_bytes()
    start, end = _idat(data)
    bad = folder / "bad.png"
    for pos in range(start, end):  # the first flip that breaks decoding
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        bad.write_bytes(bytes(flipped))
        try:
            media.read_image(bad)
        except MdiffError:
            break
    else:
        pytest.skip("no single-bit flip broke decoding")
    said = lambda r: "TAMPERED" in r.stdout and "cannot be decoded" in r.stdout  # noqa: E731
    o = mdiff(["--home", home, "verify", bad], codes=(2,), check=said)
    assert o.kind == "accepted", o


VERIFY_ARGS = [  # (name, extra arguments, words of the error)
    ("opening not hex", ["--prompt", "a red circle", "--prompt-opening", "xyz"], "must be hex"),
    ("opening without prompt", ["--prompt-opening", "00ff"], "needs the prompt"),
    ("prompt with an undecodable byte", ["--prompt", "caf\udcff"], "not valid UTF-8"),
    ("missing sidecar", ["--sidecar", "nope.c2pa"], "no such file"),
]  # fmt: skip


@pytest.mark.parametrize("name, extra, words", VERIFY_ARGS, ids=[c[0] for c in VERIFY_ARGS])
def test_verify_bad_arguments(home, folder, name, extra, words):
    assert mdiff(["--home", home, "sign", folder / "in.png"]).kind == "accepted"
    o = mdiff(["--home", home, "verify", folder / "in-signed.png", *extra], watch=[folder])
    assert o.kind == "error", o
    assert words in o.stderr, o


# ---- SDK probes -----------------------------------------------------------------------------

RECORDS = [  # (name, GenerationRecord.create keywords)
    ("seed 'abc'", {"seed": "abc"}),
    ("seed 2^64-1", {"seed": 2**64 - 1}),
    ("seed True", {"seed": True}),
    ("steps -3", {"steps": -3}),
    ("steps 2.5", {"steps": 2.5}),
    ("width 0", {"sizes": {"width": 0, "height": 64}}),
    ("fps nan", {"sizes": {"fps": math.nan}}),
    ("weights hash not hex", {"weights_sha256": "abc"}),
    ("prompt bytes", {"prompt": b"a red circle"}),
    ("prompt with an undecodable byte", {"prompt": "caf\udcff"}),
]  # fmt: skip


@pytest.mark.parametrize("name, fields", RECORDS, ids=[c[0] for c in RECORDS])
def test_record_fields_are_validated(name, fields):
    from mdiff.record import GenerationRecord

    o = call(lambda: GenerationRecord.create("video", "m", **fields))
    assert o.kind == "error", o


def test_sdk_sign_existing_with_an_unknown_source_type(home, folder):
    from mdiff.provenance.resign import sign_existing
    from mdiff.provenance.stamp import Stamper

    o = call(lambda: sign_existing(folder / "in.png", None, Stamper(home=home),
                                   source_type="robot"), watch=[folder])  # fmt: skip
    assert o.kind == "error" and "robot" in str(o.error), o


def test_sdk_empty_text_names_the_users_file(home, tmp_path):
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    st = Stamper(home=home)
    out = tmp_path / "notes.txt"
    o = call(lambda: st.save(st.text("", GenerationRecord.create("text", "m"), None), out),
             watch=[tmp_path])  # fmt: skip
    assert o.kind == "error" and "notes.txt" in str(o.error), o


def test_sdk_verify_prompt_must_be_text(home, media):
    from mdiff.provenance.verify import verify

    o = call(lambda: verify(media["png"], home=home, prompt=b"a red circle"))
    assert o.kind == "error", o


def test_sdk_keyring_reads_only(tmp_path):
    o = call(lambda: keys.keyring(tmp_path / "none"), check=lambda ring: ring == {})
    assert o.kind == "accepted" and not (tmp_path / "none").exists(), o


@pytest.mark.parametrize("fps", [0, -8, float("nan"), "8"])
def test_sdk_frames_with_a_bad_fps_are_refused(home, fps):
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    st = Stamper(home=home)
    rec = GenerationRecord.create("video", "m", prompt="p", seed=1)
    o = call(lambda: st.frames(torch.zeros(2, 64, 64, 3, dtype=torch.uint8), rec, fps=fps))
    assert o.kind == "error" and "fps" in str(o.error), o


def test_sdk_numpy_frames_are_accepted(home, tmp_path):
    import numpy as np

    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    st = Stamper(home=home)
    rec = GenerationRecord.create("video", "m", prompt="p", seed=1)
    frames = np.full((3, 64, 64, 3), 90, np.uint8)[:, :, ::-1]  # not contiguous
    o = call(lambda: st.save(st.frames(frames, rec, fps=8), tmp_path / "a.mp4"),
             check=lambda path: media.read_video_head(path)[0].shape == (3, 64, 64, 3))  # fmt: skip
    assert o.kind == "accepted", o
