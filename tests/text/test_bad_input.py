"""The bad-input corpus of the text frontend (`tests/corpus.py`): `mdiff complete` / `eval fim`
and the `CodeModel` SDK, on input a new user would give them (issue 27, point 1).

Every case asserts its outcome: ``error`` (one clean line, exit 4; an `MdiffError` in Python)
or ``accepted`` with its own check. Watched folders must not lose, change or gain files on a
refusal. The built-in ``code-tiny`` with short holes keeps the cases fast.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import pathlib

import pytest
import torch

from tests.corpus import call, mdiff

MARKED = "def f(x):\n    return <FILL>\n"


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "todo.py"
    path.write_text(MARKED, encoding="utf-8")
    return path


def complete(home, path, *extra):
    """`mdiff complete PATH` with a short hole, then `extra` (which wins over the defaults)."""
    return ["--home", home, "complete", path, "--length", "3", "--steps", "2", *extra]


# ---- refused before the model runs ---------------------------------------------------------

ARGS = [  # (name, extra arguments, a word the one-line error must contain)
    ("steps 0 (not: the default)", ["--steps", "0"], "steps must be a positive integer"),
    ("steps huge", ["--steps", "1000000000"], "got 1000000000"),
    ("seed -1", ["--seed", "-1"], "--seed must be an integer in [0, 2^63), got -1"),
    ("seed 2^64-1", ["--seed", str(2**64 - 1)], str(2**64 - 1)),
    ("temperature nan", ["--temperature", "nan"], "must be a finite number ≥ 0, got nan"),
    ("temperature -1", ["--temperature", "-1"], "got -1.0"),
    ("schedule unknown", ["--schedule", "fastest"], "'fastest'"),
    ("length 0", ["--length", "0"], "--length must be a positive integer or auto"),
    ("length words", ["--length", "ten"], "'ten'"),
    ("in-place and -o", ["--in-place", "-o", "x.py"], "not allowed with"),
]  # fmt: skip


@pytest.mark.parametrize("name, extra, words", ARGS, ids=[a[0] for a in ARGS])
def test_bad_arguments_are_refused_in_one_line(home, src, name, extra, words):
    o = mdiff(complete(home, src, *extra), watch=[src.parent])
    assert o.kind == "error", o
    assert words in o.stderr and "GenerationConfig(" not in o.stderr, o


FILES = [  # (name, a word of the error)
    ("missing", "no such file"),
    ("a folder", "is a folder"),
    ("not a regular file", "not a regular file"),
    ("larger than the limit", "at most 4 MiB"),
    ("not UTF-8", "latin1.py is not UTF-8"),
    ("300 holes", "at most 256"),
]


def _make_input(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    if name == "missing":
        return tmp_path / "nope.py"
    if name == "a folder":
        return tmp_path
    if name == "not a regular file":
        return pathlib.Path("/dev/zero")  # reading it would never end
    path = tmp_path / "input.py"
    if name == "larger than the limit":  # 5 MiB without writing them
        with open(path, "wb") as f:
            f.write(MARKED.encode())
            f.truncate(5 * 2**20)
    elif name == "not UTF-8":
        path = tmp_path / "latin1.py"
        path.write_bytes("s = 'café'  # <FILL>\n".encode("latin-1"))
    else:
        path.write_text("x = <FILL>\n" * 300, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, words", FILES, ids=[f[0] for f in FILES])
def test_unusable_input_files(home, tmp_path, name, words):
    path = _make_input(name, tmp_path)
    if not path.exists() and name == "not a regular file":
        pytest.skip("no /dev/zero here")
    o = mdiff(complete(home, path), watch=[tmp_path])
    assert o.kind == "error", o
    assert words in o.stderr, o


# ---- the output path: checked first, nothing lost ------------------------------------------


def _read_only_folder(tmp_path) -> pathlib.Path:
    """A folder where no file can be created (root writes through 0o555: use /sys there)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, pathlib.Path("/sys")):
        try:
            (candidate / ".probe.py").touch()
        except OSError:
            return candidate
        (candidate / ".probe.py").unlink()
    pytest.skip("no read-only folder available")


