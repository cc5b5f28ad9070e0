"""Forward-hook capture of a model's input, logits and ReLU pre-activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_gensens.utilities import relu_modules, weight_layers


@dataclass
class Captured:
    """One forward pass of the measured model: its input, its logits and the hidden pre-activations."""

    x: Tensor
    logits: Tensor
    preacts: list[Tensor] = field(default_factory=list)
    y: Tensor | None = None
    cache: dict[str, Tensor] = field(default_factory=dict)
    """Per-sample quantities several measures share, computed once (e.g. ``"tangent"``, T(A(x)))."""


class ForwardCapture:
    """Records what the measures need from the forward passes of ``model``.

    Hooks are registered once by :meth:`attach` and fire only while :attr:`enabled` is set, so a model compiled
    after attaching keeps them (hooks registered after ``torch.compile`` never fire). :meth:`detach` removes
    every handle; the context-manager form attaches, enables and detaches.

    ReLU pre-activations are read by forward *pre*-hooks on the ``nn.ReLU`` modules, which see the input even
    with ``inplace=True``.
    """

    def __init__(self, model: nn.Module, preactivations: bool = False, measure: str = "capture") -> None:
        weight_layers(model)
        self.model = model
        self.preactivations = preactivations
        self._relus = relu_modules(model, measure) if preactivations else []
        self._handles: list[RemovableHandle] = []
        self._preacts: list[Tensor] = []
        self.records: list[Captured] = []
        self.enabled = False

    def attach(self) -> ForwardCapture:
        if self._handles:
            return self
        self._handles.append(self.model.register_forward_hook(self._on_output))
        for _, relu in self._relus:
            self._handles.append(relu.register_forward_pre_hook(self._on_relu_input))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.enabled = False
        self.clear()

    def clear(self) -> None:
        self._preacts = []
        self.records = []

    def pop(self) -> Captured | None:
        """Return the last complete forward pass recorded since the previous call, and forget the others."""
        record = self.records[-1] if self.records else None
        self.clear()
        return record

    def _on_relu_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.enabled:
            self._preacts.append(args[0].detach().clone())

    def _on_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # Calls without a tensor input or output are Lightning's strategy wrappers (DDP redirects the
        # LightningModule's __call__ to its *_step methods); the model's own forward(x) is recorded.
        if not self.enabled or not args or not isinstance(args[0], Tensor) or output is None:
            return
        preacts, self._preacts = self._preacts, []
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}, but the measures need the logits as a "
                "single Tensor. Pass `module=` naming a submodule that returns logits."
            )
        if self.preactivations and len(preacts) != len(self._relus):
            raise RuntimeError(
                f"{type(module).__name__} called its {len(self._relus)} nn.ReLU modules {len(preacts)} times in "
                "one forward pass: the pre-activations cannot be matched to hidden layers (a ReLU module must be "
                "used exactly once)."
            )
        self.records.append(Captured(x=args[0].detach(), logits=output.detach(), preacts=preacts))

    def __enter__(self) -> ForwardCapture:
        self.attach()
        self.enabled = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.detach()
