"""save_pretrained / from_pretrained, built-in names and the safetensors helpers."""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys

import pytest
import torch
from torch import nn

from mdiff import hub
from mdiff.errors import CheckpointError
from mdiff.hub import PretrainedMixin


@dataclasses.dataclass
class TinyConfig:
    vocab: int = 11
    width: int = 8
    hidden: tuple[int, ...] = (16, 12)
    name: str | None = None


class TinyModel(PretrainedMixin, nn.Module):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.width)
        dims = (config.width, *config.hidden, config.width)
        self.mlp = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False)))
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one Parameter under two names
        self.register_buffer("scale", torch.linspace(0, 1, config.width, dtype=torch.float64))


def _model(seed: int = 0, **kw) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel(TinyConfig(**kw))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_is_bit_exact(tmp_path):
    model = _model(name="x", hidden=(5, 7, 3))
    out = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "TinyModel" and "_mdiff_version" in config
    loaded = TinyModel.from_pretrained(out)
    assert loaded.config == model.config  # tuples come back as tuples
    _assert_same(model, loaded)
    assert loaded.head.weight is loaded.embed.weight  # still tied after loading
    assert not loaded.training
    assert hub.weights_sha256(out) == hub.weights_sha256(model) == hub.weights_sha256(loaded)


def test_from_pretrained_dtype_and_overwrite(tmp_path):
    _model(seed=0).save_pretrained(tmp_path / "c")
    second = _model(seed=1)
    second.save_pretrained(tmp_path / "c")  # replaces the old directory
    loaded = TinyModel.from_pretrained(tmp_path / "c", dtype=torch.bfloat16)
    assert loaded.mlp[0].weight.dtype == torch.bfloat16
    assert torch.equal(loaded.mlp[0].weight, second.mlp[0].weight.to(torch.bfloat16))
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp leftovers


def test_weights_sha256_detects_changes():
    model = _model()
    before = hub.weights_sha256(model)
    with torch.no_grad():
        model.mlp[0].bias[0] += 1e-3
    assert hub.weights_sha256(model) != before


def _tamper(path, fn):
    tensors = hub.load_state_dict(path / "model.safetensors")
    fn(tensors)
    hub.save_state_dict(tensors, path / "model.safetensors")


@pytest.mark.parametrize(
    "hidden, tamper, message",
    [
        ((16,), lambda t: t.pop("mlp.1.bias"), r"1 missing keys: mlp\.1\.bias"),
        (
            (16,),
            lambda t: t.update({"extra.weight": torch.zeros(2)}),
            r"1 unexpected keys: extra\.weight",
        ),
        (
            (4, 4, 4, 4, 4),
            lambda t: [t.pop(k) for k in list(t) if k.startswith("mlp.")],
            r"12 missing keys: mlp\.0\.bias, .* \(\+7 more\)",
        ),
        (
            (16,),
            lambda t: t.update({"mlp.0.bias": torch.zeros(99)}),
            r"mlp\.0\.bias \(99,\) vs model \(16,\)",
        ),
    ],
    ids=["missing", "unexpected", "many-missing", "shape"],
)
def test_bad_weights_are_named(tmp_path, hidden, tamper, message):
    _model(hidden=hidden).save_pretrained(tmp_path)
    _tamper(tmp_path, tamper)
    with pytest.raises(CheckpointError, match=message):
        TinyModel.from_pretrained(tmp_path)


def test_unknown_config_key(tmp_path):
    _model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["depth"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown to TinyConfig: depth"):
        TinyModel.from_pretrained(tmp_path)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        TinyModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors .*pytorch_model\.bin"):
        TinyModel.from_pretrained(tmp_path / "empty")
    _model().save_pretrained(tmp_path / "noconf")
    (tmp_path / "noconf" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        TinyModel.from_pretrained(tmp_path / "noconf")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = _model()
    model.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for target, name in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(target, name, refuse)
    _assert_same(model, TinyModel.from_pretrained(tmp_path))


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch):
    model = _model()
    model.save_pretrained(tmp_path / "ckpt")
    before = hub.weights_sha256(tmp_path / "ckpt")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hub, "save_file", fail)  # fails after config.json was written
    with pytest.raises(RuntimeError, match="disk full"):
        _model(seed=3).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="disk full"):
        _model(seed=3).save_pretrained(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dir, no "fresh"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert hub.weights_sha256(tmp_path / "ckpt") == before  # the old checkpoint is intact


def test_shared_and_sliced_tensors_save(tmp_path):
    base = torch.arange(12.0)
    tensors = {"a": base[:6], "b": base[6:], "c": base.view(3, 4).t(), "d": base}
    hub.save_state_dict(tensors, tmp_path / "w.safetensors")
    loaded = hub.load_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_tied_weights_are_stored_once_and_retied(tmp_path):
    model = _model(seed=3)
    model.save_pretrained(tmp_path / "m")
    stored = hub.load_state_dict(tmp_path / "m" / hub.WEIGHTS_NAME)
    assert "embed.weight" in stored and "head.weight" not in stored
    loaded = TinyModel.from_pretrained(tmp_path / "m")
    assert loaded.head.weight is loaded.embed.weight  # one Parameter again
    _assert_same(model, loaded)
    assert hub.weights_sha256(model) == hub.weights_sha256(tmp_path / "m")
    # an older file that stored both names still loads
    both = {k: v.clone() for k, v in model.state_dict().items()}
    hub.save_state_dict(both, tmp_path / "m" / hub.WEIGHTS_NAME)
    _assert_same(model, TinyModel.from_pretrained(tmp_path / "m"))


class LoggedModel(TinyModel):
    """A class whose older exports kept `name` and `width` only in their training log."""

    legacy_log_fields = {"name": ("data", "name"), "width": ("model", "width")}


def _drop_config_keys(folder, *keys) -> None:
    config = json.loads((folder / hub.CONFIG_NAME).read_text())
    (folder / hub.CONFIG_NAME).write_text(
        json.dumps({k: v for k, v in config.items() if k not in keys})
    )


def _old_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "old layout" in r.getMessage()]


