"""Epoch-end measuring as a task on Lightning's progress bar."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class EpochEndProgress:
    """A task on the trainer's active progress bar for epoch-end measuring (global rank zero, bar enabled).

    Lightning has no sub-progress API: with the TQDM bar this opens a nested ``Tqdm`` below it, with the Rich bar a
    task on its ``progress``; otherwise every call is a no-op.
    """

    def __init__(self, trainer: Trainer, total: int, description: str = "gensens") -> None:
        self._tqdm: Any = None
        self._rich: Any = None
        bar = trainer.progress_bar_callback
        if not trainer.is_global_zero or bar is None or not getattr(bar, "is_enabled", False):
            return
        if isinstance(bar, TQDMProgressBar):
            self._tqdm = Tqdm(
                total=total,
                desc=description,
                position=2 * bar.process_position + 2,
                leave=False,
                dynamic_ncols=True,
                file=sys.stdout,
            )
        elif isinstance(bar, RichProgressBar) and bar.progress is not None:
            self._rich = (bar.progress, bar.progress.add_task(description, total=total))

    def advance(self) -> None:
        if self._tqdm is not None:
            self._tqdm.update(1)
        elif self._rich is not None:
            self._rich[0].advance(self._rich[1])

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._rich is not None:
            self._rich[0].remove_task(self._rich[1])
