"""(d) Weights & Biases: per-epoch curves against `epoch`, one chart of actual versus predicted test loss, the
MAE table as a wandb.Table and each estimator's final MAE in the run summary.

Runs offline unless `WANDB_MODE=online`; `wandb sync <run dir>` uploads an offline run later.

    python examples/wandb_offline.py [--epochs 10] [--dir wandb_example]
"""

import argparse
import os

import lightning as L
import wandb
from lightning.pytorch.loggers import WandbLogger

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp


def main(epochs: int = 10, save_dir: str = "wandb_example") -> str:
    os.makedirs(save_dir, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    L.seed_everything(0, verbose=False)
    data = ArrayDataModule("digits")
    model = Classifier(mlp(data.num_features, data.num_classes))
    logger = WandbLogger(project="lightning-gensens", name="mlp-digits", save_dir=save_dir)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[GeneralizationMonitor()],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=1,
    )
    try:
        trainer.fit(model, data)
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
    print(f"W&B run written to {os.path.dirname(run_dir)}")
    return os.path.dirname(run_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dir", default="wandb_example")
    args = parser.parse_args()
    main(args.epochs, args.dir)
