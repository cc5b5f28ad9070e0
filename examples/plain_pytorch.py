"""(e) The Metrics and the functional API in a plain PyTorch loop, without Lightning.

Each epoch: train, then measure the training probe and the test split with torchmetrics Metrics (streaming,
DDP-ready states) and predict the test loss with the estimators.

    python examples/plain_pytorch.py [--epochs 15]
"""

import argparse

import torch
import torch.nn.functional as F

from lightning_gensens import estimators, functional, metrics
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import mlp


@torch.no_grad()
def evaluate(net, loader, split_metrics):
    """Loss, error and every metric over one split, in eval mode."""
    net.eval()
    loss, errors, n = 0.0, 0, 0
    for x, y in loader:
        logits = net(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        errors += int((logits.argmax(1) != y).sum())
        n += len(y)
        split_metrics["output_sensitivity"].update(net, x, logits)
        split_metrics["jacobian_norm"].update(net, x)
        split_metrics["fisher_rao_norm"].update(logits)
    values = {name: metric.compute() for name, metric in split_metrics.items()}
    for metric in split_metrics.values():
        metric.reset()
    return loss / n, errors / n, values


def main(epochs: int = 15) -> list[dict[str, float]]:
    torch.manual_seed(0)
    data = ArrayDataModule("digits")
    net = mlp(data.num_features, data.num_classes)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, weight_decay=5e-4)
    probe = torch.utils.data.DataLoader(data.train_set, batch_size=256)
    split = {
        s: {
            "output_sensitivity": metrics.OutputSensitivity(sigma=0.1, seed=0),
            "jacobian_norm": metrics.JacobianNorm(),
            "fisher_rao_norm": metrics.FisherRaoNorm(),
        }
        for s in ("train", "test")
    }
    previous_log_prod, rows = None, []
    for epoch in range(epochs):
        net.train()
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        l_tr, _, train = evaluate(net, probe, split["train"])
        l_te, _, test = evaluate(net, data.val_dataloader(), split["test"])
        row = {
            "epoch": epoch,
            "test_loss": l_te,
            "train_loss": l_tr,
            "output_sensitivity": float(
                estimators.ratio(test["output_sensitivity"]["s"], train["output_sensitivity"]["s"], torch.tensor(l_tr))
            ),
            "jacobian_norm": float(estimators.ratio(test["jacobian_norm"], train["jacobian_norm"], torch.tensor(l_tr))),
            "fisher_rao_norm": float(
                estimators.ratio(test["fisher_rao_norm"], train["fisher_rao_norm"], torch.tensor(l_tr))
            ),
        }
        log_prod = functional.layer_linf_norms(net).log().sum()
        if previous_log_prod is not None:
            row["linf_norm"] = float(estimators.linf_norm(previous_log_prod, log_prod, torch.tensor(l_tr)))
        previous_log_prod = log_prod
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    main(parser.parse_args().epochs)
