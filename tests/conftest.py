import os

import pytest
import torch

from tests.helpers import shutdown_ddp_pools

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("WANDB__DISABLE_STATS", "true")
os.environ.setdefault("WANDB__DISABLE_META", "true")

torch.set_num_threads(1)  # tiny tensors; 2 threads on a shared 2-core machine spin and run up to 40x slower


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _ddp_pools():
    """The gloo worker pool of ``tests.helpers.run_ddp`` is started on first use and stopped at session end."""
    yield
    shutdown_ddp_pools()
