"""The core in twenty lines: a closed-form velocity, a shifted grid, CFG and a solver.

    python examples/quickstart.py

Every solver takes ``model_fn(x, t, **cond)`` and a grid tensor; every guidance wraps a model
function and returns one, so they compose freely. Here the model is the exact velocity that
carries N(0, 1) to N(label, 0.5²), so the result can be checked by eye.
"""

import torch

from mdiff import guidance, solvers, time


def exact_velocity(x, t, label):
    """CondOT marginal velocity from N(0, 1) to N(label, 0.5²), per sample."""
    t, mu = t[:, None], label[:, None]
    var = (1 - t) ** 2 + (0.5 * t) ** 2
    return mu + (0.25 * t - (1 - t)) / var * (x - t * mu)


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4096, 1, generator=g)
    label = torch.full((4096,), 3.0)
    grid = time.shifted_grid(16, alpha=time.sd3_alpha(1024, 256))  # more steps near the noise
    x1 = solvers.heun(exact_velocity, x0, grid, label=label)
    print(f"heun, 16 steps:   mean {x1.mean():.3f} (exact 3.000)  std {x1.std():.3f} (exact 0.500)")
    guided = guidance.cfg(exact_velocity, 2.0, uncond={"label": torch.zeros(4096)})
    x1 = solvers.euler(guided, x0, time.uniform_grid(64), label=label)
    print(f"euler + CFG w=2:  mean {x1.mean():.3f} (guidance extrapolates past the condition)")
