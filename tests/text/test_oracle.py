"""Exact-denoiser oracle: a random joint p over V^L and a model returning the exact conditionals
p(x_i | unmasked tokens). One token per step in random order at temperature 1 samples p
exactly (any-order autoregression); committing k > 1 tokens per step samples a product of
conditionals instead, and the deviation is measured; the ELBO is tight, −log p(x)."""

import itertools
import math

import pytest
import torch

from mdiff.losses import discrete_nelbo
from mdiff.paths import MaskPath
from mdiff.text.sampling.sampler import GenerationConfig, denoise

from .conftest import ExactDenoiser, random_joint

N = 4000


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper chi-square quantile (Wilson–Hilferty); z = 3.09 is the one-sided 0.1% level."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def sample(oracle: ExactDenoiser, n: int, seed: int, **kwargs) -> torch.Tensor:
    x = torch.full((n, oracle.L), oracle.spec.mask_id)
    cfg = GenerationConfig(temperature=1.0, score="random", seed=seed, **kwargs)
    out = denoise(oracle, x, config=cfg)
    assert out.sequences.ne(oracle.spec.mask_id).all()
    return torch.bincount(oracle.index(out.sequences), minlength=oracle.p.numel()).double()


def product_of_conditionals(oracle: ExactDenoiser, groups: list[list[int]]) -> torch.Tensor:
    """Exact law of committing `groups` of positions in turn, each group drawn independently
    from its conditionals given the earlier groups (sequential in the groups)."""
    states, p = oracle.states, oracle.p
    law = torch.ones_like(p)
    known: list[int] = []
    for group in groups:
        for i in group:  # P(x_i | x_known) for every state
            num = _marginal(states, p, known + [i])
            den = _marginal(states, p, known)
            law = law * num / den
        known = known + group
    return law


def _marginal(states, p, positions):
    if not positions:
        return torch.ones_like(p)
    key = (states[:, positions] * (10 ** torch.arange(len(positions)))).sum(1)
    totals = torch.zeros(int(key.max()) + 1, dtype=p.dtype).index_add_(0, key, p)
    return totals[key]


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a / a.sum() - b / b.sum()).abs().sum())


@pytest.mark.parametrize("V,L,seed", [(3, 3, 0), (4, 3, 1), (3, 4, 2)])
def test_one_token_per_step_samples_the_joint(V, L, seed):
    oracle = ExactDenoiser(random_joint(V, L, seed))
    counts = sample(oracle, N, seed, steps=L)  # one token per step, uniformly random order
    expected = N * oracle.p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < chi2_critical(oracle.p.numel() - 1), chi2
    assert oracle.calls == L  # batched: one forward per step for all N rows


def test_parallel_decoding_deviates_and_the_deviation_is_measured():
    """Random order, k tokens per step: the exact law is the average over random groupings of
    products of conditionals; its TV from p grows with k and the sampler matches it."""
    p = random_joint(3, 4, 3, concentration=0.25, floor=0.02)  # strongly correlated tokens
    oracle = ExactDenoiser(p)
    pairs = [list(a) for a in itertools.combinations(range(4), 2)]
    two = [product_of_conditionals(oracle, [a, [i for i in range(4) if i not in a]]) for a in pairs]
    law = {
        1: product_of_conditionals(oracle, [[0], [1], [2], [3]]),  # the chain rule: p itself
        2: sum(two) / len(two),  # a uniformly random pair first, then the other two
        4: product_of_conditionals(oracle, [[0, 1, 2, 3]]),  # product of marginals
    }
    assert torch.allclose(law[1], oracle.p)
    exact_tv = {k: tv(v, oracle.p) for k, v in law.items()}
    assert exact_tv[4] > exact_tv[2] > 0.05
    noise = 0.5 * math.sqrt(oracle.p.numel() / N)  # bounds an empirical TV's sampling error
    measured = {}
    for k, steps in ((1, 4), (2, 2), (4, 1)):
        counts = sample(oracle, N, 10 + k, steps=steps)
        assert tv(counts, law[k]) < noise, (k, tv(counts, law[k]))  # we sample that law
        measured[k] = tv(counts, oracle.p)
        assert abs(measured[k] - exact_tv[k]) < noise
    assert measured[4] > measured[2] > measured[1] + 0.1  # parallel decoding deviates from p


def test_exact_elbo_equals_negative_log_likelihood():
    oracle = ExactDenoiser(random_joint(3, 4, 4))
    path = MaskPath(oracle.spec.mask_id)
    x1 = oracle.states[torch.tensor([0, 17, 40, 80])]
    nelbo = discrete_nelbo(lambda x, t: oracle(x), x1, path, exact=True)
    nll = -oracle.p[oracle.index(x1)].log()
    assert torch.allclose(nelbo, nll, atol=1e-10)
