import lightning as L
import pytest

from lightning_gensens.data import ArrayDataModule
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
