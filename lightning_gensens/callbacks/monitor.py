"""GeneralizationMonitor: every applicable measure in one callback, one probe and one capture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_gensens.callbacks.base import MEASURES, GensensCallback, MeasureCallback


class GeneralizationMonitor(GensensCallback):
    """Logs, every validation epoch, each measure's predicted test loss beside the actual one.

    Args:
        measures: names (see ``lightning_gensens.callbacks.MEASURES``) or configured measure callbacks. ``None``
            runs every registered measure defined for the model and skips the others with one info line; a
            measure named explicitly that is not defined for the model raises its error.
        **kwargs: probe and logging settings of :class:`~lightning_gensens.callbacks.base.GensensCallback`.
    """

    def __init__(self, measures: Sequence[str | MeasureCallback] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._explicit = measures is not None
        chosen = list(MEASURES) if measures is None else measures
        self._all: list[MeasureCallback] = []
        for m in chosen:
            if isinstance(m, str):
                if m not in MEASURES:
                    raise ValueError(f"unknown measure {m!r}; available: {sorted(MEASURES)}.")
                m = MEASURES[m](seed=self.seed)
            elif not isinstance(m, MeasureCallback):
                raise TypeError(f"measures must be names or MeasureCallback instances, got {type(m).__name__}.")
            self._all.append(m)
        names = [m.name for m in self._all]
        if len(set(names)) != len(names):
            raise ValueError(f"each measure may be given once, got {names}.")
        self._enabled = list(self._all)

    def _measures(self) -> list[MeasureCallback]:
        return self._enabled

    @property
    def state_key(self) -> str:
        # the configured measures, not those enabled for the model in setup: the key must not change with it
        return self._generate_state_key(prefix=self.prefix, measures=tuple(m.name for m in self._all))

    def _select_measures(self, net: nn.Module) -> None:
        if self._explicit:
            return super()._select_measures(net)
        self._enabled = []
        for m in self._all:
            try:
                self._check_measure(m, net)
            except ValueError as err:
                rank_zero_info(f"GeneralizationMonitor: skipping {m.name}: {err}")
            else:
                self._enabled.append(m)
