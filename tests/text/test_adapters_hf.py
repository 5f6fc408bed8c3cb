"""HFAdapter on real transformers architectures: the spec's attention honoured (4-D masks), the
RoBERTa position offset, models without ``position_ids`` (LLaDA's signature) in padded batches,
and Dream's shift at a row's first real token. Tiny random models, built locally."""

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForMaskedLM,
    CamembertConfig,
    CamembertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

from mdiff.errors import InvalidInputError
from mdiff.text.model.adapters import HFAdapter, dream_spec, from_masked_lm, llada_spec
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.sampler import denoise, generate

torch.set_num_threads(1)
V, PAD, MASK, EOS = 64, 1, 3, 2
SIZES = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64, max_position_embeddings=64)  # fmt: skip


def randomize(model, seed=0):
    """O(1) weights instead of the 0.02-std init, so that a missing mask shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
    return model.eval()


def causal_lm(kind: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(**SIZES, num_key_value_heads=2, attn_implementation=attn)
        return randomize(LlamaForCausalLM(cfg))
    cfg = Qwen2Config(**SIZES, num_key_value_heads=1, attn_implementation=attn)
    return randomize(Qwen2ForCausalLM(cfg))


def tokens(n, seed=0):
    return torch.randint(4, V, (n,), generator=torch.Generator().manual_seed(seed))


def left_pad(rows, pad=PAD):
    """Left-padded ids (B, L), the non-padding mask and the sampler's positions cumsum − 1."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad)
    real = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :], real[i, n - len(r) :] = r, True
    return ids, real, (real.long().cumsum(1) - 1).clamp(min=0)


def rows_equal_alone(model, rows, tol=1e-5):
    """Max gap between each row's padded-batch logits and its logits alone."""
    ids, real, pos = left_pad(rows)
    got = model(ids, attention_mask=real, position_ids=pos)
    gaps = [(got[b, real[b]] - model(r[None])[0]).abs().max() for b, r in enumerate(rows)]
    return float(max(gaps))


# ---- 1. the spec's attention is honoured ----------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_spec_makes_a_causal_lm_bidirectional(kind, attn):
    lm = causal_lm(kind, attn)
    bi = HFAdapter(lm, DenoiserSpec(V, MASK, pad_id=PAD))  # attention="bidirectional"
    causal = HFAdapter(lm, DenoiserSpec(V, MASK, pad_id=PAD, attention="causal"))
    x = tokens(12, seed=1)[None]
    y = x.clone()
    y[0, -1] = 4 + (int(y[0, -1]) - 3) % (V - 4)  # another last token
    moved = (bi(y)[0, :-1] - bi(x)[0, :-1]).abs().amax(-1)
    assert float(moved.min()) > 1e-3  # every earlier position sees the last token
    assert torch.equal(causal(y)[0, :-1], causal(x)[0, :-1])  # causal: none does
    assert torch.equal(causal(x), lm(input_ids=x).logits)  # the model's own causal forward
    rows = [tokens(12, seed=2), tokens(7, seed=3), tokens(3, seed=4)]
    assert rows_equal_alone(bi, rows) <= 1e-5
    assert rows_equal_alone(causal, rows) <= 1e-5
    assert bi.mask_4d and not causal.mask_4d


@torch.no_grad()
def test_eager_and_sdpa_agree_on_the_4d_mask():
    ids, real, pos = left_pad([tokens(10, seed=5), tokens(4, seed=6)])
    out = [HFAdapter(causal_lm("llama", a), llada_spec(V, MASK, (EOS,), PAD))(ids, real, pos)
           for a in ("eager", "sdpa")]  # fmt: skip
    assert float((out[0] - out[1])[real].abs().max()) <= 1e-5


@torch.no_grad()
def test_block_causal_spec_on_a_causal_lm():
    lm = causal_lm("llama")
    model = HFAdapter(lm, DenoiserSpec(V, MASK, pad_id=PAD, attention="block_causal",
                                       block_size=4))  # fmt: skip
    x = tokens(12, seed=7)[None]
    y = x.clone()
    y[0, 5] = 4 + (int(y[0, 5]) - 3) % (V - 4)  # a token of block 1
    gap = (model(y)[0] - model(x)[0]).abs().amax(-1)
    assert float(gap[:4].max()) == 0 and float(gap[4:].min()) > 1e-3


def test_flash_attention_cannot_be_made_bidirectional():
    lm = causal_lm("llama")
    lm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(InvalidInputError, match="sdpa"):
        HFAdapter(lm, llada_spec(V, MASK, (EOS,), PAD))


