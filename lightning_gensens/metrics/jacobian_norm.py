"""torchmetrics state of the input–output Jacobian norm E‖∂f/∂x‖_F (follow-up paper, l⁴)."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_gensens.functional.jacobian_norm import _jacobian_norm_compute, _jacobian_norm_update
from lightning_gensens.metrics._mean import SampleMean


class JacobianNorm(SampleMean):
    """E_x‖∂f/∂x‖_F over the samples it is updated with (exact, dout vector–Jacobian products per batch).

    ``update(model, x)`` uses ``model`` for that batch only; the metric keeps no reference to it.
    """

    def update(self, model: nn.Module, x: Tensor) -> None:
        self._accumulate(*_jacobian_norm_update(model, x))

    def compute(self) -> Tensor:
        return _jacobian_norm_compute(self.count, self.total)
