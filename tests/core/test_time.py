"""Time samplers, shift, grids and the sigma-convention conversion."""

import math

import pytest
import torch

from mdiff import time as T
from mdiff.errors import InvalidInputError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["uniform", "logit_normal", "mode", "cosmap"])
def test_samplers_in_unit_interval_and_seeded(kind):
    s = T.TimeSampler(kind)
    a, b = s(4096, generator=gen(1)), s(4096, generator=gen(1))
    assert torch.equal(a, b)
    assert a.shape == (4096,) and float(a.min()) >= 0 and float(a.max()) <= 1


def test_logit_normal_law_matches_its_cdf():
    m, s = 0.5, 0.8
    t = T.logit_normal(200_000, m, s, generator=gen(2)).double()
    z = torch.logit(t)
    assert abs(z.mean().item() - m) < 0.01 and abs(z.std().item() - s) < 0.01


def test_stratified_logit_normal_keeps_law_and_one_per_bin():
    t = T.logit_normal(1000, 0.0, 1.0, generator=gen(3), stratified=True).double()
    cdf = 0.5 * (1 + torch.erf(torch.logit(t) / math.sqrt(2)))
    bins = (cdf * 1000).floor().long().sort().values
    assert torch.equal(bins, torch.arange(1000))


def test_mode_and_cosmap_are_sigma_formulas():
    u = torch.rand(100, generator=gen(4), dtype=torch.float64)
    s = 1.29
    sigma = 1 - u - s * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    got = T.mode(100, s, generator=gen(4)).double()
    assert torch.allclose(got, 1 - sigma, atol=1e-6)
    got = T.cosmap(100, generator=gen(4)).double()
    assert torch.allclose(got, 1 / (torch.tan(math.pi * u / 2) + 1), atol=1e-6)


def test_shift_divides_snr_by_alpha():
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for a in (0.5, 1.0, 3.0):
        ts = T.shift(t, a)
        assert torch.allclose(ts / (1 - ts), t / (1 - t) / a)


def test_sd3_shift_equals_flux_shift_with_mu_log_alpha():
    sigma = torch.linspace(0.01, 1.0, 100, dtype=torch.float64)
    for a in (1.5, 3.0, T.flux_alpha(4096)):
        sd3 = a * sigma / (1 + (a - 1) * sigma)
        assert torch.allclose(T.flux_shift(sigma, math.log(a)), sd3)
        # and our t-space shift is the same map seen through t = 1 - sigma
        assert torch.allclose(T.to_sigma(T.shift(T.from_sigma(sigma), a)), sd3)


def test_token_count_rules():
    assert T.flux_alpha(256) == pytest.approx(math.exp(0.5))
    assert T.flux_alpha(4096) == pytest.approx(math.exp(1.15))
    assert T.sd3_alpha(1024, 256) == pytest.approx(2.0)
    with pytest.raises(InvalidInputError):
        T.sd3_alpha(0)


def test_grids():
    g = T.uniform_grid(8)
    assert g[0] == 0 and g[-1] == 1 and len(g) == 9
    s = T.shifted_grid(8, 3.0)
    assert (
        s[0] == 0
        and s[-1] == 1
        and bool((s[1:] > s[:-1]).all())
        and bool((s[1:-1] < g[1:-1]).all())
    )
    e = T.edm_grid(10, 0.002, 80.0, 7.0).double()
    assert len(e) == 11 and e[-1] == 1 and bool((e[1:] > e[:-1]).all())
    assert e[0].item() == pytest.approx(1 / 81, rel=1e-6)
    assert e[-2].item() == pytest.approx(1 / 1.002, rel=1e-6)
    with pytest.raises(InvalidInputError):
        T.uniform_grid(0)


def test_sigma_convention_round_trip():
    t = torch.rand(64, dtype=torch.float64, generator=gen(5))
    v = torch.randn(64, dtype=torch.float64, generator=gen(6))
    assert torch.equal(T.from_sigma(T.to_sigma(t)), t)
    assert torch.equal(T.velocity_from_sigma(T.velocity_to_sigma(v)), v)
    assert torch.allclose(T.from_diffusers_timesteps(T.to_diffusers_timesteps(t)), t)
    # the sigma convention's path z = (1 - s) x + s e has dz/ds = e - x; ours dx/dt = x - e
    x, e = torch.randn(2, 10, dtype=torch.float64, generator=gen(7))
    assert torch.allclose(T.velocity_from_sigma(e - x), x - e)


def test_bad_sampler_args():
    with pytest.raises(InvalidInputError):
        T.TimeSampler("nope")
    with pytest.raises(InvalidInputError):
        T.logit_normal(4, s=0)
    with pytest.raises(InvalidInputError):
        T.mode(4, s=3.0)
