"""What GeneralizationMonitor costs on a GPU: a ResNet-18-sized CNN trained in ``bf16-mixed`` precision, plain, with
``GeneralizationMonitor()`` (default budget) and with ``GeneralizationMonitor(budget=None)``; one command, under five
minutes on one CUDA device.

    python benchmarks/gpu.py [--epochs 3] [--cpu-smoke]

The network is ResNet-18 as used for CIFAR: a 3x3 stem, four stages of two BasicBlocks (widths 64/128/256/512,
BatchNorm, strides 1/2/2/2), global average pooling and a linear head; SGD (lr 0.05, weight decay 5e-4, batch 128)
on random 3x32x32 inputs with 10 random classes, 10,000 training and 2,000 validation samples. Each configuration
fits once after a one-epoch warm-up fit (CUDA context, cuDNN autotuning), with a ``CSVLogger`` attached. Printed:
each fit's wall time and its ratio to plain training, the monitor's own account (1 + the last
``gensens/overhead``), its fixed cost and where the added time went, the peak CUDA memory of each fit
(``torch.cuda.max_memory_allocated``), and each measure's seconds (``monitor.cost_table``).

Without CUDA the script says so and exits (status 0), unless ``--cpu-smoke``: a tiny version (width 8, 256 training
and 64 validation samples, 1 epoch, float32) on the CPU, whose memory column is the process's RSS high-water mark
during the fit; it checks that the script runs, not what a GPU costs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

import lightning as L
import torch
from _common import (
    BREAKDOWN,
    BREAKDOWN_TEXT,
    BUDGETS,
    CONFIGS,
    LABELS,
    Fit,
    add_arguments,
    breakdown,
    command,
    configure,
    estimator_counts,
    fit,
    fmt_s,
    machine,
    markdown_table,
    measure_table,
    package_origin,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
)
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_gensens.models import Classifier


@dataclass(frozen=True)
class Scale:
    width: int
    train: int
    val: int
    precision: str
    accelerator: str


GPU = Scale(width=64, train=10_000, val=2_000, precision="bf16-mixed", accelerator="cuda")
SMOKE = Scale(width=8, train=256, val=64, precision="32-true", accelerator="cpu")
BATCH = 128


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a skip (a 1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(width: int = 64, num_classes: int = 10) -> nn.Sequential:
    """ResNet-18 for 32x32 inputs: stages of widths ``width`` × 1/2/4/8, two BasicBlocks each."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    c_in = width
    for stage, stride in enumerate((1, 2, 2, 2)):
        c_out = width * 2**stage
        layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def classifier(width: int) -> L.LightningModule:
    return Classifier(resnet18(width))


def random_images(scale: Scale) -> L.LightningDataModule:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

    return L.LightningDataModule.from_datasets(split(scale.train), split(scale.val), batch_size=BATCH)


def measured_fit(scale: Scale, data: L.LightningDataModule, epochs: int, config: str) -> tuple[Fit, float]:
    """The fit and its peak memory in MiB: CUDA memory allocated, or on the CPU the RSS high-water mark above the
    RSS at the start."""
    model = partial(classifier, scale.width)
    kwargs = {"precision": scale.precision, "accelerator": scale.accelerator}
    if scale.accelerator == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result = fit(model, data, epochs, config, **kwargs)
        return result, torch.cuda.max_memory_allocated() / 2**20
    reset_peak_rss()
    before = rss_mib()
    result = fit(model, data, epochs, config, **kwargs)
    return result, peak_rss_mib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (the CPU smoke test runs 1)")
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny float32 version on the CPU")
    add_arguments(parser)
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(
            "benchmarks/gpu.py needs a CUDA device and found none; nothing run (--cpu-smoke runs a tiny CPU version)."
        )
        return
    configure(args)
    scale, epochs = (SMOKE, 1) if args.cpu_smoke else (GPU, args.epochs)
    data = random_images(scale)
    print(f"`{command()}`: {machine()}; package: {package_origin()}", flush=True)
    measured_fit(scale, data, 1, "plain")  # warm-up
    fits: dict[str, Fit] = {}
    memory: dict[str, float] = {}
    for config in CONFIGS:
        fits[config], memory[config] = measured_fit(scale, data, epochs, config)
        print(f"{config}: {fits[config].summary()}, peak memory {memory[config]:.0f} MiB", flush=True)
    plain = fits["plain"]
    peak = "peak CUDA memory" if scale.accelerator == "cuda" else "peak RSS in fit"
    rows = [
        (
            LABELS[c],
            fmt_s(f.seconds),
            f"{f.seconds / plain.seconds:.2f}×",
            f"{1 + f.overhead:.3f}×" if f.history else "—",
        )
        + (f"{memory[c]:,.0f} MiB", len(estimator_counts(f.history)))
        for c, f in fits.items()
    ]
    lines = [
        "",
        f"ResNet-18 (width {scale.width}) on random 3x32x32 data, {scale.train:,} / {scale.val:,} samples, "
        f"batch {BATCH}, {epochs} epoch(s), precision {scale.precision}:",
        "",
        *markdown_table(("configuration", "fit", "ratio", "monitor's own", peak, "estimators logged"), rows),
        "",
        *markdown_table(("monitor", *BREAKDOWN), [(LABELS[c], *breakdown([plain], [fits[c]])) for c in BUDGETS]),
        "",
        BREAKDOWN_TEXT,
        "",
        "Each measure: runs and seconds under the default budget, seconds per run with `budget=None`:",
        "",
        *measure_table([fits["default"]], [fits["none"]]),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
