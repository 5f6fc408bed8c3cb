"""Transformer block, AdaLN-Zero, timestep embedding and the explicit KV cache."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.nn import (
    AdaLNZero,
    BlockCausal,
    BlockConfig,
    Dense,
    FinalLayer,
    KVCache,
    RotaryEmbedding,
    TimestepEmbedder,
    TransformerBlock,
    arange_positions,
    timestep_embedding,
)

B, DIM, HEADS, COND, CTX = 2, 32, 4, 12, 20
VIDEO = BlockConfig(DIM, HEADS, cross_attention=True, context_dim=CTX, cond_dim=COND)
TEXT = BlockConfig(DIM, HEADS, kv_heads=2, mlp="swiglu", bias=False)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones too) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    return module


def make_stack(cfg: BlockConfig, n_layers: int = 2, seed: int = 0):
    return [randomize(TransformerBlock(cfg), seed + i).eval() for i in range(n_layers)]


def run_stack(blocks, x, cond, **kw):
    cache = kw.pop("cache", None)
    for i, blk in enumerate(blocks):
        x = blk(x, cond, cache=None if cache is None else cache.layer(i), **kw)
    return x


def test_fresh_adaln_block_is_identity():
    blk = TransformerBlock(VIDEO)
    x = randn(B, 10, DIM)
    out = blk(x, randn(B, COND, seed=1), context=randn(B, 7, CTX, seed=2))
    assert torch.equal(out, x)
    per_token = blk(x, randn(B, 10, COND, seed=1), context=randn(B, 7, CTX, seed=2))
    assert torch.equal(per_token, x)
    assert not torch.equal(randomize(blk)(x, randn(B, COND), context=randn(B, 7, CTX)), x)


def test_per_token_conditioning_with_equal_rows_matches_per_sample():
    blk = randomize(TransformerBlock(VIDEO)).double()
    x, c, ctx = (randn(B, 10, DIM), randn(B, COND, seed=1), randn(B, 7, CTX, seed=2))
    x, c, ctx = x.double(), c.double(), ctx.double()
    per_sample = blk(x, c, context=ctx)
    per_token = blk(x, c[:, None].expand(B, 10, COND), context=ctx)
    torch.testing.assert_close(per_token, per_sample, atol=1e-12, rtol=1e-12)
    c_tok = c[:, None].repeat(1, 10, 1)
    c_tok[:, 3] += 1.0  # token 3 gets a different condition: only its row may change
    changed = (blk(x, c_tok, context=ctx) - per_sample).abs().amax(dim=(0, 2))
    assert changed[3] > 1e-3
    assert changed[:3].max() > 1e-3  # ...and through attention, the others too


@pytest.mark.parametrize("cfg", [VIDEO, TEXT], ids=["video", "text"])
@pytest.mark.parametrize("chunks", [[4, 4, 4, 4], [4, 8, 4]])
def test_chunked_kv_cache_matches_block_causal_forward(cfg, chunks):
    bs, length = 4, sum(chunks)
    blocks = make_stack(cfg)
    rope = RotaryEmbedding(cfg.head_dim)
    x = randn(B, length, DIM)
    cond = randn(B, COND, seed=1) if cfg.cond_dim else None
    kw = {"context": randn(B, 5, CTX, seed=2)} if cfg.cross_attention else {}
    with torch.no_grad():
        rope_all = rope.freqs(arange_positions(length))
        full = run_stack(blocks, x, cond, rope=rope_all, mask=BlockCausal(bs), **kw)
        cache, outs, start = KVCache(len(blocks)), [], 0
        for n in chunks:
            fr = rope.freqs(arange_positions(n, offset=start))
            noisy = randn(B, n, DIM, seed=start + 10)  # a read-only step: staged, then dropped
            run_stack(blocks, noisy, cond, rope=fr, mask=BlockCausal(bs), cache=cache, **kw)
            cache.discard()
            assert cache.length == start
            xs = x[:, start : start + n]
            outs.append(
                run_stack(blocks, xs, cond, rope=fr, mask=BlockCausal(bs), cache=cache, **kw)
            )
            cache.commit()
            start += n
            assert cache.length == start
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [VIDEO, TEXT], ids=["video", "text"])
def test_rolling_window_cache_matches_dense_mask(cfg):
    bs, n_chunks, sink, window = 4, 6, 4, 8
    length = bs * n_chunks
    blocks = make_stack(cfg, seed=3)
    rope = RotaryEmbedding(cfg.head_dim)
    x = randn(B, length, DIM)
    cond = randn(B, COND, seed=1) if cfg.cond_dim else None
    kw = {"context": randn(B, 5, CTX, seed=2)} if cfg.cross_attention else {}
    # query in chunk c sees: the sink, the last `window` keys before the chunk, its own chunk
    q_pos, k_pos = torch.arange(length)[:, None], torch.arange(length)[None, :]
    chunk_start = q_pos // bs * bs
    allowed = (k_pos < sink) | ((k_pos >= chunk_start - window) & (k_pos < chunk_start + bs))
    with torch.no_grad():
        rope_all = rope.freqs(arange_positions(length))
        full = run_stack(blocks, x, cond, rope=rope_all, mask=Dense(allowed), **kw)
        cache, outs = KVCache(len(blocks)), []
        for c in range(n_chunks):
            fr = rope.freqs(arange_positions(bs, offset=c * bs))
            xs = x[:, c * bs : (c + 1) * bs]
            outs.append(run_stack(blocks, xs, cond, rope=fr, mask=None, cache=cache, **kw))
            cache.commit()
            cache.keep_window(sink, window)
            assert cache.length == min((c + 1) * bs, sink + window)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, run_stack(blocks, x, cond, rope=rope_all, **kw), atol=1e-3)


def test_context_mask_ignores_masked_tokens():
    blk = randomize(TransformerBlock(VIDEO))
    x, c, ctx = randn(B, 6, DIM), randn(B, COND, seed=1), randn(B, 7, CTX, seed=2)
    ctx_mask = torch.ones(B, 7, dtype=torch.bool)
    ctx_mask[0, 4:] = False
    ctx_mask[1, 2:] = False
    out = blk(x, c, context=ctx, context_mask=ctx_mask)
    changed = ctx.clone()
    changed[~ctx_mask] = 100.0
    torch.testing.assert_close(blk(x, c, context=changed, context_mask=ctx_mask), out)
    changed[0, 0] += 1.0  # an unmasked token does matter
    assert not torch.allclose(blk(x, c, context=changed, context_mask=ctx_mask), out)
    ctx_mask[1] = False  # a sample with no context at all gives finite output
    assert torch.isfinite(blk(x, c, context=ctx, context_mask=ctx_mask)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_math_backend_block_supports_jvp():
    blk = randomize(TransformerBlock(TEXT, backend="math")).double()
    x, tx = randn(B, 6, DIM).double(), randn(B, 6, DIM, seed=1).double()

    def f(x):
        return blk(x, mask=BlockCausal(2))

    _, jvp_out = torch.func.jvp(f, (x,), (tx,))
    eps = 1e-6
    fd = (f(x + eps * tx) - f(x - eps * tx)) / (2 * eps)
    torch.testing.assert_close(jvp_out, fd, atol=1e-6, rtol=1e-5)


def test_block_input_validation():
    blk = TransformerBlock(VIDEO)
    x, c, ctx = randn(B, 6, DIM), randn(B, COND), randn(B, 7, CTX)
    with pytest.raises(InvalidInputError):
        blk(x, context=ctx)  # AdaLN block without cond
    with pytest.raises(InvalidInputError):
        blk(x, c)  # cross-attention block without context
    with pytest.raises(InvalidInputError):
        blk(x, randn(B, 5, COND), context=ctx)  # per-token cond for 5 of 6 tokens
    with pytest.raises(InvalidInputError):
        TransformerBlock(TEXT)(x, c)  # cond for a block without AdaLN
    with pytest.raises(InvalidInputError):
        BlockConfig(30, 4)  # dim not divisible by heads


def test_timestep_embedding_shapes_and_values():
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = timestep_embedding(t, 64)
    assert emb.shape == (3, 64)
    assert torch.equal(emb[0], torch.cat([torch.ones(32), torch.zeros(32)]))
    torch.testing.assert_close(emb[1, 0], torch.tensor(500.0).cos())  # ω_0 = 1, sees 1000·t
    per_token = timestep_embedding(t[:, None].expand(3, 5), 64)
    assert per_token.shape == (3, 5, 64)
    torch.testing.assert_close(per_token, emb[:, None].expand(3, 5, 64))
    assert timestep_embedding(t, 65).shape == (3, 65)
    embedder = TimestepEmbedder(48)
    assert embedder(t).shape == (3, 48) and embedder(t[:, None].expand(3, 5)).shape == (3, 5, 48)
    with pytest.raises(InvalidInputError):
        timestep_embedding(torch.tensor([1, 2]), 8)  # integer timesteps are not a thing


def test_adaln_zero_and_final_layer_start_at_zero():
    ada = AdaLNZero(COND, DIM, 3)
    chunks = ada(randn(B, 5, COND))
    assert len(chunks) == 3 and all(ch.shape == (B, 5, DIM) for ch in chunks)
    assert all(torch.equal(ch, torch.zeros_like(ch)) for ch in chunks)
    final = FinalLayer(DIM, 7, COND)
    assert torch.equal(final(randn(B, 5, DIM), randn(B, COND)), torch.zeros(B, 5, 7))


def test_kv_cache_bookkeeping():
    cache = KVCache(2)
    k = torch.arange(10.0).view(1, 1, 10, 1)
    for i in range(2):
        cache.stage(i, k, -k)
    with pytest.raises(InvalidInputError):
        cache.stage(0, k, k)  # already staged
    cache.commit()
    assert cache.length == 10 and not cache.has_staged
    snapshot = cache.clone()
    cache.evict(2, 5)
    assert cache.read(1)[0].flatten().tolist() == [0, 1, 5, 6, 7, 8, 9]
    assert torch.equal(cache.read(1)[1], -cache.read(1)[0])
    cache.keep_window(1, 3)
    assert cache.read(0)[0].flatten().tolist() == [0, 7, 8, 9]
    cache.crop(2)
    assert cache.read(0)[0].flatten().tolist() == [0, 7]
    assert snapshot.length == 10  # the clone is independent
    snapshot.map_keys(3, 5, lambda i, keys: keys * 10 + i)  # layer i's keys 3 and 4
    assert snapshot.read(1)[0].flatten().tolist() == [0, 1, 2, 31, 41, 5, 6, 7, 8, 9]
    assert snapshot.read(0)[0].flatten()[3:5].tolist() == [30, 40]
    assert torch.equal(snapshot.read(1)[1], -k)  # values stay
    for start, end, fn in [(4, 4, None), (8, 11, None), (0, 2, lambda i, keys: keys[:, :, :1])]:
        with pytest.raises(InvalidInputError):
            snapshot.map_keys(start, end, fn or (lambda i, keys: keys))
    cache.stage(0, k[:, :, :3], k[:, :, :3])
    with pytest.raises(InvalidInputError):
        cache.commit()  # layer 1 not staged
    cache.discard()
    with pytest.raises(InvalidInputError):
        cache.stage(1, torch.zeros(1, 2, 3, 1), torch.zeros(1, 2, 3, 1))  # wrong head count
    with pytest.raises(InvalidInputError):
        cache.evict(1, 5)  # only 2 positions left
    cache.crop(0)
    assert cache.length == 0 and cache.read(0) is None
