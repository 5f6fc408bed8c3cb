"""LLaDA 2: our sampler against diffusers' `LLaDA2Pipeline` + `BlockRefinementScheduler`.

The reference model is a tiny random transformers Llama (float64, lm_head scaled so that
confidences spread over [0, 1]) attending as LLaDA 2 does: the block-causal 4-D mask of LLaDA 2's
own ``generate`` (built from the run's ``block_length``) and the pipeline's 2-D key mask. It
never predicts [MASK] (logit −inf, like a trained model), so the pipeline's softmax over the whole
vocabulary and ours without [MASK] agree. Some totals ``P + gen_length`` end inside a block: that
block's tail is generated but hidden as keys.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model.llada2 import LLaDA2Driver, llada2_generate, load_llada2
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.sampler import generate
from mdiff.text.sampling.stream import TokenCollector

from .conftest import TinyDenoiser

transformers = pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

V, MASK, EOS = 48, 47, 46

torch.set_num_threads(1)


def _lm(seed: int, scale: float = 30.0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
    )  # fmt: skip
    lm = transformers.LlamaForCausalLM(cfg).double().eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(scale)
    return lm


class _Reference(nn.Module):
    """What LLaDA2Pipeline calls: ``model(x, attention_mask=(B, L) 0/1, position_ids).logits``."""

    def __init__(self, lm, block_length: int):
        super().__init__()
        self.lm, self.bl = lm, block_length

    @property
    def device(self):
        return self.lm.device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        L = input_ids.shape[1]
        nb = -(-L // self.bl)
        blocks = torch.tril(torch.ones(nb, nb, dtype=torch.bool))
        blocks = blocks.repeat_interleave(self.bl, 0).repeat_interleave(self.bl, 1)[:L, :L]
        mask = blocks[None, None] & attention_mask.bool()[:, None, None, :]
        out = self.lm(input_ids, attention_mask=mask, position_ids=position_ids)
        logits = out.logits.clone()
        logits[..., MASK] = -torch.inf
        return types.SimpleNamespace(logits=logits)


def _theirs(lm, ids, **kw):
    """The pipeline's sequences (B, gen_length) and how many tokens it edited."""
    scheduler = diffusers.BlockRefinementScheduler()
    pipe = diffusers.LLaDA2Pipeline(model=_Reference(lm, kw["block_length"]), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    edits = [0]

    def count(_pipe, _i, _t, tensors):
        edits[0] += int(tensors["editing_transfer_index"].sum())
        return {}

    out = pipe(input_ids=ids, eos_token_id=EOS, mask_token_id=MASK, output_type="seq",
               temperature=0.0, callback_on_step_end=count,
               callback_on_step_end_tensor_inputs=["editing_transfer_index"], **kw)  # fmt: skip
    return out.sequences, edits[0]


def _driver(lm, block_size: int = 4) -> LLaDA2Driver:
    spec = DenoiserSpec(vocab_size=V, mask_id=MASK, eos_ids=(EOS,), attention="block_causal",
                        block_size=block_size)  # fmt: skip
    return LLaDA2Driver(lm, spec)


def _prompts(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 40, (batch, length), generator=torch.Generator().manual_seed(seed))


def _same(theirs: torch.Tensor, ours: torch.Tensor, early_stop: bool) -> None:
    """Token for token; the [MASK]s the pipeline leaves after an early stop are EOS in ours."""
    if not early_stop:
        assert not bool((theirs == MASK).any())
    expected = torch.where(theirs == MASK, EOS, theirs)
    assert torch.equal(ours, expected), (theirs.tolist(), ours.tolist())


# (prompt length, pipeline settings); the last three end inside a block
SETTINGS = [
    (6, dict(gen_length=10, block_length=4, num_inference_steps=4, threshold=0.7,
             editing_threshold=0.5)),
    (5, dict(gen_length=11, block_length=8, num_inference_steps=3, threshold=0.5,
             editing_threshold=0.3)),
    (4, dict(gen_length=12, block_length=4, num_inference_steps=8, threshold=0.9,
             editing_threshold=None)),
    (6, dict(gen_length=18, block_length=8, num_inference_steps=8, threshold=0.6,
             editing_threshold=0.4, minimal_topk=2)),
    (3, dict(gen_length=13, block_length=8, num_inference_steps=8, threshold=0.95,
             editing_threshold=0.5, minimal_topk=3, max_post_steps=1)),
    (8, dict(gen_length=16, block_length=8, num_inference_steps=5, threshold=1.5,
             editing_threshold=0.6, eos_early_stop=False)),
    (7, dict(gen_length=9, block_length=4, num_inference_steps=2, threshold=0.3,
             editing_threshold=0.2, max_post_steps=4)),
    (5, dict(gen_length=9, block_length=4, num_inference_steps=4, threshold=0.7,
             editing_threshold=0.5)),
    (3, dict(gen_length=14, block_length=8, num_inference_steps=4, threshold=0.6,
             editing_threshold=0.3, minimal_topk=2)),
    (9, dict(gen_length=5, block_length=8, num_inference_steps=8, threshold=0.9,
             editing_threshold=None)),
]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("prompt_length,kw", SETTINGS)
def test_matches_llada2_pipeline(seed, prompt_length, kw):
    lm = _lm(seed)
    ids = _prompts(1, prompt_length, seed + prompt_length)
    theirs, _ = _theirs(lm, ids, **kw)
    ours = llada2_generate(_driver(lm), ids, **kw)
    _same(theirs, ours, kw.get("eos_early_stop", True))


def test_early_stop_is_exercised_and_matches():
    """Seed 2 emits EOS early: the pipeline stops the row (leaving [MASK]s) and so do we."""
    lm = _lm(2)
    kw = dict(gen_length=18, block_length=8, num_inference_steps=8, threshold=0.6,
              editing_threshold=0.4, minimal_topk=2)  # fmt: skip
    ids = _prompts(1, 6, 8)
    theirs, _ = _theirs(lm, ids, **kw)
    assert bool((theirs == EOS).any()) and bool((theirs == MASK).any())
    _same(theirs, llada2_generate(_driver(lm), ids, **kw), True)
    late = llada2_generate(_driver(lm), ids, **{**kw, "eos_early_stop": False})
    assert not torch.equal(late, torch.where(theirs == MASK, EOS, theirs))


def test_editing_is_exercised():
    """The pipeline edits here; ours matches with editing and differs without it."""
    lm = _lm(0)
    kw = dict(gen_length=11, block_length=8, num_inference_steps=3, threshold=0.5,
              editing_threshold=0.3)  # fmt: skip
    ids = _prompts(1, 5, 5)
    theirs, edits = _theirs(lm, ids, **kw)
    assert edits > 0
    _same(theirs, llada2_generate(_driver(lm), ids, **kw), True)
    plain = llada2_generate(_driver(lm), ids, **{**kw, "editing_threshold": None})
    assert not torch.equal(plain, theirs)


class _Ours(nn.Module):
    """Our own test denoiser as the pipeline's model (its contract returns bare logits)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        out = self.m(input_ids, attention_mask=attention_mask.bool(), position_ids=position_ids)
        return types.SimpleNamespace(logits=out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_our_own_denoiser_matches_pipeline_with_editing(seed):
    """Token editing works for any model: our block-causal TinyDenoiser, both samplers."""
    model = TinyDenoiser(vocab=V, mask_id=MASK, eos_ids=(EOS,), attention="block_causal",
                         block_size=4, seed=seed, scale=6.0)  # fmt: skip
    kw = dict(gen_length=13, block_length=4, num_inference_steps=3, threshold=0.6,
              editing_threshold=0.3, max_post_steps=5)  # fmt: skip
    ids = _prompts(1, 7, seed)
    scheduler = diffusers.BlockRefinementScheduler()
    pipe = diffusers.LLaDA2Pipeline(model=_Ours(model), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(input_ids=ids, eos_token_id=EOS, mask_token_id=MASK, output_type="seq",
                  **kw).sequences  # fmt: skip
    _same(theirs, llada2_generate(model, ids, **kw), True)
    plain = llada2_generate(model, ids, **{**kw, "editing_threshold": None})
    assert not torch.equal(plain, theirs)  # editing decided the result
    with pytest.raises(InvalidInputError, match="block_size = block_length"):
        llada2_generate(model, ids, **{**kw, "block_length": 8})


def test_batch_without_editing_matches_row_by_row():
    lm = _lm(1)
    kw = dict(gen_length=12, block_length=4, num_inference_steps=4, threshold=0.6,
              editing_threshold=None)  # fmt: skip
    ids = _prompts(3, 4, 11)
    theirs, _ = _theirs(lm, ids, **kw)
    _same(theirs, llada2_generate(_driver(lm), ids, **kw), True)


def test_driver_attends_block_causally():
    lm = _lm(0)
    drv = _driver(lm, block_size=4)
    x = _prompts(1, 12, 3)
    y = x.clone()
    y[0, 9] = (y[0, 9] + 1) % 40  # a token of block 2
    with torch.no_grad():
        a, b = drv(x), drv(y)
    assert float((a[0, :8] - b[0, :8]).abs().max()) == 0.0
    assert float((a[0, 8:] - b[0, 8:]).abs().max()) > 1e-3
    hidden = drv.with_block_size(4, key_limit=9)  # slot 9 is no key: slot 8 cannot see it
    with torch.no_grad():
        a, b = hidden(x), hidden(y)
    assert float((a[0, :9] - b[0, :9]).abs().max()) == 0.0
    assert float((a[0, 9] - b[0, 9]).abs().max()) > 1e-3


def test_generic_generate_with_editing_is_batch_invariant():
    """Through the generic API (left-padded batch, block-aligned): rows equal their single runs."""
    drv = _driver(_lm(1), block_size=4)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    kw = dict(gen_length=8, block_length=4, schedule="llada2", threshold=0.6,
              editing_threshold=0.4, edit_steps=3)  # fmt: skip
    batch = generate(drv, prompts, **kw).sequences[:, -8:]
    for b, p in enumerate(prompts):
        assert torch.equal(generate(drv, [p], **kw).sequences[0, -8:], batch[b])


def test_streaming_with_editing_never_retracts():
    """Edited tokens are streamed only once their block is finished: chunks add up to the
    output, which editing changed."""
    drv = _driver(_lm(0), block_size=4)
    prompt = [5, 6, 7, 8, 9]
    kw = dict(gen_length=11, block_length=4, schedule="llada2", threshold=0.5,
              editing_threshold=0.3, edit_steps=4)  # fmt: skip
    sink = TokenCollector()
    out = generate(drv, [prompt], streamer=sink, **kw)
    assert sink.tokens == prompt + out.sequences[0, -11:].tolist() and len(sink.chunks) >= 3
    plain = generate(drv, [prompt], **{**kw, "editing_threshold": None})
    assert not torch.equal(plain.sequences, out.sequences)


def test_load_llada2_folder_matches_pipeline(tmp_path):
    lm = _lm(2)
    lm.config.mask_token_id, lm.config.eos_token_id = MASK, EOS
    lm.save_pretrained(tmp_path)
    drv = load_llada2(tmp_path, block_size=4)
    spec = drv.spec
    assert (spec.mask_id, spec.eos_ids, spec.attention) == (MASK, (EOS,), "block_causal")
    kw = dict(gen_length=10, block_length=4, num_inference_steps=4, threshold=0.7,
              editing_threshold=0.5)  # fmt: skip
    ids = _prompts(1, 6, 1)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).double().eval()
    theirs, _ = _theirs(ref, ids, **kw)
    _same(theirs, llada2_generate(drv, ids, **kw), True)


@torch.no_grad()
def test_a_folder_whose_embedding_is_padded_past_its_tokenizer_never_proposes_those_ids(tmp_path):
    from tokenizers import Tokenizer, models

    words = [f"w{i}" for i in range(42)] + ["<eos>", "<mask>"]  # 44 tokens, 48 rows
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                                    unk_token="w0")),
        eos_token="<eos>", mask_token="<mask>", unk_token="w0")  # fmt: skip
    lm = _lm(3)
    lm.lm_head.weight[len(words) :] *= 100  # the padded rows win wherever they may
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    drv = load_llada2(tmp_path, block_size=4)
    assert (drv.spec.mask_id, drv.spec.text_vocab) == (43, 44)
    out = llada2_generate(drv, _prompts(1, 6, 1), gen_length=8, block_length=4,
                          num_inference_steps=4)  # fmt: skip
    assert int(out[0, -8:].max()) < 44  # (EOS and the masks an early stop leaves: < 44)


def test_bad_folders_and_settings(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_llada2(tmp_path / "missing")
    lm = _lm(0)
    lm.save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no mask token"):
        load_llada2(tmp_path / "plain")
    remote = tmp_path / "remote"
    remote.mkdir()
    cfg = {"model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"],
           "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig"}}  # fmt: skip
    (remote / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="trust_remote_code") as e:
        load_llada2(remote)
    assert "--trust-remote-code" in str(e.value) and "\n" not in str(e.value)  # one CLI line
    from mdiff.text.model import loaders

    with pytest.raises(CheckpointError, match="trust_remote_code"):  # routed to load_llada2
        loaders.load_transformers(remote)
    with pytest.raises(InvalidInputError, match="unknown LLaDA2Pipeline settings"):
        llada2_generate(_driver(lm), [1, 2, 3], gen_length=4, block_length=4, temperature=1.0)
    with pytest.raises(InvalidInputError, match="block_causal"):
        LLaDA2Driver(lm, DenoiserSpec(vocab_size=V, mask_id=MASK))
