"""The mean tangent sample sensitivity E_x T(x) (Daróczy et al., Definition 3.1) with the ratio estimator."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from lightning_gensens.capture import Captured
from lightning_gensens.functional.tangent_sensitivity import supports_closed_form, tangent_sensitivity_from_masks
from lightning_gensens.measures.base import Measure, Requirement, Settings
from lightning_gensens.metrics.tangent_sensitivity import TangentSensitivity as TangentSensitivityMetric
from lightning_gensens.utilities import relu_network_problem

_NOT_AN_MLP = (
    "{name}: the exact T(x) holds for ReLU MLPs made of Linear, ReLU, Flatten, Dropout and Identity modules; pass "
    "TangentSensitivity(method='hutchinson') to estimate T(x) for {model}."
)


def region_tangent(record: Captured, net: nn.Module) -> Tensor:
    """T(A(x)) of a captured ReLU-MLP batch from its activation masks, computed once and shared by measures."""
    if "tangent" not in record.cache:
        record.cache["tangent"] = tangent_sensitivity_from_masks(net, [h > 0 for h in record.preacts])
    return record.cache["tangent"]


def relu_mlp_problem(net: nn.Module, name: str) -> str | None:
    """Why ``net`` is not a ReLU MLP with a closed-form T(x), or None."""
    problem = relu_network_problem(net, name)
    if problem is None and not any(isinstance(m, nn.ReLU) for m in net.modules()):
        problem = f"{name}: {type(net).__name__} has no hidden nn.ReLU unit (one activation region)."
    if problem is None and not supports_closed_form(net):
        problem = _NOT_AN_MLP.format(name=name, model=type(net).__name__)
    return problem


class TangentSensitivity(Measure[TangentSensitivityMetric]):
    """E_x T(x) on probe and validation; predicts T_te/T_tr·l_tr.

    Exact for ReLU MLPs, from the activation masks the validation forward pass already computes. Other
    differentiable networks need ``method="hutchinson"`` (an unbiased estimate, costly: dout reverse passes per
    probe; its standard error is logged as ``…/{train,val}_stderr``); with the default ``"auto"`` the monitor
    skips them.
    """

    name = "tangent_sensitivity"
    relative_cost = 25.0

    def __init__(self, method: str = "auto", n_probes: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        TangentSensitivityMetric(method, n_probes)  # validates the arguments
        self.method, self.n_probes = method, n_probes

    def requirements(self) -> Requirement:
        if self.method == "hutchinson":
            return Requirement.NONE
        return Requirement.PREACTIVATIONS | Requirement.RELU  # the exact path reads the captured masks

    def check(self, net: nn.Module) -> str | None:
        return None if self.method == "hutchinson" else relu_mlp_problem(net, self.name)

    def describe(self, net: nn.Module) -> str | None:
        if self.method != "auto":
            return None
        return f"{self.name}: method='auto' uses the exact closed form from the activation masks (a ReLU MLP)."

    def make_metric(self, net: nn.Module, settings: Settings) -> TangentSensitivityMetric:
        return TangentSensitivityMetric(self.method, self.n_probes, seed=settings.seed)

    def update(self, metric: TangentSensitivityMetric, record: Captured, net: nn.Module) -> None:
        if self.method == "hutchinson":
            metric.update(net, record.x)
        else:
            metric.update(net, record.x, tangent=region_tangent(record, net))

    def values(self, computed: Mapping[str, Any]) -> dict[str, Tensor]:
        out = {split: value["mean"] for split, value in computed.items()}
        if self.method == "hutchinson":
            out.update({f"{split}_stderr": value["stderr"] for split, value in computed.items()})
        return out

    def ratio_values(self, computed: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        return computed["val"]["mean"], computed["train"]["mean"]
