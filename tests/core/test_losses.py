"""Losses: FM MSE, masked CE ≡ generalized KL, and the discrete ELBO against an enumerable toy."""

import itertools
import math

import pytest
import torch

from mdiff import losses
from mdiff.errors import InvalidInputError
from mdiff.paths import MaskPath
from mdiff.schedules import CosineSquaredKappa, PolynomialKappa


def test_fm_mse_per_sample_and_weight():
    pred, target = torch.randn(2, 4, 3, 5)
    per = losses.fm_mse(pred, target)
    assert per.shape == (4,)
    assert torch.allclose(per[1], ((pred[1] - target[1]) ** 2).mean())
    w = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert torch.allclose(losses.fm_mse(pred, target, w), per * w)
    with pytest.raises(InvalidInputError):
        losses.fm_mse(pred, target[:, :2])


def test_loss_bins():
    t = torch.tensor([0.05, 0.07, 0.55, 0.99])
    bins = losses.loss_bins(t, torch.tensor([1.0, 3.0, 5.0, 7.0]))
    assert bins == {"loss_t0.0": 2.0, "loss_t0.5": 5.0, "loss_t0.9": 7.0}


@pytest.mark.parametrize("kappa", [PolynomialKappa(1), CosineSquaredKappa()])
def test_masked_ce_equals_generalized_kl_under_mask_source(kappa):
    V, mask_id = 12, 11
    path = MaskPath(mask_id, kappa)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randint(0, 11, (8, 30), generator=g)
    t = torch.rand(8, generator=g)
    s = path.sample(x1, t, generator=g)
    logits = torch.randn(8, 30, V, generator=g)
    log_post = path.posterior(logits, s.x_t)
    w = path.weight(t).float()
    gkl = losses.generalized_kl(log_post, x1, s.x_t, w)  # (B, L)
    assert torch.allclose(gkl[~s.masked], torch.zeros_like(gkl[~s.masked]))
    # with the absorbing posterior (mask never predicted) the CE uses the same renormalised logits
    ce_logits = logits.clone()
    ce_logits[..., mask_id] = -torch.inf
    ce = losses.masked_ce(ce_logits, x1, s.masked, w)
    assert torch.allclose(gkl.sum(1) / 30, ce, atol=1e-5)
    # a posterior that leaks mass to [MASK] pays for it: the generalized KL is then larger
    leaky = logits.log_softmax(-1)
    assert bool((losses.generalized_kl(leaky, x1, s.x_t, w)[s.masked] >= 0).all())


def test_masked_ce_valid_positions():
    logits = torch.randn(2, 5, 7)
    x1 = torch.randint(0, 7, (2, 5))
    masked = torch.ones(2, 5, dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    full = losses.masked_ce(logits, x1, masked, torch.ones(2))
    part = losses.masked_ce(logits, x1, masked & valid, torch.ones(2), valid=valid)
    assert torch.allclose(part[1], full[1])
    ce = torch.nn.functional.cross_entropy(logits[0, :3], x1[0, :3])
    assert torch.allclose(part[0], ce)


# --------------------------------------------------------------------- an enumerable toy language

V, L, MASK = 3, 4, 3  # tokens 0..2, [MASK] = 3


def toy_distribution():
    g = torch.Generator().manual_seed(7)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))  # (81, 4)
    probs = torch.rand(len(seqs), generator=g, dtype=torch.float64) ** 3
    return seqs, probs / probs.sum()


def exact_denoiser(seqs, probs):
    """p(x^i | revealed tokens) computed by enumeration: the Bayes-optimal posterior."""

    def f(x, t):
        out = torch.zeros(x.shape[0], L, V + 1, dtype=torch.float64)
        for r in range(x.shape[0]):
            revealed = x[r] != MASK
            ok = (seqs[:, revealed] == x[r, revealed]).all(1)
            w = probs * ok
            for i in range(L):
                out[r, i, :V] = torch.bincount(seqs[:, i], weights=w, minlength=V)
        out = out / out.sum(-1, keepdim=True)
        return torch.log(out.clamp_min(1e-300))

    return f


def test_nelbo_equals_nll_for_exact_denoiser_and_bounds_it_otherwise():
    seqs, probs = toy_distribution()
    path = MaskPath(MASK)
    x = seqs[probs.argsort(descending=True)[:5]]
    nll = -torch.log(probs[probs.argsort(descending=True)[:5]])
    exact = losses.discrete_nelbo(exact_denoiser(seqs, probs), x, path, exact=True)
    assert torch.allclose(exact, nll, atol=1e-9)

    # a wrong model (here a uniform posterior) gives a strict upper bound
    def uniform(x, t):
        return torch.zeros(x.shape[0], L, V + 1).index_fill_(2, torch.tensor([MASK]), -1e9)

    assert bool((losses.discrete_nelbo(uniform, x, path, exact=True) > nll + 1e-6).all())
    assert losses.discrete_nelbo(uniform, x, path, exact=True)[0].item() == pytest.approx(
        L * math.log(3)
    )


def test_nelbo_bound_in_expectation_over_data():
    seqs, probs = toy_distribution()
    true = exact_denoiser(seqs, probs)

    def blurred(x, t):  # the exact posterior mixed with uniform: not Bayes-optimal
        p = true(x, t).exp()
        p[..., :V] = 0.7 * p[..., :V] + 0.3 / V
        return p.clamp_min(1e-300).log()

    nelbo = losses.discrete_nelbo(blurred, seqs, MaskPath(MASK), exact=True)
    entropy = -(probs * probs.log()).sum()
    assert (probs * nelbo).sum() > entropy + 1e-3


def test_nelbo_monte_carlo_is_unbiased():
    seqs, probs = toy_distribution()
    f = exact_denoiser(seqs, probs)
    x = seqs[probs.argsort(descending=True)[:2]]
    exact = losses.discrete_nelbo(f, x, MaskPath(MASK), exact=True)
    mc = losses.discrete_nelbo(
        f, x, MaskPath(MASK), samples=3000, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(mc, exact, rtol=0.05)


def test_nelbo_conditional_masking_only_scores_maskable():
    seqs, probs = toy_distribution()
    f = exact_denoiser(seqs, probs)
    x = seqs[probs.argsort(descending=True)[:3]]
    maskable = torch.tensor([[False, False, True, True]]).expand(3, -1)
    cond = losses.discrete_nelbo(f, x, MaskPath(MASK), exact=True, maskable=maskable)
    # exact conditional NLL: -log p(x2, x3 | x0, x1)
    for r in range(3):
        prefix = (seqs[:, :2] == x[r, :2]).all(1)
        p_cond = probs[(seqs == x[r]).all(1)].sum() / probs[prefix].sum()
        assert cond[r].item() == pytest.approx(-math.log(p_cond), abs=1e-9)
