"""Forward hooks are attached for measuring runs only, or for the whole fit of a network with compiled parts."""

import torch
from torch import nn

from lightning_gensens.callbacks.hooks import RunHooks
from lightning_gensens.capture import ForwardCapture, default_output_fn
from lightning_gensens.replay import Replay


def _hooked(net: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def _hooks(net: nn.Module) -> RunHooks:
    return RunHooks(net, ForwardCapture(net, preactivations=True), Replay(net, default_output_fn))


def test_a_plain_network_is_hooked_only_between_attach_and_release():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hooks = _hooks(net)
    hooks.check_compiled()
    assert not hooks.always and not _hooked(net)
    hooks.attach()
    assert _hooked(net)
    hooks.release()
    assert not _hooked(net)


def test_a_network_with_a_compiled_part_keeps_its_hooks_until_detach():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net[2] = torch.compile(net[2])  # not called: nothing is compiled yet
    hooks = _hooks(net)
    hooks.check_compiled()
    assert hooks.always and _hooked(net)
    hooks.release()
    assert _hooked(net)
    hooks.detach()
    assert not _hooked(net)
