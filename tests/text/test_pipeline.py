"""CodeModel end to end: load from a folder, complete, save with a sidecar, verify."""

import hashlib

import pytest

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
    report = verify(path, home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0
    assert report.watermark["scored"] == "generated spans"  # tokenizer found via the model id


def test_generated_text_carries_a_detectable_watermark(tiny_code_model, tmp_path):
    # A fixed watermark key: with a random one, z of these 160 tokens from a random model
    # ranges about 4-13 (measured over keys), which made the test flaky; the detection power
    # over many keys is measured in tests/provenance.
    home = tmp_path / "home"
    keys.init_dev_identity(home)
    (home / "watermark.secret").write_bytes(hashlib.sha256(b"mdiff text pipeline test").digest())
    cm = CodeModel.from_pretrained(tiny_code_model, stamper=Stamper(home=home))
    done = cm.generate("import os\n", gen_length=160, temperature=1.0, seed=3)
    report = verify(done.save(tmp_path / "gen.py"), home=home)
    assert not done.record.edited
    assert report.watermark["detected"] and report.watermark["z"] >= 5, report.watermark


def test_folder_without_tokenizer_is_refused(tmp_path):
    cfg = TextDenoiserConfig.preset("test")
    TextDenoiser(cfg).save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="tokenizer"):
        CodeModel.from_pretrained(tmp_path / "m")
