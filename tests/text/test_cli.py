"""`mdiff complete` and `mdiff eval fim` from the command line."""

import json

import pytest

from mdiff import cli, demo
from mdiff.provenance.verify import verify


def test_complete_prints_and_writes_signed(tiny_code_model, home, tmp_path, capsys):
    src = tmp_path / "todo.py"
    src.write_text("def f(x):\n    return <FILL>\n\n\ny = f(2)\n", encoding="utf-8")
    args = ["--home", str(home), "complete", str(src), "--model", str(tiny_code_model)]
    assert cli.main([*args, "--length", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("def f(x):\n    return ") and printed.endswith("\n\n\ny = f(2)\n")
    out = tmp_path / "done.py"
    assert cli.main([*args, "--length", "5", "-o", str(out), "--stream"]) == 0
    assert out.read_text(encoding="utf-8") == printed  # streaming changes nothing
    assert "committed" in capsys.readouterr().err
    assert verify(out, home=home).manifest.state == "trusted"


def test_complete_line_mode_keeps_other_lines(tiny_code_model, home, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text("import os\n    x = old_code()\nprint(x)\n", encoding="utf-8")
    argv = ["--home", str(home), "complete", str(src), "--line", "2", "--length", "3",
            "--model", str(tiny_code_model)]  # fmt: skip
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == "import os" and lines[1].startswith("    ") and lines[-2] == "print(x)"
    assert "old_code" not in lines[1]


@pytest.mark.parametrize(
    "text, line, want",
    [("import os\n\x0c\ndef f(x):\n    y = 1\n", 4, "import os\n\x0c\ndef f(x):\n    <FILL>\n"),
     ("# a\u2028b\nx = 1\n", 2, "# a\u2028b\n<FILL>\n"),  # a U+2028 inside a comment
     ("a\r\nb\rc", 3, "a\r\nb\r<FILL>"),  # CRLF, CR, and no line break at the end
     ("\ufeffimport os\nx\n", 1, "\ufeff<FILL>\nx\n")],  # the BOM stays
)  # fmt: skip
def test_line_numbers_are_the_editors(text, line, want):
    from mdiff.text.cli import line_hole

    assert line_hole(text, line) == want


def test_outputs_take_any_source_suffix_and_in_place_follows_a_link(tiny_code_model, home,
                                                                    tmp_path, capsys):  # fmt: skip
    real = tmp_path / "real"
    real.mkdir()
    (real / "run.sh").write_text("echo <FILL>\n", encoding="utf-8")
    link = tmp_path / "run.sh"
    link.symlink_to(real / "run.sh")
    base = ["--home", str(home), "complete", "--model", str(tiny_code_model), "--length", "2"]
    for out in ("out.cpp", "Makefile", "out.yaml"):
        assert cli.main([*base, str(link), "-o", str(tmp_path / out)]) == 0, out
    assert cli.main([*base, str(link), "--in-place"]) == 0
    assert link.is_symlink() and "<FILL>" not in (real / "run.sh").read_text(encoding="utf-8")
    assert verify(real / "run.sh", home=home).manifest.state == "trusted"
    assert cli.main(["eval", "fim", "--model", str(tiny_code_model), "--files", ""]) == 4
    assert "--files needs a folder" in capsys.readouterr().err
    tasks = tmp_path / "tasks"  # the completed run.sh may hold no single-line task
    tasks.mkdir()
    (tasks / "a.sh").write_text("echo one\necho two\n", encoding="utf-8")
    code = cli.main(["eval", "fim", "--model", str(tiny_code_model), "--files", str(tasks),
                     "--ext", ".sh", "--modes", "fixed", "--fixed-length", "100000"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 4 and err.startswith("mdiff: error: --fixed-length 100000") and "fim:" not in err


@pytest.mark.parametrize(
    "extra, message",
    [([], "no <FILL>"), (["--line", "9"], "outside the file"), (["--length", "x"], "--length")],
)
def test_complete_errors_are_one_line(tiny_code_model, tmp_path, capsys, extra, message):
    src = tmp_path / "plain.py"
    src.write_text("a = 1\n", encoding="utf-8")
    code = cli.main(["complete", str(src), "--model", str(tiny_code_model), *extra])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and message in err and err.count("\n") == 1


def test_eval_fim_json(tiny_code_model, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(60):  # enough files that the held-out split holds a few
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + 1\n")
    argv = ["eval", "fim", "--model", str(tiny_code_model), "--corpus", str(corpus), "-n", "3",
            "--modes", "fixed,true", "--fixed-length", "4", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["modes"]) == {"fixed", "true"}
    assert 1 <= report["tasks"] <= 3
    assert report["modes"]["fixed"]["tokens"] == 4 * report["tasks"]


def test_demo_completes_with_the_builtin_model(tiny_code_model, home, tmp_path, monkeypatch):
    import shutil

    from mdiff import hub
    from mdiff.provenance.stamp import Stamper

    pkg = tmp_path / "site" / "fake_text_frontend"
    shutil.copytree(tiny_code_model, pkg / "checkpoints" / "code-tiny")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(hub, "BUILTIN_PACKAGES", ("fake_text_frontend",))
    (path,) = demo.complete_file(tmp_path, Stamper(home=home), 0)
    assert path.name == "completed.py" and "<FILL>" not in path.read_text(encoding="utf-8")
    assert verify(path, home=home).exit_code == 0


def test_the_schedule_help_names_every_schedule():
    from mdiff import unmask_rules
    from mdiff.text.cli import SCHEDULE_HELP

    assert tuple(SCHEDULE_HELP.split("|")) == unmask_rules.SCHEDULES


def test_a_file_whose_code_holds_the_marker_text(tiny_code_model, home, tmp_path, capsys):
    src = tmp_path / "marks.py"
    src.write_text('MARK = "<FILL>"\nx = 1\ny = HOLE\n', encoding="utf-8")
    base = ["--home", str(home), "complete", str(src), "--model", str(tiny_code_model),
            "--length", "2"]  # fmt: skip
    assert cli.main([*base, "--line", "2"]) == 0  # its own "<FILL>" string stays as it is
    out = capsys.readouterr().out
    assert out.startswith('MARK = "<FILL>"\n') and out.endswith("\ny = HOLE\n")
    assert "x = 1" not in out
    assert cli.main([*base, "--marker", "HOLE"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('MARK = "<FILL>"\nx = 1\ny = ') and "HOLE" not in out
    assert cli.main([*base, "--marker", "  "]) == 4
    assert "--marker must be some text" in capsys.readouterr().err
