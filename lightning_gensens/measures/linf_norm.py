"""The layer-wise l∞ norm bound Sens¹ (Daróczy et al., Theorem 3.1, eq. 1) with the estimators of eq. 5 and §5."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import WEIGHTS, Estimate, Reference, Settings, TimeRatioMeasure
from lightning_gensens.metrics.linf_norm import LinfNorm as LinfNormMetric


class LinfNorm(TimeRatioMeasure[LinfNormMetric]):
    """Sens¹ from the weights; predicts the test loss from its change between runs (eq. 5 and log-norm).

    Logs log Sens¹ as ``linf_norm/train`` and ``linf_norm/val`` (equal: the bound depends on the weights only) and
    ``linf_norm/log_prod`` (log ∏w_i); the estimators ``linf_norm`` and ``linf_lognorm`` from the second run on.
    """

    name = "linf_norm"
    relative_cost = 2.0  # cheap, but not needed fresh at every run: planned by the budget, not a rider

    def make_metric(self, net: nn.Module, settings: Settings) -> LinfNormMetric:
        return LinfNormMetric()

    def update(self, metric: LinfNormMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, input_dim=record.x[0].numel())

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        value = computed[WEIGHTS]
        return {"train": value["log_bound"], "val": value["log_bound"], "log_prod": value["log_prod"]}

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        current = computed[WEIGHTS]
        previous = self.previous.advance(current)
        if previous is None:
            return {}
        log_prod, log_bound = (previous["log_prod"], current["log_prod"]), (previous["log_bound"], current["log_bound"])
        return {
            "linf_norm": Estimate(
                estimators.linf_norm(*log_prod, reference.loss), estimators.linf_norm(*log_prod, reference.error)
            ),
            "linf_lognorm": Estimate(
                estimators.linf_lognorm(*log_bound, reference.loss),
                estimators.linf_lognorm(*log_bound, reference.error),
            ),
        }
