"""Guidance identities, and every solver × guidance × grid combination."""

import pytest
import torch

from mdiff import guidance, solvers, time
from mdiff.errors import InvalidInputError
from mdiff.paths import AffinePath
from mdiff.schedules import Cosine

G = torch.Generator().manual_seed(0)
W1, W2 = torch.randn(2, 6, 6, generator=G, dtype=torch.float64)


def model(x, t, label):
    """A toy conditional velocity: linear in x, shifted by the label, non-trivial in t."""
    t = t.reshape(-1, *([1] * (x.dim() - 1)))
    return x @ W1 * (1 + t) + label[:, None, :] * (1 - t) + t * (x @ W2).tanh()


def inputs(b=5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 6, generator=g, dtype=torch.float64)
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    label = torch.randn(b, 6, generator=g, dtype=torch.float64)
    return x, t, label


NULL = {"label": torch.zeros(5, 6, dtype=torch.float64)}


def test_cfg_formula_and_batched_equals_unbatched():
    x, t, label = inputs()
    c, u = model(x, t, label), model(x, t, NULL["label"])
    for batched in (True, False):
        g = guidance.cfg(model, 3.5, NULL, batched=batched)(x, t, label=label)
        assert torch.allclose(g, u + 3.5 * (c - u))


def test_cfg_batches_into_one_forward():
    calls = []

    def counting(x, t, label):
        calls.append(x.shape[0])
        return model(x, t, label)

    x, t, label = inputs()
    guidance.cfg(counting, 2.0, NULL)(x, t, label=label)
    assert calls == [10]


@pytest.mark.parametrize("make", ["cfg", "zero_star", "apg"])
def test_scale_one_is_the_conditional_model(make):
    x, t, label = inputs()
    fn = {
        "cfg": lambda: guidance.cfg(model, 1.0, NULL),
        "zero_star": lambda: guidance.cfg_zero_star(model, 1.0, NULL),
        "apg": lambda: guidance.apg(model, 1.0, NULL, eta=0.3, norm_threshold=2.0, momentum=-0.5),
    }[make]()
    assert torch.allclose(fn(x, t, label=label), model(x, t, label))


def test_apg_eta_one_no_clip_no_momentum_is_cfg():
    x, t, label = inputs()
    for path in (AffinePath(), AffinePath(Cosine())):
        a = guidance.apg(model, 4.0, NULL, path=path, eta=1.0)(x, t, label=label)
        assert torch.allclose(a, guidance.cfg(model, 4.0, NULL)(x, t, label=label))


def test_apg_removes_parallel_component_in_data_space():
    x, t, label = inputs()
    path = AffinePath()
    a = guidance.apg(model, 4.0, NULL, path=path, eta=0.0)(x, t, label=label)
    c = model(x, t, label)
    a1, c1 = (path.convert(v, "velocity", "x1", x, t) for v in (a, c))
    dot = ((a1 - c1) * c1).flatten(1).sum(1)
    assert torch.allclose(dot, torch.zeros_like(dot), atol=1e-9)


def test_apg_clipping_bounds_the_update():
    x, t, label = inputs()
    path = AffinePath()
    a = guidance.apg(model, 2.0, NULL, path=path, eta=1.0, norm_threshold=0.1)(x, t, label=label)
    diff = path.convert(a, "velocity", "x1", x, t) - path.convert(
        model(x, t, label), "velocity", "x1", x, t
    )
    assert bool((diff.flatten(1).norm(dim=1) <= 0.1 + 1e-9).all())


def test_cfg_commutes_with_prediction_conversion():
    x, t, label = inputs()
    path = AffinePath(Cosine())

    def as_x1(x_, t_, label):
        return path.convert(model(x_, t_, label), "velocity", "x1", x_, t_)

    g_v = guidance.cfg(model, 3.0, NULL)(x, t, label=label)
    g_x1 = guidance.cfg(as_x1, 3.0, NULL)(x, t, label=label)
    assert torch.allclose(path.convert(g_x1, "x1", "velocity", x, t), g_v)


def _scaled_uncond(factor):
    """A model whose unconditional branch is exactly ``factor`` times its conditional one."""

    def f(x, t, label, uncond):
        out = model(x, t, label)
        return torch.where(uncond.bool().reshape(-1, 1, 1), factor * out, out)

    return f


def test_cfg_zero_star_optimal_scale_and_zero_init():
    x, t, label = inputs()
    c = model(x, t, label)
    # u = c/2: s* = 2 rescales u back onto c, so guidance adds nothing for any w (plain CFG would)
    fn = _scaled_uncond(0.5)
    star = guidance.cfg_zero_star(fn, 5.0, {"uncond": torch.ones(5)}, batched=False)
    assert torch.allclose(star(x, t, label=label, uncond=torch.zeros(5)), c)
    plain = guidance.cfg(fn, 5.0, {"uncond": torch.ones(5)}, batched=False)
    assert not torch.allclose(plain(x, t, label=label, uncond=torch.zeros(5)), c)
    z = guidance.cfg_zero_star(model, 5.0, NULL, zero_init_t=0.5)(x, t, label=label)
    early = t < 0.5
    assert bool(early.any()) and bool((~early).any())
    assert bool((z[early] == 0).all()) and not bool((z[~early] == 0).any())


