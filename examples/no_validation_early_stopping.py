"""(g) The papers' premise: every labelled sample goes into training, there is no validation set, and a label-free
prediction of the test loss, made on unlabeled inputs, decides when to stop.

Digits' train and validation splits are pooled; a quarter of the images have their labels removed and form the
unlabeled pool, the rest is the (whole) labelled training set. Without a validation loop the monitor measures the
pool at the end of each training epoch against the training probe and logs, per estimator,
``gensens/pool/unlabeled/<estimator>/pred_test_loss``, and the recommended estimator's as
``gensens/pool/unlabeled/pred_test_loss``, which ``EarlyStopping`` watches (against the probe, the difference of
confidences: a temperature fitted on training data is too low for ``doc_ts``). The removed labels are used only once,
after training, to show how close the last prediction was.

    python examples/no_validation_early_stopping.py [--epochs 40] [--patience 3]
"""

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, mlp

KEY = "gensens/pool/unlabeled/pred_test_loss"
"""The label-free predicted test loss early stopping watches: the pool's recommended key."""


def main(epochs: int = 40, patience: int = 3) -> dict[str, float]:
    L.seed_everything(0, verbose=False)
    digits = ArrayDataModule("digits")
    x = torch.cat([digits.train_set.tensors[0], digits.val_set.tensors[0]])
    y = torch.cat([digits.train_set.tensors[1], digits.val_set.tensors[1]])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    pooled, labelled = order[: len(x) // 4], order[len(x) // 4 :]
    train = DataLoader(TensorDataset(x[labelled], y[labelled]), batch_size=64, shuffle=True)
    pool = DataLoader(TensorDataset(x[pooled]), batch_size=256)  # inputs only: no labels reach the monitor

    model = Classifier(mlp(digits.num_features, digits.num_classes), lr=3e-3, weight_decay=5e-4, optimizer="adam")
    # label-free measures only (the others are skipped on a pool anyway); budget=None measures them every epoch,
    # where within a time budget a measure may skip epochs and EarlyStopping would compare a stale value
    measures = ["trivial", "difference_of_confidences", "atc", "temperature_scaling", "output_sensitivity"]
    monitor = GeneralizationMonitor(measures, unlabeled=pool, budget=None)
    stop = EarlyStopping(KEY, patience=patience, mode="min")  # after the monitor, which logs KEY first
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_val_batches=0,  # no validation loop
        callbacks=[monitor, stop],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, train)

    last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("gensens/pool/")}
    stopped = f"stopped early at epoch {stop.stopped_epoch}" if stop.stopped_epoch else "ran every epoch"
    print(f"\n{stopped} (of {epochs}); best {KEY} = {float(stop.best_score):.4f}")
    print("per epoch: " + "  ".join(f"{int(row['epoch'])}: {row[KEY]:.4f}" for row in monitor.history if KEY in row))
    print("last label-free predictions of the test loss on the unlabeled pool:")
    for key in sorted(k for k in last if k.endswith("pred_test_loss")):
        print(f"  {key:<70}{last[key]:.4f}")
    model.eval()
    with torch.no_grad():  # the held-back labels, for this comparison only
        actual = float(F.cross_entropy(model(x[pooled]), y[pooled]))
    print(f"  {'actual loss on the pool (its labels held back until now)':<70}{actual:.4f}")
    return last


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny tensors: on a few shared cores more threads mostly spin (up to 20x slower)
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=3)
    args = parser.parse_args()
    main(args.epochs, args.patience)
