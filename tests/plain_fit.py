"""A short fit with a CSVLogger as a plain install runs it (no extras: no matplotlib, no scikit-learn). CI runs this
file in a virtual environment without extras; ``tests/test_plain_install.py`` runs :func:`fit` with matplotlib
hidden. Not collected by pytest."""

import os
import sys
import tempfile

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.models import Classifier, mlp


def fit(root: str) -> tuple[GeneralizationMonitor, str]:
    """Two epochs of a small MLP on random data, measured every epoch; the monitor and the log dir."""
    L.seed_everything(0, verbose=False)
    x = torch.randn(512, 16)
    y = (x[:, 0] > 0).long()
    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=128)
    monitor = GeneralizationMonitor(budget=None, probe_size=128)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[monitor],
        logger=CSVLogger(root),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(Classifier(mlp(16, num_classes=2, hidden=(32, 32))), train, val)
    return monitor, trainer.log_dir or root


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        monitor, log_dir = fit(root)
        if not monitor.mae_table or not os.path.isfile(os.path.join(log_dir, "gensens_mae.csv")):
            sys.exit("plain install: the fit wrote no MAE table")
    print(f"plain install: fit and published {len(monitor.mae_table)} estimators")
