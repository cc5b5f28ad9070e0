"""PredictionSample: the argmax predictions of the same seeded stream positions every run, bounded and mergeable."""

import pytest
import torch

from lightning_gensens.metrics import LogitSample, PredictionSample
from lightning_gensens.metrics.prediction_sample import position_keys


def _fill(metric: PredictionSample, n: int, batch: int = 64, k: int = 3, shift: int = 0) -> None:
    """Sample i predicts class (i + shift) mod k and carries label i (which positions were kept)."""
    for start in range(0, n, batch):
        rows = torch.arange(start, min(start + batch, n))
        metric.update(torch.nn.functional.one_hot((rows + shift) % k, k).double(), rows)


def test_keeps_everything_below_the_cap():
    metric = PredictionSample(max_samples=100)
    _fill(metric, 50, batch=7)
    out = metric.compute()
    assert sorted(out["labels"].tolist()) == list(range(50)) and int(out["count"]) == 50
    assert torch.equal(out["predictions"], out["labels"] % 3)
    assert out["predictions"].dtype == out["labels"].dtype == torch.long


def test_every_run_keeps_the_same_positions_in_the_same_order_whatever_the_batches():
    metric = PredictionSample(max_samples=40, seed=2)
    _fill(metric, 1000, batch=64)
    first = metric.compute()
    metric.reset()
    _fill(metric, 1000, batch=33, shift=1)  # another checkpoint: other predictions, read in other batches
    second = metric.compute()
    assert torch.equal(first["labels"], second["labels"])
    assert torch.equal(second["predictions"], (first["predictions"] + 1) % 3)
    kept = first["labels"].double()
    assert kept.unique().numel() == 40 and 300 < float(kept.mean()) < 700  # uniform over 0..999
    assert len(metric.keys) == 1 and metric.keys[0].shape[0] == 40  # trimmed as it goes: bounded memory


def test_the_positions_depend_on_the_seed():
    a, b = PredictionSample(max_samples=20, seed=3), PredictionSample(max_samples=20, seed=4)
    for m in (a, b):
        _fill(m, 300)
    assert not torch.equal(a.compute()["labels"], b.compute()["labels"])
    keys = position_keys(torch.arange(100_000), 0)
    assert 0 <= float(keys.min()) and float(keys.max()) < 1 and abs(float(keys.mean()) - 0.5) < 0.01
    assert keys.unique().numel() == keys.numel()


def test_unlabeled_soft_labels_and_bad_arguments():
    metric = PredictionSample()
    metric.update(torch.randn(4, 3))
    metric.update(torch.randn(2, 3), torch.tensor([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]]))
    assert sorted(metric.compute()["labels"].tolist()) == [-1, -1, -1, -1, 0, 1]
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="no samples"):
        PredictionSample().compute()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_samples"):
            PredictionSample(max_samples=bad)
    with pytest.raises(ValueError, match="labels must be"):
        PredictionSample().update(torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="PredictionSample"):
        PredictionSample().merge_state(LogitSample())
