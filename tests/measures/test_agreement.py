"""The agreement-on-the-line measure fed by hand as the monitor feeds it: four runs whose checkpoints are different
random linear models, a validation split and a pool; against the functional layer, checkpointed and restored,
under 2-rank DDP against one process."""

import io

import pytest
import torch
from torch import nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional import agreement_rates, aline_d
from lightning_gensens.measures import AgreementOnTheLine, Reference, Settings
from lightning_gensens.metrics import PredictionSample
from tests.helpers import run_ddp

NET = nn.Linear(5, 4)
REFERENCE = Reference(torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64), 4)
SPLITS = ("train", "val", "pool/shifted")


def _data(seed: int, n: int = 120) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Inputs per split; labels from a teacher with 30% label noise on the labelled splits, none on the pool."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(5, 4, generator=g, dtype=torch.float64)
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for split, scale in zip(SPLITS, (1.0, 1.0, 2.5), strict=True):
        x = scale * torch.randn(n, 5, generator=g, dtype=torch.float64)
        noisy = torch.rand(n, generator=g) < 0.3
        y = torch.where(noisy, torch.randint(0, 4, (n,), generator=g), (x @ teacher).argmax(1))
        out[split] = (x, None if split.startswith("pool") else y)
    return out


def _checkpoint(run: int) -> torch.Tensor:
    """The weights of run ``run``'s model: a shared direction plus noise that shrinks as 'training' goes on."""
    g = torch.Generator().manual_seed(1000 + run)
    base = torch.randn(5, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return base + torch.randn(5, 4, generator=g, dtype=torch.float64) / (1 + run)


def _feed(measure, metric, x, y, weights, batch: int = 16) -> None:
    for start in range(0, x.shape[0], batch):
        xs = x[start : start + batch]
        ys = None if y is None else y[start : start + batch]
        measure.update(metric, Captured(x=xs, logits=xs @ weights, y=ys), NET)


def _run(measure, metrics, data, weights) -> dict[str, float]:
    """One measuring run as the monitor does it: feed every split, then (train → val) and (val → pool)."""
    out = {}
    for split in SPLITS:
        metrics[split].reset()
        _feed(measure, metrics[split], *data[split], weights)
    for group, ref, target in (("", "train", "val"), ("pool/", "val", "pool/shifted")):
        computed = measure.compute({"train": metrics[ref], "val": metrics[target]}, NET, Settings())
        assert measure.values(computed) == {}
        for name, estimate in measure.estimate(computed, REFERENCE).items():
            assert estimate.loss is None
            out[group + name] = float(estimate.error)
    return out


def _metrics(measure) -> dict[str, PredictionSample]:
    return {split: measure.make_metric(NET, Settings()) for split in SPLITS}


def _direct(data, runs: list[int], ref: str, target: str) -> float:
    """ALine-D on every sample (order does not matter to rates) with the measure's clipping."""
    x_ref, y_ref = data[ref]
    x_tgt, _ = data[target]
    ref_predictions = torch.stack([(x_ref @ _checkpoint(r)).argmax(1) for r in runs])
    tgt_predictions = torch.stack([(x_tgt @ _checkpoint(r)).argmax(1) for r in runs])
    accuracy = (ref_predictions == y_ref).double().mean(1)
    eps = 0.5 / min(x_ref.shape[0], x_tgt.shape[0])
    predicted = aline_d(agreement_rates(ref_predictions), agreement_rates(tgt_predictions), accuracy, eps)
    return float((1 - predicted[-1]).clamp(0, 1))


def test_predicts_from_the_third_run_on_what_the_functional_layer_predicts():
    data = _data(0)
    measure = AgreementOnTheLine(max_checkpoints=3)
    metrics = _metrics(measure)
    for run in range(4):
        got = _run(measure, metrics, data, _checkpoint(run))
        if run < 2:
            assert got == {}  # fewer than 3 checkpoints
            continue
        assert set(got) == {"aline", "pool/aline"}
        assert all(0.0 <= e <= 1.0 for e in got.values())
        last = list(range(run + 1))[-3:]  # max_checkpoints
        assert got["aline"] == pytest.approx(_direct(data, last, "train", "val"), rel=1e-12)
        assert got["pool/aline"] == pytest.approx(_direct(data, last, "val", "pool/shifted"), rel=1e-12)


def test_the_history_checkpointed_and_restored_gives_the_same_prediction():
    data = _data(1)
    measure = AgreementOnTheLine(max_samples=50)
    metrics = _metrics(measure)
    for run in range(3):
        _run(measure, metrics, data, _checkpoint(run))
    buffer = io.BytesIO()
    torch.save(measure.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = _run(measure, metrics, data, _checkpoint(3))
    assert set(expected) == {"aline", "pool/aline"}
    resumed = AgreementOnTheLine(max_samples=50)
    resumed.load_state_dict(state)
    assert _run(resumed, _metrics(resumed), data, _checkpoint(3)) == expected  # a resumed fit makes new Metrics
    fresh = AgreementOnTheLine(max_samples=50)
    handmade = {split: PredictionSample(max_samples=50) for split in SPLITS}  # Metrics it did not make
    assert _run(fresh, handmade, data, _checkpoint(3)) == {}


def test_another_sample_count_restarts_the_split_and_an_unlabeled_reference_predicts_nothing():
    data, fewer = _data(2), _data(2, n=100)
    measure = AgreementOnTheLine()
    metrics = _metrics(measure)
    for run in range(3):
        _run(measure, metrics, data, _checkpoint(run))
    pool_only = {**data, "pool/shifted": fewer["pool/shifted"]}
    for run in (3, 4):  # the pool starts afresh
        assert set(_run(measure, metrics, pool_only, _checkpoint(run))) == {"aline"}
    unlabeled = {**pool_only, "train": (data["train"][0], None)}
    assert set(_run(measure, metrics, unlabeled, _checkpoint(5))) == {"pool/aline"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_samples"):
        AgreementOnTheLine(max_samples=0)
    for bad in (2, 3.0, True):
        with pytest.raises(ValueError, match="max_checkpoints"):
            AgreementOnTheLine(max_checkpoints=bad)


def _rank_data(rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    return _data(10 + rank, n=70 - 20 * rank)


def _ddp_predictions(rank: int, world_size: int) -> list[dict[str, float]]:
    measure = AgreementOnTheLine(max_samples=60)
    metrics = _metrics(measure)
    return [_run(measure, metrics, _rank_data(rank), _checkpoint(run)) for run in range(4)]


def test_two_ranks_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_predictions)
    assert per_rank[0] == per_rank[1]  # every rank predicts the same
    assert per_rank[0][3] and per_rank[0][0] == {}
    measure = AgreementOnTheLine(max_samples=60)
    merged = _metrics(measure)
    expected = []
    for run in range(4):
        for split in SPLITS:
            merged[split].reset()
            _feed(measure, merged[split], *_rank_data(0)[split], _checkpoint(run))
            other = PredictionSample(max_samples=60, seed=7919)  # what rank 1 keeps
            _feed(measure, other, *_rank_data(1)[split], _checkpoint(run))
            merged[split].merge_state(other)
        expected.append({})
        for group, ref, target in (("", "train", "val"), ("pool/", "val", "pool/shifted")):
            computed = measure.compute({"train": merged[ref], "val": merged[target]}, NET, Settings())
            expected[-1].update({group + k: float(e.error) for k, e in measure.estimate(computed, REFERENCE).items()})
    for got, want in zip(per_rank[0], expected, strict=True):
        assert got == pytest.approx(want, rel=1e-12)
