"""The core learns, not only runs: short trainings of the toys beat the untrained model."""

import pytest
import torch

from mdiff import toys


def test_flow_matching_toy_learns_the_two_moons():
    r = toys.run_toy_2d(steps=300, n_eval=600)
    assert r.untrained > 0.3  # the untrained model is far from the data
    assert r.conditional < r.untrained / 10, r
    assert r.guided < r.untrained / 3, r


def test_masked_diffusion_toy_learns_the_language_quickly():
    """A short training already beats the untrained model on both figures, and sampling with
    more steps (which can follow the chain's correlations) beats one-step sampling."""
    r = toys.run_toy_discrete(steps=150, n_samples=2000)
    assert r.tv[20] < 0.8 * r.untrained_tv, r
    assert r.tv[20] < r.tv[1] - 0.1, r
    assert r.entropy <= r.nelbo < r.untrained_nelbo, r
    assert r.nelbo - r.entropy < (r.untrained_nelbo - r.entropy) / 2, r


@pytest.mark.slow
def test_masked_diffusion_toy_learns_the_language():
    r = toys.run_toy_discrete(steps=600, n_samples=8000)
    assert r.tv[20] < r.untrained_tv / 2, r
    # the bound is an upper bound on the true NLL and gets much closer to it with training
    assert r.entropy <= r.nelbo < r.untrained_nelbo, r
    assert r.nelbo - r.entropy < (r.untrained_nelbo - r.entropy) / 4, r


def test_energy_distance_is_zero_for_identical_sets_and_grows_with_shift():
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert toys.energy_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert toys.energy_distance(x, x + 0.5) < toys.energy_distance(x, x + 1.0)


def test_markov_language_is_a_distribution_and_tv_of_truth_is_zero():
    seqs, probs = toys.markov_language(3, 4, seed=1)
    assert seqs.shape == (81, 4) and probs.sum().item() == pytest.approx(1.0)
    exact = seqs.repeat_interleave((probs * 1e6).round().long(), dim=0)
    assert toys.total_variation(exact, probs, 3) < 1e-3
