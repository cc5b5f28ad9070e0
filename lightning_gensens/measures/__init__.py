"""Measures as plug-ins: one module per measure, each a :class:`Measure` (not a Callback) that the monitor runs.

The built-in measures are declared once, in :data:`lightning_gensens.registry.BUILT_IN`; this package imports them
from there and exports each under its class name. :data:`MEASURES` maps the name of every measure the monitor runs
by default to its class; :func:`register_measure` adds one (a measure can also be handed to the monitor as an
instance without registering it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_gensens.measures.base import (
    Estimate,
    LossFn,
    Measure,
    PreviousValues,
    Reference,
    Requirement,
    Settings,
    TimeRatioMeasure,
)
from lightning_gensens.registry import BUILT_IN


def _load(module: str, name: str) -> type[Measure[Any]]:
    cls = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    if not (isinstance(cls, type) and issubclass(cls, Measure)):
        raise TypeError(f"lightning_gensens.registry names {module}.{name}, which is not a Measure subclass.")
    return cls


BUILT_IN_MEASURES: tuple[type[Measure[Any]], ...] = tuple(_load(module, name) for module, name in BUILT_IN)
"""The classes of :data:`lightning_gensens.registry.BUILT_IN`, in its order."""
globals().update({cls.__name__: cls for cls in BUILT_IN_MEASURES})

if TYPE_CHECKING:
    # the classes bound above, typed as Any (usable in annotations and as base classes)
    def __getattr__(name: str) -> Any: ...

    # inside an import cycle mypy leaves a name read through `__getattr__` unresolved (python/mypy#5345), as is
    # `callbacks.reporting`'s import of Trivial: that one is bound statically
    from lightning_gensens.measures.trivial import Trivial as Trivial


MEASURES: dict[str, type[Measure[Any]]] = {cls.name: cls for cls in BUILT_IN_MEASURES}


def register_measure(cls: type[Measure]) -> type[Measure]:
    """Add ``cls`` to the measures :class:`~lightning_gensens.GeneralizationMonitor` runs by default (usable as a
    class decorator); a name already taken is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Measure)):
        raise TypeError(f"register_measure takes a Measure subclass, got {cls!r}.")
    if cls.name in MEASURES:
        raise ValueError(f"a measure named {cls.name!r} is already registered ({MEASURES[cls.name].__name__}).")
    MEASURES[cls.name] = cls
    return cls


__all__ = [
    "BUILT_IN_MEASURES",
    "MEASURES",
    "Estimate",
    "LossFn",
    "Measure",
    "PreviousValues",
    "Reference",
    "Requirement",
    "Settings",
    "TimeRatioMeasure",
    "register_measure",
    *(cls.__name__ for cls in BUILT_IN_MEASURES),
]
