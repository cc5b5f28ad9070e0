import pytest
import torch
from torch import nn

from lightning_gensens.__main__ import main
from lightning_gensens.ranking import rank_architectures


def _standard_normal_mlp(width: int, depth: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers, d = [], 8
    for _ in range(depth):
        layers += [nn.Linear(d, width, bias=False), nn.ReLU()]
        d = width
    net = nn.Sequential(*layers, nn.Linear(d, 4, bias=False)).double()
    for p in net.parameters():
        nn.init.normal_(p)
    return net


def test_width_family_is_ordered_as_eq10_predicts():
    """Forouzesh eq. 10: S = (D/K)(H/2)^M σ² at standard-normal init, so S grows with the width H."""
    x = torch.randn(512, 8, dtype=torch.float64)
    widths = [64, 8, 256, 32, 16, 128]
    family = {f"width {w}": _standard_normal_mlp(w, 2, seed=w) for w in widths}
    ranked = rank_architectures(family, x, sigma=1e-3)
    assert [r.name for r in ranked] == [f"width {w}" for w in sorted(widths)]
    # eq. 10 is an expectation over θ: averaged over initialisations, S(256)/S(8) ≈ (256/8)^M with M = 2
    mean = {
        w: sum(
            r.sensitivity
            for r in rank_architectures([_standard_normal_mlp(w, 2, seed) for seed in range(30)], x, sigma=1e-3)
        )
        / 30
        for w in (8, 256)
    }
    assert 0.5 * (256 / 8) ** 2 < mean[256] / mean[8] < 2 * (256 / 8) ** 2


def test_same_inputs_and_noise_for_every_candidate_and_bad_input():
    net = _standard_normal_mlp(16, 1, seed=0)
    x = torch.randn(64, 8, dtype=torch.float64)
    a, b = rank_architectures([net, net], [(x, None)])
    assert a.sensitivity == b.sensitivity
    with pytest.raises(ValueError, match="at least one model"):
        rank_architectures({}, x)
    with pytest.raises(ValueError, match="at least one input"):
        rank_architectures([net], x[:0])


def test_rank_command(capsys):
    assert main(["rank", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "S_before" in out and "Spearman" in out and "cnn width 8" in out
