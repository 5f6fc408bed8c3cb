"""UniPC and DPM-Solver++(2M): the Gaussian closed form, step-by-step parity with diffusers'
flow schedulers, and the solver signature (Step callback, **cond, grid checks)."""

import math

import pytest
import torch

from mdiff import multistep, solvers, time
from mdiff.errors import InvalidInputError

from .oracles import MU, S, gaussian_flow_map, gaussian_velocity

METHODS = ["unipc", "dpmpp_2m"]
X0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def gaussian_path(x0, t):
    """Where the exact Gaussian flow takes x0 at time t: N(0, 1) pushed to N(t·MU, var_t)."""
    return t * MU + math.sqrt((1 - t) ** 2 + t**2 * S**2) * x0


def measured_order(method, a=0.0, b=1.0, steps=(64, 128, 256, 512)):
    """Least-squares slope of −log(max error) against log(steps) on a uniform grid [a, b]."""
    errors = []
    for n in steps:
        grid = torch.linspace(a, b, n + 1, dtype=torch.float64)
        x1 = solvers.solve(method, gaussian_velocity, gaussian_path(X0, a), grid)
        errors.append((x1 - gaussian_path(X0, b)).abs().max().item())
    lx = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return -float((lx * ly).sum() / (lx * lx).sum()), errors


@pytest.mark.parametrize("method", METHODS)
def test_gaussian_oracle_converges_at_order_two(method):
    # The whole path 0 → 1 on the uniform grid the pipeline uses (measured: unipc 2.07,
    # dpmpp_2m 1.76; DPM-Solver++ carries an h²·log(1/h) term from both ends, where a t-uniform
    # grid's λ-steps do not shrink). Euler measures 1.0 on the same grids.
    order, errors = measured_order(method)
    assert errors[-1] < 2e-4, errors
    assert torch.allclose(gaussian_path(X0, 1.0), gaussian_flow_map(X0))
    assert 1.6 < order < 2.4, (method, order, errors)


@pytest.mark.parametrize("method", METHODS)
def test_interior_order_is_two(method):
    # Away from λ = ±∞ both are cleanly second order (measured unipc 2.00, dpmpp_2m 2.03); the
    # last step is first order (lower_order_final) whatever t it ends at, which caps both at 2.
    order, errors = measured_order(method, 0.25, 0.75, steps=(32, 64, 128, 256))
    assert 1.9 < order < 2.1, (method, order, errors)


def test_order_band_rejects_first_order():
    # negative control for the two tests above: the same measurement gives Euler order 1
    assert measured_order("euler")[0] < 1.1
    assert measured_order("euler", 0.25, 0.75, steps=(32, 64, 128, 256))[0] < 1.1


# --------------------------------------------------------------------------- diffusers parity


def field(x, t):
    """A nonlinear velocity (the Gaussian field plus a bend), so no coefficient can hide."""
    tb = t.reshape(-1, *([1] * (x.dim() - 1)))
    return gaussian_velocity(x, t) + 0.3 * torch.sin(3 * x) * (1 - tb)


def scheduler(method, shift):
    diffusers = pytest.importorskip("diffusers")
    kw = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    if method == "unipc":  # Wan's scheduler, diffusers' defaults: bh2, predict_x0, order 2
        return diffusers.UniPCMultistepScheduler(**kw)
    return diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **kw)


def diffusers_trajectory(sched, x):
    """Their loop: the model sees σ_i (their int64 timesteps truncate 1000·σ) and returns the
    sigma-convention velocity ε − x1 = −v; each step's prev_sample is recorded."""
    out = []
    for i, timestep in enumerate(sched.timesteps):
        t = time.from_sigma(sched.sigmas[i].double()).expand(x.shape[0])
        x = sched.step(time.velocity_to_sigma(field(x, t)), timestep, x).prev_sample
        out.append(x)
    return out


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("steps", [4, 10, 25])
@pytest.mark.parametrize("method", METHODS)
def test_matches_diffusers_step_by_step(method, steps, shift):
    sched = scheduler(method, shift)
    sched.set_timesteps(steps)
    sched.set_begin_index(0)  # duplicate int timesteps near σ = 1 must not skip a step
    x_init = torch.randn(64, 3, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    theirs = diffusers_trajectory(sched, x_init)

    grid = time.from_sigma(sched.sigmas.double())  # their own sigmas, read in t
    ours, calls = [], []

    def f(x, t):
        calls.append(float(t[0]))
        return field(x, t)

    out = solvers.solve(method, f, x_init, grid, callback=lambda s: ours.append(s.x))
    assert len(calls) == steps and calls == grid[:-1].tolist()
    assert len(ours) == len(theirs) == steps
    err = max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))
    assert err < 1e-5, err  # measured ≤ 1.2e-6 (DPM-Solver++ steps its state in float32)
    assert torch.equal(out, ours[-1])

    # our helper builds the same grid from (steps, shift) without a scheduler
    helper = time.diffusers_flow_grid(steps, shift, method)
    assert (helper - grid).abs().max().item() < 1e-7  # their sigmas are float32
    final = solvers.solve(method, field, x_init, helper)
    assert (final - theirs[-1]).abs().max().item() < 1e-5


