"""Logits, labels and a two-split feed for the measures that read a sample of captured logits
(:class:`~lightning_gensens.measures._logits.LogitSampleMeasure`)."""

import torch
from torch import nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures import Reference, Settings

NET = nn.Linear(3, 4)


def logit_data(seed: int, n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 4] float64 logits and labels that agree with their argmax 60% of the time (plus chance)."""
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, 4, generator=g, dtype=torch.float64)
    labels = torch.where(torch.rand(n, generator=g) < 0.6, logits.argmax(1), torch.randint(0, 4, (n,), generator=g))
    return logits, labels


def feed(measure, metric, logits, labels, batch: int = 16) -> None:
    for start in range(0, logits.shape[0], batch):
        y = None if labels is None else labels[start : start + batch]
        rows = logits[start : start + batch]
        measure.update(metric, Captured(x=rows[:, :3].float(), logits=rows, y=y), NET)  # inputs: one row per sample


def reference(loss: float = 0.9, error: float = 0.3) -> Reference:
    return Reference(torch.tensor(loss, dtype=torch.float64), torch.tensor(error, dtype=torch.float64), 4)


def estimate(measure, ref_logits, ref_labels, target, ref: Reference):
    """The measure's values and estimates with (``ref_logits``, ``ref_labels``) as reference and unlabeled
    ``target``."""
    metrics = {split: measure.make_metric(NET, Settings()) for split in ("train", "val")}
    feed(measure, metrics["train"], ref_logits, ref_labels)
    feed(measure, metrics["val"], target, None)
    computed = measure.compute(metrics, NET, Settings())
    return measure.values(computed), measure.estimate(computed, ref)


def _flat(estimates) -> dict[str, float]:
    return {
        f"{name}/{kind}": float(value)
        for name, e in estimates.items()
        for kind, value in (("loss", e.loss), ("error", e.error))
        if value is not None
    }


def _rank_split(rank: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What rank ``rank`` of two holds of a split: reference (``train``) and target (``val``) of other sizes."""
    if split == "train":
        return logit_data(10 + rank, 50 + 7 * rank, 3.0)
    return logit_data(20 + rank, 40 - 9 * rank, 1.0)


def rank_estimates(measure, rank: int) -> dict[str, float]:
    """``<estimator>/<loss|error>`` of ``measure`` fed rank ``rank``'s share (run under DDP: the metrics sync)."""
    (ref, labels), (target, _) = _rank_split(rank, "train"), _rank_split(rank, "val")
    return _flat(estimate(measure, ref, labels, target, reference())[1])


def union_estimates(measure) -> dict[str, float]:
    """What one process computes from the samples two ranks keep (the measure's ``max_samples`` each, their seeds)
    merged."""
    merged = {}
    for split in ("train", "val"):
        parts = []
        for rank in range(2):
            metric = measure.make_metric(NET, Settings(seed=7919 * rank))  # the sample rank `rank` keeps
            logits, labels = _rank_split(rank, split)
            feed(measure, metric, logits, labels if split == "train" else None)
            parts.append(metric)
        parts[0].merge_state(parts[1])
        merged[split] = parts[0]
    return _flat(measure.estimate(measure.compute(merged, NET, Settings()), reference()))
