"""The ``mdiff-text-v1`` green-list watermark: null on real code, detection through the real
discrete sampler (``mdiff.solvers.unmask``) over an exactly known distribution, exactness of the
statistic, and input checks. Measured figures are printed (run with ``-s``) and recorded as
pytest properties."""

from __future__ import annotations

import glob
import json
import math
import os
import statistics
import sysconfig
from fractions import Fraction

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.provenance.watermark.text import (
    DEFAULT_THRESHOLD,
    SCHEME,
    TextWatermark,
    log_binomial_tail,
)
from mdiff.solvers import ranked, schedule_count, stochastic_euler, unmask

KEY = b"mdiff-fixed-test-key"  # the one fixed key of the fixed-key null (chosen before measuring)


# ---- null on real code: Python's standard library under a small byte-level BPE ----------------


@pytest.fixture(scope="module")
def stdlib_docs():
    """(vocab size, token-id tensors of >= 200 stdlib files, <= 1000 tokens each)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    texts = []
    for p in paths:
        if "site-packages" in p:
            continue
        try:
            with open(p, encoding="utf-8") as f:
                texts.append(f.read(8000))
        except (OSError, UnicodeDecodeError):
            continue
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=4096, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts[::8], trainer)  # trained on 1/8 of the files, scored on others
    held_out = [t for i, t in enumerate(texts) if i % 8 in (1, 3, 5)]
    docs = [torch.tensor(e.ids[:1000]) for e in tok.encode_batch(held_out)]
    docs = [d for d in docs if d.numel() >= 200]
    assert len(docs) >= 200
    return tok.get_vocab_size(), docs


def test_null_fixed_key_on_stdlib(stdlib_docs, record_property):
    V, docs = stdlib_docs
    wm = TextWatermark(KEY, V)
    dets = [wm.detect(d) for d in docs]
    zs = [d.z for d in dets]
    mean, sd, top = statistics.mean(zs), statistics.pstdev(zs), max(zs)
    print(f"\nstdlib null, fixed key: {len(zs)} files, z mean {mean:.3f} sd {sd:.3f} max {top:.3f}")
    record_property("null_fixed_key", {"files": len(zs), "mean": mean, "sd": sd, "max": top})
    assert not any(d.detected for d in dets)
    assert top < DEFAULT_THRESHOLD
    # One fixed key shifts the null (recurring bigrams such as indentation are scored in every
    # file with the same colour); over random keys the per-key mean has sd ~0.25 here.
    assert abs(mean) < 1.0 and 0.7 < sd < 1.3


def test_null_random_keys_matches_gaussian_tail(stdlib_docs, record_property):
    V, docs = stdlib_docs
    pairs = [torch.unique(d[:-1] * V + d[1:]) for d in docs]
    n = torch.tensor([p.numel() for p in pairs], dtype=torch.float64)
    seg = torch.repeat_interleave(torch.arange(len(pairs)), n.long())
    flat = torch.cat(pairs)
    zs = []
    for k in range(200):
        green = TextWatermark(b"null-key-%d" % k, V).green(flat // V, flat % V)
        g = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, seg, green.double())
        zs.append((g - 0.25 * n) / torch.sqrt(n * 0.25 * 0.75))
    z = torch.stack(zs)  # (keys, files)
    tail = float((z > 3).double().mean())
    gauss = 0.5 * math.erfc(3 / math.sqrt(2))
    key_means = z.mean(1)
    print(
        f"\nrandom-key null: {z.numel()} trials, P(z>3) {tail:.5f} vs Gaussian {gauss:.5f}; "
        f"z mean {float(z.mean()):.3f} sd {float(z.std()):.3f}; "
        f"per-key mean sd {float(key_means.std()):.3f}"
    )
    record_property("null_random_keys", {"trials": z.numel(), "p_z_gt_3": tail})
    assert gauss / 2 <= tail <= 2 * gauss
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


# ---- detection through mdiff.solvers.unmask over an exact distribution -------------------------

V, H, MASK, L = 512, 24, 512, 200


class LowRankChain:
    """A random Markov chain on V tokens with a sparse rank-H transition ``P = A·E`` (token ->
    2 of H classes -> ~64 tokens each, 1 % uniform floor; entropy ≈ 4.3 nats/token).

    As a model function it returns the exact conditionals of every masked position given all
    decoded ones, by forward–backward in the H-dim class space: with ``M = E·A``,
    ``f_i = A[x_i]`` if decoded else ``f_{i-1}·M`` (left message), ``g_i = E[:, x_{i+1}]`` if
    decoded else ``M·g_{i+1}`` (right message), and ``p(x_i = v) ∝ (f_{i-1}·E)_v (A·g_i)_v``."""

    def __init__(self, seed=0, support=64, floor=0.01):
        gen = torch.Generator().manual_seed(seed)
        E = torch.zeros(H, V, dtype=torch.float64)
        for h in range(H):
            w = -torch.log(torch.rand(support, generator=gen, dtype=torch.float64))
            E[h, torch.randperm(V, generator=gen)[:support]] = w / w.sum()
        self.E = (1 - floor) * E + floor / V
        self.A = torch.zeros(V, H, dtype=torch.float64)
        for v in range(V):
            w = torch.rand(2, generator=gen, dtype=torch.float64)
            self.A[v, torch.randperm(H, generator=gen)[:2]] = w / w.sum()
        self.M = self.E @ self.A
        self.w0 = torch.full((H,), 1.0 / H, dtype=torch.float64)

    def __call__(self, x, t):
        B = x.shape[0]
        dec, xc = x != MASK, x.clamp(max=V - 1)
        fs, gs = torch.empty(2, B, L, H, dtype=torch.float64)
        f, g = self.w0.expand(B, H), torch.ones(B, H, dtype=torch.float64)
        for i in range(L):
            fs[:, i] = f
            f = torch.where(dec[:, i, None], self.A[xc[:, i]], f @ self.M)
            f = f / f.sum(1, keepdim=True)
        for i in range(L - 1, -1, -1):
            gs[:, i] = g
            g = torch.where(dec[:, i, None], self.E[:, xc[:, i]].T, g @ self.M.T)
            g = g / g.sum(1, keepdim=True)
        p = (fs.float() @ self.E.float()) * (gs.float() @ self.A.T.float())  # (B, L, V)
        out = torch.full((B, L, V + 1), -math.inf)  # the mask id V is never predicted
        out[..., :V] = torch.log(p / p.sum(-1, keepdim=True))
        out[dec] = -math.inf
        out[dec, xc[dec]] = 0.0
        return out


def _confidence(state):
    return torch.softmax(state.logits.double(), -1).gather(-1, state.proposal[..., None])[..., 0]


ORDERS = {"confidence": ranked(schedule_count, _confidence), "random": stochastic_euler}


@pytest.fixture(scope="module")
def sampled():
    """z of 32 samples (L = 200, 20 steps) per (order, variant) from the real sampler."""
    chain, det = LowRankChain(), TextWatermark(KEY, V + 1)
    variants = {
        "plain": None,
        "left_only": TextWatermark(KEY, V + 1, right_context=False),
        "left_right": det,
    }
    out = {}
    for order, policy in ORDERS.items():
        for name, wm in variants.items():
            gens = [torch.Generator().manual_seed(1000 + b) for b in range(32)]
            fn = chain if wm is None else wm.wrap(chain, MASK)
            x = unmask(
                fn,
                torch.full((32, L), MASK),
                torch.linspace(0, 1, 21),
                MASK,
                policy=policy,
                generator=gens,
            )
            assert not bool((x == MASK).any())
            out[order, name] = [det.detect(row) for row in x]
    return out


@pytest.mark.parametrize("order", list(ORDERS))
def test_detection_through_unmask(sampled, order, record_property):
    z = {v: [d.z for d in sampled[order, v]] for v in ("plain", "left_only", "left_right")}
    tpr = {v: sum(d.detected for d in sampled[order, v]) / 32 for v in z}
    med = {v: statistics.median(z[v]) for v in z}
    print(
        f"\n{order} order: median z {', '.join(f'{v} {m:.2f}' for v, m in med.items())}; "
        f"detected {tpr}"
    )
    record_property(f"{order}_median_z", med)
    # the shipped policy (left + right promotion) is detected on ≥ 95 % of 200-token samples
    assert tpr["left_right"] >= 0.95
    # the ablations: right-neighbour promotion adds strength over left-only, which still marks
    assert med["left_right"] > med["left_only"] + 2 and med["left_only"] > 5
    assert tpr["plain"] == 0 and max(z["plain"]) < 3.5
    assert med["left_right"] > med["left_only"] + 2  # right-neighbour promotion pays
    assert all(d.n_scored >= 150 for d in sampled[order, "left_right"])


# ---- exactness of the statistic and of the hash ------------------------------------------------


@pytest.mark.parametrize(
    ("n", "g", "p"),
    [(1, 1, 0.25), (10, 4, 0.25), (30, 0, 0.3), (30, 17, 0.25), (60, 60, 0.5), (25, 26, 0.25)],
)
def test_binomial_tail_matches_direct_sum(n, g, p):
    q = Fraction(p).limit_denominator(1000)
    exact = sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(max(g, 0), n + 1))
    got = math.exp(log_binomial_tail(n, g, p))
    assert got == pytest.approx(float(exact), rel=1e-10, abs=1e-300)


def test_detect_statistic_and_large_n_tail():
    wm = TextWatermark(KEY, 1000)
    ids = torch.randint(0, 1000, (400,), generator=torch.Generator().manual_seed(0))
    d = wm.detect(ids)
    pairs = {(int(a), int(b)) for a, b in zip(ids[:-1], ids[1:], strict=True)}
    g = sum(bool(wm.green(torch.tensor(a), torch.tensor(b))) for a, b in pairs)
    assert (d.n_scored, d.green) == (len(pairs), g)
    assert d.z == pytest.approx((g - 0.25 * len(pairs)) / math.sqrt(len(pairs) * 0.1875))
    assert math.isfinite(log_binomial_tail(10**5, 40000, 0.25))  # p ~ 1e-800, no overflow/NaN
    assert json.loads(json.dumps(d.to_dict()))["scheme"] == SCHEME


def test_repeated_pairs_do_not_inflate_z():
    wm = TextWatermark(KEY, 1000)
    v = torch.arange(1000)
    a = int(v[wm.green(v, v)][0])  # (a, a) is green
    d = wm.detect([a] * 501)  # one bigram repeated 500 times
    assert (d.n_scored, d.green, d.detected) == (1, 1, False)
    assert d.z == pytest.approx(0.75 / math.sqrt(0.1875)) and d.p_value == pytest.approx(0.25)
    b = int(v[wm.green(torch.tensor(a), v)][1])  # (a, b) green too
    d = wm.detect([a, b] * 500)
    assert d.n_scored == 2  # (a, b) and (b, a), once each
    d = TextWatermark(KEY, 1000, ignore_ids=[b]).detect([a, b] * 500)
    assert d.n_scored == 1  # only (b, a) is scored: b is never the scored token


def test_green_is_batch_independent_deterministic_and_uniform():
    wm, again = TextWatermark(KEY, 4000), TextWatermark(KEY, 4000)
    prev, cur = torch.arange(-1, 4000)[:, None], torch.arange(4000)[None]
    table = wm.green(prev, cur)
    assert torch.equal(table, again.green(prev, cur))
    idx = torch.randint(0, 4000, (2, 50), generator=torch.Generator().manual_seed(1))
    assert torch.equal(wm.green(idx[0], idx[1]), table[idx[0] + 1, idx[1]])
    assert torch.equal(wm.green(idx[0][:1], idx[1][:1]), table[idx[0][:1] + 1, idx[1][:1]])
    frac = table.double().mean()
    assert abs(float(frac) - 0.25) < 5 * math.sqrt(0.1875 / table.numel())
    # every context's list has ~γV green tokens, every token is green for ~γ of the contexts,
    # with binomial (not smaller, not larger) spread
    rows, cols = table.double().mean(1), table.double().mean(0)
    assert 0.8 < float(rows.std()) / math.sqrt(0.1875 / 4000) < 1.2
    assert 0.8 < float(cols.std()) / math.sqrt(0.1875 / 4001) < 1.2


def test_different_keys_give_independent_lists():
    prev, cur = torch.arange(-1, 2000)[:, None], torch.arange(2000)[None]
    a = TextWatermark(b"key-a", 2000).green(prev, cur)
    b = TextWatermark(b"key-b", 2000).green(prev, cur)
    assert float((a & b).double().mean()) == pytest.approx(0.25**2, abs=2e-3)
    assert float((a == b).double().mean()) == pytest.approx(0.25**2 + 0.75**2, abs=2e-3)
    c = TextWatermark(b"key-a", 2000, gamma=0.5).green(prev, cur)
    assert bool((c | ~a).all())  # a larger γ extends the same list (nested thresholds)


@pytest.mark.parametrize("vocab", [50, 5000])  # table path and on-the-fly hashing path
def test_bias_follows_the_neighbour_rules(vocab):
    mask = vocab - 1
    wm = TextWatermark(KEY, vocab, delta=1.5, ignore_ids=[0, 3])
    x = torch.tensor([[mask, 11, mask, mask, 12, mask, mask, mask, mask]])
    logits = torch.randn(1, 9, vocab)
    boost = wm.bias(logits, x, mask) - logits
    v = torch.arange(vocab)

    def expect(left=None, right=None):
        e = torch.zeros(vocab)
        if left is not None:
            e += wm.green(torch.tensor(left), v).float()
        if right is not None:
            e += wm.green(v, torch.tensor(right)).float()
        if left is None and right is None:
            e += wm.green(torch.tensor(-1), v).float()
        e[[0, 3, mask]] = 0
        return 1.5 * e

    want = [
        expect(right=11),
        torch.zeros(vocab),
        expect(left=11),
        expect(right=12),
        torch.zeros(vocab),
        expect(left=12),
        expect(),
        expect(),
        expect(),
    ]
    torch.testing.assert_close(boost[0], torch.stack(want), atol=1e-5, rtol=0)
    no_right = TextWatermark(KEY, vocab, delta=1.5, ignore_ids=[0, 3], right_context=False)
    boost = no_right.bias(logits, x, mask) - logits
    torch.testing.assert_close(boost[0, 3], expect(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("vocab", [50, 5000])
def test_bias_adds_exactly_delta_times_the_green_count_inplace_or_not_on_any_layout(vocab):
    mask, g = vocab - 1, torch.Generator().manual_seed(vocab)
    wm = TextWatermark(KEY, vocab, delta=1.25, ignore_ids=[0, 3])
    x = torch.randint(0, mask, (3, 7), generator=g)
    x[torch.rand(3, 7, generator=g) < 0.6] = mask
    logits = torch.randn(3, 7, vocab, generator=g)
    v, want = torch.arange(vocab), logits.clone()
    for b, i in (x == mask).nonzero().tolist():  # one masked position at a time, by the rules
        left = int(x[b, i - 1]) if i and x[b, i - 1] != mask else None
        right = int(x[b, i + 1]) if i + 1 < 7 and x[b, i + 1] != mask else None
        e = torch.zeros(vocab)
        if left is not None or right is None:
            e += wm.green(torch.tensor(-1 if left is None else left), v).float()
        if right is not None:
            e += wm.green(v, torch.tensor(right)).float()
        e[[0, 3, mask]] = 0
        want[b, i] = logits[b, i] + 1.25 * e
    assert torch.equal(wm.bias(logits, x, mask), want)
    inplace = logits.clone()
    assert wm.bias(inplace, x, mask, inplace=True) is inplace and torch.equal(inplace, want)
    strided = logits.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other layout
    assert not strided.is_contiguous()
    assert torch.equal(wm.bias(strided, x, mask), want)
    assert torch.equal(wm.bias(strided, x, mask, inplace=True), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_green_identical_on_cuda():
    wm = TextWatermark(KEY, 3000)
    prev, cur = torch.arange(-1, 3000)[:, None], torch.arange(3000)[None]
    assert torch.equal(wm.green(prev, cur), wm.green(prev.cuda(), cur.cuda()).cpu())


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(gamma=0.0),
        dict(gamma=1.0),
        dict(gamma=-0.2),
        dict(delta=float("nan")),
        dict(ignore_ids=[100]),
    ],
)
def test_bad_construction(kwargs):
    with pytest.raises(InvalidInputError):
        TextWatermark(KEY, 100, **kwargs)


@pytest.mark.parametrize(("key", "vocab"), [(b"", 100), ("text", 100), (KEY, 1), (KEY, 2**31)])
def test_bad_key_or_vocab(key, vocab):
    with pytest.raises(InvalidInputError):
        TextWatermark(key, vocab)


def test_bad_calls():
    wm = TextWatermark(KEY, 100)
    x = torch.full((2, 5), 99)
    with pytest.raises(InvalidInputError):
        wm.bias(torch.zeros(2, 5), x, 99)  # not (B, L, V)
    with pytest.raises(InvalidInputError):
        wm.bias(torch.zeros(2, 5, 101), x, 99)  # vocab mismatch
    with pytest.raises(InvalidInputError):
        wm.bias(torch.zeros(2, 4, 100), x, 99)  # length mismatch
    with pytest.raises(InvalidInputError):
        wm.bias(torch.zeros(1, 3, 100), torch.tensor([[99, 150, 99]]), 99)  # token out of range
    with pytest.raises(InvalidInputError):
        wm.detect([1, 2, 100])  # id out of range
    with pytest.raises(InvalidInputError):
        wm.detect([[1, 2], [3, 4]])
    with pytest.raises(InvalidInputError):
        wm.green(torch.tensor([-2]), torch.tensor([1]))
