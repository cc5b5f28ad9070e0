"""Lightning callbacks: the monitor that runs every measure, and one callback per built-in measure (made from
:data:`lightning_gensens.registry.BUILT_IN`, under the measure's class name)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_gensens.callbacks.measure_callbacks import CALLBACKS, MeasureCallback
from lightning_gensens.callbacks.monitor import GeneralizationMonitor

globals().update(CALLBACKS)

if TYPE_CHECKING:  # the callbacks bound above, typed as Any (usable in annotations and as base classes)

    def __getattr__(name: str) -> Any: ...


__all__ = ["GeneralizationMonitor", "MeasureCallback", *CALLBACKS]
