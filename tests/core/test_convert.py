"""`mdiff convert`: pickled state dicts to safetensors without running code."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mdiff.cli import EXIT_ERROR, main
from mdiff.convert import convert, read_plain_state_dict
from mdiff.errors import CheckpointError
from mdiff.hub import load_state_dict


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"blocks.0.w": torch.randn(3, 4, generator=g), "head.b": torch.randn(4, generator=g)}


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _same(a, b):
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plain_state_dict_converts_exactly(tmp_path):
    src = tmp_path / "w.pt"
    torch.save(_weights(), src)
    out = convert(src, tmp_path / "w.safetensors")
    _same(load_state_dict(out), _weights())


def test_nesting_is_unwrapped_and_prefix_stripped(tmp_path):
    wrapped = {"model": {f"module.{k}": v for k, v in _weights().items()}, "step": 7}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    out = convert(tmp_path / "ckpt.pth", tmp_path / "a.safetensors", strip_prefix="module.")
    _same(load_state_dict(out), _weights())
    auto = read_plain_state_dict(tmp_path / "ckpt.pth", strip_prefix="auto")
    _same(auto, _weights())


def test_self_forcing_layout_needs_key_and_takes_it(tmp_path):
    w = _weights()
    ema = {k: v + 1 for k, v in w.items()}
    ckpt = {"generator": {f"model.{k}": v for k, v in w.items()},
            "generator_ema": {f"model.{k}": v for k, v in ema.items()}}  # fmt: skip
    torch.save(ckpt, tmp_path / "sf.pt")
    with pytest.raises(CheckpointError, match="several weight sets.*generator.*--key"):
        read_plain_state_dict(tmp_path / "sf.pt")
    got = read_plain_state_dict(tmp_path / "sf.pt", key="generator_ema", strip_prefix="model.")
    _same(got, ema)


def test_folder_with_config(tmp_path):
    torch.save(_weights(), tmp_path / "w.pt")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"_class_name": "X", "_diffusers_version": "0.42.1", "a": 1}))
    out = convert(tmp_path / "w.pt", tmp_path / "folder", config=cfg)
    assert json.loads((out / "config.json").read_text())["a"] == 1
    _same(load_state_dict(out / "diffusion_pytorch_model.safetensors"), _weights())


def test_code_running_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        convert(tmp_path / "evil.pt", tmp_path / "o.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_non_tensor_values_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "lr": 0.1}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="'lr' is a float"):
        read_plain_state_dict(tmp_path / "mixed.pt")


def test_cli_one_line_and_exit_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), tmp_path / "evil.pt")
    code = main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_ERROR and err.startswith("mdiff: error: refused") and "\n" not in err
    assert not marker.exists()
    torch.save(_weights(), tmp_path / "w.pt")
    out = tmp_path / "w.safetensors"
    assert main(["convert", str(tmp_path / "w.pt"), str(out)]) == 0
    _same(load_state_dict(out), _weights())
    assert main(["convert", str(tmp_path / "w.pt"), str(out)]) == EXIT_ERROR  # exists
    assert main(["convert", str(tmp_path / "w.pt"), str(out), "--force"]) == 0
    assert not os.path.exists(tmp_path / "missing.safetensors")
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "x.safetensors")]) == 4


def test_a_sharded_index_converts_shard_by_shard_and_checks_its_map(tmp_path):
    from mdiff.convert import SHARDED_INDEX, convert_sharded

    w = _weights()
    torch.save({"blocks.0.w": w["blocks.0.w"]}, tmp_path / "a.bin")
    torch.save({"head.b": w["head.b"]}, tmp_path / "b.bin")
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"blocks.0.w": "a.bin", "head.b": "b.bin"}}))
    out = convert_sharded(index, tmp_path / "out")
    new = json.loads((out / SHARDED_INDEX).read_text())["weight_map"]
    got = {k: load_state_dict(out / f)[k] for k, f in new.items()}
    _same(got, w)
    with pytest.raises(Exception, match="--force"):
        convert_sharded(index, out)
    index.write_text(json.dumps({"weight_map": {"blocks.0.w": "a.bin", "head.b": "a.bin"}}))
    with pytest.raises(CheckpointError, match="lacks head.b"):
        convert_sharded(index, tmp_path / "again")
    assert not (tmp_path / "again" / SHARDED_INDEX).exists()
