"""The active-node Gaussian bound ψ* (Daróczy et al., Theorem 3.2, eq. 2) with the estimator of eq. 6."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens import estimators
from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Estimate, Measure, Reference, Requirement, Settings
from lightning_gensens.metrics.active_node_bound import ActiveNodeBound as ActiveNodeBoundMetric
from lightning_gensens.utilities import relu_network_problem, weight_layers


class ActiveNodeBound(Measure[ActiveNodeBoundMetric]):
    """ψ*(k, μ, σ) of the active-unit counts on probe and validation, from the pre-activations the validation
    forward pass already computes (no extra forward); predicts ψ*_te/ψ*_tr·l_tr in log space (eq. 6).

    Logs ``active_node_bound/{train,val}`` (log ψ*) and ``…/{train,val}_mean_active`` (μ). ReLU networks only.
    """

    name = "active_node_bound"
    relative_cost = 6.0
    requires = Requirement.PREACTIVATIONS | Requirement.RELU

    def check(self, net: nn.Module) -> str | None:
        problem = relu_network_problem(net, self.name)
        if problem is None and not any(isinstance(m, nn.ReLU) for m in net.modules()):
            problem = f"{type(net).__name__} has no hidden nn.ReLU unit whose activity it could count."
        return problem

    def make_metric(self, net: nn.Module, settings: Settings) -> ActiveNodeBoundMetric:
        return ActiveNodeBoundMetric(len(weight_layers(net)))

    def update(self, metric: ActiveNodeBoundMetric, record: Captured, net: nn.Module) -> None:
        metric.update(record.preacts)

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out = {split: value["log_psi"] for split, value in computed.items()}
        out.update({f"{split}_mean_active": value["mu"] for split, value in computed.items()})
        return out

    def estimate(self, computed: Mapping[str, Any], reference: Reference) -> dict[str, Estimate]:
        test, probe = computed["val"]["log_psi"], computed["train"]["log_psi"]
        return {
            self.name: Estimate(
                estimators.log_ratio(test, probe, reference.loss), estimators.log_ratio(test, probe, reference.error)
            )
        }
