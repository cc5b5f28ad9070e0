"""What the monitor measures and when: resolving its measures, its unlabeled pools, and its schedule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_gensens.measures import MEASURES, Measure, Requirement


def resolve_measures(measures: Sequence[Any] | None) -> list[Measure[Any]]:
    """Measures from names, :class:`Measure` instances or single-measure callbacks (their ``measure``); each once.
    A measure callback carrying monitor settings is refused: the monitor would ignore them."""
    resolved: list[Measure[Any]] = []
    for m in list(MEASURES) if measures is None else measures:
        if isinstance(m, str):
            if m not in MEASURES:
                raise ValueError(f"unknown measure {m!r}; available: {sorted(MEASURES)}.")
            resolved.append(MEASURES[m]())
        elif isinstance(m, Measure):
            resolved.append(m)
        elif isinstance(getattr(m, "measure", None), Measure):
            if m.monitor_settings:
                raise ValueError(
                    f"{sorted(m.monitor_settings)} of {type(m).__name__} are settings of a monitor, which "
                    "GeneralizationMonitor would ignore: set them on GeneralizationMonitor instead."
                )
            resolved.append(m.measure)
        else:
            raise TypeError(f"measures must be names, Measure instances or measure callbacks, got {type(m).__name__}.")
    names = [m.name for m in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"each measure may be given once, got {names}.")
    return resolved


def check_namespaces(callback: Any, callbacks: Sequence[Any]) -> None:
    """Refuse two gensens callbacks that would log under the same keys."""
    for other in callbacks:
        if other is not callback and hasattr(other, "namespaces") and hasattr(other, "measures"):
            shared = callback.namespaces() & other.namespaces()
            if shared:
                raise ValueError(
                    f"{type(callback).__name__} and {type(other).__name__} would both log under {sorted(shared)}: "
                    "give one of them another `prefix=`."
                )


def pools(unlabeled: Iterable[Any] | Mapping[str, Iterable[Any]] | None) -> dict[str, Iterable[Any]]:
    """Named unlabeled pools from a loader (named ``unlabeled``) or a ``{name: loader}`` mapping."""
    if unlabeled is None:
        return {}
    named = dict(unlabeled) if isinstance(unlabeled, Mapping) else {"unlabeled": unlabeled}
    for name in named:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"pool names must be non-empty strings without '/', got {name!r}.")
    return named


RECOMMENDED = {"error": "cot", "loss": "transport_loss"}
"""The estimators behind each pool's ``pred_test_error`` and ``pred_test_loss`` (chosen on benchmarks/prediction.py:
the best mean skill over trivial under shift)."""


def recommended(recommend: Mapping[str, str] | None) -> dict[str, str]:
    """:data:`RECOMMENDED` with the user's choices (``{"error": …, "loss": …}``) in place."""
    chosen = dict(RECOMMENDED)
    for kind, estimator in (recommend or {}).items():
        if kind not in RECOMMENDED:
            raise ValueError(f"recommend takes the keys {sorted(RECOMMENDED)}, got {kind!r}.")
        if not isinstance(estimator, str) or not estimator:
            raise ValueError(f"recommend[{kind!r}] must be an estimator's name, got {estimator!r}.")
        chosen[kind] = estimator
    return chosen


class Schedule:
    """When the monitor measures: at the end-of-epoch validation run of every ``every_n``-th epoch that validates
    (the sanity check and validation runs inside an epoch are skipped; ``trainer.validate()`` always measures), or,
    in an epoch without a validation run, at the end of the training epoch when there are unlabeled pools. ``runs``
    counts the opportunities, so ``every_n`` counts validation runs and survives a resume."""

    def __init__(self, every_n: int) -> None:
        self.every_n = every_n
        self.runs = 0

    def at_validation(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return False  # val_check_interval < 1: measure once per epoch, at its last validation run
        return self._count()

    def at_train_epoch_end(self, trainer: Trainer) -> bool:
        return self._count()

    def _count(self) -> bool:
        self.runs += 1
        return self.runs % self.every_n == 0

    def check(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        has_pools: bool,
        measures: Sequence[Measure[Any]],
        owner: str,
    ) -> None:
        """Say at fit start, once, when nothing will be measured, and when a time-ratio estimator can never log."""
        if not is_overridden("validation_step", pl_module):
            why = f"{type(pl_module).__name__} has no validation_step"
        elif trainer.limit_val_batches == 0:
            why = "limit_val_batches=0"
        else:
            why = ""
        if why and not has_pools:
            rank_zero_warn(
                f"{owner} will measure nothing: {why} and there is no unlabeled pool (pass `unlabeled=` or define "
                "`unlabeled_dataloader()` on the datamodule)."
            )
            return
        if why:
            rank_zero_info(f"{owner}: {why}; the unlabeled pools are measured at the end of each training epoch.")
        time_ratio = [m.name for m in measures if m.needs(Requirement.WEIGHT_ONLY)]
        every = 1 if why else (trainer.check_val_every_n_epoch or 1)
        max_epochs = trainer.max_epochs or -1
        if time_ratio and 0 < max_epochs < 2 * every * self.every_n + self.runs * every:
            rank_zero_warn(
                f"{owner}: {time_ratio} compare consecutive measured runs, but with max_epochs={trainer.max_epochs} "
                f"this fit measures fewer than two times; their estimators will not log."
            )

    def state_dict(self) -> dict[str, int]:
        return {"runs": self.runs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.runs = int(state.get("runs", 0))
