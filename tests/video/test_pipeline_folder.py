"""The pipeline folder: one writer of pipeline.json (`VideoPipeline.save_pretrained`, which the
DiT export calls) with the keys of both earlier writers; files of either earlier writer load."""

# ruff: noqa: F811
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mdiff import hub
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.pipeline.folder import PIPELINE_FILE, PIPELINE_FORMAT
from mdiff.video.pipeline.video_pipeline import VideoPipeline
from mdiff.video.vae.model import CausalVAE

from .pipeline_fixtures import bidirectional, causal, pipe_dir, stamper  # noqa: F401

torch.set_num_threads(1)


def _spec(folder) -> dict:
    return json.loads((folder / PIPELINE_FILE).read_text())


def test_one_writer_writes_every_key(causal, bidirectional, pipe_dir, tmp_path):
    spec = _spec(pipe_dir)
    assert spec["format"] == PIPELINE_FORMAT and spec["_class_name"] == "VideoPipeline"
    assert spec["components"] == {
        "vae": {"class": "CausalVAE", "path": "vae"},
        "dit": {"class": "SpaceTimeDiT", "path": "dit"},
        "text_encoder": {"class": "ShapesTextEncoder", "path": "text_encoder"},
    }
    assert (spec["vae"], spec["dit"], spec["text_encoder"]) == ("vae", "dit", "text_encoder")
    assert spec["text_encoder_class"] == "ShapesTextEncoder"
    assert (
        spec["chunking"] == {"chunk_frames": causal.dit.config.chunk_frames} == {"chunk_frames": 2}
    )
    assert spec["settings"] == causal.settings.to_dict()
    assert _spec(bidirectional.save_pretrained(tmp_path / "bi"))["chunking"] is None


@pytest.mark.parametrize("writer", ["save_pretrained", "dit_export"])
def test_files_of_the_earlier_writers_load(causal, pipe_dir, tmp_path, writer):
    """save_pretrained wrote components and all settings, no flat names nor chunking; the DiT
    export wrote both, and only the settings it knew (no context_noise)."""
    old = shutil.copytree(pipe_dir, tmp_path / writer)
    spec = _spec(old)
    if writer == "save_pretrained":
        for key in ("vae", "dit", "text_encoder", "text_encoder_class", "chunking"):
            del spec[key]
    else:
        del spec["settings"]["context_noise"]
    (old / PIPELINE_FILE).write_text(json.dumps(spec, indent=2))
    loaded = VideoPipeline.from_pretrained(old)
    assert loaded.weights_sha256 == causal.weights_sha256 and loaded.causal
    assert loaded.settings == causal.settings


def test_a_shared_builtin_vae_is_referenced_not_copied(causal, tmp_path, monkeypatch):
    builtins = tmp_path / "checkpoints"
    causal.vae.save_pretrained(builtins / "tiny-vae")
    monkeypatch.setattr(hub, "_builtin_roots", lambda: [builtins])
    out = causal.save_pretrained(tmp_path / "pipe", shared_vae="tiny-vae")
    spec = _spec(out)
    sha = hub.weights_sha256(builtins / "tiny-vae")
    assert spec["components"]["vae"] == {"class": "CausalVAE", "builtin": "tiny-vae", "sha256": sha}
    assert spec["vae"] == "tiny-vae" and not (out / "vae").exists()
    assert VideoPipeline.from_pretrained(out).weights_sha256 == causal.weights_sha256

    other = CausalVAE.from_pretrained(builtins / "tiny-vae")
    with torch.no_grad():
        next(other.decoder.parameters()).add_(0.1)
    other.save_pretrained(builtins / "other-vae")
    with pytest.raises(InvalidInputError, match="not the built-in 'other-vae'"):
        causal.save_pretrained(tmp_path / "wrong", shared_vae="other-vae")
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(CheckpointError, match="not a built-in"):
        causal.save_pretrained(tmp_path / "wrong", shared_vae="missing-vae")
