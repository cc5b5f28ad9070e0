"""(c) Two-process DDP on CPU (gloo): the metric states reduce across ranks, so the logged values are those of
the whole probe and the whole validation set.

    python examples/ddp_cpu.py [--epochs 5]
"""

import argparse

import lightning as L

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp


def main(epochs: int = 5) -> dict[str, float]:
    L.seed_everything(0, verbose=False)
    data = ArrayDataModule("digits")
    model = Classifier(mlp(data.num_features, data.num_classes))
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[GeneralizationMonitor(probe_size=1024, budget=None)],  # every measure, every epoch
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
    )
    trainer.fit(model, data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gensens/")}
    for key in sorted(metrics):
        if key.endswith(("test_loss", "train_loss")):
            print(f"{key:<50}{metrics[key]:.4f}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    main(parser.parse_args().epochs)
