"""LLaDA 2 speed paths: the uncached window and the exact block KV cache (`LLaDA2Cache`).

Uncached, a step runs only [prompt … current block] (what `LLaDA2Pipeline` runs: the same
forward lengths, forward for forward). With the cache a step feeds only the current block (the
first step of a block also the block just finished) against the finished blocks' keys, and its
output equals the uncached one token for token: pipeline settings with editing and EOS early
stop, batches of three (equal prompts and left-padded), the drift measured.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.model.llada2 import LLaDA2Cache, LLaDA2Driver, llada2_generate
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.policies import EOSPolicy
from mdiff.text.sampling.sampler import generate

from .test_llada2 import EOS, MASK, SETTINGS, V, _driver, _lm, _prompts, _same, _theirs

transformers = pytest.importorskip("transformers")

torch.set_num_threads(1)


class _Shapes:
    """Records (tokens fed, keys seen) of every forward of ``lm``."""

    def __init__(self, lm):
        self.seen: list[tuple[int, int]] = []
        lm.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.seen.append((ids.shape[1], kwargs["attention_mask"].shape[-1]))

    def take(self) -> list[tuple[int, int]]:
        out, self.seen = self.seen, []
        return out


@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("prompt_length,kw", SETTINGS)
def test_forwards_against_the_pipeline(seed, prompt_length, kw):
    """Uncached: the pipeline's forwards [0, end of block) — all of them with editing; without,
    the pipeline runs one more, unused, after a block's last mask. Cached: as many forwards as
    uncached over the same keys, each feeding at most two blocks. Both: the pipeline's tokens."""
    lm = _lm(seed)
    shapes = _Shapes(lm)
    ids = _prompts(1, prompt_length, seed + prompt_length)
    theirs, _ = _theirs(lm, ids, **kw)
    ref = shapes.take()
    early, bl = kw.get("eos_early_stop", True), kw["block_length"]
    out = llada2_generate(_driver(lm), ids, cache="none", return_output=True, **kw)
    ours = shapes.take()
    assert out.nfe == len(ours) and out.settings["cache"] == "none"
    assert all(n == k and k % bl == 0 for n, k in ours)
    if kw.get("editing_threshold"):
        assert ours == ref
    else:
        assert not Counter(ours) - Counter(ref) and len(ours) >= len(ref) - len(set(ref))
    _same(theirs, out.sequences[:, prompt_length : prompt_length + kw["gen_length"]], early)
    out = llada2_generate(_driver(lm), ids, cache="exact", return_output=True, **kw)
    cached = shapes.take()
    assert out.settings["cache"] == "exact" and out.nfe == len(ours)
    assert [k for _, k in cached] == [k for _, k in ours]
    assert all(n <= 2 * bl for n, _ in cached)
    if ours[-1][1] > 2 * bl:  # more than two blocks: fewer tokens fed
        assert sum(n for n, _ in cached) < sum(n for n, _ in ours)
    _same(theirs, out.sequences[:, prompt_length : prompt_length + kw["gen_length"]], early)


def test_cached_logits_equal_the_full_forward():
    """Block by block through the cache (left padding, a hidden tail), each block's logits are
    the full forward's; discard and crop leave exactly the committed keys."""
    lm = _lm(1)
    drv = _driver(lm, block_size=4).with_block_size(4, key_limit=22)
    x = _prompts(2, 24, 7)
    real = torch.ones(2, 24, dtype=torch.bool)
    real[1, :5] = False  # row 1: 5 pad slots, positions shifted by one block
    pos = torch.arange(24).expand(2, 24) - torch.tensor([[0], [4]])
    pos = pos.clamp_min(0)
    with torch.no_grad():
        full = drv(x, attention_mask=real, position_ids=pos)
        cache = drv.new_cache()
        diffs = []
        for s in range(0, 24, 8):
            part = drv(x[:, s : s + 8], attention_mask=real[:, : s + 8],
                       position_ids=pos[:, s : s + 8], cache=cache)  # fmt: skip
            diffs.append(float((part - full[:, s : s + 8]).abs().max()))
            cache.commit()
        assert cache.length == 24 and max(diffs) < 1e-12, diffs
        cache.crop(8)
        part = drv(x[:, 8:], attention_mask=real, position_ids=pos[:, 8:], cache=cache)
        assert float((part - full[:, 8:]).abs().max()) < 1e-12
        cache.discard()
        assert cache.length == 8 and all(t.keys.shape[2] == 8 for t in cache.kv.layers)
        y = x.clone()
        y[:, 20] = (y[:, 20] + 1) % 40  # a key the cached block 1 cannot see
        part = drv(y[:, 8:16], attention_mask=real[:, :16], position_ids=pos[:, 8:16],
                   cache=cache)  # fmt: skip
        assert float((part - full[:, 8:16]).abs().max()) < 1e-12


