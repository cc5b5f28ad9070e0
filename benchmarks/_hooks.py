"""Timing a Lightning callback's hooks: the wall time of the validation runs and of chosen hooks of a callback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class ValidationClock(Callback):
    """Wall time from each ``on_validation_start`` to its ``on_validation_end``: first among the callbacks, it
    holds every monitor hook of a validation run and Lightning's handling of what was logged there."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start


def time_hooks(callback: Callback, hooks: Iterable[str]) -> dict[str, float]:
    """Wrap the callback's ``hooks`` so that each accumulates its wall time in the returned dict (Lightning looks a
    hook up on the instance, so it calls the wrapper)."""
    seconds: dict[str, float] = {}
    for hook in hooks:
        seconds[hook] = 0.0
        method = getattr(callback, hook)

        def wrapper(*args: Any, _method: Callable[..., Any] = method, _hook: str = hook, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                seconds[_hook] += time.perf_counter() - start

        setattr(callback, hook, wrapper)
    return seconds