def test_interval_outside_is_conditional_and_skips_uncond():
    x, t, label = inputs()
    calls = []

    def counting(x_, t_, label):
        calls.append(x_.shape[0])
        return model(x_, t_, label)

    fn = guidance.cfg(counting, 3.0, NULL, interval=(0.3, 0.6))
    out = fn(x, t, label=label)
    inside = (t >= 0.3) & (t <= 0.6)
    c, u = model(x, t, label), model(x, t, NULL["label"])
    assert torch.allclose(out[~inside], c[~inside])
    assert torch.allclose(out[inside], (u + 3 * (c - u))[inside])
    calls.clear()
    fn(x, torch.full_like(t, 0.9), label=label)
    assert calls == [5]
    with pytest.raises(InvalidInputError):
        guidance.cfg(model, 3.0, NULL, interval=(0.6, 0.3))


def test_llada_scale_conversion():
    """LLaDA's ``u + (w_l + 1)(c − u)`` (off at 0) is ours ``u + w(c − u)`` (off at 1)."""
    c, u = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for w_llada in (0.0, 0.5, 2.0):
        w = guidance.from_llada_scale(w_llada)
        assert w == w_llada + 1 and guidance.to_llada_scale(w) == w_llada
        assert torch.equal(guidance.combine_cfg(c, u, w), u + (w_llada + 1) * (c - u))
    assert torch.allclose(guidance.combine_cfg(c, u, guidance.from_llada_scale(0.0)), c)


@pytest.mark.parametrize("method", guidance.METHODS)
def test_guide_and_combine_by_name_are_the_variants(method):
    """``guide(name, …)`` is the variant's wrapper and ``combine(name, c, u, w)`` its rule on the
    raw branches (APG: with the predictions themselves as data space, i.e. an x1-model)."""
    x, t, label = inputs()
    path = AffinePath()
    make = {"cfg": guidance.cfg, "cfg_zero_star": guidance.cfg_zero_star, "apg": guidance.apg}
    by_name = guidance.guide(method, model, 2.5, NULL)(x, t, label=label)
    assert torch.equal(by_name, make[method](model, 2.5, NULL)(x, t, label=label))

    def as_x1(x_, t_, label):
        return path.convert(model(x_, t_, label), "velocity", "x1", x_, t_)

    c, u = as_x1(x, t, label), as_x1(x, t, NULL["label"])
    guided = guidance.guide(method, as_x1, 2.5, NULL, **({"prediction": "x1"} if method == "apg"
                                                          else {}))(x, t, label=label)  # fmt: skip
    assert torch.allclose(guidance.combine(method, c, u, 2.5), guided, atol=1e-12)
    with pytest.raises(InvalidInputError, match="unknown guidance method"):
        guidance.guide("pag", model, 2.0, NULL)
    with pytest.raises(InvalidInputError, match="unknown guidance method"):
        guidance.combine("CFG", c, u, 2.0)


def test_uncond_key_must_be_passed():
    x, t, label = inputs()
    with pytest.raises(InvalidInputError):
        guidance.cfg(model, 2.0, {"context": torch.zeros(5, 6)})(x, t, label=label)


GUIDES = {
    "none": lambda f: f,
    "cfg": lambda f: guidance.cfg(f, 2.0, NULL),
    "cfg_interval": lambda f: guidance.cfg(f, 2.0, NULL, interval=(0.2, 0.8)),
    "zero_star": lambda f: guidance.cfg_zero_star(f, 2.0, NULL, zero_init_t=0.1),
    "apg": lambda f: guidance.apg(f, 2.0, NULL, eta=0.5, norm_threshold=5.0, momentum=-0.5),
}
GRIDS = {
    "uniform": lambda n: time.uniform_grid(n, dtype=torch.float64),
    "shifted": lambda n: time.shifted_grid(n, 3.0, dtype=torch.float64),
    "edm": lambda n: time.edm_grid(n, dtype=torch.float64),
}


@pytest.mark.parametrize("method", sorted(solvers.SOLVERS))
@pytest.mark.parametrize("guide", sorted(GUIDES))
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_every_solver_guidance_grid_combination(method, guide, grid):
    x, _, label = inputs()
    fn = GUIDES[guide](model)
    out = solvers.solve(method, fn, x, GRIDS[grid](6), label=label)
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    # the same combination is deterministic and is not the identity
    again = solvers.solve(method, GUIDES[guide](model), x, GRIDS[grid](6), label=label)
    assert torch.equal(out, again) and not torch.allclose(out, x)
    if guide != "none":  # guidance changes the result versus the conditional model
        plain = solvers.solve(method, model, x, GRIDS[grid](6), label=label)
        assert not torch.allclose(out, plain)
