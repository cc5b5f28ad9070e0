"""The session-wide gloo pool of ``tests.helpers.run_ddp``: reused, and a failing rank fails the test, never hangs."""

import os
import pickle
import time

import pytest
import torch
import torch.distributed as dist

from tests.helpers import _POOLS, DDPError, run_ddp


def _identity(rank: int, world_size: int, payload: torch.Tensor) -> tuple[int, int, int, torch.Tensor]:
    total = payload.clone() * (rank + 1)
    dist.all_reduce(total)
    return rank, world_size, os.getpid(), total


def _fails_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("rank one refuses")
    return rank


def _rank_one_fails_while_rank_zero_waits_in_a_collective(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank one never joins the all-reduce")
    dist.all_reduce(torch.ones(1))


def test_results_per_rank_from_one_reused_pool():
    first = run_ddp(_identity, torch.arange(3.0))
    second = run_ddp(_identity, torch.arange(3.0))
    assert [r[:2] for r in first] == [(0, 2), (1, 2)]
    assert all(torch.equal(r[3], 3 * torch.arange(3.0)) for r in first)
    assert [r[2] for r in first] == [r[2] for r in second]  # the same processes serve every call
    assert len({r[2] for r in first} | {os.getpid()}) == 3


def test_an_error_on_one_rank_raises_with_its_traceback_and_keeps_the_pool():
    pids = [r[2] for r in run_ddp(_identity, torch.zeros(1))]
    with pytest.raises(DDPError, match="(?s)rank 1.*ValueError: rank one refuses"):
        run_ddp(_fails_on_rank_one)
    assert [r[2] for r in run_ddp(_identity, torch.zeros(1))] == pids  # every rank replied: pool kept


def test_a_rank_stuck_in_a_collective_fails_fast_and_the_pool_is_replaced():
    pids = [r[2] for r in run_ddp(_identity, torch.zeros(1))]
    start = time.monotonic()
    with pytest.raises(DDPError, match="(?s)rank 1.*never joins"):
        run_ddp(_rank_one_fails_while_rank_zero_waits_in_a_collective)
    assert time.monotonic() - start < 20  # the grace period, not gloo's 60 s collective timeout
    assert 2 not in _POOLS
    again = run_ddp(_identity, torch.ones(1))
    assert all(torch.equal(r[3], torch.full((1,), 3.0)) for r in again)
    assert not {r[2] for r in again} & set(pids)


def test_a_lambda_is_refused_before_anything_is_sent():
    pids = [r[2] for r in run_ddp(_identity, torch.zeros(1))]
    with pytest.raises((pickle.PicklingError, AttributeError)):
        run_ddp(lambda rank, world_size: rank)
    assert [r[2] for r in run_ddp(_identity, torch.zeros(1))] == pids
