"""Test utilities: a session-wide pool of gloo processes (:func:`run_ddp`) and toy models."""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

DDP_TIMEOUT_S = 120.0
"""Longest a ``run_ddp`` call may take before its pool is killed and the call fails."""

_FAILURE_GRACE_S = 2.0
"""How long the other ranks get to finish once one rank has failed (they may be stuck in a collective)."""

_COLLECTIVE_TIMEOUT = timedelta(seconds=60)
"""gloo's own timeout: a rank left alone in a collective errors out instead of waiting forever."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(rank: int, world_size: int, port: int, conn: Connection) -> None:
    """Worker loop: join the gloo group once, then run ``fn(rank, world_size, *args)`` for every task received.

    Tasks and results travel as plain pickles (no shared-memory tensors); a failing task sends its traceback.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=_COLLECTIVE_TIMEOUT)
    try:
        while True:
            try:
                task = conn.recv_bytes()
            except EOFError:  # the parent went away
                return
            if not task:  # shutdown
                return
            try:
                fn, args = pickle.loads(task)
                torch.manual_seed(0)  # as the autouse fixture does in the parent, whatever ran before
                reply = pickle.dumps(("ok", fn(rank, world_size, *args)))
            except BaseException:  # noqa: BLE001 - everything goes back to the test
                reply = pickle.dumps(("error", traceback.format_exc()))
            conn.send_bytes(reply)
    finally:
        dist.destroy_process_group()
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip the interpreter's teardown of torch & co. (seconds); nothing is left to clean up


class DDPError(RuntimeError):
    """``fn`` raised on a rank; ``pool_intact`` when every rank replied (none is stuck, the pool can be reused)."""

    def __init__(self, message: str, pool_intact: bool) -> None:
        super().__init__(message)
        self.pool_intact = pool_intact


class DDPPool:
    """``world_size`` spawned processes joined in one gloo process group, reused by every :func:`run_ddp` call."""

    def __init__(self, world_size: int) -> None:
        ctx = mp.get_context("spawn")
        port = _free_port()
        self.world_size = world_size
        self.conns: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for rank in range(world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(rank, world_size, port, child), daemon=True, name=f"ddp-{rank}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, task: bytes, name: str, timeout: float) -> list[Any]:
        """Submit the pickled ``(fn, args)`` to every rank: ``fn(rank, world_size, *args)``; return the results in
        rank order.

        Raises :class:`DDPError` with the failing rank's traceback, or ``TimeoutError`` (a rank may be stuck in a
        collective its peer never joined: the caller then kills the pool).
        """
        for conn in self.conns:
            conn.send_bytes(task)
        results: dict[int, Any] = {}
        errors: dict[int, str] = {}
        dead: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(results) + len(errors) < self.world_size:
            if errors:
                deadline = min(deadline, time.monotonic() + _FAILURE_GRACE_S)
            pending = [r for r in range(self.world_size) if r not in results and r not in errors]
            ready = wait([self.conns[r] for r in pending], timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for r in pending:
                if self.conns[r] not in ready:
                    continue
                try:
                    status, value = pickle.loads(self.conns[r].recv_bytes())
                except (EOFError, OSError):
                    dead.add(r)
                    self.procs[r].join(timeout=1)
                    status, value = "error", f"rank {r} died (exit code {self.procs[r].exitcode})"
                (results if status == "ok" else errors)[r] = value
        if errors:
            rank = min(errors)
            intact = len(results) + len(errors) == self.world_size and not dead
            raise DDPError(f"{name} failed on rank {rank}:\n{errors[rank]}", intact)
        if len(results) < self.world_size:
            missing = [r for r in range(self.world_size) if r not in results]
            raise TimeoutError(f"{name} did not finish on ranks {missing} within {timeout} s.")
        return [results[r] for r in range(self.world_size)]

    def close(self, graceful: bool = True) -> None:
        """Stop the workers: a shutdown message when ``graceful``, then SIGKILL whatever is still running."""
        if graceful:
            for conn in self.conns:
                try:
                    conn.send_bytes(b"")
                except OSError:
                    pass
            for proc in self.procs:
                proc.join(timeout=5)
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()


_POOLS: dict[int, DDPPool] = {}


def shutdown_ddp_pools() -> None:
    """Stop every pool (session end; also registered with ``atexit``)."""
    while _POOLS:
        _POOLS.popitem()[1].close()


atexit.register(shutdown_ddp_pools)


def run_ddp(fn: Callable[..., Any], *args: Any, world_size: int = 2, timeout: float = DDP_TIMEOUT_S) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on every rank of a gloo process group; return each rank's result.

    The group's processes are spawned once per session (per ``world_size``) and reused. A call that fails on a rank
    raises :class:`DDPError` (a ``RuntimeError``) with that rank's traceback; one that does not finish within
    ``timeout`` seconds raises ``TimeoutError``; a pool with a stuck or dead rank is killed and replaced on the next
    call. ``fn`` must be a module-level function, and its arguments
    and result picklable (e.g. tensors or floats). Every rank runs with the global seed 0 and one thread.
    """
    task = pickle.dumps((fn, args))  # fails here, before anything is sent, for a lambda or a local function
    pool = _POOLS.get(world_size)
    if pool is None:
        pool = _POOLS[world_size] = DDPPool(world_size)
    try:
        return pool.run(task, getattr(fn, "__qualname__", repr(fn)), timeout)
    except BaseException as err:
        if not (isinstance(err, DDPError) and err.pool_intact):
            del _POOLS[world_size]
            pool.close(graceful=False)
        raise


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
            assert m.running_mean is not None and m.running_var is not None  # small_cnn tracks running statistics
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return net.eval()
