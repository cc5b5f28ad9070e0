"""Callback of the mean tangent sample sensitivity E_x T(x) with the ratio estimator (Daróczy et al.)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_gensens.callbacks.base import Estimate, MeasureCallback, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.functional.tangent_sensitivity import relu_mlp_layers, tangent_sensitivity_from_masks
from lightning_gensens.metrics.tangent_sensitivity import TangentSensitivity as TangentSensitivityMetric
from lightning_gensens.utilities import relu_modules


def region_tangent(record: Captured, net: nn.Module) -> Tensor:
    """T(A(x)) of a captured ReLU-MLP batch from its activation masks, computed once and shared by measures."""
    if "tangent" not in record.cache:
        record.cache["tangent"] = tangent_sensitivity_from_masks(net, [h > 0 for h in record.preacts])
    return record.cache["tangent"]


@register_measure
class TangentSensitivity(MeasureCallback):
    """E_x T(x) on probe and validation; predicts T_te/T_tr·l_tr.

    Exact for ReLU MLPs, from the activation masks the validation forward pass already computes. Other
    differentiable networks need ``method="hutchinson"`` (an unbiased estimate, costly: dout reverse passes per
    probe; its standard error is logged as ``…/{train,val}_stderr``); with the default ``"auto"`` the monitor
    skips them.
    """

    name = "tangent_sensitivity"

    def __init__(self, method: str = "auto", n_probes: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        TangentSensitivityMetric(method, n_probes)  # validates the arguments
        self.method, self.n_probes = method, n_probes

    def check_model(self, net: nn.Module) -> None:
        super().check_model(net)
        self.needs_preactivations = self.method != "hutchinson"  # the exact path reads the captured masks
        if self.needs_preactivations:
            try:
                relu_mlp_layers(net)
            except ValueError as err:
                raise ValueError(
                    f"{self.name}: {err} Pass TangentSensitivity(method='hutchinson') to estimate "
                    "T(x) for this network."
                ) from err
            relu_modules(net, self.name)

    def make_metric(self) -> TangentSensitivityMetric:
        return TangentSensitivityMetric(self.method, self.n_probes, seed=self.seed)

    def update(self, metric: TangentSensitivityMetric, record: Captured, net: nn.Module) -> None:
        if self.needs_preactivations:
            metric.update(net, record.x, tangent=region_tangent(record, net))
        else:
            metric.update(net, record.x)

    def values(self, computed: dict[str, Any]) -> dict[str, Tensor]:
        out = {split: value["mean"] for split, value in computed.items()}
        if self.method == "hutchinson":
            out.update({f"{split}_stderr": value["stderr"] for split, value in computed.items()})
        return out

    def estimate(self, computed: dict[str, Any], train: dict[str, Tensor]) -> dict[str, Estimate]:
        return super().estimate({split: value["mean"] for split, value in computed.items()}, train)
