"""One Lightning Callback per measure: a :class:`GeneralizationMonitor` of that one measure, under the measure's
CamelCase name, so each measure is a torchmetrics Metric wrapped in a Callback. The callbacks of the built-in
measures are made here from :data:`lightning_gensens.registry.BUILT_IN`."""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from lightning_gensens import measures
from lightning_gensens.callbacks.monitor import GeneralizationMonitor

_MONITOR_ARGS = tuple(
    name for name in inspect.signature(GeneralizationMonitor.__init__).parameters if name not in ("self", "measures")
)
_SHARED = ("seed", "loss_fn")  # settings of the measure; alone, the callback's monitor uses them too


class MeasureCallback(GeneralizationMonitor):
    """A monitor of the one measure :attr:`measure_class`, built from the measure's arguments and the monitor's
    keyword arguments (``probe_size``, ``every_n_epochs``, ``prefix``, …).

    Its shared keys are namespaced by the measure (``<prefix>/<name>/test_loss``), so several measure callbacks in
    one Trainer never share a logged key. Handed to :class:`GeneralizationMonitor` (``measures=[...]``), only its
    measure is used, with its own ``seed`` and ``loss_fn``; monitor settings given to it are refused there.
    """

    measure_class: ClassVar[type[measures.Measure]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        monitor = {k: kwargs.pop(k) for k in _MONITOR_ARGS if k in kwargs and k not in _SHARED}
        measure = self.measure_class(*args, **kwargs)
        shared = {k: kwargs[k] for k in _SHARED if kwargs.get(k) is not None}
        super().__init__(measures=[measure], **monitor, **shared)
        self.monitor_settings = monitor
        self.measure = measure

    def _state_key_parts(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "measure": self.measure.name}

    @property
    def shared_prefix(self) -> str:
        return f"{self.prefix}/{self.measure.name}"


def _summary(measure: type[measures.Measure]) -> str:
    """The first paragraph of the measure's module docstring (it names the paper and its equation), on one line."""
    doc = inspect.getdoc(sys.modules[measure.__module__]) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _measure_callback(measure: type[measures.Measure]) -> type[MeasureCallback]:
    """The :class:`MeasureCallback` of the built-in ``measure``: named as the measure class, bound in this module
    under that name (:data:`CALLBACKS`; so its instances pickle), documented by the measure's paper reference and
    docstring."""

    class Callback(MeasureCallback):
        measure_class = measure

    name = measure.__name__
    Callback.__name__ = Callback.__qualname__ = name
    Callback.__module__ = __name__
    doc = inspect.getdoc(measure) or ""
    Callback.__doc__ = (
        f"Callback of :class:`lightning_gensens.measures.{name}` (``{measure.name}``): {_summary(measure)}\n\n"
        "A :class:`GeneralizationMonitor` of this one measure; it takes the measure's arguments and the monitor's "
        f"keyword arguments (``probe_size``, ``budget``, ``prefix``, …). The measure:\n\n{doc}"
    )
    return Callback


CALLBACKS: dict[str, type[MeasureCallback]] = {
    cls.__name__: _measure_callback(cls) for cls in measures.BUILT_IN_MEASURES
}
"""The callback of every built-in measure, by class name."""
globals().update(CALLBACKS)

if TYPE_CHECKING:  # the callbacks bound above, typed as Any (usable in annotations and as base classes)

    def __getattr__(name: str) -> Any: ...
