import pickle

import pytest
import torch

from lightning_gensens.functional.confidence import (
    _average_confidence_compute,
    _average_thresholded_confidence_compute,
    _confidence_update,
    _difference_of_confidences_compute,
    average_confidence,
    average_thresholded_confidence,
    difference_of_confidences,
    predictive_entropy,
    softmax_confidence,
)
from lightning_gensens.metrics.confidence import ConfidenceStatistics
from tests.helpers import run_ddp


def _batches(seed: int, sizes: tuple[int, ...] = (9, 4, 13, 6), scale: float = 3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, 5, generator=g, dtype=torch.float64) for n in sizes]


def _filled(batches: list[torch.Tensor], **kwargs) -> ConfidenceStatistics:
    metric = ConfidenceStatistics(**kwargs)
    for logits in batches:
        metric.update(logits)
    return metric


def test_updates_equal_functional_on_concatenation():
    ref_batches, target_batches = _batches(0), _batches(1, (5, 11, 2), scale=1.0)
    ref_logits, target_logits = torch.cat(ref_batches), torch.cat(target_batches)
    ref, target = _filled(ref_batches), _filled(target_batches)
    ref_stats, target_stats = ref.compute(), target.compute()
    assert set(ref_stats) == {"mean_confidence", "mean_entropy", "count"} and float(ref_stats["count"]) == 32
    torch.testing.assert_close(ref_stats["mean_confidence"], softmax_confidence(ref_logits).mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(ref_stats["mean_entropy"], predictive_entropy(ref_logits).mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(ref.scores(), softmax_confidence(ref_logits), rtol=0, atol=0)
    torch.testing.assert_close(ref.scores("negative_entropy"), -predictive_entropy(ref_logits), rtol=0, atol=0)

    ac = _average_confidence_compute(target_stats["mean_confidence"], target_stats["mean_entropy"])
    for key, value in average_confidence(target_logits).items():
        torch.testing.assert_close(ac[key], value, rtol=1e-14, atol=0)
    doc = _difference_of_confidences_compute(
        ref_stats["mean_confidence"],
        ref_stats["mean_entropy"],
        target_stats["mean_confidence"],
        target_stats["mean_entropy"],
        0.6,
        0.25,
    )
    for key, value in difference_of_confidences(ref_logits, target_logits, 0.6, 0.25).items():
        torch.testing.assert_close(doc[key], value, rtol=1e-14, atol=1e-15)
    for kind in ("max_softmax", "negative_entropy"):
        atc = _average_thresholded_confidence_compute(ref.scores(kind), 0.25, target.scores(kind), 0.6)
        assert atc == average_thresholded_confidence(ref_logits, 0.25, target_logits, 0.6, score=kind)


def test_forward_equals_update_and_returns_the_batch_value():
    batches = _batches(2)
    metric = ConfidenceStatistics(max_samples=20)
    for logits in batches:
        batch_value = metric(logits)
        assert torch.allclose(batch_value["mean_confidence"], softmax_confidence(logits).mean(), rtol=1e-14)
    expected = _filled(batches, max_samples=20)
    for key, value in expected.compute().items():
        torch.testing.assert_close(metric.compute()[key], value, rtol=1e-14, atol=0)
    for kind in ("max_softmax", "negative_entropy"):
        torch.testing.assert_close(metric.scores(kind), expected.scores(kind), rtol=0, atol=0)


def test_max_samples_caps_the_scores_not_the_means():
    batches = _batches(3)
    logits = torch.cat(batches)
    metric = _filled(batches, max_samples=10)
    assert metric.scores().shape == (10,) and metric._stored() == 10
    torch.testing.assert_close(metric.scores(), softmax_confidence(logits[:10]), rtol=0, atol=0)
    torch.testing.assert_close(metric.compute()["mean_confidence"], softmax_confidence(logits).mean())
    assert _filled(batches, max_samples=0).scores("negative_entropy").shape == (0,)
    assert _filled(batches, max_samples=None).scores().shape == (32,)
    merged = _filled(batches[:2], max_samples=15)
    merged.merge_state(_filled(batches[2:], max_samples=15))  # torchmetrics puts the incoming state first
    expected = softmax_confidence(torch.cat(batches[2:] + batches[:2])[:15])
    torch.testing.assert_close(merged.scores(), expected, rtol=0, atol=0)


def test_reset_pickle_and_bad_arguments():
    metric = _filled(_batches(4))
    clone = pickle.loads(pickle.dumps(metric))
    torch.testing.assert_close(clone.scores(), metric.scores(), rtol=0, atol=0)
    metric.reset()
    assert metric.scores().shape == (0,) and float(metric.count) == 0
    with pytest.warns(UserWarning, match="before the ``update``"), pytest.raises(ValueError, match="empty"):
        metric.compute()
    with pytest.raises(ValueError, match="score must be one of"):
        metric.scores("entropy")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_samples"):
            ConfidenceStatistics(max_samples=bad)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        metric.update(torch.zeros(3))
    metric.update(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))  # no host sync per batch: refused at compute
    with pytest.raises(ValueError, match="NaN or Inf"):
        metric.compute()
    with pytest.raises(ValueError, match="NaN or Inf"):
        _average_thresholded_confidence_compute(metric.scores(), 0.5, metric.scores())


def _rank_metrics(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    everywhere = _filled(_batches(10 + rank, (7, 3, 12)))
    rank_zero_only = _filled(_batches(20, (6, 5)) if rank == 0 else [])
    capped = _filled(_batches(10 + rank, (7, 3, 12)), max_samples=8)
    out = {f"everywhere_{k}": v for k, v in everywhere.compute().items()}
    for kind in ("max_softmax", "negative_entropy"):
        out[f"everywhere_{kind}"] = everywhere.scores(kind)
        out[f"rank_zero_only_{kind}"] = rank_zero_only.scores(kind)
        out[f"capped_{kind}"] = capped.scores(kind)
    out["local_count"] = everywhere.count.clone()  # scores() and compute() restore the local state
    return out


def test_ddp_equals_one_process():
    per_rank = [torch.cat(_batches(10 + rank, (7, 3, 12))) for rank in range(2)]
    logits = torch.cat(per_rank)
    expected = {
        "everywhere_mean_confidence": softmax_confidence(logits).mean(),
        "everywhere_mean_entropy": predictive_entropy(logits).mean(),
        "everywhere_count": torch.tensor(44.0, dtype=torch.float64),
        "local_count": torch.tensor(22.0, dtype=torch.float64),
    }
    for kind, fn, sign in (("max_softmax", softmax_confidence, 1), ("negative_entropy", predictive_entropy, -1)):
        expected[f"everywhere_{kind}"] = sign * fn(logits)
        expected[f"rank_zero_only_{kind}"] = sign * fn(torch.cat(_batches(20, (6, 5))))
        expected[f"capped_{kind}"] = sign * fn(torch.cat([x[:8] for x in per_rank]))
    for result in run_ddp(_rank_metrics):
        assert set(result) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(result[key], value, rtol=1e-13, atol=0, msg=key)


def test_scores_computed_once_give_the_states_of_logits():
    """Scores another metric of the same logits computed (``_confidence_update``) give bit-identical states."""
    fresh, shared = ConfidenceStatistics(max_samples=30), ConfidenceStatistics(max_samples=30)
    for logits in _batches(3):
        fresh.update(logits)
        shared.update(logits, _confidence_update(logits))
    for state in ("count", "confidence_sum", "entropy_sum"):
        assert torch.equal(getattr(fresh, state), getattr(shared, state))
    for kind in ("max_softmax", "negative_entropy"):
        assert torch.equal(fresh.scores(kind), shared.scores(kind))
