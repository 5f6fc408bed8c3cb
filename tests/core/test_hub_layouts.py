"""Checkpoint folder layouts (`mdiff.weights`): diffusers' and transformers' weight names,
sharded indexes, `subfolder=`, per-class layouts for `save_pretrained`, pickled-only folders."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from torch import nn

from mdiff import hub, weights
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import PretrainedMixin


@dataclasses.dataclass
class Config:
    width: int = 8
    hidden: tuple[int, ...] = (16, 12)


class Model(PretrainedMixin, nn.Module):
    config_class = Config

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        dims = (config.width, *config.hidden, config.width)
        self.mlp = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False)))


class DiffusersLike(Model):
    """A class whose architecture matches a (pretend) diffusers model."""

    diffusers_class = "FakeDiffusersModel"
    weights_name = hub.DIFFUSERS_WEIGHTS_NAME


def _model(cls=Model, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return cls(Config(**kw))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _write_shards(folder, tensors: dict, name: str, groups: list[list[str]]) -> None:
    """A sharded layout written by hand (as diffusers/transformers write it)."""
    weight_map = {}
    for i, keys in enumerate(groups):
        shard = name.replace(".safetensors", f"-{i + 1:05d}-of-{len(groups):05d}.safetensors")
        hub.save_state_dict({k: tensors[k] for k in keys}, folder / shard, {"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / (name + ".index.json")).write_text(json.dumps(index))


def _resave_as(folder, name: str, shards: int = 1) -> dict:
    """Replace the folder's model.safetensors by `name`, in `shards` shards (1 = one file)."""
    tensors = hub.load_state_dict(folder / hub.WEIGHTS_NAME)
    (folder / hub.WEIGHTS_NAME).unlink()
    if shards == 1:
        hub.save_state_dict(tensors, folder / name)
    else:
        keys = list(tensors)
        _write_shards(folder, tensors, name, [keys[i::shards] for i in range(shards)])
    return tensors


@pytest.mark.parametrize("name", hub.WEIGHTS_NAMES)
@pytest.mark.parametrize("shards", [1, 3])
def test_every_weights_name_and_sharding_loads_and_hashes_alike(tmp_path, name, shards):
    model = _model(seed=1, hidden=(5, 7, 3))
    folder = model.save_pretrained(tmp_path / "m")
    single = hub.weights_sha256(folder)
    _resave_as(folder, name, shards)
    assert len(list(folder.glob("*.safetensors"))) == shards
    expected = folder / (name + (".index.json" if shards > 1 else ""))
    assert hub.find_weights(folder) == expected
    loaded = Model.from_pretrained(folder)
    assert _same(loaded, model)
    assert hub.weights_sha256(folder) == single == hub.weights_sha256(loaded)
    assert hub.weights_sha256(expected) == single
    assert set(hub.header_shapes(folder)) == set(model.state_dict())


def test_sharded_config_is_checked_against_the_headers_before_allocating(tmp_path):
    folder = _model().save_pretrained(tmp_path / "m")
    _resave_as(folder, hub.DIFFUSERS_WEIGHTS_NAME, shards=2)
    config = json.loads((folder / "config.json").read_text())
    config["hidden"] = [10**6, 10**6]  # a 4 TB layer if it were allocated
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.1\.weight \(12, 16\) vs model \(1000000,"):
        Model.from_pretrained(folder)
    index = folder / (hub.DIFFUSERS_WEIGHTS_NAME + ".index.json")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        hub.check_fits(Model, Config(hidden=(10**6, 10**6)), index)
    hub.check_fits(Model, Config(), index)  # the right config fits


def _sharded(tmp_path):
    folder = _model(seed=2).save_pretrained(tmp_path / "m")
    tensors = _resave_as(folder, hub.WEIGHTS_NAME, shards=2)
    index = folder / (hub.WEIGHTS_NAME + ".index.json")
    return folder, index, json.loads(index.read_text()), tensors


def _shard_names(data) -> list[str]:
    return sorted(set(data["weight_map"].values()))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f, d, t: (f / _shard_names(d)[1]).unlink(),
         r"names shards that are missing: .*-00002-"),
        (lambda f, d, t: d["weight_map"].update({"mlp.9.bias": _shard_names(d)[0]}),
         r"puts mlp\.9\.bias in .*-00001-of-00002\.safetensors, which does not hold them"),
        (lambda f, d, t: d["weight_map"].pop("mlp.0.bias"),
         r"holds mlp\.0\.bias, which its index .*\.index\.json does not list"),
        (lambda f, d, t: d["weight_map"].update({"mlp.0.bias": "../elsewhere.safetensors"}),
         r"a shard must be a file name in the same folder"),
        (lambda f, d, t: d["weight_map"].update({"mlp.0.bias": "shard.bin"}),
         r"not a safetensors file .*never unpickled.*mdiff convert IN OUT"),
        (lambda f, d, t: d.pop("weight_map"), r'no "weight_map" object'),
    ],
    ids=["missing-shard", "tensor-not-in-shard", "tensor-not-in-index", "escapes-folder",
         "pickled-shard", "no-weight-map"],
)  # fmt: skip
def test_broken_indexes_are_named(tmp_path, damage, message):
    folder, index, data, tensors = _sharded(tmp_path)
    damage(folder, data, tensors)
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        Model.from_pretrained(folder)
    with pytest.raises(CheckpointError, match=message):
        hub.weights_sha256(folder)


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    folder, index, data, tensors = _sharded(tmp_path)
    first, second = _shard_names(data)
    key = next(k for k, shard in data["weight_map"].items() if shard == first)
    extra = {k: v for k, v in tensors.items() if data["weight_map"][k] == second}
    extra[key] = tensors[key]  # also in the first shard, where the index puts it
    hub.save_state_dict(extra, folder / second)
    with pytest.raises(CheckpointError, match=rf"{second} holds {key}, which its index"):
        Model.from_pretrained(folder)


