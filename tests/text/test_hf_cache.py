"""KV caches for transformers RoPE decoders behind `HFAdapter` (`mdiff.text.model.hf_cache`).

Tiny random Llama, Qwen2, Qwen3, Mistral, Phi-3 and Gemma causal LMs run with bidirectional or
block-causal specs.
The oracle is the same adapter without a cache (itself checked against the models' own forwards
in test_adapters_hf.py): (a) the block cache is exact for a block-causal spec; (b) for a
bidirectional spec the prefix and dual caches equal an uncached forward right after a commit
(prefix unchanged) and drift afterwards, measured with ``measure_drift=True``; (c) left-padded
batches equal single rows; (d) Dream's logits shift at the cache seam."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from mdiff.errors import InvalidInputError
from mdiff.text.model.adapters import HFAdapter, from_masked_lm
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.sampler import generate

torch.set_num_threads(1)
V, PAD, MASK, EOS = 64, 1, 3, 2
SIZES = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=128)  # fmt: skip
ROWS = [[5, 9, 17, 33, 12, 40, 7], [21, 8, 30], [11, 50, 6, 6, 19]]
KINDS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma"]  # `hf_cache.CACHEABLE_TYPES`


def lm(kind="llama", attn="sdpa", seed=0, **extra):
    """A random causal LM with O(1) weights (so that a wrong mask or key shows in the logits)."""
    import transformers as T

    torch.manual_seed(seed)
    config, cls = {"llama": (T.LlamaConfig, T.LlamaForCausalLM),
                   "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
                   "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM),
                   "mistral": (T.MistralConfig, T.MistralForCausalLM),
                   "phi3": (T.Phi3Config, T.Phi3ForCausalLM),
                   "gemma": (T.GemmaConfig, T.GemmaForCausalLM)}[kind]  # fmt: skip
    if kind == "mistral":
        extra = {"sliding_window": None, **extra}
    if kind == "phi3":  # its defaults name ids of a 32k vocabulary
        extra = {"pad_token_id": PAD, "bos_token_id": 0, "eos_token_id": EOS, **extra}
    if kind in ("qwen3", "gemma"):
        extra = {"head_dim": SIZES["hidden_size"] // SIZES["num_attention_heads"], **extra}
    model = cls(config(**SIZES, num_key_value_heads=1 if kind == "qwen2" else 2,
                       attn_implementation=attn, **extra))  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
    return model.eval()


def adapter(kind="llama", attention="bidirectional", shift=0, attn="sdpa", block=4):
    spec = DenoiserSpec(V, MASK, pad_id=PAD, eos_ids=(EOS,), logits_shift=shift,
                        attention=attention, block_size=block if attention != "bidirectional"
                        else None)  # fmt: skip
    return HFAdapter(lm(kind, attn), spec)


def left_pad(rows, n=None):
    n = n or max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)
    real = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :], real[i, n - len(r) :] = torch.tensor(r), True
    return ids, real, (real.long().cumsum(1) - 1).clamp(min=0)


def canvas(seed=0):
    """Left-padded rows, the last 8 slots of each masked (half of them), as the sampler sees it."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, V, (n,), generator=g).tolist() for n in (14, 9, 16)]
    ids, real, pos = left_pad(rows)
    ids[:, -8::2] = MASK
    return ids, real, pos


def test_which_models_take_the_cache():
    for kind in KINDS:
        for att in ("bidirectional", "block_causal"):
            a = adapter(kind, att)
            assert a.spec.supports_cache and a.cache_unsupported is None
            assert a.new_cache().length == 0
    causal = adapter(attention="causal")
    assert not causal.spec.supports_cache and "autoregressive" in causal.cache_unsupported
    for kind, window in (("qwen2", dict(use_sliding_window=True)), ("mistral", {})):
        sliding = HFAdapter(lm(kind, sliding_window=4, **window), DenoiserSpec(V, MASK, pad_id=PAD))
        assert not sliding.spec.supports_cache and "sliding" in sliding.cache_unsupported
    torch.manual_seed(0)
    bert = from_masked_lm(BertForMaskedLM(BertConfig(**SIZES)).eval(), {"mask_id": MASK})
    assert not bert.spec.supports_cache and "absolute position" in bert.cache_unsupported
    for bad in (causal, bert):
        with pytest.raises(InvalidInputError, match="no KV cache"):
            bad.new_cache()
    with pytest.raises(InvalidInputError, match="supports_cache"):
        generate(bert, [[5, 6]], gen_length=4, cache="prefix")