def test_old_layout_takes_legacy_fields_from_the_training_log_once(tmp_path, caplog):
    folder = _model(seed=4, width=6).save_pretrained(tmp_path / "m")
    log = {"data": {"name": "old"}, "model": {"width": 6}}
    (folder / hub.TRAINING_LOG).write_text(json.dumps(log))
    caplog.set_level("INFO", logger="mdiff.configs")
    new = LoggedModel.from_pretrained(folder)  # new layout: the log is provenance only
    assert (new.config.name, new.config.width) == (None, 6) and not _old_messages(caplog)
    _drop_config_keys(folder, "name", "width")
    old = LoggedModel.from_pretrained(folder)
    assert (old.config.name, old.config.width) == ("old", 6)
    _assert_same(old, _model(seed=4, width=6))
    (line,) = _old_messages(caplog)
    assert "name='old', width=6" in line and hub.TRAINING_LOG in line and "re-save" in line


def test_old_layout_without_a_usable_log_keeps_the_defaults(tmp_path, caplog):
    folder = _model(name="kept").save_pretrained(tmp_path / "m")
    _drop_config_keys(folder, "name")
    caplog.set_level("INFO", logger="mdiff.configs")
    assert LoggedModel.from_pretrained(folder).config.name is None  # no log
    (folder / hub.TRAINING_LOG).write_text(json.dumps({"data": {"steps": 3}}))
    assert LoggedModel.from_pretrained(folder).config.name is None  # the log lacks the field
    assert not _old_messages(caplog)
    (folder / hub.TRAINING_LOG).write_text("{not json")
    assert LoggedModel.from_pretrained(folder).config.name is None
    assert any("keeping the config defaults" in r.getMessage() for r in caplog.records)


@pytest.fixture
def fake_builtins(tmp_path, monkeypatch):
    """A top-level package `mdiff_fake_frontend` with checkpoints/ as its package data."""
    pkg = tmp_path / "site" / "mdiff_fake_frontend"
    (pkg / "checkpoints").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('a frontend must not be imported')\n")
    _model(seed=5).save_pretrained(pkg / "checkpoints" / "tiny-one")
    _model(seed=6, width=4).save_pretrained(pkg / "checkpoints" / "tiny-two")
    (pkg / "checkpoints" / "not-a-checkpoint").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(hub, "BUILTIN_PACKAGES", ("mdiff_fake_frontend", "mdiff_absent_frontend"))
    monkeypatch.chdir(tmp_path)  # so that a relative "tiny-one" path does not exist
    return pkg


def test_builtin_names_resolve_without_importing(fake_builtins):
    assert hub.list_builtin() == ["tiny-one", "tiny-two"]
    assert hub.resolve("tiny-two") == fake_builtins / "checkpoints" / "tiny-two"
    model = TinyModel.from_pretrained("tiny-two")
    _assert_same(model, _model(seed=6, width=4))
    assert "mdiff_fake_frontend" not in sys.modules


def test_existing_path_wins_over_builtin_name(fake_builtins, tmp_path):
    _model(seed=9).save_pretrained(tmp_path / "tiny-one")  # cwd is tmp_path
    _assert_same(TinyModel.from_pretrained("tiny-one"), _model(seed=9))


def test_unknown_name_lists_builtins(fake_builtins):
    with pytest.raises(CheckpointError, match=r"built-in names: tiny-one, tiny-two\)"):
        hub.resolve("tiny-three")


def test_real_frontends_are_not_imported(monkeypatch):
    for name in [m for m in sys.modules if m.startswith(("mdiff.video", "mdiff.text"))]:
        monkeypatch.delitem(sys.modules, name)
    hub.list_builtin()
    with pytest.raises(CheckpointError, match="built-in names"):
        hub.resolve("surely-not-a-model")
    assert not [m for m in sys.modules if m.startswith(("mdiff.video", "mdiff.text"))]


def test_atomic_file_permissions_follow_umask_or_the_replaced_file(tmp_path):
    import os

    from mdiff.atomic import atomic_dir, atomic_file, write_text_atomic
    from mdiff.hub import save_state_dict

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "new.txt", "x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
        (tmp_path / "kept.txt").write_text("old")
        (tmp_path / "kept.txt").chmod(0o640)
        write_text_atomic(tmp_path / "kept.txt", "new")
        assert (tmp_path / "kept.txt").stat().st_mode & 0o777 == 0o640
        save_state_dict({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
        with atomic_dir(tmp_path / "pub") as d:
            (d / "x").write_text("1")
        assert (tmp_path / "pub").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "fail.bin") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kept.txt",
        "new.txt",
        "pub",
        "w.safetensors",
    ]
