"""When a monitor's forward hooks are attached: for its measuring runs only, or for the whole fit of a network with
compiled submodules."""

from __future__ import annotations

from torch import nn

from lightning_gensens.capture import ForwardCapture
from lightning_gensens.replay import Replay


class RunHooks:
    """The capture and the replay of one monitor on ``net``.

    Hooks cost every forward pass a little, so they are attached for measuring runs only and training forwards run
    without them; but dynamo bakes in the hooks a compiled submodule had when it was compiled, so on a network with
    compiled submodules they stay attached from :meth:`check_compiled` to :meth:`detach`.
    """

    def __init__(self, net: nn.Module, capture: ForwardCapture, replay: Replay, root: nn.Module | None = None) -> None:
        self.net, self.capture, self.replay = net, capture, replay
        self.root = net if root is None else root
        """Where compiled modules are looked for: the LightningModule, which holds ``net`` itself compiled when the
        monitor measures the module a ``torch.compile`` wrapper unwraps to."""
        self.always = False

    def check_compiled(self) -> None:
        """Keep the hooks attached if ``root`` holds a compiled module (call before its first forward)."""
        if not self.always and any(hasattr(m, "_orig_mod") for m in self.root.modules()):
            self.always = True
            self.attach()

    def attach(self) -> None:
        self.capture.attach()
        self.replay.attach()

    def release(self) -> None:
        """After a measuring run."""
        if not self.always:
            self.detach()

    def detach(self) -> None:
        self.capture.detach()
        self.replay.detach()