def test_diffusers_flow_grid_shape_and_errors():
    g = time.diffusers_flow_grid(4, 3.0, "dpmpp_2m")
    assert g.dtype == torch.float64 and g.shape == (5,) and g[-1] == 1.0
    assert bool((g[1:] > g[:-1]).all()) and abs(g[0].item() - 0.001 / (0.001 + 3 * 0.999)) < 1e-15
    assert time.diffusers_flow_grid(4, 3.0)[0].item() == 1e-6
    with pytest.raises(InvalidInputError):
        time.diffusers_flow_grid(4, 3.0, "ddim")
    with pytest.raises(InvalidInputError):
        time.diffusers_flow_grid(0, 3.0)


# -------------------------------------------------------------------------------- signature


@pytest.mark.parametrize("method", METHODS)
def test_step_callback_and_order_schedule(method):
    calls, seen = [], []

    def f(x, t):
        calls.append(float(t[0]))
        return field(x, t)

    grid = time.shifted_grid(6, 3.0, dtype=torch.float64)
    out = solvers.solve(method, f, X0, grid, callback=seen.append)
    assert all(isinstance(s, solvers.Step) for s in seen) and [s.i for s in seen] == list(range(6))
    assert [s.t for s in seen] == calls == grid[:-1].tolist()  # one model call per step
    assert [s.t_next for s in seen] == grid[1:].tolist() and torch.equal(seen[-1].x, out)
    for s, x in zip(seen, [X0] + [s.x for s in seen[:-1]], strict=True):
        assert torch.allclose(s.out, field(x, torch.full((len(x),), s.t, dtype=x.dtype)))
    # first step: order 1, which is exactly Euler for CondOT
    assert torch.allclose(seen[0].x, X0 + (seen[0].t_next - seen[0].t) * seen[0].out, atol=1e-12)

    # middle steps: multistep, not Euler from the state the model saw. From t = 0 (λ = −∞) the
    # 2M difference of step 1 vanishes (h/h_0 = 0), so there DPM-Solver++ is still Euler, while
    # UniPC's corrector has already moved the state.
    def euler_gap(prev, s):
        return (s.x - (prev.x + (s.t_next - s.t) * s.out)).abs().max().item()

    assert (euler_gap(*seen[:2]) < 1e-12) == (method == "dpmpp_2m")
    assert all(euler_gap(p, s) > 1e-4 for p, s in zip(seen[1:-2], seen[2:-1], strict=True))
    # last step to t = 1: first order, so the output is the data prediction x + (1 − t)·v
    assert torch.allclose(out, seen[-2].x + (1 - seen[-1].t) * seen[-1].out, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_one_step_grid_and_float32_state(method):
    one = solvers.solve(method, gaussian_velocity, X0, time.uniform_grid(1, dtype=torch.float64))
    assert torch.allclose(one, X0 + gaussian_velocity(X0, torch.zeros(len(X0))), atol=1e-12)
    grid = time.shifted_grid(8, 3.0, dtype=torch.float64)  # as the video pipeline calls it
    x32 = solvers.solve(method, field, X0.float(), grid)
    assert x32.dtype == torch.float32 and not torch.isnan(x32).any()
    assert torch.allclose(x32.double(), solvers.solve(method, field, X0, grid), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_zero_velocity_keeps_the_state_bit_for_bit(method):
    # the video pipeline's known (anchor) frames get velocity 0 and must come out unchanged
    known = torch.arange(len(X0)) < 100

    def f(x, t):
        return torch.where(known[:, None], 0.0, field(x, t))

    x = X0.float()
    out = solvers.solve(method, f, x, time.shifted_grid(8, 3.0, dtype=torch.float64))
    assert torch.equal(out[known], x[known]) and not torch.allclose(out[~known], x[~known])


@pytest.mark.parametrize("method", METHODS)
def test_cond_kwargs_reach_model(method):
    got = []

    def f(x, t, scale, label=None):
        got.append((scale, label))
        return scale * gaussian_velocity(x, t)

    grid = time.uniform_grid(5, dtype=torch.float64)
    out = solvers.solve(method, f, X0, grid, scale=0.5, label="cat")
    assert got == [(0.5, "cat")] * 5
    ref = solvers.SOLVERS[method](lambda x, t: 0.5 * gaussian_velocity(x, t), X0, grid)
    assert torch.equal(out, ref)
    assert solvers.SOLVERS[method] is getattr(multistep, method)


BAD_GRIDS = [
    torch.tensor([0.0]),
    torch.tensor([0.0, 0.5, 0.5]),
    torch.tensor([0.0, 0.7, 0.3, 1.0]),
    [0.0, 1.0],
    torch.tensor([-0.5, 0.5]),  # outside [0, 1]: λ = log(t/(1 − t)) is undefined
    torch.tensor([0.5, 1.5]),
]


@pytest.mark.parametrize("bad", BAD_GRIDS, ids=range(len(BAD_GRIDS)))
@pytest.mark.parametrize("method", METHODS)
def test_bad_grid(method, bad):
    with pytest.raises(InvalidInputError):
        solvers.solve(method, gaussian_velocity, X0, bad)
