"""Wan-family folders and files that mdiff cannot run are refused with a `CheckpointError`
that names what is unsupported: a pipeline or component class (and what is supported), a key
layout (a few odd keys and the layouts known), a config key unknown to the class. The bad
folders are diffusers' own `save_pretrained` output with one JSON edit or renamed keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdiff import cli
from mdiff.convert import convert
from mdiff.errors import CheckpointError
from mdiff.video.dit.wan import WanTransformer
from mdiff.video.dit.wan_keys import LAYOUTS, PREFIXES, find_layout, to_diffusers, to_original
from mdiff.video.pipeline import VideoPipeline
from mdiff.video.text_encoders.wan_t5 import WanT5Encoder

diffusers = pytest.importorskip("diffusers")
from tests.video.test_wan_pipeline import FLOW, wan_pipeline  # noqa: E402

torch.set_num_threads(1)
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "base"
    wan_pipeline(diffusers.UniPCMultistepScheduler(flow_shift=3.0, **FLOW)).save_pretrained(path)
    return path


def edited(base, dst, file, **changes):
    shutil.copytree(base, dst)
    data = json.loads((dst / file).read_text())
    data.update(changes)
    (dst / file).write_text(json.dumps(data))
    return dst


def renamed(base, dst, rename):
    """`base` with the transformer's weights renamed by `rename` (name -> name)."""
    shutil.copytree(base, dst)
    state = load_file(dst / WEIGHTS)
    save_file({rename(k): v for k, v in state.items()}, dst / WEIGHTS, metadata={"format": "pt"})
    return dst


def test_the_unedited_folder_loads(base):
    assert VideoPipeline.from_pretrained(base).dit.transformer.config.num_layers == 2


@pytest.mark.parametrize(
    "file, changes, names",
    [("model_index.json", {"_class_name": "WanVACEPipeline"},
      ["WanVACEPipeline", "WanPipeline", "WanImageToVideoPipeline"]),
     ("model_index.json", {"_class_name": "WanAnimatePipeline"}, ["WanAnimatePipeline"]),
     ("model_index.json", {"transformer": ["diffusers", "WanVACETransformer3DModel"]},
      ["WanVACETransformer3DModel", "WanTransformer3DModel"]),
     ("model_index.json", {"vae": ["diffusers", "AutoencoderKLLTXVideo"]},
      ["AutoencoderKLLTXVideo", "AutoencoderKLWan"]),
     ("model_index.json", {"text_encoder": ["transformers", "T5EncoderModel"]},
      ["T5EncoderModel", "UMT5EncoderModel"]),
     ("transformer/config.json", {"_class_name": "WanVACETransformer3DModel"},
      ["WanVACETransformer3DModel", "WanTransformer3DModel"]),
     ("vae/config.json", {"_class_name": "AutoencoderKLLTXVideo"},
      ["AutoencoderKLLTXVideo", "AutoencoderKLWan"]),
     ("text_encoder/config.json", {"model_type": "t5", "architectures": ["T5EncoderModel"]},
      ["'t5'", "T5EncoderModel", "UMT5EncoderModel"]),
     ("transformer/config.json", {"pos_embed_seq_len": 514}, ["FLF2V", "pos_embed_seq_len"]),
     ("model_index.json", {"transformer_2": ["diffusers", "WanTransformer3DModel"],
                           "boundary_ratio": 0.875}, ["two-expert", "transformer_2", "A14B"])],
)  # fmt: skip
def test_unsupported_classes_are_named(base, tmp_path, file, changes, names):
    bad = edited(base, tmp_path / "bad", file, **changes)
    with pytest.raises(CheckpointError) as info:
        VideoPipeline.from_pretrained(bad)
    assert all(name in str(info.value) for name in names), str(info.value)


@pytest.mark.parametrize(
    "file, cls", [("model_index.json", "Wan pipelines"), ("transformer/config.json",
                  "WanTransformerConfig"), ("vae/config.json", "CausalVAEConfig")],
)  # fmt: skip
def test_config_keys_unknown_to_the_class_are_named(base, tmp_path, file, cls):
    bad = edited(base, tmp_path / "bad", file, frobnicate_level=3)
    with pytest.raises(CheckpointError, match=f"unknown to.*{cls}.*frobnicate_level"):
        VideoPipeline.from_pretrained(bad)


