"""attend(): mask semantics, backend agreement, forward-mode AD, errors, backend resolution."""

import pytest
import torch

from mdiff.errors import BackendUnavailableError, InvalidInputError
from mdiff.nn import BlockCausal, Causal, Dense, attend, resolve_backend
from mdiff.nn import attention as attention_mod

B, H, D = 2, 4, 16
LENGTHS = [(12, 12), (5, 12)]  # full sequence, and 5 queries after a 7-token prefix
MASKS = ["none", "causal", "block", "dense", "dense_empty_row"]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_mask(kind: str, lq: int, lk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "causal":
        return Causal()
    if kind == "block":
        return BlockCausal(3)
    m = torch.rand(B, 1, lq, lk, generator=g) > 0.4  # (B, 1, Lq, Lk), broadcast over heads
    m[..., 0] = True
    if kind == "dense_empty_row":
        m[1, :, 2, :] = False  # sample 1, query 2 sees nothing
    return Dense(m)


def qkv(lq: int, lk: int, kv_heads: int = H, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, lq, D, generator=g, dtype=dtype)
    k = torch.randn(B, kv_heads, lk, D, generator=g, dtype=dtype)
    v = torch.randn(B, kv_heads, lk, D, generator=g, dtype=dtype)
    return q, k, v


def reference(q, k, v, mask):
    """float64 loop over rows; a row with no allowed key is zero."""
    lq, lk = q.shape[2], k.shape[2]
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    allowed = torch.ones(lq, lk, dtype=torch.bool) if mask is None else mask.dense(lq, lk)
    allowed = allowed.expand(q.shape[0], q.shape[1], lq, lk)
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(lq):
                keys = allowed[b, h, i].nonzero().flatten()
                if len(keys) == 0:
                    continue
                s = k[b, h, keys] @ q[b, h, i].double() / D**0.5
                out[b, h, i] = s.softmax(0) @ v[b, h, keys]
    return out


@pytest.mark.parametrize("lq,lk", LENGTHS)
def test_structured_masks_match_definition(lq, lk):
    off = lk - lq
    causal, block = Causal().dense(lq, lk), BlockCausal(3).dense(lq, lk)
    for i in range(lq):
        for j in range(lk):
            assert causal[i, j] == (j <= i + off)
            assert block[i, j] == (j // 3 <= (i + off) // 3)


@pytest.mark.parametrize("backend", ["sdpa", "math", "flex"])
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("lq,lk", LENGTHS)
def test_backends_match_reference(backend, kind, lq, lk):
    q, k, v = qkv(lq, lk)
    mask = make_mask(kind, lq, lk)
    with torch.no_grad():
        out = attend(q, k, v, mask, backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference(q, k, v, mask), atol=1e-5, rtol=1e-5)
    if kind == "dense_empty_row":
        assert (out[1, :, 2] == 0).all()


@pytest.mark.parametrize("backend", ["sdpa", "math", "flex"])
def test_grouped_query_attention(backend):
    q, k, v = qkv(5, 12, kv_heads=2)
    with torch.no_grad():
        out = attend(q, k, v, Causal(), backend=backend)
    torch.testing.assert_close(out.double(), reference(q, k, v, Causal()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", MASKS)
def test_sdpa_gradients_match_math(kind):
    q, k, v = qkv(5, 12)
    mask = make_mask(kind, 5, 12)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for backend in ("sdpa", "math"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (attend(*leaves, mask, backend=backend) * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for g_sdpa, g_math in zip(*grads, strict=True):
        assert torch.isfinite(g_sdpa).all()
        torch.testing.assert_close(g_sdpa, g_math, atol=1e-5, rtol=1e-5)


# torch's forward-AD decompositions still call torch.jit.script on first use
JIT_DEPRECATION = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(JIT_DEPRECATION)
@pytest.mark.parametrize("kind", ["causal", "block", "dense_empty_row"])
def test_math_backend_forward_mode_ad(kind):
    q, k, v = qkv(5, 12, dtype=torch.float64)
    tangents = qkv(5, 12, dtype=torch.float64, seed=1)
    mask = make_mask(kind, 5, 12)

    def f(q, k, v):
        return attend(q, k, v, mask, backend="math")

    out, jvp_out = torch.func.jvp(f, (q, k, v), tangents)
    eps = 1e-6
    plus = f(*(p + eps * t for p, t in zip((q, k, v), tangents, strict=True)))
    minus = f(*(p - eps * t for p, t in zip((q, k, v), tangents, strict=True)))
    torch.testing.assert_close(out, f(q, k, v))
    torch.testing.assert_close(jvp_out, (plus - minus) / (2 * eps), atol=1e-7, rtol=1e-6)
    assert jvp_out.abs().max() > 1e-3  # not trivially zero


def test_math_backend_keeps_low_precision_dtype():
    q, k, v = qkv(5, 12, dtype=torch.bfloat16)
    out = attend(q, k, v, Causal(), backend="math")
    assert out.dtype == torch.bfloat16
    ref = reference(q.float(), k.float(), v.float(), Causal())
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


def test_flex_with_grad_on_cpu_raises():
    q, k, v = qkv(12, 12)
    q.requires_grad_()
    with pytest.raises(BackendUnavailableError, match="backward"):
        attend(q, k, v, Causal(), backend="flex")


def test_flex_reuses_block_masks():
    q, k, v = qkv(12, 12)
    attention_mod._cached_block_mask.cache_clear()
    with torch.no_grad():
        for _ in range(3):
            attend(q, k, v, BlockCausal(4), backend="flex")
    info = attention_mod._cached_block_mask.cache_info()
    assert (info.misses, info.hits) == (1, 2)


def test_xformers_unavailable_on_cpu():
    q, k, v = qkv(12, 12)
    with pytest.raises(BackendUnavailableError):
        attend(q, k, v, None, backend="xformers")


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape,mask",
    [
        ((B, H, 5, D), (B, H, 5, D), (B, H, 5), None),  # v not 4-D
        ((B, H, 5, D), (B, H, 5, D), (B, H, 6, D), None),  # k and v differ
        ((B, H, 5, D), (B + 1, H, 5, D), (B + 1, H, 5, D), None),  # batch
        ((B, H, 5, D), (B, H, 5, D + 2), (B, H, 5, D + 2), None),  # head dim
        ((B, H, 5, D), (B, 3, 5, D), (B, 3, 5, D), None),  # 3 kv heads do not divide 4
        ((B, H, 6, D), (B, H, 5, D), (B, H, 5, D), Causal()),  # Lq > Lk with causal
        ((B, H, 5, D), (B, H, 5, D), (B, H, 5, D), Dense(torch.ones(3, 5, dtype=torch.bool))),
        ((B, H, 5, D), (B, H, 5, D), (B, H, 5, D), "causal"),  # not a mask type
    ],
)
def test_bad_inputs_raise_invalid_input(q_shape, k_shape, v_shape, mask):
    q, k, v = torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(v_shape)
    with pytest.raises(InvalidInputError):
        attend(q, k, v, mask)


def test_bad_backend_and_mask_values_raise():
    q, k, v = qkv(5, 5)
    with pytest.raises(InvalidInputError, match="backend"):
        attend(q, k, v, None, backend="flash")
    with pytest.raises(InvalidInputError):
        attend(q, k.double(), v.double())
    with pytest.raises(InvalidInputError):
        Dense(torch.ones(5, 5))  # not bool
    with pytest.raises(InvalidInputError):
        BlockCausal(0)


def test_resolve_backend(monkeypatch):
    monkeypatch.delenv("MDIFF_ATTENTION", raising=False)
    assert resolve_backend() == "sdpa"
    assert resolve_backend("math") == "math"
    with pytest.raises(InvalidInputError):
        resolve_backend("flash")
    with pytest.raises(BackendUnavailableError):
        resolve_backend("xformers", device="cpu")
    monkeypatch.setenv("MDIFF_ATTENTION", "math")
    assert resolve_backend("sdpa") == "math"
    assert resolve_backend() == "math"
    monkeypatch.setenv("MDIFF_ATTENTION", "nope")
    with pytest.raises(InvalidInputError, match="MDIFF_ATTENTION"):
        resolve_backend()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("backend", ["xformers", "flex"])
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("lq,lk", [(128, 128), (64, 192)])
def test_cuda_backends_match_sdpa(backend, kind, lq, lk):
    if backend == "xformers":
        pytest.importorskip("xformers")
    q, k, v = (t.cuda() for t in qkv(lq, lk))
    mask = make_mask(kind, lq, lk)
    if isinstance(mask, Dense):
        mask = Dense(mask.mask.cuda())
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attend(*leaves, mask, backend=backend)
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attend(*ref_leaves, mask, backend="math")
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
    out.square().sum().backward()
    ref.square().sum().backward()
    for a, b in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-3, rtol=1e-3)


def test_available_backends_ignore_the_override(monkeypatch):
    from mdiff.nn.attention import available_backends

    monkeypatch.setenv("MDIFF_ATTENTION", "math")
    names = available_backends("cpu")
    assert {"sdpa", "math", "flex"} <= set(names) and "xformers" not in names
