"""The shipped text-to-video pipeline (`video/checkpoints/shapes-t2v`): it loads by name, is
small, logged, shares the shipped VAE, follows simple prompts (random weights hit a colour
1 time in 7 and a direction 1 in 6) and streams exactly what it generates offline."""

import json

import pytest
import torch

from mdiff import hub
from mdiff.provenance.stamp import Stamper
from mdiff.video.eval.adherence import adherence
from mdiff.video.pipeline.video_pipeline import VideoPipeline

SHIPPED = "shapes-t2v" in hub.list_builtin()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="shapes-t2v is not shipped in this tree")
PROMPTS = [  # every colour of the dataset, four directions, the form a user would type
    "a red circle moving right on a black background",
    "a blue square moving left on a white background",
    "a yellow triangle moving up on a navy background",
    "a green circle moving down on a gray background",
    "a purple square moving right on a gray background",
    "an orange triangle moving left on a black background",
    "a white circle moving up on a navy background",
]


@pytest.fixture(scope="module")
def pipe(home):
    return VideoPipeline.from_pretrained("shapes-t2v", stamper=Stamper(home=home))


def test_shipped_pipeline_is_small_logged_and_shares_the_shipped_vae(pipe):
    folder = hub.resolve("shapes-t2v")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 30 * 2**20
    spec = json.loads((folder / "pipeline.json").read_text(encoding="utf-8"))
    assert spec["components"]["vae"]["builtin"] == "shapes-vae"
    assert hub.weights_sha256(pipe.vae) == hub.weights_sha256(hub.resolve("shapes-vae"))
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert log["step"] > 0 and log["evals"] and log["heldout"]["heldout_fm"] > 0
    assert pipe.causal and pipe.settings.num_frames == 17


def test_shipped_pipeline_follows_single_object_prompts(pipe):
    hits = {"colour": 0, "motion": 0, "background": 0}
    for prompt in PROMPTS:
        report = adherence(pipe(prompt, seed=0).frames, prompt)
        for attr in hits:
            hits[attr] += sum(report["hits"][attr])
    n = len(PROMPTS)
    assert hits["colour"] >= n - 1 and hits["motion"] >= n - 2 and hits["background"] == n, hits


def test_shipped_pipeline_streams_exactly_what_it_generates(pipe):
    prompt = PROMPTS[0]
    chunks = list(pipe.stream(prompt, seed=3))
    assert [(c.start_frame, c.end_frame) for c in chunks] == [
        (0, 1),
        (1, 5),
        (5, 9),
        (9, 13),
        (13, 17),
    ]
    whole = pipe(prompt, seed=3).frames
    assert torch.equal(torch.cat([c.frames for c in chunks]), whole)