def test_an_unreadable_index_is_a_checkpoint_error(tmp_path):
    folder, index, _, _ = _sharded(tmp_path)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the weights index"):
        Model.from_pretrained(folder)


@pytest.mark.parametrize(
    "files",
    [["diffusion_pytorch_model.bin"], ["model.pt"], ["weights.pth"],
     ["pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"]],
)  # fmt: skip
def test_pickled_only_folders_name_the_conversion_and_are_never_unpickled(
    tmp_path, monkeypatch, files
):
    folder = _model().save_pretrained(tmp_path / "m")
    (folder / hub.WEIGHTS_NAME).unlink()
    for name in files:
        (folder / name).write_bytes(pickle.dumps({"w": [1.0]}))

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for target, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (torch, "load")]:  # fmt: skip
        monkeypatch.setattr(target, name, refuse)
    for call in (Model.from_pretrained, hub.weights_sha256):
        with pytest.raises(CheckpointError) as err:
            call(folder)
        text = str(err.value)
        assert files[0] in text and "never unpickles" in text, text
        assert "`mdiff convert IN OUT`" in text and hub.DIFFUSERS_WEIGHTS_NAME in text


def test_other_safetensors_names_are_listed(tmp_path):
    folder = _model().save_pretrained(tmp_path / "m")
    (folder / hub.WEIGHTS_NAME).rename(folder / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(CheckpointError, match=r"found diffusion_pytorch_model\.fp16\.safetensors"):
        Model.from_pretrained(folder)


def test_two_layouts_in_one_folder_are_refused(tmp_path):
    folder = _model().save_pretrained(tmp_path / "m")
    hub.save_state_dict(hub.load_state_dict(folder), folder / hub.DIFFUSERS_WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="more than one set of weights"):
        Model.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="more than one set of weights"):
        hub.weights_sha256(folder)


def test_subfolder(tmp_path):
    model = _model(seed=3)
    model.save_pretrained(tmp_path / "pipe" / "vae")
    _model(seed=4).save_pretrained(tmp_path / "pipe" / "nested" / "dit")
    assert _same(Model.from_pretrained(tmp_path / "pipe", subfolder="vae"), model)
    assert _same(Model.from_pretrained(tmp_path / "pipe", subfolder="nested/dit"), _model(seed=4))
    with pytest.raises(CheckpointError, match="no subfolder 'unet'"):
        Model.from_pretrained(tmp_path / "pipe", subfolder="unet")
    for bad in ("../pipe/vae", str(tmp_path / "pipe" / "vae"), "", 3):
        with pytest.raises(InvalidInputError, match="relative folder name"):
            Model.from_pretrained(tmp_path / "pipe", subfolder=bad)


def test_the_class_decides_the_layout_it_writes(tmp_path, caplog):
    caplog.set_level("WARNING", logger="mdiff.configs")
    plain = _model().save_pretrained(tmp_path / "plain")
    assert sorted(p.name for p in plain.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((plain / "config.json").read_text())
    assert config["_class_name"] == "Model" and "_diffusers_version" not in config

    model = _model(DiffusersLike, seed=5)
    out = model.save_pretrained(tmp_path / "diff")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "FakeDiffusersModel"
    assert config["_diffusers_version"] == hub.DIFFUSERS_VERSION and "_mdiff_version" in config
    assert _same(DiffusersLike.from_pretrained(out), model)
    assert not caplog.records  # its own diffusers class name: no "loading a X as Y" warning
    # each class reads the other's layout
    assert _same(Model.from_pretrained(out), model)
    assert _same(DiffusersLike.from_pretrained(plain), _model())
    assert any("FakeDiffusersModel checkpoint" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("cls", [Model, DiffusersLike])
def test_save_pretrained_shards_like_diffusers(tmp_path, cls):
    model = _model(cls, seed=6, hidden=(32, 32))
    out = model.save_pretrained(tmp_path / "m", max_shard_size=2000)
    index = json.loads((out / (cls.weights_name + ".index.json")).read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    stem = cls.weights_name.removesuffix(".safetensors")
    assert len(shards) > 2 and shards == sorted(set(index["weight_map"].values()))
    assert shards[0] == f"{stem}-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    for shard in shards:  # each at most the limit, unless one tensor alone is larger
        held = hub.load_state_dict(out / shard)
        size = sum(t.numel() * t.element_size() for t in held.values())
        assert size <= 2000 or len(held) == 1
    assert _same(cls.from_pretrained(out), model)
    assert hub.weights_sha256(out) == hub.weights_sha256(model)
    one = model.save_pretrained(tmp_path / "one", max_shard_size="1GB")
    assert sorted(p.name for p in one.iterdir()) == ["config.json", cls.weights_name]


@pytest.mark.parametrize(
    "size, parsed", [(10, 10), ("10KB", 10_000), ("2MiB", 2 * 2**20), ("1.5GB", 1_500_000_000)]
)
def test_parse_size(size, parsed):
    assert weights.parse_size(size) == parsed


@pytest.mark.parametrize("size", [0, -5, "lots", True, 2.5])
def test_bad_shard_sizes_are_refused(tmp_path, size):
    with pytest.raises(CheckpointError, match="shard size"):
        _model().save_pretrained(tmp_path / "m", max_shard_size=size)
    assert not (tmp_path / "m").exists()
