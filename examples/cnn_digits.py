"""(b) A small CNN with BatchNorm and dropout on 8×8 digits, with every measure defined for it.

Measures defined for any differentiable network run in eval mode on the probe; the model's own modes (train for
BatchNorm and dropout during training) are restored after each measurement.

    python examples/cnn_digits.py [--epochs 8]
"""

import argparse

import lightning as L

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, small_cnn


def main(epochs: int = 8) -> list[dict]:
    L.seed_everything(0, verbose=False)
    data = ArrayDataModule("digits", image=True)
    model = Classifier(small_cnn(1, 8, data.num_classes, width=16, batch_norm=True, dropout=0.25))
    monitor = GeneralizationMonitor(probe_size=512)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, data)
    return monitor.mae_table


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    main(parser.parse_args().epochs)
