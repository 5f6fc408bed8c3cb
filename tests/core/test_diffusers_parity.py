"""Interop parity with diffusers' FlowMatchEulerDiscreteScheduler (the SD3/Flux/Wan sampler).

Their convention is ours seen through ``sigma = 1 - t`` with the velocity sign flipped; the only
conversion lives in ``mdiff.time``. Same shift, same grid, same Euler steps → the same sample.
"""

import pytest
import torch

from mdiff import solvers, time

from .oracles import gaussian_velocity

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 12])
def test_shifted_sigmas_and_euler_sampling_match_diffusers(shift, steps):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    sigmas = sched.sigmas.double()  # noise level, from 1 down to 0

    # their grid is our shift applied to a linear sigma grid, read in t = 1 - sigma. Its low end
    # is their training table's smallest sigma, 1/1000 already shifted once (so the last sigma
    # is shifted twice: 0.0089 rather than 0.0030 for shift 3).
    sigma_min = time.to_sigma(time.shift(time.from_sigma(torch.tensor(1 / 1000.0)), shift))
    base = torch.linspace(1.0, sigma_min.item(), steps, dtype=torch.float64)
    ours = time.shift(time.from_sigma(base), shift)
    assert torch.allclose(time.to_sigma(ours), sigmas[:-1], atol=1e-6)
    assert torch.allclose(time.from_diffusers_timesteps(sched.timesteps.double()), ours, atol=1e-4)

    # a model in the sigma convention (predicting d x / d sigma), sampled both ways
    x_init = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))

    def sigma_model(x, timestep):
        t = time.from_diffusers_timesteps(timestep.double()).expand(x.shape[0])
        return time.velocity_to_sigma(gaussian_velocity(x.double(), t)).float()

    x = x_init.clone()
    for ts in sched.timesteps:
        x = sched.step(sigma_model(x, ts.reshape(1)), ts, x).prev_sample

    def our_model(x_, t_):
        return time.velocity_from_sigma(sigma_model(x_, time.to_diffusers_timesteps(t_[:1])))

    grid = time.from_sigma(sigmas).float()
    y = solvers.euler(our_model, x_init, grid)
    assert torch.allclose(x, y, atol=1e-5), (x - y).abs().max()
