"""The `mdiff` command: help, doctor, errors as one line, the installed console script, and a
parser that imports no torch."""

import json
import shutil
import subprocess
import sys

import pytest

from mdiff import cli, doctor
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

    monkeypatch.setattr(doctor, "run", boom)
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

    monkeypatch.setattr(doctor, "run", chatty)
    assert cli.main(["doctor"]) == cli.EXIT_PIPE == 141
    print("after", file=out, flush=True)  # the interpreter's last flush would not fail
    out.close()


def test_bad_thread_count(capsys):
    assert cli.main(["--threads", "0", "doctor"]) == cli.EXIT_ERROR
    assert "threads" in capsys.readouterr().err


def test_building_the_parser_imports_no_torch():
    """`mdiff --help` stays fast: the frontends register their commands without torch (a
    command's own flags, a train recipe's included, load when it is chosen)."""
    code = ("import sys; from mdiff import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'c2pa', 'numpy') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.replace("'", '"')) == []


# the flags of `mdiff train MODEL` as they were when the recipes replaced hand-written parsers,
# plus those added since (dit: --distill, --freeze-dit)
TRAIN_FLAGS = {
    "vae": "--base-dim --batch-size --crop --eval-every --export --export-only --focus-weight "
    "--frames --freeze-encoder --init-from --log-every --lr --mixed-precision --no-progress "
    "--out --recon --res-blocks --resume --save-every --seed --size --steps --threads --z-dim",
    "dit": "--batch-size --caption-dropout --clean-context --clips --context-noise --cooldown "
    "--distill --eval-every --export --export-frames --export-only --export-vae "
    "--first-chunk-weight --frames --free-form --freeze-dit --guidance --init-from --log-every "
    "--lr --mixed-precision --no-progress --out --preset --resume --save-every --seed --shift "
    "--sink-position --size --steps --threads --vae",
    "text": "--batch-size --block-size --checkpoint --cooldown --corpus --eval-every --export "
    "--export-only --fim-order --init-from --kind --log-every --lr --mixed-precision "
    "--no-progress --out --pattern --preset --resume --save-every --seed --seq-len --steps "
    "--threads --vocab-size",
}


@pytest.mark.parametrize("model", sorted(TRAIN_FLAGS))
def test_train_flags_come_from_the_recipe_fields(model, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", model, "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]  # "usage: mdiff train … [--out OUT] …"
    assert exc.value.code == 0
    flags = {w.strip("[]") for w in usage.split() if w.startswith(("--", "[--"))}
    flags -= {"--help", "--home"}  # global flags, also taken after the command
    assert sorted(flags) == TRAIN_FLAGS[model].split()


def test_train_flag_defaults():
    def parsed(*argv):
        args = cli.build_parser().parse_args(["train", *argv])
        return {k: v for k, v in vars(args).items() if k not in ("run", "train_target")}

    vae = parsed("vae")
    assert (vae["steps"], vae["batch_size"], vae["save_every"], vae["lr"], vae["frames"]) == (
        100_000, 4, 200, None, None)  # fmt: skip
    assert (vae["mixed_precision"], vae["crop"], vae["res_blocks"], vae["progress"]) == (
        None, None, 1, True)  # fmt: skip
    dit = parsed("dit", "--no-progress")
    assert (dit["preset"], dit["vae"], dit["batch_size"], dit["lr"], dit["clips"]) == (
        "shapes-tiny", "shapes-vae", 16, 3e-4, 16384)  # fmt: skip
    assert (dit["mixed_precision"], dit["frames"], dit["progress"], dit["guidance"]) == (
        "no", 17, False, None)  # fmt: skip
    text = parsed("text", "--kind", "ar")
    assert (text["kind"], text["steps"], text["seq_len"], text["checkpoint"]) == (
        "ar", 20_000, 256, "latest")  # fmt: skip
    for bad in (["vae", "--frames", "6"], ["dit", "--sink-position", "x"], ["text", "--kind", "x"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["train", *bad])


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