def test_wan_t5_settings_keys_unknown_are_named(base, tmp_path):
    folder = WanT5Encoder.from_pretrained(base / "text_encoder", tokenizer=base / "tokenizer")
    path = folder.save_pretrained(tmp_path / "te")
    assert WanT5Encoder.from_pretrained(path).max_length == 512
    data = json.loads((path / "text_encoder.json").read_text())
    (path / "text_encoder.json").write_text(json.dumps({**data, "padding_side": "left"}))
    with pytest.raises(CheckpointError, match="unknown to WanT5Encoder: padding_side"):
        WanT5Encoder.from_pretrained(path)


# --------------------------------------------------------------------------- key layouts


def test_unknown_key_layout_in_a_safetensors_file_is_named(base, tmp_path):
    bad = renamed(base, tmp_path / "bad", lambda k: f"net.{k.replace('attn1', 'sa')}")
    with pytest.raises(CheckpointError) as info:
        VideoPipeline.from_pretrained(bad)
    msg = str(info.value)
    assert "fit no Wan transformer layout" in msg and "'net." in msg
    assert "WanTransformer3DModel" in msg and "self_attn.q" in msg and "'model.'" not in msg
    assert all(p in msg for p in PREFIXES)


def test_one_odd_key_is_named(base, tmp_path):
    shutil.copytree(base, tmp_path / "bad")
    state = load_file(tmp_path / "bad" / WEIGHTS)
    state["blocks.0.attn1.lora_A.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "bad" / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"1 of \d+ keys .*blocks\.0\.attn1\.lora_A\.weight"):
        VideoPipeline.from_pretrained(tmp_path / "bad")


def test_original_names_in_a_diffusers_folder_are_named(base, tmp_path):
    bad = renamed(base, tmp_path / "bad", lambda k: "model." + to_original({k: None}).popitem()[0])
    with pytest.raises(CheckpointError, match="original Wan release names.*prefix 'model.'.*mdiff "
                                              "convert"):  # fmt: skip
        VideoPipeline.from_pretrained(bad)


@pytest.mark.parametrize("prefix", ["", "model.", "generator.model.", "module.model.",
                                    "model.diffusion_model.", "_orig_mod.module."])  # fmt: skip
@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_every_known_layout_is_found_and_renamed(base, prefix, layout):
    ours = WanTransformer.from_pretrained(base / "transformer").state_dict()
    named = ours if layout == "diffusers" else to_original(ours)
    state = {prefix + k: v for k, v in named.items()}
    assert find_layout(state) == (layout, prefix)
    back = to_diffusers(state)
    assert set(back) == set(ours) and all(back[k] is ours[k] for k in ours)
    fsdp = {f"_fsdp_wrapped_module.{k}": v for k, v in state.items()}  # FSDP's wrapper segment
    assert find_layout(fsdp) == (layout, prefix) and set(to_diffusers(fsdp)) == set(ours)
    assert set(LAYOUTS) == {"diffusers", "original"}


def test_converted_state_dict_in_an_unknown_layout_is_refused(base, tmp_path):
    ours = WanTransformer.from_pretrained(base / "transformer").state_dict()
    config = base / "transformer" / "config.json"
    torch.save({"ema": {f"dit.{k}": v for k, v in ours.items()}}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt: \d+ of \d+ keys fit no Wan .*'dit\."):
        convert(tmp_path / "odd.pt", tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()
    args = ["convert", str(tmp_path / "odd.pt"), str(tmp_path / "out"), "--config", str(config)]
    assert cli.main(args) == cli.EXIT_ERROR
    # a known layout converts to the config's own names and loads to the same weights
    torch.save({"generator": {f"module.model.{k}": v for k, v in to_original(ours).items()}},
               tmp_path / "ok.pt")  # fmt: skip
    out = convert(tmp_path / "ok.pt", tmp_path / "ok", config=config)
    loaded = WanTransformer.from_pretrained(out).state_dict()
    assert set(loaded) == set(ours) and all(torch.equal(loaded[k], ours[k]) for k in ours)
    sf = tmp_path / "sf.pt"
    torch.save({"generator_ema": {f"x.{k}": v for k, v in ours.items()}}, sf)
    args = ["convert", str(sf), str(tmp_path / "p"), "--self-forcing", "--base", str(base)]
    assert cli.main(args) == cli.EXIT_ERROR and not (tmp_path / "p").exists()
