"""`mdiff eval fim --files DIR`: holes cut from any folder of code, through the CLI in-process."""

import json

import pytest
import torch

from mdiff import cli
from mdiff.errors import InvalidInputError
from mdiff.text.fim.tasks import make_tasks, source_files

from .test_fim_real_tokenizers import WholeTextOracle, gpt2_tokenizer

CODE = "def f{i}(x):\n    total = x * {i} + 1\n    return total - {i}\n"


def code_folder(root):
    """Two usable .py files (one nested), a .js file, and one binary, one Latin-1, one huge
    and one hidden .py file."""
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / ".venv").mkdir()
    (root / "a.py").write_text(CODE.format(i=1) + "print(f1(2))  # café\n", encoding="utf-8")
    (root / "pkg" / "sub" / "b.py").write_text(CODE.format(i=2) * 2, encoding="utf-8")
    (root / "app.js").write_text("function add(a, b) {\n  return a + b * 2;\n}\n")
    (root / "blob.py").write_bytes(b"x = 1\n\0\0\0binary data here\n")
    (root / "latin.py").write_bytes("s = 'caf\xe9 au lait'\nprint(s)\n".encode("latin-1"))
    (root / "huge.py").write_text("value_name = 12345678\n" * 60000)  # over 1 MiB
    (root / ".venv" / "hidden.py").write_text(CODE.format(i=9))
    return root


def test_source_files_reads_every_usable_file(tmp_path):
    files, skipped = source_files(code_folder(tmp_path))
    assert [name for name, _ in files] == ["a.py", "pkg/sub/b.py"]
    assert skipped == {"binary": 1, "not UTF-8": 1, "too large": 1}
    js, none_skipped = source_files(tmp_path, (".js",))
    assert [name for name, _ in js] == ["app.js"] and none_skipped == {}
    tasks = make_tasks(files, "single", 4, seed=0)
    assert tasks == make_tasks(files, "single", 4, seed=0)  # deterministic
    assert {t.task_id.split(":")[0] for t in tasks} == {"single/a.py", "single/pkg/sub/b.py"}
    assert any(make_tasks(files, "single", 4, seed=s) != tasks for s in range(1, 6))


@pytest.mark.parametrize(
    ("setup", "message"),
    [(lambda p: p / "missing", "no such folder"), (lambda p: p, "no .py files"),
     (lambda p: (p / "x.py").write_bytes(b"\0\1") and p, "none of the 1 .py files"),
     (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is not a folder")],
)  # fmt: skip
def test_bad_folders_are_one_line_errors(tiny_code_model, tmp_path, capsys, setup, message):
    folder = setup(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        source_files(folder)
    code = cli.main(["eval", "fim", "--model", str(tiny_code_model), "--files", str(folder)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and message in err and err.count("\n") == 1


def test_eval_fim_files_through_the_cli(tiny_code_model, tmp_path, capsys):
    folder = code_folder(tmp_path / "code")
    argv = ["eval", "fim", "--model", str(tiny_code_model), "--files", str(folder), "-n", "3",
            "--modes", "fixed,true", "--fixed-length", "4", "--seed", "1"]  # fmt: skip
    assert cli.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 3 and report["modes"]["fixed"]["tokens"] == 12
    skipped = {"binary": 1, "not UTF-8": 1, "too large": 1}
    assert report["source"] == {"root": str(folder), "files": 2, "skipped": skipped}
    assert cli.main(argv) == 0
    assert "(2 files used; skipped 1 binary, 1 not UTF-8, 1 too large)" in capsys.readouterr().out
    assert cli.main([*argv, "--ext", "js", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"]["files"] == 1


def test_an_oracle_scores_every_hole_it_knows(tmp_path, capsys, monkeypatch):
    """Through the CLI with a real (byte-level BPE) tokenizer: a model that knows the tasks cut
    from the folder gets them all right at the true length, one that knows other files none."""
    from mdiff.text import pipeline

    folder = code_folder(tmp_path / "code")
    tok = gpt2_tokenizer()
    files, _ = source_files(folder)
    known = [(t.prefix, t.middle, t.suffix) for t in make_tasks(files, "single", 3, seed=2)]
    other = [(p.replace("total", "count"), m, s) for p, m, s in known]
    for cases, em in [(known, 1.0), (other, 0.0)]:
        cm = pipeline.CodeModel(WholeTextOracle(tok, cases), tok, "oracle", weights_sha256="0")
        monkeypatch.setattr(pipeline.CodeModel, "from_pretrained", lambda *a, cm=cm, **k: cm)
        argv = ["eval", "fim", "--files", str(folder), "-n", "3", "--modes", "true",
                "--seed", "2", "--json"]  # fmt: skip
        assert cli.main(argv) == 0
        assert json.loads(capsys.readouterr().out)["modes"]["true"]["exact_match"] == em


def test_eval_fim_files_with_a_transformers_folder(tmp_path, capsys):
    from transformers import BertConfig, BertForMaskedLM

    tok = gpt2_tokenizer(600)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=512)  # fmt: skip
    model_dir = tmp_path / "bert"
    BertForMaskedLM(cfg).eval().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    folder = code_folder(tmp_path / "code")
    argv = ["eval", "fim", "--model", str(model_dir), "--files", str(folder), "-n", "2",
            "--modes", "fixed,auto", "--fixed-length", "3", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 2 and report["modes"]["fixed"]["tokens"] == 6
    assert 0.0 <= report["modes"]["auto"]["exact_match"] <= 1.0
