"""The empirical activation-region tangent sensitivity Ŝ (Daróczy et al., eq. 3, 4) with the estimator of eq. 7."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Measure, Requirement, Settings
from lightning_gensens.measures.tangent_sensitivity import region_tangent, relu_mlp_problem
from lightning_gensens.metrics.region_sensitivity import RegionSensitivity as RegionSensitivityMetric


class RegionSensitivity(Measure[RegionSensitivityMetric]):
    """Ŝ(X_te)/Ŝ(X_tr)·l_tr (eq. 7) from the pre-activations of the validation forward pass (no extra forward).

    ``mode="hard"`` weighs regions by their empirical frequency (Ŝ = mean_x T(x)); ``"soft"`` by the sigmoid
    memberships of eq. 4 at ``temperature`` over the patterns seen on probe and validation together. Logs
    ``region_sensitivity/{train,val}`` and the number of distinct activation patterns ``…/{train,val}_patterns``.
    ReLU MLPs only.
    """

    name = "region_sensitivity"
    relative_cost = 25.0
    requires = Requirement.PREACTIVATIONS | Requirement.RELU

    def __init__(self, mode: str = "hard", temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        RegionSensitivityMetric(mode, temperature)  # validates the arguments
        self.mode, self.temperature = mode, temperature

    def check(self, net: nn.Module) -> str | None:
        return relu_mlp_problem(net, self.name)

    def make_metric(self, net: nn.Module, settings: Settings) -> RegionSensitivityMetric:
        return RegionSensitivityMetric(self.mode, self.temperature)

    def update(self, metric: RegionSensitivityMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.preacts, region_tangent(record, net))

    def compute(
        self, metrics: Mapping[str, RegionSensitivityMetric], net: nn.Module, settings: Settings
    ) -> dict[str, Any]:
        computed = super().compute(metrics, net, settings)
        if self.mode == "soft":  # weigh both splits over one A+ = train ∪ val patterns (eq. 7)
            train, val = metrics["train"], metrics["val"]
            with train.sync_context(), val.sync_context():
                computed["train"]["soft"] = train.soft(reference=val.patterns())
                computed["val"]["soft"] = val.soft(reference=train.patterns())
        return computed

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out = {split: value[self.mode] for split, value in computed.items()}
        out.update({f"{split}_patterns": value["patterns"] for split, value in computed.items()})
        return out

    def ratio_values(self, computed: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        return computed["val"][self.mode], computed["train"][self.mode]