@torch.no_grad()
def test_cache_misuse_is_refused():
    a = adapter()
    x = torch.randint(4, V, (2, 8))
    cache = a.new_cache()
    a(x, cache=cache)
    with pytest.raises(InvalidInputError, match="staged"):
        a(x, cache=cache)  # neither committed nor discarded
    cache.commit()
    with pytest.raises(InvalidInputError, match="cache_at"):
        a(x[:, :4], cache=cache, cache_at=6)
    with pytest.raises(InvalidInputError, match="rows"):
        a(x[:1], cache=cache)
    with pytest.raises(InvalidInputError, match="cache_at needs"):
        a(x, cache_at=0)
    with pytest.raises(InvalidInputError, match="new_cache"):
        a(x, cache=object())
    with pytest.raises(InvalidInputError, match="crop"):
        cache.crop(9)


# ---- (b) exact at commit, (d) Dream's shift at the seam ----------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("kind, attn", [("llama", "sdpa"), ("qwen2", "eager"), ("qwen3", "sdpa"),
                                        ("mistral", "eager"), ("phi3", "sdpa"),
                                        ("gemma", "eager")])  # fmt: skip
@pytest.mark.parametrize("shift", [0, 1])
def test_reading_right_after_a_commit_equals_the_uncached_forward(kind, attn, shift):
    """Prefix cache [0, s) read by [s, L), dual cache read by [s, e) with cache_at=s: the same
    logits as the uncached forward while the canvas is unchanged (every s, left padding)."""
    a = adapter(kind, shift=shift, attn=attn)
    ids, real, pos = canvas()
    L = ids.shape[1]
    full = a(ids, real, pos)
    gaps = []
    for s in range(1, L - 2):
        cache = a.new_cache()
        a(ids, real, pos, cache=cache)
        cache.commit()
        dual = a(ids[:, s : s + 3], real, pos[:, s : s + 3], cache=cache, cache_at=s)
        assert cache.kv.get_seq_length() == L == cache.length  # the fresh keys were dropped
        cache.crop(s)
        prefix = a(ids[:, s:], real, pos[:, s:], cache=cache)
        cache.discard()
        assert cache.kv.get_seq_length() == s
        gaps += [(dual - full[:, s : s + 3])[real[:, s : s + 3]].abs().max(),
                 (prefix - full[:, s:])[real[:, s:]].abs().max()]  # fmt: skip
    assert float(max(gaps)) <= 1e-5
    # the cache is really read: a changed cached token moves the new logits
    cache = a.new_cache()
    a(ids[:, :10].flip(1), real[:, :10], pos[:, :10], cache=cache)
    cache.commit()
    other = a(ids[:, 10:], real, pos[:, 10:], cache=cache)
    assert float((other - full[:, 10:]).abs().max()) > 1e-2


@torch.no_grad()
def test_dream_seam_reads_the_previous_slot_from_the_cache():
    """With shift 1 the window's first logits are the hidden state of slot s − 1 (in the cache):
    equal to the uncached shifted logits, unlike the raw logits of slot s; a row whose first real
    token is slot s (all padding before it) uses its own raw logits, as uncached."""
    a, plain = adapter(shift=1), adapter(shift=0)
    ids, real, pos = left_pad([[5, 9, 17, 33, 12, 40, 7, 8, 9, 10], [21, 8, 30, 44, 45]])
    s = 5  # row 1 starts exactly at the seam
    full, raw = a(ids, real, pos), plain(ids, real, pos)
    assert float((full[0, s] - raw[0, s - 1]).abs().max()) <= 1e-5  # the shift itself
    assert float((full[1, s] - raw[1, s]).abs().max()) <= 1e-5  # first real token: own logits
    for mode in ("prefix", "dual"):
        cache = a.new_cache()
        a(ids, real, pos, cache=cache)  # the refresh: one full forward
        cache.commit()
        if mode == "dual":
            out = a(ids[:, s : s + 3], real, pos[:, s : s + 3], cache=cache, cache_at=s)
        else:
            cache.crop(s)
            out = a(ids[:, s:], real, pos[:, s:], cache=cache)
            cache.discard()
        assert float((out[:, 0] - full[:, s]).abs().max()) <= 1e-5, mode
        assert float((out[0, 0] - raw[0, s]).abs().max()) > 1e-2  # not slot s's own state
    # block-causal (blocks of 5): the prefix committed block by block, then read; exact
    blk = HFAdapter(a.model, DenoiserSpec(V, MASK, pad_id=PAD, logits_shift=1,
                                          attention="block_causal", block_size=s))  # fmt: skip
    cache = blk.new_cache()
    blk(ids[:, :s], real[:, :s], pos[:, :s], cache=cache)
    cache.commit()
    out = blk(ids[:, s:], real, pos[:, s:], cache=cache)
    assert float((out - blk(ids, real, pos)[:, s:]).abs().max()) <= 1e-5
    assert cache.kv.get_seq_length() == s + ids.shape[1] - s + 1  # the seam query's key too
    cache.commit()
    assert cache.kv.get_seq_length() == cache.length == ids.shape[1]  # its copy dropped


