"""CodeModel end to end: load from a folder, complete, save with a sidecar, verify."""

import hashlib
import json
import shutil

import pytest

import mdiff.text.fim.infilling as infilling
from mdiff.errors import CheckpointError
from mdiff.provenance import keys
from mdiff.provenance.stamp import Stamper
from mdiff.provenance.verify import verify
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
from mdiff.text.pipeline import CodeModel


def test_fill_save_verify(tiny_code_model, home, tmp_path):
    cm = CodeModel.from_pretrained(tiny_code_model, stamper=Stamper(home=home))
    src = "def add(a, b):\n    return <FILL>\n\nprint(add(1, 2))\n"
    done = cm.fill(src, length=6)
    before, after = src.split("<FILL>")
    assert done.text == before + done.middles[0] + after
    ((a, b),) = done.spans
    assert done.text[a:b] == done.middles[0]
    assert done.record.edited and done.record.prompt is None
    path = done.save(tmp_path / "add.py")
    assert path.read_text(encoding="utf-8") == done.text
    report = verify(path, home=home, model=tiny_code_model)
    assert report.manifest.state == "trusted" and report.exit_code == 0
    assert report.watermark["scored"] == "generated spans"  # the tokenizer of the named model
    assert str(tmp_path) not in json.dumps(report.manifest.record.to_dict())  # no local path


def test_generated_text_carries_a_detectable_watermark(tiny_code_model, tmp_path):
    # A fixed watermark key: with a random one, z of these 160 tokens from a random model
    # ranges about 4-13 (measured over keys), which made the test flaky; the detection power
    # over many keys is measured in tests/provenance.
    home = tmp_path / "home"
    keys.init_dev_identity(home)
    (home / "watermark.secret").write_bytes(hashlib.sha256(b"mdiff text pipeline test").digest())
    cm = CodeModel.from_pretrained(tiny_code_model, stamper=Stamper(home=home))
    done = cm.generate("import os\n", gen_length=160, temperature=1.0, seed=3)
    report = verify(done.save(tmp_path / "gen.py"), home=home, model=tiny_code_model)
    assert not done.record.edited
    assert report.watermark["detected"] and report.watermark["z"] >= 5, report.watermark


def test_folder_without_tokenizer_is_refused(tmp_path):
    cfg = TextDenoiserConfig.preset("test")
    TextDenoiser(cfg).save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="tokenizer"):
        CodeModel.from_pretrained(tmp_path / "m")


def _variant(folder, dest, *, config=None, drop=(), log=None):
    """A copy of a model folder (without its training log) with config.json edited and,
    optionally, a training log written."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("training_log.json"))
    data = json.loads((dest / "config.json").read_text())
    data = {k: v for k, v in {**data, **(config or {})}.items() if k not in drop}
    (dest / "config.json").write_text(json.dumps(data))
    if log is not None:
        (dest / "training_log.json").write_text(json.dumps(log))
    return dest


def _settings(folder) -> tuple:
    cm = CodeModel.from_pretrained(folder)
    return cm.context, cm.fim_order


def _old_layout_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "old layout" in r.getMessage()]


def test_context_and_fim_order_come_from_config_json(tiny_code_model, tmp_path, caplog,
                                                     monkeypatch):  # fmt: skip
    caplog.set_level("INFO", logger="mdiff.configs")
    log = {"data": {"seq_len": 200, "fim_order": "psm"}}  # provenance only: never read
    folder = _variant(tiny_code_model, tmp_path / "m", config={"context": 48, "fim_order": "spm"},
                      log=log)  # fmt: skip
    cm = CodeModel.from_pretrained(folder)
    assert (cm.context, cm.fim_order) == (48, "spm") and not _old_layout_lines(caplog)
    seen, real = [], infilling.infill
    monkeypatch.setattr(infilling, "infill",
                        lambda *a, **kw: seen.append(kw["context"]) or real(*a, **kw))  # fmt: skip
    cm.infill("def f(x):\n    return ", "\n", length=3)
    assert seen == [48]  # infilling sees the configured window
    with pytest.raises(CheckpointError, match="fim_order"):
        CodeModel.from_pretrained(_variant(folder, tmp_path / "bad", config={"fim_order": "pms"}))


def test_old_layout_takes_context_and_fim_order_from_the_training_log(tiny_code_model, tmp_path,
                                                                      caplog):  # fmt: skip
    caplog.set_level("INFO", logger="mdiff.configs")
    old = dict(drop=("context", "fim_order"))
    log = {"data": {"seq_len": 64, "fim_order": "spm"}}
    assert _settings(_variant(tiny_code_model, tmp_path / "a", **old, log=log)) == (64, "spm")
    (line,) = _old_layout_lines(caplog)
    assert "context=64, fim_order='spm'" in line and "training_log.json" in line
    log = {"data": {"seq_len": 64}}  # exported before fim_order was recorded: PSM
    assert _settings(_variant(tiny_code_model, tmp_path / "b", **old, log=log)) == (64, "psm")
    assert _settings(_variant(tiny_code_model, tmp_path / "c", **old)) == (None, "psm")  # no log
