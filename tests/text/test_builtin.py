"""The shipped code models (`text/checkpoints/code-tiny`, bidirectional, and `code-tiny-block`,
its block-causal fine-tune): they load by name and have learned code.

The checkpoints are package data: without them these tests fail (`code-tiny` is the default
model of `mdiff complete`, `mdiff eval fim` and `mdiff demo`).
"""

import json

import pytest
import torch

from mdiff import hub
from mdiff.text.model.denoiser import TextDenoiser
from mdiff.text.pipeline import CodeModel
from mdiff.text.training.objectives import masked_nelbo

SNIPPET = '''def parse_args(argv=None):
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", help="the file to read")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)
'''


NAMES = {"code-tiny": "bidirectional", "code-tiny-block": "block_causal"}


@pytest.fixture(scope="module", params=sorted(NAMES))
def cm(request):
    return CodeModel.from_pretrained(request.param)


def test_shipped_model_is_small_and_logged(cm):
    folder = hub.resolve(cm.model_id)
    assert cm.model.config.attention == NAMES[cm.model_id]
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 30 * 2**20
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert log["step"] > 0 and log["evals"]
    assert cm.tokenizer.decode(cm.tokenizer.encode(SNIPPET)) == SNIPPET


def test_shipped_model_keeps_its_inference_settings_in_config_json(cm, caplog):
    """Context and FIM order are config fields (re-saved from the training log, which records
    the same window): the built-in loads in the new layout, with no old-layout fallback."""
    folder = hub.resolve(cm.model_id)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    log = json.loads((folder / "training_log.json").read_text(encoding="utf-8"))
    assert (config["context"], config["fim_order"]) == (256, "psm") == (cm.context, cm.fim_order)
    assert log["data"]["seq_len"] == config["context"]
    caplog.set_level("INFO", logger="mdiff.configs")
    assert TextDenoiser.from_pretrained(folder).config == cm.model.config
    assert not [r for r in caplog.records if "old layout" in r.getMessage()]


def test_shipped_model_beats_chance_on_unseen_code(cm):
    ids = torch.tensor([cm.tokenizer.encode(SNIPPET)])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    with torch.no_grad():
        block = cm.model.config.attention == "block_causal"  # its own (block) NELBO
        nats = masked_nelbo(cm.model, batch, mask_id=cm.model.spec.mask_id, block=block)
    nats = nats["nats_per_token"]
    chance = torch.log(torch.tensor(float(cm.tokenizer.vocab_size))).item()
    assert nats < chance - 3.0, (nats, chance)  # random weights score ≈ chance


def test_shipped_model_completes_an_obvious_line(cm):
    done = cm.fill("import os\nimport sys\nimport <FILL>\n", length=1)
    assert done.middles[0].strip().isidentifier()
