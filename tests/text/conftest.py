"""Small denoisers that satisfy `mdiff.text.model.spec` for the sampler tests.

`TinyDenoiser`: embedding + learned positions + a few single-head attention layers in float64,
bidirectional or block-causal, with an explicit KV cache (stage / commit / discard and the
``cache_at`` splice). `ExactDenoiser`: an oracle that returns the exact conditionals
``p(x_i | unmasked tokens)`` of a joint table ``p`` over ``V^L``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from mdiff.nn import KVCache
from mdiff.text.model.spec import DenoiserSpec


class TinyDenoiser(nn.Module):
    """Float64 toy transformer following the sampler contract (attention by *position*)."""

    def __init__(self, vocab=24, dim=16, layers=2, mask_id=3, pad_id=0, eos_ids=(2,),
                 attention="bidirectional", block_size=None, supports_cache=True, max_len=96,
                 seed=0, scale=1.0, gain=3.0):  # fmt: skip
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def rnd(*shape, std=1.0):
            return nn.Parameter(std * torch.randn(*shape, generator=g, dtype=torch.float64))

        self.emb, self.pos = rnd(vocab, dim), rnd(max_len, dim, std=0.5)
        self.w = nn.ParameterList(rnd(4, dim, dim, std=dim**-0.5) for _ in range(layers))
        self.head = rnd(dim, vocab, std=scale * dim**-0.5)
        self.n_layers, self.gain = layers, gain
        self._spec = DenoiserSpec(
            vocab_size=vocab, mask_id=mask_id, pad_id=pad_id, eos_ids=eos_ids,
            attention=attention, block_size=block_size, supports_cache=supports_cache,
        )  # fmt: skip
        self.calls = 0

    @property
    def spec(self) -> DenoiserSpec:
        return self._spec

    def new_cache(self) -> KVCache:
        return KVCache(self.n_layers)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                cache_at=None):  # fmt: skip
        self.calls += 1
        B, n = input_ids.shape
        lc = 0 if cache is None else cache.length
        start = lc if cache_at is None else cache_at
        lk = lc + n if cache_at is None else lc
        if position_ids is None:
            position_ids = torch.arange(start, start + n).expand(B, n)
        qpos = position_ids
        kpos = qpos[:, :1] - start + torch.arange(lk)  # slot-contiguous key positions
        kpos = torch.cat([kpos[:, :start], qpos, kpos[:, start + n :]], 1)
        allowed = torch.ones(B, n, lk, dtype=torch.bool)
        if attention_mask is not None:
            assert attention_mask.shape == (B, lk), (attention_mask.shape, (B, lk))
            allowed &= attention_mask.bool()[:, None, :]
        if self._spec.attention == "block_causal":
            bs = self._spec.block_size
            allowed &= kpos[:, None, :].div(bs, rounding_mode="floor") <= qpos[:, :, None].div(
                bs, rounding_mode="floor"
            )
        h = self.emb[input_ids] + self.pos[qpos.clamp(0, self.pos.shape[0] - 1)]
        for i, (wq, wk, wv, wo) in enumerate(self.w):
            q, k, v = h @ wq, h @ wk, h @ wv  # (B, n, D)
            if cache is not None:
                k4, v4 = cache.layer(i, at=cache_at).extend(k[:, None], v[:, None])
                k, v = k4[:, 0], v4[:, 0]  # (B, lk, D)
            att = (q @ k.transpose(1, 2)) / math.sqrt(q.shape[-1])
            att = att.masked_fill(~allowed, -torch.inf).softmax(-1).nan_to_num(0.0)
            h = h + self.gain * torch.tanh(att @ v @ wo)
        h = torch.nn.functional.layer_norm(h, h.shape[-1:])
        logits = h @ self.head
        logits[..., self._spec.mask_id] = -1e4  # like a trained model: never predicts [MASK]
        return logits


class ExactDenoiser(nn.Module):
    """Exact conditionals of a joint table ``p`` (V,)*L; vocab V + 1 with ``mask_id = V``."""

    def __init__(self, p: Tensor):
        super().__init__()
        self.L, self.V = p.dim(), p.shape[0]
        self.p = (p / p.sum()).reshape(-1).double()  # (N,)
        states = torch.tensor(list(itertools.product(range(self.V), repeat=self.L)))  # (N, L)
        self.states = states
        self.onehot = torch.nn.functional.one_hot(states, self.V).double()  # (N, L, V)
        self._spec = DenoiserSpec(vocab_size=self.V + 1, mask_id=self.V)
        self.calls = 0

    @property
    def spec(self) -> DenoiserSpec:
        return self._spec

    def index(self, x: Tensor) -> Tensor:
        """Flat state index of complete sequences (B, L)."""
        w = self.V ** torch.arange(self.L - 1, -1, -1)
        return (x * w).sum(-1)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                cache_at=None):  # fmt: skip
        self.calls += 1
        masked = input_ids == self.V  # (B, L)
        ok = (self.states[None] == input_ids[:, None]) | masked[:, None]  # (B, N, L)
        w = self.p[None] * ok.all(-1)  # (B, N)
        marg = torch.einsum("bn,nlv->blv", w, self.onehot)  # (B, L, V)
        marg = marg / marg.sum(-1, keepdim=True)
        logits = marg.log()
        return torch.cat([logits, torch.full_like(logits[..., :1], -torch.inf)], -1)


def random_joint(
    V: int, L: int, seed: int, concentration: float = 1.0, floor: float = 0.2
) -> Tensor:
    """A random strictly positive joint distribution over V^L (Dirichlet-like)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((V,) * L, generator=g, dtype=torch.float64)
    p = (-u.log()) ** (1 / concentration) + floor
    return p / p.sum()


@pytest.fixture
def tiny():
    return TinyDenoiser


@pytest.fixture
def exact():
    return ExactDenoiser


@pytest.fixture(scope="session")
def tiny_code_model(tmp_path_factory):
    """A model folder as `mdiff train text` exports it: a small random `TextDenoiser` and a
    byte-level BPE trained on a few standard-library files."""
    import sysconfig
    from pathlib import Path

    from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
    from mdiff.text.model.tokenizer import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]
    tok = train_tokenizer(files, vocab_size=400)
    torch.manual_seed(0)
    cfg = TextDenoiserConfig.preset("test", vocab_size=tok.vocab_size, max_len=256)
    d = tmp_path_factory.mktemp("models") / "tiny-code"
    TextDenoiser(cfg).save_pretrained(d)
    tok.save(d)
    return d