# ---- 2. RoBERTa-family positions ------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize(
    "config, cls",
    [(RobertaConfig, RobertaForMaskedLM), (XLMRobertaConfig, XLMRobertaForMaskedLM),
     (CamembertConfig, CamembertForMaskedLM)],
)  # fmt: skip
def test_roberta_family_padded_rows_equal_unbatched_rows(config, cls):
    torch.manual_seed(0)
    lm = randomize(cls(config(**SIZES, pad_token_id=PAD, bos_token_id=0, eos_token_id=EOS)))
    model = from_masked_lm(lm, {"mask_id": MASK, "pad_id": PAD, "bos_id": 0, "eos_ids": (EOS,)})
    rows = [tokens(n, seed=10 + n) for n in (14, 9, 5, 2)]
    assert rows_equal_alone(model, rows) <= 1e-5
    ids, real, pos = left_pad(rows)
    ref = lm(input_ids=ids, attention_mask=real.long()).logits  # its own padding positions
    assert float((model(ids, real, pos) - ref)[real].abs().max()) <= 1e-5
    assert model.position_offset == PAD + 1


# ---- 3. models whose forward takes no position_ids --------------------------------------------


class LLaDASignature(nn.Module):
    """LLaDA's `forward` signature (no position_ids: slots are positions) around an
    absolute-position BERT, so any wrong position shows."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, inputs_embeds=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, cache_position=None):  # fmt: skip
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


@pytest.fixture(scope="module")
def llada_like():
    torch.manual_seed(0)
    bert = randomize(BertForMaskedLM(BertConfig(**SIZES, pad_token_id=PAD)))
    return HFAdapter(LLaDASignature(bert), llada_spec(V, MASK, (EOS,), PAD))


@torch.no_grad()
def test_model_without_position_ids_batches_like_single_rows(llada_like):
    rows = [tokens(n, seed=20 + n) for n in (11, 6, 1)]
    assert rows_equal_alone(llada_like, rows) <= 1e-5
    prompts = [r.tolist() for r in rows]
    batch = generate(llada_like, prompts, gen_length=6, steps=3, block_length=3)
    for b, p in enumerate(prompts):
        alone = generate(llada_like, [p], gen_length=6, steps=3, block_length=3)
        assert torch.equal(batch.sequences[b, -6:], alone.sequences[0, -6:])


def test_model_without_positions_or_mask_is_refused_in_padded_batches():
    class Bare(nn.Module):
        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, V)})()

    model = HFAdapter(Bare(), llada_spec(V, MASK, (EOS,), PAD))
    ids, real, pos = left_pad([tokens(5), tokens(2)])
    with pytest.raises(InvalidInputError, match="attention_mask"):
        model(ids, attention_mask=real, position_ids=pos)


# ---- 4. Dream's shift at a row's first real token ----------------------------------------------


@torch.no_grad()
def test_dream_shift_never_reads_a_pad_slot():
    lm = causal_lm("qwen2")
    model = HFAdapter(lm, dream_spec(V, MASK, (EOS,), PAD))
    first_mask = torch.cat([torch.tensor([MASK, MASK]), tokens(4, seed=30)])
    rows = [tokens(13, seed=31), first_mask]
    assert rows_equal_alone(model, rows) <= 1e-5
    ids, real, pos = left_pad(rows)
    raw = HFAdapter(lm, DenoiserSpec(V, MASK, pad_id=PAD))(ids, real, pos)  # unshifted
    got = model(ids, real, pos)
    f = int((~real[1]).sum())  # the row's first real slot
    assert torch.equal(got[1, f], raw[1, f]) and torch.equal(got[1, f + 1 :], raw[1, f:-1])
    assert torch.equal(got[0, 1:], raw[0, :-1]) and torch.equal(got[0, 0], raw[0, 0])


@torch.no_grad()
def test_dream_rows_starting_with_masks_denoise_as_alone():
    model = HFAdapter(causal_lm("qwen2"), dream_spec(V, MASK, (EOS,), PAD))
    canvases = [torch.cat([tokens(6, seed=40), torch.full((7,), MASK)]),
                torch.cat([torch.full((5,), MASK), tokens(3, seed=41)])]  # fmt: skip
    ids, real, _ = left_pad(canvases)
    batch = denoise(model, ids, real, steps=4)
    for b, c in enumerate(canvases):
        alone = denoise(model, c[None], steps=4)
        assert torch.equal(batch.sequences[b, real[b]], alone.sequences[0])
