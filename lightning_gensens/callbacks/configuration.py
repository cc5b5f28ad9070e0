"""What the monitor measures and when: resolving its measures, its unlabeled pools, and its schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_gensens.callbacks.keys import predicted
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


def watched(callback: Any, callbacks: Sequence[Any], budgeted: bool) -> bool:
    """Whether another callback watches one of ``callback``'s keys (the ``monitor`` of ``EarlyStopping`` or
    ``ModelCheckpoint``); under a budget (``budgeted``), whose riders then run at every run, said in one info line."""
    prefixes = tuple(f"{namespace}/" for namespace in callback.namespaces())
    monitors = (getattr(other, "monitor", None) for other in callbacks if other is not callback)
    keys = [key for key in monitors if isinstance(key, str) and key.startswith(prefixes)]
    if keys and budgeted:
        rank_zero_info(
            f"{type(callback).__name__}: {', '.join(keys)} watched by another callback, so every validation run "
            "measures the riders, whatever they cost."
        )
    return bool(keys)


def pools(unlabeled: Iterable[Any] | Mapping[str, Iterable[Any]] | None) -> dict[str, Iterable[Any]]:
    """Named unlabeled pools from a loader (named ``unlabeled``) or a ``{name: loader}`` mapping."""
    if unlabeled is None:
        return {}
    named = dict(unlabeled) if isinstance(unlabeled, Mapping) else {"unlabeled": unlabeled}
    for name in named:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"pool names must be non-empty strings without '/', got {name!r}.")
    return named


RECOMMENDED = {"error": "shift_gated", "loss": "shift_gated"}
"""The estimators behind each pool's ``pred_test_error`` and ``pred_test_loss`` where the pools are measured against
the validation data, chosen on benchmarks/prediction.py (results/shift.md): over its shifted pools (natural, label
and corruption shifts) the shift test's estimator, which picks DoC-TS, its label-shift form or the difference of
transport costs by testing the pool's inputs, is the most accurate on both; like the other riders it is fresh at
every validation run. ``cot``, the best under covariate shift alone, fails under label shift, and the
temperature-scaled DoC ``doc_ts`` undershoots covariate shift."""

RECOMMENDED_FROM_PROBE = {"error": "difference_of_confidences", "loss": "difference_of_confidences"}
"""The same where the pools are measured against the training probe (no labelled validation run): a temperature
fitted on data the network fits (nearly) without error is too low, so DoC on the plain softmax predicts better
(benchmarks/prediction.py --probe-reference, results/shift_probe.md: error skill +0.32 and loss +0.16 over its
shifted pools, against ``doc_ts``'s +0.17 and +0.08)."""


class Recommendation(dict[str, dict[str, str]]):
    """The estimators behind each pool's recommended keys per reference split (``"val"``, ``"train"``), each a
    ``{"error": …, "loss": …}``; its ``str`` says whose predictions the keys carry."""

    def __str__(self) -> str:
        val, train = self["val"], self["train"]
        text = f"{val['error']}'s prediction and {predicted('loss')} {val['loss']}'s"
        if train != val:
            text += (
                f"; against the training probe (no labelled validation run) {train['error']}'s and {train['loss']}'s"
            )
        return text + " (`recommend=`)"


def recommended(recommend: Mapping[str, str] | None) -> Recommendation:
    """The recommended estimators per reference split (``"val"``: :data:`RECOMMENDED`, ``"train"``:
    :data:`RECOMMENDED_FROM_PROBE`) with the user's choices (``{"error": …, "loss": …}``) in place for both."""
    chosen = Recommendation(val=dict(RECOMMENDED), train=dict(RECOMMENDED_FROM_PROBE))
    for kind, estimator in (recommend or {}).items():
        if kind not in RECOMMENDED:
            raise ValueError(f"recommend takes the keys {sorted(RECOMMENDED)}, got {kind!r}.")
        if not isinstance(estimator, str) or not estimator:
            raise ValueError(f"recommend[{kind!r}] must be an estimator's name, got {estimator!r}.")
        for choice in chosen.values():
            choice[kind] = estimator
    return chosen


class Schedule:
    """When the monitor measures: at every ``every_n``-th validation run of a fit, however the Trainer schedules them
    (at the end of an epoch, every ``val_check_interval`` batches, by time; the sanity check is skipped and
    ``trainer.validate()`` always measures), or, in an epoch without a validation run, at the end of the training
    epoch when there are unlabeled pools. ``runs`` counts the opportunities, so ``every_n`` counts them and survives
    a resume."""

    def __init__(self, every_n: int) -> None:
        self.every_n = every_n
        self.runs = 0

    def at_validation(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
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
    ) -> int | None:
        """Say at fit start, once, when nothing will be measured, and when a time-ratio estimator can never log;
        return how many runs this fit will measure at most (None where the Trainer cannot tell)."""
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
            return 0
        if why:
            rank_zero_info(f"{owner}: {why}; the unlabeled pools are measured at the end of each training epoch.")
            left = _epochs_left(trainer)
        else:
            left = _validation_runs_left(trainer)
            if math.isinf(trainer.num_training_batches) and trainer.val_check_batch == math.inf:
                rank_zero_warn(
                    f"{owner}: the Trainer validates at the end of each epoch only, and the training loader has no "
                    "length: if it never ends, nothing is measured. Validate every k batches with "
                    "`Trainer(val_check_interval=k)`."
                )
        if left is None:
            return None
        measured = (self.runs + left) // self.every_n - self.runs // self.every_n
        if measured == 0:
            rank_zero_warn(
                f"{owner} will measure nothing: this fit has at most {left} "
                f"{'training epochs' if why else 'validation runs'} left, and it measures every "
                f"{self.every_n}-th (`every_n_epochs`)."
            )
            return 0
        time_ratio = [m.name for m in measures if m.needs(Requirement.WEIGHT_ONLY)]
        if time_ratio and measured < 2:
            rank_zero_warn(
                f"{owner}: {time_ratio} compare consecutive measured runs, but this fit measures fewer than two "
                "times; their estimators will not log."
            )
        return measured

    def state_dict(self) -> dict[str, int]:
        return {"runs": self.runs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.runs = int(state.get("runs", 0))


def _epochs_left(trainer: Trainer) -> int | None:
    """The training epochs the fit has left; None without ``max_epochs``."""
    max_epochs = trainer.max_epochs
    return None if max_epochs is None or max_epochs < 0 else max_epochs - trainer.current_epoch


def _validation_runs_left(trainer: Trainer) -> int | None:
    """At most how many validation runs the fit has left; None where it cannot tell (validation by time, training
    without end, or validation only at the end of an epoch of a training loader without length)."""
    interval, batches = trainer.val_check_batch, trainer.num_training_batches
    if interval is None or not batches or (math.isinf(interval) and math.isinf(batches)):
        return None
    bounds = []
    if trainer.max_steps >= 0:  # validation every `interval` batches at most, or at the end of each epoch
        left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
        bounds.append(left // int(min(interval, batches)))
    epochs = _epochs_left(trainer)
    if epochs is not None and not math.isinf(batches):
        every = trainer.check_val_every_n_epoch
        if every is None:  # every `interval` batches of the whole fit
            bounds.append(epochs * int(batches) // int(interval))
        else:  # every `interval` batches of every `every`-th epoch
            epochs = (trainer.current_epoch + epochs) // every - trainer.current_epoch // every
            bounds.append(int(batches) // int(min(interval, batches)) * epochs)
    return min(bounds, default=None)