OUTPUTS = [  # (name, output path relative to the test folder, a word of the error)
    ("missing folder", "no/such/folder/out.py", "destination folder does not exist"),
    ("a directory", ".", "is a directory"),
    ("the input itself", "todo.py", "is also an input"),
    ("not a text suffix", "out.bin", "a completion is text"),
    ("an image suffix", "out.png", "a completion is text"),
]


@pytest.mark.parametrize("name, out, words", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_bad_output_paths_refused_before_generating(home, src, name, out, words, monkeypatch):
    from mdiff.text.pipeline import CodeModel

    monkeypatch.setattr(CodeModel, "from_pretrained", _must_not_load)
    o = mdiff(complete(home, src, "-o", src.parent / out), watch=[src.parent])
    assert o.kind == "error", o
    assert words in o.stderr and ".todo." not in o.stderr, o


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the output path was checked")


def test_input_through_a_symlink_is_still_the_input(home, src):
    link = src.parent / "link.py"
    link.symlink_to(src)
    o = mdiff(complete(home, src, "-o", link), watch=[src.parent])
    assert o.kind == "error" and "is also an input" in o.stderr, o


def test_read_only_folder(home, src):
    folder = _read_only_folder(src.parent)
    o = mdiff(complete(home, src, "-o", folder / "out.py"), watch=[src.parent])
    assert o.kind == "error", o
    assert f"cannot write {folder / 'out.py'}" in o.stderr, o


@pytest.mark.parametrize("existing", ["out.py", "out.py.c2pa"])
def test_existing_output_needs_force(home, src, existing):
    (src.parent / existing).write_text("precious\n", encoding="utf-8")
    o = mdiff(complete(home, src, "-o", src.parent / "out.py"), watch=[src.parent])
    assert o.kind == "error" and "use --force" in o.stderr, o


def test_force_replaces_an_existing_output(home, src):
    out = src.parent / "out.py"
    out.write_text("old\n", encoding="utf-8")
    replaced = lambda r: out.read_text(encoding="utf-8").startswith("def f(x):\n")  # noqa: E731
    o = mdiff(complete(home, src, "-o", out, "--force"), check=replaced)
    assert o.kind == "accepted", o
    assert (src.parent / "out.py.c2pa").is_file()


def test_full_disk_keeps_the_old_output(home, src, monkeypatch):
    """ENOSPC while the text is written: one line naming the user's path, the old file and its
    sidecar as they were, no temporary file left."""
    out = src.parent / "out.py"
    out.write_text("old\n", encoding="utf-8")
    (src.parent / "out.py.c2pa").write_bytes(b"old manifest")
    write_text = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.parent == src.parent and self.name.startswith("."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    o = mdiff(complete(home, src, "-o", out, "--force"), watch=[src.parent])
    assert o.kind == "error", o
    assert f"cannot write {out}" in o.stderr and "No space left" in o.stderr, o


def test_in_place_replaces_the_input(home, src):
    o = mdiff(complete(home, src, "--in-place"),
              check=lambda r: "<FILL>" not in src.read_text(encoding="utf-8"))  # fmt: skip
    assert o.kind == "accepted", o
    assert src.read_text(encoding="utf-8").startswith("def f(x):\n    return ")
    assert (src.parent / "todo.py.c2pa").is_file()


# ---- the user's bytes are kept exactly -----------------------------------------------------


def test_crlf_bom_and_no_final_newline_are_kept(home, tmp_path):
    prefix = "\ufeffimport os\r\n\r\ndef f(x):\r\n    "
    suffix = "\r\n\r\ndef g():\r\n    return 1"  # no final line break
    path = tmp_path / "crlf.py"
    path.write_bytes((prefix + "<FILL>" + suffix).encode("utf-8"))

    def exact(r):
        text = r.stdout
        middle = text[len(prefix) : len(text) - len(suffix)]
        lone_lf = middle.replace("\r\n", "").count("\n")
        return text.startswith(prefix) and text.endswith(suffix) and lone_lf == 0

    argv = ["--home", home, "complete", path, "--length", "30", "--steps", "4"]
    o = mdiff(argv, watch=[tmp_path], check=exact)
    assert o.kind == "accepted", o


class NewlineModel(torch.nn.Module):
    """Writes only line breaks (LF, as a model trained on LF files does)."""

    def __init__(self, spec, newline: int):
        super().__init__()
        self.spec = dataclasses.replace(spec, supports_cache=False)
        self.newline = newline
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        logits = torch.full((*input_ids.shape, self.spec.vocab_size), -1e4)
        logits[..., self.newline] = 0.0
        return logits


def test_a_middle_takes_the_line_ending_of_its_file(cm):
    from mdiff.text.fim.infilling import infill

    (newline,) = cm.tokenizer.encode("\n")
    model = NewlineModel(cm.model.spec, newline)
    crlf = call(lambda: infill(model, cm.tokenizer, "x = 1\r\n", "\r\ny = 2", 2, heal=False),
                check=lambda r: r.text == "x = 1\r\n" + "\r\n" * 2 + "\r\ny = 2")  # fmt: skip
    assert crlf.kind == "accepted", crlf
    lf = call(lambda: infill(model, cm.tokenizer, "x = 1\n", "\ny = 2", 2, heal=False),
              check=lambda r: r.text == "x = 1\n\n\n\ny = 2")  # fmt: skip
    assert lf.kind == "accepted", lf


def test_file_name_that_is_not_utf8(home, tmp_path):
    """A name with a byte that is not UTF-8 (as Python passes it: a surrogate) is recorded as
    text, so signing works."""
    path = tmp_path / "caf\udcff.py"
    path.write_text(MARKED, encoding="utf-8")
    out = tmp_path / "out.py"
    o = mdiff(complete(home, path, "-o", out), check=lambda r: out.is_file())
    assert o.kind == "accepted", o


# ---- eval fim ------------------------------------------------------------------------------

EVAL = [
    ("seed -1", ["--seed", "-1"], "--seed"),
    ("fixed length 0", ["--fixed-length", "0"], "--fixed-length"),
    ("threshold nan", ["--threshold", "nan"], "threshold must be a finite number"),
    ("corpus is a file", ["--corpus", "FILE"], "is not a folder"),
]


@pytest.mark.parametrize("name, extra, words", EVAL, ids=[e[0] for e in EVAL])
def test_eval_fim_bad_arguments(src, name, extra, words):
    extra = [str(src) if a == "FILE" else a for a in extra]
    o = mdiff(["eval", "fim", "-n", "1", *extra], watch=[src.parent])
    assert o.kind == "error", o
    assert words in o.stderr, o


# ---- the SDK -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cm(home):
    from mdiff.provenance.stamp import Stamper
    from mdiff.text.pipeline import CodeModel

    return CodeModel.from_pretrained("code-tiny", stamper=Stamper(home=home))


FILL = "x = <FILL>\n"
SDK = [  # (name, call on the CodeModel `cm`)
    ("fill None", lambda cm: cm.fill(None)),
    ("fill bytes", lambda cm: cm.fill(b"x = <FILL>")),
    ("fill int", lambda cm: cm.fill(123)),
    ("fill empty marker", lambda cm: cm.fill(FILL, marker="")),
    ("fill length True", lambda cm: cm.fill(FILL, length=True)),
    ("fill length huge", lambda cm: cm.fill(FILL, length=10**12)),
    ("fill seed -1", lambda cm: cm.fill(FILL, length=2, seed=-1)),
    ("fill seed str", lambda cm: cm.fill(FILL, length=2, seed="0")),
    ("fill steps 0", lambda cm: cm.fill(FILL, length=2, steps=0)),
    ("fill temperature str", lambda cm: cm.fill(FILL, length=2, temperature="hot")),
    ("fill temperature nan", lambda cm: cm.fill(FILL, length=2, temperature=math.nan)),
    ("fill top_p str", lambda cm: cm.fill(FILL, length=2, top_p="a")),
    ("fill guidance 1e308", lambda cm: cm.fill(FILL, length=2, guidance=1e308)),
    ("fill unknown setting", lambda cm: cm.fill(FILL, length=2, temprature=1.0)),
    ("fill streamer_factory int", lambda cm: cm.fill(FILL, length=2, streamer_factory=1)),
    ("fill source int", lambda cm: cm.fill(FILL, length=2, source=1)),
    ("infill None", lambda cm: cm.infill(None, "x", 2)),
    ("infill bytes", lambda cm: cm.infill(b"a", "x", 2)),
    ("infill str and list", lambda cm: cm.infill("a", ["x"], 2)),
    ("generate None", lambda cm: cm.generate(None, 2)),
    ("generate bytes", lambda cm: cm.generate(b"a", 2)),
    ("generate length str", lambda cm: cm.generate("a", "2")),
    ("generate length huge", lambda cm: cm.generate("a", 10**9)),
    ("generate seed 2^64-1", lambda cm: cm.generate("a", 2, seed=2**64 - 1)),
    ("generate config dict", lambda cm: cm.generate("a", 2, config={})),
    ("from_pretrained None", lambda cm: type(cm).from_pretrained(None)),
    ("from_pretrained int", lambda cm: type(cm).from_pretrained(123)),
]  # fmt: skip


@pytest.mark.parametrize("name, fn", SDK, ids=[s[0] for s in SDK])
def test_sdk_refuses_bad_arguments(cm, name, fn):
    o = call(lambda: fn(cm))
    assert o.kind == "error", o
    assert "GenerationConfig(" not in str(o.error), o


@pytest.fixture(scope="module")
def done(cm):
    return cm.fill(FILL, length=2, steps=1)


@pytest.mark.parametrize("target", [None, 1.5, "DIR", "no/such/dir/a.py", "a.png"])
def test_save_refuses_bad_paths(done, tmp_path, target):
    target = tmp_path if target == "DIR" else target
    target = tmp_path / target if isinstance(target, str) else target
    o = call(lambda: done.save(target), watch=[tmp_path])
    assert o.kind == "error", o


def test_save_keeps_an_existing_file_unless_overwrite(done, tmp_path):
    path = tmp_path / "a.py"
    path.write_text("mine\n", encoding="utf-8")
    o = call(lambda: done.save(path), watch=[tmp_path])
    assert o.kind == "error" and "overwrite=True" in str(o.error), o
    o = call(lambda: done.save(path, overwrite=True), check=lambda p: p.read_text() == done.text)
    assert o.kind == "accepted", o


def test_sdk_fill_keeps_crlf(cm):
    text = "a = 1\r\nb = <FILL>\r\nc = 3"
    exact = lambda d: d.text.startswith("a = 1\r\nb = ") and d.text.endswith("\r\nc = 3")  # noqa: E731
    o = call(lambda: cm.fill(text, length=2), check=exact)
    assert o.kind == "accepted", o


@pytest.mark.parametrize("eol", ["\r\n", "\r"])
def test_a_multi_line_middle_is_written_with_the_files_line_breaks(cm, eol):
    """CRLF (Windows) and CR (classic Mac) files: the middle's line breaks are the file's."""
    prefix, suffix = eol.join(["def f(x):", "    y = 1", ""]), eol.join(["", "    return y", ""])
    lines = 0  # what a seed samples differs between CPUs; some of these seeds write lines
    for seed in range(16):
        middle = (done := cm.infill(prefix, suffix, 24, seed=seed, temperature=1.0)).middles[0]
        assert done.text == prefix + middle + suffix
        assert "\n" not in (middle.replace("\r\n", "") if eol == "\r\n" else middle), seed
        lines += eol in middle
    assert lines > 0
