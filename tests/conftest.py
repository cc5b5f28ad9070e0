import os

import pytest
import torch

from lightning_gensens.callbacks.session import Session
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


def pytest_configure(config):
    config.addinivalue_line("markers", "lenient: our own measures' programming errors warn, as users see them")


class _Bug(BaseException):
    """Carries a programming error past the guard that switches a failing measure off."""


@pytest.fixture(autouse=True)
def _strict_measures(request, monkeypatch):
    """A TypeError, AttributeError or NameError raised by one of our own measures fails the test, where a user's fit
    switches the measure off with a warning (plug-in measures defined in the tests keep that)."""
    if request.node.get_closest_marker("lenient"):
        return
    guard = Session._guard

    def strict(self, slot, action, fn, *args):
        if not type(slot.measure).__module__.startswith("lightning_gensens."):
            return guard(self, slot, action, fn, *args)

        def run(*arguments):
            try:
                return fn(*arguments)
            except (TypeError, AttributeError, NameError) as err:
                raise _Bug from err

        try:
            return guard(self, slot, action, run, *args)
        except _Bug as bug:
            raise bug.__cause__ from None

    monkeypatch.setattr(Session, "_guard", strict)
