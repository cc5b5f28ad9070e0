"""lightning_gensens: predicted versus actual test loss from sensitivity measures, logged while a network trains.

Names are imported on first use, so ``lightning_gensens.functional`` and ``lightning_gensens.metrics`` load without
Lightning. The callback of every built-in measure (:data:`lightning_gensens.registry.BUILT_IN`) is exported under its
class name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_gensens.registry import BUILT_IN_NAMES

__version__ = "0.2.0"

_EXPORTS = {
    "GeneralizationMonitor": "lightning_gensens.callbacks",
    "MeasureCallback": "lightning_gensens.callbacks",
    **dict.fromkeys(BUILT_IN_NAMES, "lightning_gensens.callbacks"),
    "Measure": "lightning_gensens.measures",
    "register_measure": "lightning_gensens.measures",
    "RankedModel": "lightning_gensens.ranking",
    "rank_architectures": "lightning_gensens.ranking",
}

if TYPE_CHECKING:  # the exports other than the measure callbacks, which `__getattr__` types as Any
    from lightning_gensens.callbacks import GeneralizationMonitor as GeneralizationMonitor
    from lightning_gensens.callbacks import MeasureCallback as MeasureCallback
    from lightning_gensens.measures import Measure as Measure
    from lightning_gensens.measures import register_measure as register_measure
    from lightning_gensens.ranking import RankedModel as RankedModel
    from lightning_gensens.ranking import rank_architectures as rank_architectures


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_gensens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]
