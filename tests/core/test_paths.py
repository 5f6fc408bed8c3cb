"""Schedules (derivatives, inverses) and paths (endpoints, conversions, mask sampling)."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.paths import AffinePath, MaskPath
from mdiff.schedules import CondOT, Cosine, CosineSquaredKappa, PolynomialKappa

T_INNER = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)


@pytest.mark.parametrize("schedule", [CondOT(), Cosine()])
def test_affine_derivatives_match_autograd(schedule):
    for field, d_field in (("alpha", "d_alpha"), ("sigma", "d_sigma")):
        value = lambda t, field=field: getattr(schedule(t), field)  # noqa: E731
        auto = torch.func.vmap(torch.func.grad(value))(T_INNER)
        assert torch.allclose(auto, getattr(schedule(T_INNER), d_field), atol=1e-12)


@pytest.mark.parametrize("schedule", [CondOT(), Cosine()])
def test_affine_endpoints_and_snr_inverse(schedule):
    s0, s1 = schedule(torch.tensor(0.0)), schedule(torch.tensor(1.0))
    assert (s0.alpha.item(), s0.sigma.item()) == pytest.approx((0.0, 1.0), abs=1e-7)
    assert (s1.alpha.item(), s1.sigma.item()) == pytest.approx((1.0, 0.0), abs=1e-7)
    out = schedule(T_INNER)
    assert torch.allclose(schedule.snr_inverse(out.alpha / out.sigma), T_INNER, atol=1e-12)


@pytest.mark.parametrize("kappa", [PolynomialKappa(1), PolynomialKappa(3), CosineSquaredKappa()])
def test_kappa_derivative_inverse_endpoints(kappa):
    auto = torch.func.vmap(torch.func.grad(kappa.kappa))(T_INNER)
    assert torch.allclose(auto, kappa.d_kappa(T_INNER), atol=1e-12)
    assert torch.allclose(kappa.inverse(kappa.kappa(T_INNER)), T_INNER, atol=1e-12)
    assert kappa.kappa(torch.tensor(0.0)).item() == pytest.approx(0.0, abs=1e-12)
    assert kappa.kappa(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=1e-12)
    assert bool((kappa.d_kappa(T_INNER) > 0).all())


@pytest.mark.parametrize("schedule", [CondOT(), Cosine()])
def test_path_endpoints_and_target(schedule):
    path = AffinePath(schedule)
    x0, x1 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.allclose(path.sample(x0, x1, torch.zeros(3, dtype=torch.float64)).x_t, x0)
    assert torch.allclose(path.sample(x0, x1, torch.ones(3, dtype=torch.float64)).x_t, x1)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    eps = 1e-6
    d = (path.sample(x0, x1, t + eps).x_t - path.sample(x0, x1, t - eps).x_t) / (2 * eps)
    assert torch.allclose(path.sample(x0, x1, t).target, d, atol=1e-8)


def test_condot_velocity_is_x1_minus_x0():
    x0, x1 = torch.randn(2, 4, 7)
    assert torch.allclose(AffinePath().sample(x0, x1, torch.rand(4)).target, x1 - x0)


@pytest.mark.parametrize("schedule", [CondOT(), Cosine()])
@pytest.mark.parametrize("src", ["velocity", "x1", "x0"])
@pytest.mark.parametrize("dst", ["velocity", "x1", "x0"])
def test_prediction_conversions_round_trip_float64(schedule, src, dst):
    path = AffinePath(schedule)
    x0, x1 = torch.randn(2, 6, 8, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64) * 0.9 + 0.05
    s = path.sample(x0, x1, t)
    truth = {
        "velocity": AffinePath(schedule, "velocity").sample(x0, x1, t).target,
        "x1": x1,
        "x0": x0,
    }
    got = path.convert(truth[src], src, dst, s.x_t, t)
    assert torch.allclose(got, truth[dst], atol=1e-10)
    back = path.convert(got, dst, src, s.x_t, t)
    assert torch.allclose(back, truth[src], atol=1e-10)


def test_path_errors():
    with pytest.raises(InvalidInputError):
        AffinePath(prediction="eps")
    with pytest.raises(InvalidInputError):
        AffinePath().sample(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(InvalidInputError):
        AffinePath().sample(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))


def test_mask_path_rate_and_maskable():
    path = MaskPath(mask_id=0, schedule=PolynomialKappa(2))
    x1 = torch.randint(1, 50, (64, 512))
    t = torch.full((64,), 0.6)
    s = path.sample(x1, t, generator=torch.Generator().manual_seed(0))
    assert abs(s.masked.double().mean().item() - (1 - 0.36)) < 0.01
    assert torch.equal(s.x_t[s.masked], torch.zeros_like(s.x_t[s.masked]))
    assert torch.equal(s.x_t[~s.masked], x1[~s.masked])
    keep = torch.zeros_like(x1, dtype=torch.bool)
    keep[:, :100] = True
    s = path.sample(x1, t, maskable=keep)
    assert not bool(s.masked[:, 100:].any())
    per_token = path.sample(x1, torch.rand(64, 512))  # per-token times work too
    assert per_token.x_t.shape == x1.shape


def test_mask_weight_is_dkappa_over_one_minus_kappa():
    t = torch.tensor([0.0, 0.25, 0.5, 0.9])
    assert torch.allclose(MaskPath(0).weight(t).float(), 1 / (1 - t))
    k = CosineSquaredKappa()
    assert torch.allclose(
        MaskPath(0, k).weight(t).double(), (k.d_kappa(t) / (1 - k.kappa(t))).double()
    )
