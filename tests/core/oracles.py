"""Closed-form oracles shared by the core tests."""

MU, S = 3.0, 0.5  # N(0, 1) source → N(MU, S²) data


def gaussian_velocity(x, t):
    """Exact marginal CondOT velocity from N(0, I) to N(MU, S² I)."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    var = (1 - t) ** 2 + t**2 * S**2
    return MU + (t * S**2 - (1 - t)) / var * (x - t * MU)


def gaussian_flow_map(x0):
    """Where the exact flow takes x0 at t = 1."""
    return MU + S * x0
