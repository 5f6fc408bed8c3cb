"""HFAdapter over tiny random transformers models built locally (no network)."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

from mdiff.errors import InvalidInputError
from mdiff.nn import KVCache
from mdiff.text.model.adapters import HFAdapter, dream_spec, from_masked_lm, llada_spec
from mdiff.text.model.spec import DenoiserSpec

V, PAD, CLS, SEP, MASK = 64, 0, 1, 2, 3


def randomize(model):
    """O(1) weights instead of the 0.02-std init, so that a missing mask shows in the logits."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
    return model


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = ModernBertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, pad_token_id=PAD, bos_token_id=CLS, eos_token_id=SEP,
        cls_token_id=CLS, sep_token_id=SEP, mask_token_id=MASK,
    )  # fmt: skip
    return randomize(ModernBertForMaskedLM(cfg).eval())


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return randomize(LlamaForCausalLM(cfg).eval())


@pytest.fixture(scope="module")
def abs_bert():
    """BERT has absolute position embeddings: left padding needs position_ids passed through."""
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=PAD,
    )  # fmt: skip
    return randomize(BertForMaskedLM(cfg).eval())


TOKENIZER = SimpleNamespace(
    mask_token_id=MASK, pad_token_id=PAD, cls_token_id=CLS, sep_token_id=SEP, eos_token_id=None
)


def tokens(*shape, seed=0):
    return torch.randint(4, V, shape, generator=torch.Generator().manual_seed(seed))


def left_pad(rows):
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :], mask[i, n - len(r) :] = r, True
    return ids, mask, (mask.long().cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def test_masked_lm_adapter_returns_model_logits(bert):
    model = from_masked_lm(bert, TOKENIZER)
    spec = model.spec
    assert (spec.mask_id, spec.pad_id, spec.bos_id, spec.eos_ids) == (MASK, PAD, CLS, (SEP,))
    assert spec.attention == "bidirectional" and not spec.supports_cache
    assert spec.vocab_size == V and spec.logits_shift == 0
    x = tokens(2, 10)
    x[:, 4:7] = MASK
    assert torch.equal(model(x), bert(input_ids=x).logits)


@torch.no_grad()
def test_masked_lm_adapter_passes_padding_and_positions(bert):
    model = from_masked_lm(bert, {"mask_id": MASK, "pad_id": PAD})
    long, short = tokens(12, seed=1), tokens(7, seed=2)
    ids, mask, pos = left_pad([long, short])
    got = model(ids, attention_mask=mask, position_ids=pos)
    ref = bert(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits
    assert torch.equal(got, ref)
    alone = model(short[None])
    assert (got[1, 5:] - alone[0]).abs().max() <= 1e-5  # the padded row is the row alone
    assert (model(ids)[1, 5:] - alone[0]).abs().max() > 1e-3  # ... only thanks to the mask


@torch.no_grad()
def test_position_ids_reach_an_absolute_position_model(abs_bert):
    model = from_masked_lm(abs_bert, TOKENIZER)
    long, short = tokens(12, seed=1), tokens(7, seed=2)
    ids, mask, pos = left_pad([long, short])
    alone = model(short[None])
    got = model(ids, attention_mask=mask, position_ids=pos)
    assert (got[1, 5:] - alone[0]).abs().max() <= 1e-5
    assert (model(ids, attention_mask=mask)[1, 5:] - alone[0]).abs().max() > 1e-3


@torch.no_grad()
def test_dream_style_shift_aligns_causal_lm_logits(llama):
    # kept causal here, to see the shift alone (test_adapters_hf.py runs Dream bidirectionally)
    spec = dataclasses.replace(dream_spec(vocab_size=V, mask_id=MASK, eos_ids=(SEP,)),
                               attention="causal")  # fmt: skip
    model = HFAdapter(llama, spec)
    x = tokens(2, 9, seed=3)
    raw = llama(input_ids=x).logits  # raw[:, i] scores token i + 1
    got = model(x)
    assert got.shape == raw.shape
    assert torch.equal(got[:, 0], raw[:, 0]) and torch.equal(got[:, 1:], raw[:, :-1])
    # aligned logits at i come from tokens < i only: changing token 5 leaves position 5 alone
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1 - 4) % (V - 4) + 4
    changed = model(y)
    assert torch.equal(changed[:, :6], got[:, :6])
    assert (changed[:, 6] - got[:, 6]).abs().max() > 1e-4
    # unshifted, the same model would read position 5 from a state that saw token 5
    plain = HFAdapter(llama, DenoiserSpec(vocab_size=V, mask_id=MASK, attention="causal"))
    assert (plain(y)[:, 5] - plain(x)[:, 5]).abs().max() > 1e-4


@torch.no_grad()
def test_shifted_adapter_with_left_padding(llama):
    model = HFAdapter(llama, dream_spec(vocab_size=V, mask_id=MASK))
    long, short = tokens(10, seed=4), tokens(6, seed=5)
    ids, mask, pos = left_pad([long, short])
    got = model(ids, attention_mask=mask, position_ids=pos)
    alone = model(short[None])
    # position 0 of a row reuses raw logits 0 (Dream), so compare the shifted part
    assert (got[1, 5:] - alone[0, 1:]).abs().max() <= 1e-5


def test_adapter_rejects_cache_and_bad_input(bert):
    model = from_masked_lm(bert, TOKENIZER)
    x = tokens(1, 5)
    with pytest.raises(InvalidInputError):
        model(x, cache=KVCache(2))
    with pytest.raises(InvalidInputError):
        model(x, cache_at=0)
    with pytest.raises(InvalidInputError):
        model(x, attention_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError):
        model(x[0])
    wrong_vocab = HFAdapter(bert, DenoiserSpec(vocab_size=V + 1, mask_id=MASK))
    with pytest.raises(InvalidInputError):
        wrong_vocab(x)
    with pytest.raises(InvalidInputError):
        HFAdapter(bert, {"mask_id": MASK})
    with pytest.raises(InvalidInputError):
        from_masked_lm(bert, SimpleNamespace(mask_token_id=None))
    with pytest.raises(InvalidInputError):
        from_masked_lm(bert, {"pad_id": PAD})
    assert HFAdapter(bert, DenoiserSpec(V, MASK, supports_cache=True)).spec.supports_cache is False


def test_position_ids_need_a_model_that_takes_them():
    class NoPositions(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, V))

    model = HFAdapter(NoPositions(), DenoiserSpec(V, MASK))
    x = tokens(2, 4)
    assert model(x, position_ids=torch.arange(4)[None]).shape == (2, 4, V)  # default: fine
    with pytest.raises(InvalidInputError):
        model(x, position_ids=torch.arange(1, 5)[None].expand(2, 4))


def test_known_model_specs():
    llada = llada_spec()
    assert llada.mask_id == 126336 and llada.eos_ids == (126081, 126348)
    assert llada.logits_shift == 0 and llada.attention == "bidirectional"
    dream = dream_spec()
    assert dream.mask_id == 151666 and dream.logits_shift == 1
    assert not llada.supports_cache and not dream.supports_cache
