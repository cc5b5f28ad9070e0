"""Forward-hook capture of a model's input, logits, ReLU pre-activations and the input of its output layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_gensens.replay import Call, describe_call, input_embedding, locate_input
from lightning_gensens.utilities import relu_modules, weight_layers

OutputFn = Callable[[Any], Tensor]


@dataclass
class Captured:
    """One forward pass of the measured model: its input (for token ids, the output of the input embedding), its
    logits, the hidden pre-activations, the call itself and, where recorded, ``head``: the input [B, D] of the
    output layer whose output the logits are (the features the network classifies)."""

    x: Tensor
    logits: Tensor
    preacts: list[Tensor] = field(default_factory=list)
    call: Call | None = None
    y: Tensor | None = None
    cache: dict[str, Tensor] = field(default_factory=dict)
    """Per-sample quantities several measures share, computed once (e.g. ``"tangent"``, T(A(x)))."""
    head: Tensor | None = None

    def take(self, rows: slice | Tensor) -> Captured:
        """The record of the samples ``rows`` selects (a slice or indices)."""
        return Captured(
            x=self.x[rows],
            logits=self.logits[rows],
            preacts=[h[rows] for h in self.preacts],
            y=None if self.y is None else self.y[rows],
            cache={k: v[rows] for k, v in self.cache.items()},
            call=None if self.call is None else self.call.take(rows),
            head=None if self.head is None else self.head[rows],
        )


def default_output_fn(output: Any) -> Tensor:
    """The logits of a forward output: a tensor, the first element of a tuple/list, or the ``logits`` entry of a
    mapping (a Hugging Face ``ModelOutput`` is one)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    raise TypeError(
        f"the model returned {type(output).__name__}, but the measures need its logits: return a tensor, a "
        "tuple/list whose first element is the logits, or a mapping/ModelOutput with `logits`; or pass "
        "`output_fn=` to read them."
    )


_exclusive: list[ForwardCapture | None] = []
"""Innermost last: while a callback measures, only the capture it names (or none) records forward passes."""


@contextmanager
def exclusive(capture: ForwardCapture | None) -> Iterator[None]:
    """Let only ``capture`` record (None: no capture records), so the forward passes one callback runs while
    measuring are never taken for the user's by another callback's capture."""
    _exclusive.append(capture)
    try:
        yield
    finally:
        _exclusive.pop()


class ForwardCapture:
    """Records what the measures need from the forward passes of ``model``.

    Hooks are registered once by :meth:`attach` and fire only while :attr:`enabled` is set, so a model compiled
    after attaching keeps them (hooks registered after ``torch.compile`` never fire). :meth:`detach` removes
    every handle; the context-manager form attaches, enables and detaches. Positional and keyword calls are seen.

    ReLU pre-activations are read by forward *pre*-hooks on the ``nn.ReLU`` modules, which see the input even
    with ``inplace=True``; a ReLU module applied several times in one forward pass is recorded at each call. They
    are recorded while :attr:`record_preactivations` is set (by default whenever ``preactivations`` is).

    With ``head=True`` a forward hook on the last Linear/Conv layer registered (the output layer of most
    classifiers, a Hugging Face model's included) records its input, flattened, while :attr:`record_head` is set;
    it is kept as :attr:`Captured.head` only where that layer's output is the logits (same shape), so a model whose
    last layer is not its output layer records none.
    """

    def __init__(
        self,
        model: nn.Module,
        preactivations: bool = False,
        measure: str = "capture",
        output_fn: OutputFn | None = None,
        head: bool = False,
    ) -> None:
        layers = weight_layers(model)
        self.model = model
        self.preactivations = preactivations
        self.output_fn = output_fn or default_output_fn
        self._relus = relu_modules(model, measure) if preactivations else []
        self._embedding = input_embedding(model)
        self._head = layers[-1][1] if head else None
        self._head_call: tuple[Tensor, tuple[int, ...]] | None = None
        self._handles: list[RemovableHandle] = []
        self._preacts: list[Tensor] = []
        self._embedded: Tensor | None = None
        self.records: list[Captured] = []
        self.unread: str | None = None
        """The arguments of the last call recorded without an input tensor found among them, in a few words."""
        self.enabled = False
        self.record_preactivations = preactivations
        self.record_head = head

    def attach(self) -> ForwardCapture:
        if self._handles:
            return self
        self._handles.append(self.model.register_forward_hook(self._on_output, with_kwargs=True))
        for _, relu in self._relus:
            self._handles.append(relu.register_forward_pre_hook(self._on_relu_input))
        if self._embedding is not None:
            self._handles.append(self._embedding.register_forward_hook(self._on_embedding))
        if self._head is not None:
            self._handles.append(self._head.register_forward_hook(self._on_head))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.enabled = False
        self.clear()

    def clear(self) -> None:
        self._preacts = []
        self._embedded = None
        self._head_call = None
        self.records = []

    def pop(self) -> Captured | None:
        """Return the last complete forward pass recorded since the previous call, and forget the others."""
        record = self.records[-1] if self.records else None
        self.clear()
        return record

    def _recording(self) -> bool:
        return self.enabled and (not _exclusive or _exclusive[-1] is self)

    def _on_relu_input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.record_preactivations and self._recording():
            self._preacts.append(args[0].detach().clone())

    def _on_embedding(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._recording() and isinstance(output, Tensor):
            self._embedded = output.detach()

    def _on_head(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.record_head and self._recording() and args and isinstance(args[0], Tensor):
            if isinstance(output, Tensor):
                self._head_call = (args[0].detach().flatten(1), tuple(output.shape))

    def _on_output(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not self._recording():
            return
        site = locate_input(args, kwargs)
        # Calls without a tensor input or output are Lightning's strategy wrappers (DDP redirects the
        # LightningModule's __call__ to its *_step methods); the model's own forward is recorded.
        if site is None or output is None:
            if output is not None:
                self.unread = describe_call(args, kwargs)
            return
        call = Call(tuple(args), dict(kwargs), site)
        preacts, self._preacts = self._preacts, []
        embedded, self._embedded = self._embedded, None
        head_call, self._head_call = self._head_call, None
        x = call.input.detach()
        if not x.is_floating_point():
            if embedded is None:
                raise TypeError(
                    f"{type(module).__name__} takes integer inputs but has no input embedding whose output the "
                    "measures could perturb or differentiate (get_input_embeddings() or an nn.Embedding)."
                )
            x = embedded
        logits = self.output_fn(output)
        head = head_call[0] if head_call is not None and head_call[1] == tuple(logits.shape) else None
        self.records.append(Captured(x=x, logits=logits.detach(), preacts=preacts, call=call, head=head))

    def __enter__(self) -> ForwardCapture:
        self.attach()
        self.enabled = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.detach()
