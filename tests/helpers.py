"""Test utilities: a 2-process gloo run, toy models and a tiny LightningModule."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, world_size, *args), os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ddp(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes; return each rank's result.

    ``fn`` must be a module-level function and its result picklable (e.g. tensors or floats).
    """
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            _worker, args=(world_size, _free_port(), fn, args, out), nprocs=world_size, start_method="spawn", join=True
        )
        return [torch.load(os.path.join(out, f"{r}.pt"), weights_only=False) for r in range(world_size)]


def toy_mlp(
    widths: tuple[int, ...] = (5, 7, 6, 3), bias: bool = True, seed: int = 0, activation: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """A float64 MLP with the given layer widths (input first)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers).double()


def bn_cnn() -> nn.Sequential:
    """models.small_cnn in float64 with non-trivial BatchNorm statistics and affine parameters, in eval mode."""
    from lightning_gensens.models import small_cnn

    net = small_cnn(in_channels=1, side=4, width=3).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return net.eval()
