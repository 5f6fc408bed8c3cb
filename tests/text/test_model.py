"""TextDenoiser: attention kinds, exact and approximate KV caches, BD3 training pass, padding,
checkpoints. Oracles are full recomputes of the same sequence with the model's own mask."""

import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.nn import KVCache
from mdiff.text.model.denoiser import PRESETS, TextDenoiser, TextDenoiserConfig
from mdiff.text.model.spec import DenoiserSpec

BS, V, MASK, PAD = 4, 64, 3, 0
TOL = 1e-5


def make(attention: str = "bidirectional", seed: int = 0) -> TextDenoiser:
    torch.manual_seed(seed)
    block = BS if attention == "block_causal" else None
    model = TextDenoiser(TextDenoiserConfig.preset("test", attention=attention, block_size=block))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # O(1) logits and non-trivial norms, so a wrong mask shows
        model.embed.weight.copy_(torch.randn(model.embed.weight.shape, generator=g))
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def tokens(*shape, seed=0, low=4):
    return torch.randint(low, V, shape, generator=torch.Generator().manual_seed(seed))


def left_pad(rows: list[torch.Tensor]):
    """Left-pad 1-D rows: ids (B, L), attention_mask (B, L) bool, position_ids (B, L)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :], mask[i, n - len(r) :] = r, True
    return ids, mask, (mask.long().cumsum(1) - 1).clamp(min=0)


def masked_like(x: torch.Tensor, frac: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(x.shape, generator=g) < frac, torch.full_like(x, MASK), x)


def maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- block-causal: exact cache


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_block_cache_generation_equals_full_recompute(padded):
    model = make("block_causal")
    final = tokens(2, 20, seed=1)  # 2 prompt blocks + 3 generated blocks
    if padded:  # row 1: one block of left padding (blocks stay aligned in position space)
        final[1, :BS] = PAD
        mask = torch.ones(2, 20, dtype=torch.bool)
        mask[1, :BS] = False
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    else:
        mask = pos = None

    def cut(t, a, b):
        return None if t is None else t[:, a:b]

    full_ref = model(final, attention_mask=mask, position_ids=pos)  # (2, 20, V)
    cache = model.new_cache()
    model(final[:, :8], attention_mask=cut(mask, 0, 8), position_ids=cut(pos, 0, 8), cache=cache)
    cache.commit()
    worst = 0.0
    for start in range(8, 20, BS):
        end = start + BS
        for step, frac in enumerate((1.0, 0.6, 0.3)):  # denoising steps read the cache only
            noisy = masked_like(final[:, start:end], frac, seed=start + step)
            seq = torch.cat([final[:, :start], noisy], dim=1)
            got = model(noisy, cut(mask, 0, end), cut(pos, start, end), cache=cache)
            cache.discard()
            ref = model(seq, attention_mask=cut(mask, 0, end), position_ids=cut(pos, 0, end))
            rows = slice(None) if mask is None else mask[:, start:end]
            worst = max(worst, maxdiff(got[rows], ref[:, start:end][rows]))
        clean = model(final[:, start:end], cut(mask, 0, end), cut(pos, start, end), cache=cache)
        cache.commit()  # the finished block is written clean
        worst = max(worst, maxdiff(clean, full_ref[:, start:end]))
    assert cache.length == 20 and not cache.has_staged
    assert worst <= TOL
    # the oracle is not vacuous: seeing the next block would change the logits
    bidir = make("bidirectional")
    bidir.load_state_dict(model.state_dict())
    assert maxdiff(bidir(final)[:, :8], model(final)[:, :8]) > 1e-3


@torch.no_grad()
def test_block_forward_equals_per_block_forward():
    model = make("block_causal")
    x0 = tokens(2, 16, seed=2)
    xt = masked_like(x0, 0.5, seed=3)
    got = model.block_forward(xt, x0)  # (2, 16, V)
    assert got.shape == (2, 16, V)
    for b in range(16 // BS):
        s, e = b * BS, (b + 1) * BS
        ref = model(torch.cat([x0[:, :s], xt[:, s:e]], dim=1))[:, s:e]
        assert maxdiff(got[:, s:e], ref) <= TOL, b
    # x_t must not leak into other blocks: changing block 0 of x_t leaves later blocks alone
    xt2 = xt.clone()
    xt2[:, :BS] = tokens(2, BS, seed=9)
    again = model.block_forward(xt2, x0)
    assert maxdiff(again[:, BS:], got[:, BS:]) <= TOL
    assert maxdiff(again[:, :BS], got[:, :BS]) > 1e-3


@torch.no_grad()
def test_block_forward_with_padding_matches_unpadded_row():
    model = make("block_causal")
    x0 = tokens(12, seed=4)
    xt = masked_like(x0[None], 0.5, seed=5)[0]
    ids0, mask, pos = left_pad([x0, x0[:8]])
    idst, _, _ = left_pad([xt, xt[:8]])
    got = model.block_forward(idst, ids0, attention_mask=mask, position_ids=pos)
    alone = model.block_forward(xt[None, :8], x0[None, :8])
    assert maxdiff(got[1, 4:], alone[0]) <= TOL


# ---------------------------------------------------------------- bidirectional: approximate


@torch.no_grad()
def test_prefix_and_dual_cache_exact_at_block_start_then_drift():
    model = make("bidirectional")
    prompt, gen = tokens(2, 8, seed=6), torch.full((2, 12), MASK)
    seq = torch.cat([prompt, gen], dim=1)  # (2, 20); the block being decoded is [8, 12)
    full = model(seq)
    prefix, dual = model.new_cache(), model.new_cache()
    model(seq, cache=prefix)
    prefix.commit()
    prefix.crop(8)  # Fast-dLLM prefix cache: K/V of positions < block start
    model(seq, cache=dual)
    dual.commit()  # dual cache: K/V of every position
    got_prefix = model(seq[:, 8:], cache=prefix)  # block + masked suffix read the prefix
    prefix.discard()
    got_dual = model(seq[:, 8:12], cache=dual, cache_at=8)  # block replaces its own slots
    assert not dual.has_staged and dual.length == 20
    assert maxdiff(got_prefix, full[:, 8:]) <= TOL
    assert maxdiff(got_dual, full[:, 8:12]) <= TOL
    # two tokens of the block get decoded: the caches go stale, the recompute does not
    seq2 = seq.clone()
    seq2[:, 8:10] = tokens(2, 2, seed=7)
    full2 = model(seq2)
    drift_prefix = maxdiff(model(seq2[:, 8:], cache=prefix), full2[:, 8:])
    prefix.discard()
    drift_dual = maxdiff(model(seq2[:, 8:12], cache=dual, cache_at=8), full2[:, 8:12])
    assert drift_prefix > 1e-4 and drift_dual > 1e-4
    assert drift_dual >= drift_prefix - 1e-6  # dual also reuses a stale suffix


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal", "causal"])
@torch.no_grad()
def test_dual_cache_with_padding_equals_full_recompute(attention):
    """Row 1 is padded by 6 (not a whole block): cached keys before *and after* the replaced
    slots must keep their absolute positions for the causal and block-causal rules."""
    model = make(attention)
    ids, mask, pos = left_pad([tokens(16, seed=8), tokens(10, seed=9)])
    full = model(ids, attention_mask=mask, position_ids=pos)
    cache = model.new_cache()
    model(ids, attention_mask=mask, position_ids=pos, cache=cache)
    cache.commit()
    for s in (6, 8, 12):
        got = model(ids[:, s : s + 4], mask, pos[:, s : s + 4], cache=cache, cache_at=s)
        assert maxdiff(got, full[:, s : s + 4]) <= TOL, s
    assert not cache.has_staged and cache.length == 16


# ---------------------------------------------------------------- causal baseline


@torch.no_grad()
def test_causal_equals_per_prefix_recompute_and_incremental_cache():
    model = make("causal")
    x = tokens(2, 10, seed=10)
    full = model(x)
    cache = model.new_cache()
    for i in range(10):
        ref = model(x[:, : i + 1])[:, -1]
        assert maxdiff(full[:, i], ref) <= TOL, i
        step = model(x[:, i : i + 1], cache=cache)[:, 0]
        cache.commit()
        assert maxdiff(step, ref) <= TOL, i


# ---------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal", "causal"])
@torch.no_grad()
def test_left_padded_row_equals_row_alone(attention):
    model = make(attention)
    long, short = tokens(13, seed=11), tokens(6, seed=12)
    ids, mask, pos = left_pad([long, short])
    got = model(ids, attention_mask=mask, position_ids=pos)
    assert maxdiff(got[1, 7:], model(short[None])[0]) <= TOL
    assert maxdiff(got[0], model(long[None])[0]) <= TOL
    assert torch.isfinite(got).all()  # padded query rows stay finite
    if attention != "block_causal":  # RoPE is relative: default (slot) positions work too
        assert maxdiff(model(ids, attention_mask=mask)[1, 7:], got[1, 7:]) <= TOL
    # without the mask the pads are seen and the row changes
    assert maxdiff(model(ids, position_ids=pos)[1, 7:], got[1, 7:]) > 1e-3


# ---------------------------------------------------------------- spec, cache splice, hub


def test_spec_follows_config():
    spec = make("block_causal").spec
    assert isinstance(spec, DenoiserSpec)
    assert (spec.vocab_size, spec.mask_id, spec.pad_id, spec.eos_ids) == (V, MASK, PAD, (2,))
    assert spec.attention == "block_causal" and spec.block_size == BS and spec.supports_cache
    assert make().spec.block_size is None and make().spec.logits_shift == 0


def test_kv_cache_splice_reads_without_staging():
    cache = KVCache(1)
    k, v = torch.randn(2, 3, 8, 4), torch.randn(2, 3, 8, 4)
    cache.stage(0, k, v)
    cache.commit()
    kn, vn = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    ks, vs = cache.layer(0, at=5).extend(kn, vn)
    assert torch.equal(ks, torch.cat([k[:, :, :5], kn, k[:, :, 7:]], 2))
    assert torch.equal(vs, torch.cat([v[:, :, :5], vn, v[:, :, 7:]], 2))
    assert not cache.has_staged and torch.equal(cache.read(0)[0], k)
    with pytest.raises(InvalidInputError):
        cache.splice(0, kn, vn, 7)  # [7, 9) runs past the end


def test_save_pretrained_round_trip(tmp_path):
    model = make("block_causal")
    x = tokens(2, 12, seed=13)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = TextDenoiser.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config
    assert loaded.head.weight is loaded.embed.weight  # still tied
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    (tmp_path / "ckpt" / "config.json").write_text('{"vocab_size": 64, "mask_id": 99}')
    with pytest.raises(CheckpointError):
        TextDenoiser.from_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "overrides",
    [
        dict(attention="sliding"),
        dict(attention="block_causal", block_size=None),
        dict(mask_id=64),
        dict(mask_id=0),  # equals pad_id
        dict(heads=5),
        dict(heads=4, kv_heads=3),  # kv heads must divide heads
        dict(dim=36, heads=4, kv_heads=None),  # odd head dim 9: no RoPE
        dict(dropout=1.0),
        dict(depth=0),
    ],
)
def test_config_validation(overrides):
    with pytest.raises(InvalidInputError):
        TextDenoiserConfig.preset("test", **overrides)


def test_presets_and_sizes():
    with pytest.raises(InvalidInputError):
        TextDenoiserConfig.preset("huge")
    cfg = TextDenoiserConfig.preset("code-tiny")
    n = sum(p.numel() for p in TextDenoiser(cfg).parameters())
    assert 3e6 <= n <= 6e6 and cfg.vocab_size == 4096 and "test" in PRESETS


@torch.no_grad()
def test_forward_input_validation():
    model = make("bidirectional")
    x = tokens(2, 6)
    cache = model.new_cache()
    bad = [
        dict(input_ids=x.float()),
        dict(input_ids=x + V),  # ids outside the vocabulary
        dict(input_ids=x, attention_mask=torch.ones(2, 5, dtype=torch.bool)),
        dict(input_ids=x, position_ids=torch.zeros(2, 4, dtype=torch.long)),
        dict(input_ids=x, cache_at=0),  # cache_at without a cache
        dict(input_ids=x, cache=cache, cache_at=0),  # empty cache has no slots to replace
        dict(input_ids=tokens(1, 200)),  # longer than max_len
        dict(input_ids=x, cache=KVCache(5)),
    ]
    for kwargs in bad:
        with pytest.raises(InvalidInputError):
            model(**kwargs)
    with pytest.raises(InvalidInputError):
        model.block_forward(x, x)  # not block-causal
