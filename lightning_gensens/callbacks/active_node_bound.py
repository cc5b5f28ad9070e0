"""Callback of the active-node Gaussian bound with the estimator of Daróczy eq. 6."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.callbacks.base import Estimate, MeasureCallback, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.active_node_bound import ActiveNodeBound as ActiveNodeBoundMetric
from lightning_gensens.utilities import relu_modules, weight_layers


@register_measure
class ActiveNodeBound(MeasureCallback):
    """ψ*(k, μ, σ) of the active-unit counts on probe and validation, from the pre-activations the validation
    forward pass already computes (no extra forward); predicts ψ*_te/ψ*_tr·l_tr in log space (eq. 6).

    Logs ``active_node_bound/{train,val}`` (log ψ*) and ``…/{train,val}_mean_active`` (μ). ReLU networks only.
    """

    name = "active_node_bound"
    needs_preactivations = True

    def check_model(self, net: nn.Module) -> None:
        relu_modules(net, self.name)
        self._num_layers = len(weight_layers(net))

    def make_metric(self) -> ActiveNodeBoundMetric:
        return ActiveNodeBoundMetric(self._num_layers)

    def update(self, metric: ActiveNodeBoundMetric, record: Captured, net: nn.Module) -> None:
        metric.update(record.preacts)

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        out = {split: value["log_psi"] for split, value in computed.items()}
        out.update({f"{split}_mean_active": value["mu"] for split, value in computed.items()})
        return out

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        test, probe = computed["val"]["log_psi"], computed["train"]["log_psi"]
        return {
            self.name: Estimate(
                estimators.log_ratio(test, probe, train["loss"]), estimators.log_ratio(test, probe, train["error"])
            )
        }