def test_batches_cached_equal_uncached_and_rows():
    """Three prompts, editing and EOS early stop (seed 2 stops a row early): cached = uncached
    = each row alone, through llada2_generate and through a left-padded generic batch."""
    lm = _lm(2)
    kw = dict(gen_length=18, block_length=8, num_inference_steps=8, threshold=0.6,
              editing_threshold=0.4, minimal_topk=2)  # fmt: skip
    ids = torch.cat([_prompts(1, 6, 8), _prompts(2, 6, 3)])
    drv = _driver(lm)
    theirs, _ = _theirs(lm, ids[:1], **kw)
    assert bool((theirs == MASK).any())  # row 0 stops early
    none = llada2_generate(drv, ids, cache="none", **kw)
    exact = llada2_generate(drv, ids, cache="exact", **kw)
    assert torch.equal(none, exact)
    _same(theirs, exact[:1], True)
    for b in range(3):
        assert torch.equal(
            llada2_generate(drv, ids[b : b + 1], cache="exact", **kw), exact[b : b + 1]
        )
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    gk = dict(gen_length=12, block_length=4, schedule="llada2", threshold=0.6,
              editing_threshold=0.4, edit_steps=3, eos=EOSPolicy(early_stop=True))  # fmt: skip
    d4 = _driver(_lm(0), block_size=4)
    a = generate(d4, prompts, cache="none", **gk)
    b = generate(d4, prompts, cache="exact", measure_drift=True, **gk)
    assert torch.equal(a.sequences, b.sequences) and b.settings["cache"] == "exact"
    assert b.drift and max(b.drift) < 1e-12
    for r, p in enumerate(prompts):
        alone = generate(d4, [p], cache="exact", **gk).sequences[0, -12:]
        assert torch.equal(alone, b.sequences[r, -12:])


def test_cache_contract_and_bad_input():
    lm = _lm(0)
    drv = _driver(lm)
    assert drv.spec.supports_cache and isinstance(drv.new_cache(), LLaDA2Cache)
    x = _prompts(1, 8, 0)
    with pytest.raises(InvalidInputError, match="dual cache"):
        drv(x, cache=drv.new_cache(), cache_at=0)
    with pytest.raises(InvalidInputError, match="new_cache"):
        drv(x, cache=object())
    cache = drv.new_cache()
    drv(x, cache=cache)
    with pytest.raises(InvalidInputError, match="commit"):
        cache.crop(0)
    with pytest.raises(InvalidInputError, match="staged"):
        drv(x, cache=cache)
    cache.commit()
    with pytest.raises(InvalidInputError, match="rows"):
        drv(_prompts(2, 4, 0), cache=cache)
    with pytest.raises(InvalidInputError, match=r"attention_mask must be \(1, 12\)"):
        drv(x[:, :4], attention_mask=torch.ones(1, 4, dtype=torch.bool), cache=cache)
    with pytest.raises(InvalidInputError, match="cannot crop"):
        cache.crop(9)
    off = LLaDA2Driver(lm, drv.spec, cache=False)
    assert not off.spec.supports_cache and not off.with_block_size(4).spec.supports_cache
    with pytest.raises(InvalidInputError, match="supports_cache"):
        generate(off, [[1, 2]], gen_length=4, cache="exact")

    class NoCache(torch.nn.Module):  # a forward without a cache argument
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.lm(input_ids, attention_mask=attention_mask, position_ids=position_ids)

    spec = DenoiserSpec(vocab_size=V, mask_id=MASK, eos_ids=(EOS,), attention="block_causal",
                        block_size=4)  # fmt: skip
    plain = LLaDA2Driver(NoCache(), spec)
    assert not plain.spec.supports_cache
    out = generate(plain, [[1, 2, 3]], gen_length=8, block_length=4)
    assert out.settings["cache"] == "none"
    assert torch.equal(out.sequences, generate(drv, [[1, 2, 3]], gen_length=8).sequences)


def test_only_the_window_gets_logits():
    """The sampler asks for its window's logits only (``logits_from``): the LM head runs on
    one block per step, cached or not, and those logits are the full forward's."""
    lm = _lm(0)
    rows = []
    lm.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    drv = _driver(lm)
    x = _prompts(1, 12, 4)
    with torch.no_grad():
        full = drv(x)
        assert float((drv(x, logits_from=8) - full[:, 8:]).abs().max()) < 1e-12
        cache = drv.new_cache()
        drv(x[:, :4], cache=cache)
        cache.commit()
        part = drv(x[:, 4:], cache=cache, logits_from=4)
        assert part.shape[1] == 4 and float((part - full[:, 8:]).abs().max()) < 1e-12
    assert rows[1:] == [4, 4, 4]  # full, then 4 rows each (the cache prefill had 4 tokens)
    with pytest.raises(InvalidInputError, match="logits_from"):
        drv(x, logits_from=12)
    kw = dict(gen_length=12, block_length=4, num_inference_steps=4, threshold=0.6,
              editing_threshold=0.4)  # fmt: skip
    for cache_mode in ("none", "exact"):
        rows.clear()
        llada2_generate(drv, x[:, :6], cache=cache_mode, **kw)
        assert rows and set(rows) == {4}, (cache_mode, rows)


def test_moe_model_like_llada2():
    """A Qwen3-MoE (routed experts like LLaDA 2's; float32, as its grouped experts need):
    cached logits are the full forward's and both paths give the pipeline's tokens."""
    torch.manual_seed(3)
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, decoder_sparse_step=1,
        max_position_embeddings=256,
    )  # fmt: skip
    lm = transformers.Qwen3MoeForCausalLM(cfg).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(30.0)
    drv = _driver(lm)
    x = _prompts(2, 12, 5)
    with torch.no_grad():
        full = drv(x)
        cache = drv.new_cache()
        head = drv(x[:, :8], cache=cache)
        cache.commit()
        tail = drv(x[:, 8:], cache=cache)
    assert float((torch.cat([head, tail], 1) - full).abs().max()) < 1e-5
    kw = dict(gen_length=14, block_length=4, num_inference_steps=4, threshold=0.6,
              editing_threshold=0.4)  # fmt: skip
    ids = _prompts(1, 6, 2)
    theirs, _ = _theirs(lm, ids, **kw)
    for mode in ("none", "exact"):
        _same(theirs, llada2_generate(drv, ids, cache=mode, **kw), True)
