import lightning as L
import pytest
import torch.distributed as dist
from torchmetrics import MeanMetric

from lightning_gensens.data import ArrayDataModule
from lightning_gensens.measures import Estimate, Measure
from lightning_gensens.models import Classifier, mlp

TABLE_COLUMNS = [
    "estimator",
    "needs_labels",
    "mae_test_loss",
    "skill_loss",
    "mae_test_error",
    "skill_error",
    "epochs",
    "reliable",
]
"""The MAE table's columns, in order."""


@pytest.fixture(scope="session")
def digits() -> ArrayDataModule:
    return ArrayDataModule("digits")


def make_trainer(tmp_path, callbacks=(), max_epochs=3, **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_progress_bar", False)
    return L.Trainer(
        max_epochs=max_epochs,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
        enable_model_summary=False,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def make_model(digits: ArrayDataModule, seed: int = 0, **kwargs) -> Classifier:
    L.seed_everything(seed, verbose=False)
    return Classifier(mlp(digits.num_features, hidden=kwargs.pop("hidden", (32, 32))), **kwargs)


class Failing(Measure):
    """A plug-in measure whose update raises ``error`` (a factory) on the ranks in ``ranks``."""

    name = "failing"

    def __init__(self, error=lambda: RuntimeError("boom"), ranks=(0,)):
        super().__init__()
        self.error, self.ranks = error, ranks

    def make_metric(self, net, settings):
        return MeanMetric()

    def update(self, metric, record, net):
        if (dist.get_rank() if dist.is_initialized() else 0) in self.ranks:
            raise self.error()
        metric.update(record.logits.mean())

    def estimate(self, computed, reference):
        return {self.name: Estimate(reference.loss)}
