"""The `mdiff` command: help, doctor, errors as one line, the installed console script."""

import shutil
import subprocess
import sys

import pytest

from mdiff import cli
from mdiff.errors import InvalidInputError


def test_doctor_lists_the_stack(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "cuda", "xformers", "c2pa", "av", "decord", "threads"):
        assert f" {name}  " in out or out.lstrip().startswith(name), name


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == cli.EXIT_ERROR
    assert "usage: mdiff" in capsys.readouterr().out


def test_mdiff_errors_become_one_line(monkeypatch, capsys):
    def boom(args):
        raise InvalidInputError("frames must be 1 + 4k, got 6")

    monkeypatch.setitem(cli.COMMANDS, "doctor", (*cli.COMMANDS["doctor"][:2], boom))
    assert cli.main(["doctor"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "mdiff: error: frames must be 1 + 4k, got 6\n"


def test_a_reader_that_leaves_ends_the_command_quietly(monkeypatch):
    """`mdiff verify x.mp4 | head`: once the pipe's reader is gone, writing raises
    BrokenPipeError; the command exits 141 and later writes go to /dev/null, no traceback."""
    import os

    read, write = os.pipe()
    os.close(read)  # the reader has left
    out = os.fdopen(write, "w")
    monkeypatch.setattr(sys, "stdout", out)

    def chatty(args):
        print("x" * 100_000)  # more than the buffer: written now, into the closed pipe
        return 0

    monkeypatch.setitem(cli.COMMANDS, "doctor", (*cli.COMMANDS["doctor"][:2], chatty))
    assert cli.main(["doctor"]) == cli.EXIT_PIPE == 141
    print("after", file=out, flush=True)  # the interpreter's last flush would not fail
    out.close()


def test_bad_thread_count(capsys):
    assert cli.main(["--threads", "0", "doctor"]) == cli.EXIT_ERROR
    assert "threads" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("mdiff") or str(__import__("pathlib").Path(sys.executable).parent / "mdiff")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "doctor" in proc.stdout and "demo" in proc.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end():
    proc = subprocess.run(
        [sys.executable, "-m", "mdiff.cli", "demo", "--steps", "100"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "energy distance" in proc.stdout and "total variation" in proc.stdout
