"""RoPE: rotation (norm-preserving), relative positions, axial splits, position helpers."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.nn import RotaryEmbedding, apply_rope, arange_positions, axial_dims, grid_positions

B, H, D = 2, 3, 24


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_positions(length, n_axes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (length, n_axes), generator=g).float()


@pytest.mark.parametrize("axes_dims", [None, (8, 8, 8), axial_dims(D)])
def test_rotation_preserves_norm(axes_dims):
    rope = RotaryEmbedding(D, axes_dims)
    n_axes = 1 if axes_dims is None else len(axes_dims)
    x = randn(B, H, 10, D)
    y = apply_rope(x, *rope.freqs(random_positions(10, n_axes)))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("axes_dims", [None, (8, 8, 8), (12, 6, 6)])
def test_scores_depend_only_on_relative_position(axes_dims):
    rope = RotaryEmbedding(D, axes_dims)
    n_axes = 1 if axes_dims is None else len(axes_dims)
    q, k = randn(B, H, 10, D, seed=1), randn(B, H, 10, D, seed=2)
    pos = random_positions(10, n_axes)
    offset = torch.tensor([37.0, -5.0, 12.0][:n_axes])  # a different shift per axis

    def scores(pos_q, pos_k):
        return apply_rope(q, *rope.freqs(pos_q)) @ apply_rope(k, *rope.freqs(pos_k)).mT

    base = scores(pos, pos)
    torch.testing.assert_close(scores(pos + offset, pos + offset), base, atol=1e-4, rtol=1e-4)
    assert (scores(pos + offset, pos) - base).abs().max() > 1e-2  # only q moved: scores change


def test_matches_complex_rotation_reference():
    rope = RotaryEmbedding(D, (8, 16), theta=100.0)
    pos = random_positions(7, 2)
    x = randn(B, H, 7, D, dtype=torch.float64)
    omega = torch.cat([100.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for d in (8, 16)])
    axis = torch.tensor([0] * 4 + [1] * 8)
    angles = pos.double()[:, axis] * omega  # (L, D/2)
    z = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    expected = torch.view_as_real(z).flatten(-2)
    torch.testing.assert_close(apply_rope(x, *rope.freqs(pos)), expected, atol=1e-5, rtol=1e-5)


def test_zero_position_is_identity():
    rope = RotaryEmbedding(D, (8, 8, 8))
    x = randn(B, H, 5, D)
    assert torch.equal(apply_rope(x, *rope.freqs(torch.zeros(5, 3))), x)


def test_per_sample_positions_match_shared_positions():
    rope = RotaryEmbedding(D)
    x = randn(B, H, 6, D)
    pos = torch.stack([arange_positions(6), arange_positions(6, offset=9)])  # (B, L, 1)
    out = apply_rope(x, *rope.freqs(pos))
    for b in range(B):
        torch.testing.assert_close(out[b : b + 1], apply_rope(x[b : b + 1], *rope.freqs(pos[b])))


def test_output_dtype_follows_input():
    rope = RotaryEmbedding(D)
    x = randn(B, H, 6, D).bfloat16()
    y = apply_rope(x, *rope.freqs(arange_positions(6)))
    assert y.dtype == torch.bfloat16
    ref = apply_rope(x.float(), *rope.freqs(arange_positions(6)))
    torch.testing.assert_close(y.float(), ref, atol=2e-2, rtol=2e-2)


def test_axes_split_validation():
    with pytest.raises(InvalidInputError):
        RotaryEmbedding(D, (8, 8, 6))  # sums to 22
    with pytest.raises(InvalidInputError):
        RotaryEmbedding(D, (9, 9, 6))  # odd
    with pytest.raises(InvalidInputError):
        RotaryEmbedding(7)  # odd head dim
    with pytest.raises(InvalidInputError):
        axial_dims(4, 3)  # too small for 3 even parts
    with pytest.raises(InvalidInputError):
        axial_dims(25)  # odd
    rope = RotaryEmbedding(D, (8, 8, 8))
    with pytest.raises(InvalidInputError):
        rope.freqs(torch.zeros(5, 2))  # 2 axes for a 3-axis rope
    with pytest.raises(InvalidInputError):
        apply_rope(randn(B, H, 4, D), *rope.freqs(torch.zeros(5, 3)))  # 5 positions, 4 tokens


def test_default_axial_split():
    assert axial_dims(128) == (44, 42, 42)  # Wan's split
    for d in (24, 64, 96, 128):
        dims = axial_dims(d)
        assert sum(dims) == d and all(x % 2 == 0 for x in dims)


def test_position_helpers():
    assert torch.equal(arange_positions(3, offset=4), torch.tensor([[4.0], [5.0], [6.0]]))
    pos = grid_positions((2, 3, 4), offsets=(5, 0, 1))
    assert pos.shape == (24, 3)
    for t in range(2):
        for h in range(3):
            for w in range(4):
                row = pos[t * 12 + h * 4 + w]
                assert row.tolist() == [t + 5, h, w + 1]
    with pytest.raises(InvalidInputError):
        grid_positions((2, 3), offsets=(0, 0, 0))
