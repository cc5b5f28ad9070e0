"""Every key the monitor logs, built in one place (as torchmetrics' ``MetricCollection`` prefixes its metrics):
``<prefix>/<group><name>/<suffix>``, where the group is empty for the validation data and ``pool/<name>/`` for an
unlabeled pool."""

from __future__ import annotations

from dataclasses import dataclass

OVERHEAD = "overhead"
SECONDS = "seconds"
MAE = "mae"
FINAL_MAE = "final_mae"


def pool(name: str) -> str:
    """An unlabeled pool's split, ``pool/<name>``; its keys' group is ``pool/<name>/``."""
    return f"pool/{name}"


def predicted(kind: str) -> str:
    """The suffix of a prediction: ``pred_test_loss`` or ``pred_test_error``."""
    return f"pred_test_{kind}"


@dataclass(frozen=True)
class Keys:
    """The keys of one monitor, under ``prefix``; the keys every measure shares under ``shared`` (by default
    ``prefix``; a single-measure callback's are namespaced by its measure)."""

    prefix: str
    shared_prefix: str | None = None

    def __call__(self, *parts: str) -> str:
        """``<prefix>/<part>/<part>…``; a part may hold slashes of its own (a group, an estimator of a pool)."""
        return "/".join((self.prefix, *(part.strip("/") for part in parts)))

    def shared(self, name: str, group: str = "") -> str:
        """A key every measure shares: ``<prefix>/<group><name>`` (``test_loss``, ``overhead``, a pool's
        ``pred_test_error``)."""
        return "/".join((self.shared_prefix or self.prefix, (group + name).strip("/")))

    def measure(self, measure: str, value: str) -> str:
        """One of a measure's values: ``<prefix>/<measure>/<value>`` (``train``, ``val``, ``seconds``)."""
        return self(measure, value)

    def estimator(self, estimator: str, suffix: str) -> str:
        """One of an estimator's keys, ``estimator`` carrying its group: ``<prefix>/<group><estimator>/<suffix>``."""
        return self(estimator, suffix)

    def file(self, name: str) -> str:
        """A file's name in the log directory: ``<prefix>_<name>``."""
        return f"{self.prefix}_{name}"
