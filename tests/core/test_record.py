"""GenerationRecord: prompt privacy, JSON round trip, validation."""

import json

import pytest

from mdiff.errors import InvalidInputError
from mdiff.record import GenerationRecord, WatermarkInfo, sha256_text


def test_prompt_is_neither_kept_nor_hashed_by_default():
    r = GenerationRecord.create("video", "shapes-t2v", prompt="a red circle", seed=3)
    assert r.prompt is None and r.prompt_sha256 is None
    published = json.dumps(r.to_dict())
    assert "a red circle" not in published and sha256_text("a red circle") not in published
    kept = GenerationRecord.create("video", "m", prompt="a red circle", keep_prompt=True)
    assert kept.prompt == "a red circle"


def test_round_trip_through_json():
    r = GenerationRecord.create(
        "video",
        "shapes-t2v",
        prompt="p",
        weights_sha256="ab" * 32,
        sampler="heun",
        steps=20,
        guidance={"kind": "cfg", "scale": 4.0},
        seed=7,
        sizes={"width": 64, "frames": 17},
        inputs=["first.png"],
        edited=True,
    ).with_watermark(WatermarkInfo("mdiff-pixel-v1", "k1", "a1b2c3d4", {"alpha": 2.0}))
    back = GenerationRecord.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r


def test_validation():
    with pytest.raises(InvalidInputError):
        GenerationRecord.create("audio", "m")
    with pytest.raises(InvalidInputError):
        GenerationRecord.create("text", "")
    with pytest.raises(InvalidInputError, match="unknown GenerationRecord fields: bogus"):
        GenerationRecord.from_dict({"modality": "text", "model_id": "m", "bogus": 1})


def test_a_local_folder_is_published_by_its_name_however_it_was_given(tmp_path, monkeypatch):
    from mdiff.record import published_name

    (tmp_path / "models" / "llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for given in ("models/llama", "./models/llama", str(tmp_path / "models" / "llama")):
        assert published_name(given) == "llama"
        r = GenerationRecord.create("code", given)
        assert r.to_dict()["model_id"] == "llama"
    assert published_name("org/model") == "org/model"  # a hub id that is no local path
    assert published_name("code-tiny") == "code-tiny"
