"""InputSample: the seeded logit sample with each kept sample's input features beside it."""

import pytest
import torch

from lightning_gensens.metrics import InputSample, LogitSample


def test_features_stay_with_their_rows_through_trimming_and_merging():
    a, b, plain = InputSample(max_samples=30, seed=2), InputSample(max_samples=30, seed=9), LogitSample(30, seed=2)
    for start in range(0, 500, 16):
        rows = torch.arange(start, min(start + 16, 500), dtype=torch.float64)[:, None]
        logits, inputs = rows.repeat(1, 3), rows[:, :, None].repeat(1, 2, 5)  # row i: i everywhere
        a.update(logits, None, inputs)
        b.update(logits + 1000, None, inputs + 1000)
        plain.update(logits)
    assert torch.equal(a.compute()["logits"], plain.compute()["logits"])  # the same sample as LogitSample keeps
    a.merge_state(b)
    out = a.compute()
    assert out["features"].shape == (30, 5) and out["features"].dtype == torch.float32
    assert torch.equal(out["features"].double(), out["logits"][:, :1].repeat(1, 5))


def test_wide_inputs_are_hashed_and_bad_inputs_refused():
    metric = InputSample(dims=8)
    metric.update(torch.randn(4, 3), None, torch.randn(4, 3, 10, 10))
    assert metric.compute()["features"].shape == (4, 8)
    with pytest.raises(ValueError, match="inputs"):
        metric.update(torch.randn(4, 3), None, None)
    with pytest.raises(ValueError, match="one row per logit row"):
        metric.update(torch.randn(4, 3), None, torch.randn(3, 2))
    small = InputSample()
    small.update(torch.randn(4, 3), None, torch.randn(4, 6))
    with pytest.raises(ValueError, match="earlier batches 6"):
        small.update(torch.randn(4, 3), None, torch.randn(4, 7))
    with pytest.raises(ValueError, match="dims"):
        InputSample(dims=0)


def test_output_layer_inputs_stay_with_their_rows_or_are_none_once_a_batch_lacks_them():
    metric = InputSample(max_samples=20, seed=3, head_dims=4)
    for start in range(0, 200, 16):
        rows = torch.arange(start, min(start + 16, 200), dtype=torch.float64)[:, None]
        metric.update(rows.repeat(1, 3), None, rows.repeat(1, 2), rows.repeat(1, 3))
    out = metric.compute()
    assert out["heads"].shape == (20, 3) and torch.equal(out["heads"].double(), out["logits"])
    metric.update(torch.randn(4, 3, dtype=torch.float64), None, torch.randn(4, 2))  # no heads
    assert "heads" not in metric.compute()
    wide = InputSample(head_dims=4)
    wide.update(torch.randn(4, 3), None, torch.randn(4, 2), torch.randn(4, 9))
    assert wide.compute()["heads"].shape == (4, 4)  # hashed
    with pytest.raises(ValueError, match="one row per logit row"):
        wide.update(torch.randn(4, 3), None, torch.randn(4, 2), torch.randn(3, 9))
    with pytest.raises(ValueError, match="head_dims"):
        InputSample(head_dims=0)
