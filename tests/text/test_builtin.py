"""The shipped code model (`text/checkpoints/code-tiny`): it loads by name and has learned code.

The checkpoint is package data: without it these tests fail (it is the default model of
`mdiff complete`, `mdiff eval fim` and `mdiff demo`).
"""

import json

import pytest
import torch

from mdiff import hub
from mdiff.text.objectives import masked_nelbo
from mdiff.text.pipeline import CodeModel

SNIPPET = '''def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="the file to read")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)
'''


@pytest.fixture(scope="module")
def cm():
    return CodeModel.from_pretrained("code-tiny")


def test_shipped_model_is_small_and_logged(cm):
    folder = hub.resolve("code-tiny")
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 30 * 2**20
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert log["step"] > 0 and log["evals"]
    assert cm.tokenizer.decode(cm.tokenizer.encode(SNIPPET)) == SNIPPET


def test_shipped_model_beats_chance_on_unseen_code(cm):
    ids = torch.tensor([cm.tokenizer.encode(SNIPPET)])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    with torch.no_grad():
        nats = masked_nelbo(cm.model, batch, mask_id=cm.model.spec.mask_id)["nats_per_token"]
    chance = torch.log(torch.tensor(float(cm.tokenizer.vocab_size))).item()
    assert nats < chance - 3.0, (nats, chance)  # random weights score ≈ chance


def test_shipped_model_completes_an_obvious_line(cm):
    done = cm.fill("import os\nimport sys\nimport <FILL>\n", length=1)
    assert done.middles[0].strip().isidentifier()
