"""Nearest-neighbour distances in feature space against a brute-force loop and their invariance to each sample's
scale; the reference's means per cell of scores against a brute-force count."""

import math

import pytest
import torch

from lightning_gensens.functional import cell_means, neighbour_distances


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
    memory, features = (torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (40, 23))
    for k in (1, 3, 7):
        got = neighbour_distances(memory, features, k)
        assert got.dtype == torch.float64
        assert got.tolist() == pytest.approx(_brute(memory, features, k), abs=1e-12)
        single = neighbour_distances(memory.float(), features.float(), k)  # computed in float32, returned as float64
        assert single.dtype == torch.float64 and single.tolist() == pytest.approx(_brute(memory, features, k), abs=1e-5)
    own = neighbour_distances(memory, memory, 2, exclude_self=True)
    assert own.tolist() == pytest.approx(_brute(memory, memory, 2, exclude_self=True), abs=1e-12)
    assert (neighbour_distances(memory, memory, 1) < 1e-6).all()  # each row is its own nearest


def test_scaling_a_sample_moves_no_distance():
    g = torch.Generator().manual_seed(1)
    memory, features = torch.randn(30, 5, generator=g), torch.randn(12, 5, generator=g)
    scales = torch.rand(12, 1, generator=g) * 5 + 0.1
    assert torch.allclose(neighbour_distances(memory, features * scales, 4), neighbour_distances(memory, features, 4))


def _brute_cells(ref, values, target, bins, prior):
    """Cells by counting, score by score: how many reference quantile edges lie strictly below the value."""
    n, s = ref.shape
    edges = [
        sorted(torch.quantile(ref[:, j], torch.arange(1, bins, dtype=torch.float64) / bins).tolist()) for j in range(s)
    ]

    def cell(row):
        index = 0
        for j, v in enumerate(row):
            index = index * bins + sum(1 for e in edges[j] if e < v)
        return index

    mean = sum(values) / n
    members: dict[int, list[float]] = {}
    for row, v in zip(ref.tolist(), values, strict=True):
        members.setdefault(cell(row), []).append(v)
    rates = [
        (sum(members.get(c, [])) + prior * mean) / (len(members.get(c, [])) + prior) for c in map(cell, target.tolist())
    ]
    return sum(rates) / len(rates)


def test_cell_means_equal_a_brute_force_count():
    g = torch.Generator().manual_seed(3)
    ref, target = (
        torch.randn(300, 2, generator=g, dtype=torch.float64),
        torch.randn(80, 2, generator=g, dtype=torch.float64) + 0.7,
    )
    values = (ref[:, 0] + 0.3 * torch.randn(300, generator=g, dtype=torch.float64) > 0.8).double()
    for bins, prior in ((5, 20.0), (3, 0.0), (1, 5.0)):
        got = float(cell_means(ref, values, target, bins, prior))
        assert got == pytest.approx(_brute_cells(ref, values.tolist(), target, bins, prior), abs=1e-12)
    assert float(cell_means(ref, values, ref, 4, 0.0)) == pytest.approx(float(values.mean()))  # the reference itself
    assert float(cell_means(ref, values, target, 1, 0.0)) == pytest.approx(float(values.mean()))  # one cell
    # the target moved toward high first scores, where the reference errs: a higher mean than the reference's
    assert float(cell_means(ref, values, target, 5, 20.0)) > float(values.mean())


def test_bad_arguments():
    memory = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must be"):
        neighbour_distances(memory, memory, 0)
    with pytest.raises(ValueError, match="at least 6 memory rows"):
        neighbour_distances(memory, memory, 5, exclude_self=True)
    with pytest.raises(ValueError, match="memory and features"):
        neighbour_distances(memory, torch.randn(4, 2), 1)
    with pytest.raises(ValueError, match="one value per scored sample"):
        cell_means(torch.randn(5, 2), torch.rand(4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="scores must be"):
        cell_means(torch.randn(5, 2), torch.rand(5), torch.randn(3, 3))
    with pytest.raises(ValueError, match="bins"):
        cell_means(torch.randn(5, 2), torch.rand(5), torch.randn(3, 2), bins=0)
