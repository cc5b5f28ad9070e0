"""Nearest-neighbour distances in feature space against a brute-force loop, their invariance to each sample's scale,
and the error they predict against its defining property."""

import math

import pytest
import torch

from lightning_gensens.functional import neighbour_distances, neighbour_error


def _brute(memory: torch.Tensor, features: torch.Tensor, k: int, exclude_self: bool = False) -> list[float]:
    out = []
    for i, f in enumerate(features.tolist()):
        nf = math.sqrt(sum(v * v for v in f))
        dists = []
        for j, m in enumerate(memory.tolist()):
            if exclude_self and i == j:
                continue
            nm = math.sqrt(sum(v * v for v in m))
            dists.append(math.sqrt(sum((a / nf - b / nm) ** 2 for a, b in zip(f, m, strict=True))))
        out.append(sorted(dists)[k - 1])
    return out


def test_distances_equal_a_brute_force_loop_over_normalised_rows():
    g = torch.Generator().manual_seed(0)
    memory, features = torch.randn(40, 6, generator=g), torch.randn(23, 6, generator=g)
    for k in (1, 3, 7):
        got = neighbour_distances(memory, features, k)
        assert got.dtype == torch.float64
        assert got.tolist() == pytest.approx(_brute(memory.double(), features.double(), k), abs=1e-12)
    own = neighbour_distances(memory, memory, 2, exclude_self=True)
    assert own.tolist() == pytest.approx(_brute(memory.double(), memory.double(), 2, exclude_self=True), abs=1e-12)
    assert (neighbour_distances(memory, memory, 1) < 1e-6).all()  # each row is its own nearest


def test_scaling_a_sample_moves_no_distance():
    g = torch.Generator().manual_seed(1)
    memory, features = torch.randn(30, 5, generator=g), torch.randn(12, 5, generator=g)
    scales = torch.rand(12, 1, generator=g) * 5 + 0.1
    assert torch.allclose(neighbour_distances(memory, features * scales, 4), neighbour_distances(memory, features, 4))


def test_the_predicted_error_puts_the_reference_error_of_the_reference_above_the_threshold():
    g = torch.Generator().manual_seed(2)
    reference = torch.rand(200, generator=g, dtype=torch.float64)
    for error in (0.0, 0.13, 0.5, 1.0):
        assert float(neighbour_error(reference, error, reference)) == pytest.approx(round(error * 200) / 200)
    shifted = reference + 0.2  # every distance larger: more of the target above the threshold
    assert float(neighbour_error(reference, 0.13, shifted)) > 0.13
    assert float(neighbour_error(reference, 0.13, reference - 5.0)) == 0.0


def test_bad_arguments():
    memory = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must be"):
        neighbour_distances(memory, memory, 0)
    with pytest.raises(ValueError, match="at least 6 memory rows"):
        neighbour_distances(memory, memory, 5, exclude_self=True)
    with pytest.raises(ValueError, match="memory and features"):
        neighbour_distances(memory, torch.randn(4, 2), 1)
    with pytest.raises(ValueError, match="reference_error"):
        neighbour_error(torch.rand(5), 1.5, torch.rand(3))
    with pytest.raises(ValueError, match="empty"):
        neighbour_error(torch.rand(5), 0.1, torch.rand(0))
