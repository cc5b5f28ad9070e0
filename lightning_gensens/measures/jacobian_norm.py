"""The input–output Jacobian norm E‖∂f/∂x‖_F with the ratio estimator (the follow-up paper's l⁴)."""

from __future__ import annotations

from torch import nn

from lightning_gensens.capture import Captured
from lightning_gensens.measures.base import Measure, Settings
from lightning_gensens.metrics.jacobian_norm import JacobianNorm as JacobianNormMetric


class JacobianNorm(Measure[JacobianNormMetric]):
    """E‖∂f/∂x‖_F on the probe and validation; predicts m(X_te)/m(X_tr)·l_tr. Any differentiable network."""

    name = "jacobian_norm"
    relative_cost = 20.0

    def make_metric(self, net: nn.Module, settings: Settings) -> JacobianNormMetric:
        return JacobianNormMetric()

    def update(self, metric: JacobianNormMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.x)
