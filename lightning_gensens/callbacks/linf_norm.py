"""Callback of the layer-wise l∞ norm bound with the estimators of Daróczy eq. 5 and §5 (log-norm)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.callbacks.base import Estimate, MeasureCallback, TimeRatioMixin, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.linf_norm import LinfNorm as LinfNormMetric


@register_measure
class LinfNorm(TimeRatioMixin, MeasureCallback):
    """Sens¹ of Theorem 3.1 (eq. 1); predicts test loss from its change between epochs (eq. 5 and log-norm).

    Logs log Sens¹ as ``linf_norm/train`` and ``linf_norm/val`` (equal: the bound depends on the weights only),
    ``linf_norm/log_prod`` (log ∏w_i), and the estimators
    ``linf_norm`` and ``linf_lognorm`` from the second measured epoch on.
    """

    name = "linf_norm"
    weight_only = True

    def make_metric(self) -> LinfNormMetric:
        return LinfNormMetric()

    def update_weights(self, metric: LinfNormMetric, net: nn.Module, example: Captured) -> None:
        metric.update(net, input_dim=example.x[0].numel())

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        value = computed["value"]
        return {"train": value["log_bound"], "val": value["log_bound"], "log_prod": value["log_prod"]}

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        current = computed["value"]
        previous = self._advance(current)
        if previous is None:
            return {}
        return {
            "linf_norm": Estimate(
                estimators.linf_norm(previous["log_prod"], current["log_prod"], train["loss"]),
                estimators.linf_norm(previous["log_prod"], current["log_prod"], train["error"]),
            ),
            "linf_lognorm": Estimate(
                estimators.linf_lognorm(previous["log_bound"], current["log_bound"], train["loss"]),
                estimators.linf_lognorm(previous["log_bound"], current["log_bound"], train["error"]),
            ),
        }
