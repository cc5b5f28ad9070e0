"""Callback of the input–output Jacobian norm with the ratio estimator (follow-up paper, l⁴)."""

from __future__ import annotations

from torch import nn

from lightning_gensens.callbacks.base import MeasureCallback, register_measure
from lightning_gensens.capture import Captured
from lightning_gensens.metrics.jacobian_norm import JacobianNorm as JacobianNormMetric


@register_measure
class JacobianNorm(MeasureCallback):
    """E‖∂f/∂x‖_F on the probe and validation; predicts m(X_te)/m(X_tr)·l_tr. Any differentiable network."""

    name = "jacobian_norm"

    def make_metric(self) -> JacobianNormMetric:
        return JacobianNormMetric()

    def update(self, metric: JacobianNormMetric, record: Captured, net: nn.Module) -> None:
        metric.update(net, record.x)
