"""(a) The papers' 4×100 ReLU MLP on digits: every measure, and the MAE table of estimated test loss.

python examples/mlp_digits.py [--epochs 30]
"""

import argparse

import lightning as L

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp


def main(epochs: int = 30) -> list[dict]:
    L.seed_everything(0, verbose=False)
    data = ArrayDataModule("digits", batch_size=64)
    model = Classifier(mlp(data.num_features, data.num_classes), lr=0.05, weight_decay=5e-4)
    monitor = GeneralizationMonitor()
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, data)  # prints the MAE table at the end
    return monitor.mae_table


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    main(parser.parse_args().epochs)