# ---- (a) the block cache is exact ---------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("extra", [dict(steps=16), dict(schedule="threshold", threshold=0.3),
                                   dict(steps=16, guidance=2.0)])  # fmt: skip
def test_block_causal_cache_equals_uncached_token_for_token(kind, shift, extra):
    a = adapter(kind, "block_causal", shift)
    cfg = dict(gen_length=16, block_length=8, temperature=1.0, seed=3, measure_drift=True, **extra)
    cached = generate(a, ROWS, cache="exact", **cfg)
    plain = generate(a, ROWS, cache="none", **cfg)
    assert cached.settings["cache"] == "exact" and plain.settings["cache"] == "none"
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.nfe == plain.nfe and len(cached.drift) == cached.nfe
    assert max(cached.drift) <= 1e-5
    auto = generate(a, ROWS, **cfg)  # cache="auto" picks the exact cache
    assert auto.settings["cache"] == "exact" and torch.equal(auto.sequences, plain.sequences)


# ---- (b) approximate caches drift; (c) batches equal single rows --------------------------------


@torch.no_grad()
@pytest.mark.parametrize("shift", [0, 1])
def test_prefix_and_dual_caches_drift_and_report_it(shift):
    a = adapter(shift=shift)
    cfg = dict(gen_length=16, block_length=8, steps=16, seed=1, measure_drift=True)
    plain = generate(a, ROWS, cache="none", **cfg)
    for mode in ("prefix", "dual"):
        out = generate(a, ROWS, cache=mode, **cfg)
        assert out.nfe == plain.nfe == 16 and len(out.drift) == 16 - 2  # 2 refreshes
        assert 1e-4 < max(out.drift) < 10  # a stale bidirectional cache drifts, boundedly
        agree = float((out.sequences == plain.sequences)[plain.generated].double().mean())
        print(f"shift {shift} {mode}: max drift {max(out.drift):.4f}, "
              f"mean {sum(out.drift) / len(out.drift):.4f}, agreement {agree:.3f}")  # fmt: skip


@torch.no_grad()
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("mode, attention, shift", [("prefix", "bidirectional", 0),
                                                    ("dual", "bidirectional", 1),
                                                    ("exact", "block_causal", 1)])  # fmt: skip
def test_left_padded_batch_equals_single_rows(kind, mode, attention, shift):
    a = adapter(kind, attention, shift)
    cfg = dict(gen_length=16, block_length=8, steps=16, temperature=1.0, seed=5, cache=mode)
    batch = generate(a, ROWS, **cfg)
    for b, row in enumerate(ROWS):
        alone = generate(a, [row], generators=[torch.Generator().manual_seed(5 + b)], **cfg)
        assert torch.equal(batch.sequences[b, -16:], alone.sequences[0, -16:]), (b, mode)


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_blocks_of_one_token_equal_the_models_own_causal_forward(kind):
    """An oracle outside our mask code: block-causal with blocks of 1 is causal attention, so the
    cached read equals the model's own causal logits (transformers' mask and positions)."""
    a = adapter(kind, "block_causal", block=1)
    x = torch.randint(4, V, (2, 12), generator=torch.Generator().manual_seed(4))
    own = a.model(input_ids=x).logits
    cache = a.new_cache()
    for s, e in ((0, 5), (5, 8), (8, 12)):  # committed chunk by chunk
        got = a(x[:, s:e], cache=cache)
        cache.commit()
        assert float((got - own[:, s:e]).abs().max()) <= 1e-5
