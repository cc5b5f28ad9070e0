"""LogitSample: a seeded uniform sample of a split's logits and labels, bounded and mergeable."""

import pytest
import torch

from lightning_gensens.metrics import LogitSample


def _fill(metric: LogitSample, n: int, batch: int = 64, k: int = 3) -> torch.Tensor:
    logits = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, k)  # row i holds i: which rows were kept
    for start in range(0, n, batch):
        metric.update(logits[start : start + batch], torch.arange(start, min(start + batch, n)) % k)
    return logits


def test_keeps_everything_below_the_cap_with_its_labels():
    metric = LogitSample(max_samples=100)
    _fill(metric, 50, batch=7)
    out = metric.compute()
    assert out["logits"].shape == (50, 3) and int(out["count"]) == 50
    assert sorted(out["logits"][:, 0].long().tolist()) == list(range(50))
    assert torch.equal(out["labels"], out["logits"][:, 0].long() % 3)


def test_a_capped_split_keeps_a_uniform_sample_not_its_first_rows():
    metric = LogitSample(max_samples=200, seed=1)
    _fill(metric, 5000)
    out = metric.compute()
    kept = out["logits"][:, 0]
    assert out["logits"].shape == (200, 3) and int(out["count"]) == 5000
    assert kept.unique().numel() == 200
    assert 2000 < float(kept.mean()) < 3000  # uniform over 0..4999 (the first 200 would average 100)
    assert sum(k.shape[0] for k in metric.keys) <= 2 * 200 + 64  # trimmed as it goes: bounded memory


def test_the_sample_depends_on_the_seed_only():
    a, b, c = LogitSample(max_samples=20, seed=3), LogitSample(max_samples=20, seed=3), LogitSample(20, seed=4)
    for m in (a, b, c):
        _fill(m, 300)
    assert torch.equal(a.compute()["logits"], b.compute()["logits"])
    assert not torch.equal(a.compute()["logits"], c.compute()["logits"])


def test_unlabeled_and_soft_labels():
    metric = LogitSample()
    metric.update(torch.randn(4, 3))
    metric.update(torch.randn(2, 3), torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]]))
    labels = metric.compute()["labels"]
    assert sorted(labels.tolist()) == [-1, -1, -1, -1, 0, 1]


def test_empty_and_bad_arguments():
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="no samples"):
        LogitSample().compute()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_samples"):
            LogitSample(max_samples=bad)
    with pytest.raises(ValueError, match="labels must be"):
        LogitSample().update(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
