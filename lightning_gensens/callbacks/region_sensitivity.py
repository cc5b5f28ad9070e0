"""Callback of the empirical activation-region tangent sensitivity Ŝ with the estimator of Daróczy eq. 7."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric

from lightning_gensens.callbacks.base import Estimate, MeasureCallback, register_measure
from lightning_gensens.callbacks.tangent_sensitivity import region_tangent
from lightning_gensens.capture import Captured
from lightning_gensens.functional.tangent_sensitivity import relu_mlp_layers
from lightning_gensens.metrics.region_sensitivity import RegionSensitivity as RegionSensitivityMetric
from lightning_gensens.utilities import relu_modules


@register_measure
class RegionSensitivity(MeasureCallback):
    """Ŝ(X_te)/Ŝ(X_tr)·l_tr (eq. 7) from the pre-activations of the validation forward pass (no extra forward).

    ``mode="hard"`` weighs regions by their empirical frequency (Ŝ = mean_x T(x)); ``"soft"`` by the sigmoid
    memberships of eq. 4 at ``temperature`` over the patterns seen on probe and validation together. Logs
    ``region_sensitivity/{train,val}`` and the number of distinct activation patterns ``…/{train,val}_patterns``.
    ReLU MLPs only.
    """

    name = "region_sensitivity"
    needs_preactivations = True

    def __init__(self, mode: str = "hard", temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        RegionSensitivityMetric(mode, temperature)  # validates the arguments
        self.mode, self.temperature = mode, temperature

    def check_model(self, net: nn.Module) -> None:
        relu_modules(net, self.name)
        relu_mlp_layers(net)

    def make_metric(self) -> RegionSensitivityMetric:
        return RegionSensitivityMetric(self.mode, self.temperature)

    def update(self, metric: RegionSensitivityMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.preacts, region_tangent(record, net))

    def compute(self, metrics: dict[str, Metric]) -> dict[str, Any]:
        computed = super().compute(metrics)
        if self.mode == "soft":  # weigh both splits over one A+ = train ∪ val patterns (eq. 7)
            train, val = metrics["train"], metrics["val"]
            with train.sync_context(), val.sync_context():
                computed["train"]["soft"] = train.soft(reference=val.patterns())
                computed["val"]["soft"] = val.soft(reference=train.patterns())
        return computed

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        out = {split: value[self.mode] for split, value in computed.items()}
        out.update({f"{split}_patterns": value["patterns"] for split, value in computed.items()})
        return out

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        return super().estimate({split: value[self.mode] for split, value in computed.items()}, train)
