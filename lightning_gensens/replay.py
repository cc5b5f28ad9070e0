"""Replaying the user's forward call while measuring: the captured arguments (masks included) with only the input
changed, and, for token inputs, the output of the input embedding standing in for the input.

A measure calls ``net(x)``. While a :class:`Replay` is active, a forward pre-hook on ``net`` turns that call into
the call the user made, with ``x`` in place of its input; for integer token inputs, ``x`` is the output of the input
embedding (``get_input_embeddings()`` where the model has it, else the first ``nn.Embedding``), which a forward hook
on the embedding substitutes, so perturbing or differentiating ``x`` acts on the embedded tokens. The output is
mapped to the logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

INPUT_KEYS = ("x", "input", "inputs", "input_ids", "pixel_values", "inputs_embeds", "image", "images", "features")
"""Keyword arguments (or keys of a mapping passed as the one argument) read as the model's input when it is called
without a positional tensor."""

Site = int | str | tuple[int, str]
"""Where a call's input sits: a position, a keyword, or a key of the mapping at a position (``self(batch)``)."""


@dataclass
class Call:
    """A forward call: its arguments and where the input sits among them (a position or a keyword)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    site: Site = 0

    @property
    def input(self) -> Tensor:
        if isinstance(self.site, tuple):
            value = self.args[self.site[0]][self.site[1]]
        else:
            value = self.args[self.site] if isinstance(self.site, int) else self.kwargs[self.site]
        assert isinstance(value, Tensor)
        return value

    @property
    def plain(self) -> bool:
        """Whether the call is ``net(x)`` with nothing else."""
        return self.site == 0 and len(self.args) == 1 and not self.kwargs

    def with_input(self, x: Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if isinstance(self.site, str):
            return self.args, {**self.kwargs, self.site: x}
        value: Any
        if isinstance(self.site, int):
            i, value = self.site, x
        else:  # the input inside the mapping passed at that position
            i, key = self.site
            value = {**self.args[i], key: x}
        return (*self.args[:i], value, *self.args[i + 1 :]), dict(self.kwargs)

    def head(self, n: int) -> Call:
        """The call on the first ``n`` samples."""
        return self.take(slice(n))

    def take(self, rows: slice | Tensor) -> Call:
        """The call on the samples ``rows`` selects: every argument with the input's batch size is indexed."""
        size = self.input.shape[0]

        def cut(v: Any) -> Any:
            if isinstance(v, Mapping):
                return {k: cut(e) for k, e in v.items()}
            return v[rows] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size else v

        return Call(tuple(cut(a) for a in self.args), {k: cut(v) for k, v in self.kwargs.items()}, self.site)


def locate_input(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Site | None:
    """Where the input tensor of a call sits: the first positional argument, a known key of a mapping passed as
    the one argument, else a known keyword."""
    if args:
        if isinstance(args[0], Tensor):
            return 0
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            return next(((0, k) for k in INPUT_KEYS if isinstance(args[0].get(k), Tensor)), None)
        return None
    return next((k for k in INPUT_KEYS if isinstance(kwargs.get(k), Tensor)), None)


def describe_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A call's arguments in a few words, for an error message: ``(dict with keys ['a', 'b'])``."""

    def word(value: Any) -> str:
        if isinstance(value, Tensor):
            return f"Tensor{tuple(value.shape)}"
        if isinstance(value, Mapping):
            return f"{type(value).__name__} with keys {list(value)}"
        return type(value).__name__

    return "(" + ", ".join([*map(word, args), *(f"{k}={word(v)}" for k, v in kwargs.items())]) + ")"


def input_embedding(net: nn.Module) -> nn.Module | None:
    """The module embedding integer inputs: ``get_input_embeddings()`` of ``net`` or of its first submodule that
    has one (a Hugging Face model inside a LightningModule), else the first ``nn.Embedding``."""
    for module in net.modules():
        getter = getattr(module, "get_input_embeddings", None)
        if callable(getter):
            embedding = getter()
            if isinstance(embedding, nn.Module):
                return embedding
    return next((m for m in net.modules() if isinstance(m, nn.Embedding)), None)


class Replay:
    """While :meth:`replaying`, ``net(x)`` runs the remembered call whose input is ``x`` (or :attr:`current`), with
    ``x`` in place of its input, and returns the logits (``output_fn``)."""

    def __init__(self, net: nn.Module, output_fn: Callable[[Any], Tensor]) -> None:
        self.net, self.output_fn = net, output_fn
        self.embedding = input_embedding(net)
        self.calls: list[tuple[Tensor, Call]] = []
        self.current: Call | None = None
        self._active = False
        self._embedded: Tensor | None = None
        self._handles: list[RemovableHandle] = []

    def attach(self) -> Replay:
        if not self._handles:
            # prepended, so a capture's hooks see the replayed call's logits
            self._handles.append(self.net.register_forward_pre_hook(self._pre, with_kwargs=True, prepend=True))
            self._handles.append(self.net.register_forward_hook(self._post, prepend=True))
            if self.embedding is not None:
                self._handles.append(self.embedding.register_forward_hook(self._embed))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        self.calls, self.current = [], None

    def remember(self, x: Tensor, call: Call) -> None:
        """Keep ``call`` for later forward passes on ``x`` (the measures' input: the embedding output for tokens)."""
        self.calls.append((x, call))

    @contextmanager
    def replaying(self, call: Call | None = None) -> Iterator[None]:
        """Replay calls inside the block; ``call`` is used for any input (a perturbed or differentiated one)."""
        previous, self.current, self._active = self.current, call, True
        try:
            yield
        finally:
            self.current, self._active = previous, False

    def _find(self, x: Tensor) -> Call | None:
        for kept, call in self.calls:
            n = x.shape[0] if x.dim() > 0 else 0
            if kept.shape[1:] == x.shape[1:] and 0 < n <= kept.shape[0] and kept.dtype == x.dtype:
                if kept.device == x.device and bool((kept[:n] == x.detach()).all()):
                    return call if n == kept.shape[0] else call.head(n)
        return None

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self._active or len(args) != 1 or kwargs or not isinstance(args[0], Tensor):
            return None
        x = args[0]
        call = self.current or self._find(x)
        if call is None:
            return None
        if not call.input.is_floating_point():  # token ids: x is the embedding's output
            if self.embedding is None:
                raise TypeError("the model's input is not floating point and it has no input embedding to perturb.")
            self._embedded = x
            return call.args, call.kwargs
        return None if call.plain else call.with_input(x)

    def _embed(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
        embedded, self._embedded = self._embedded, None
        return embedded

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor | None:
        return self.output_fn(output) if self._active and not isinstance(output, Tensor) else None


@dataclass
class CallTemplate:
    """How the model was called from a batch, so it can be called the same way on other batches (the probe, an
    unlabeled pool): each argument is a batch element (found by identity) or a constant."""

    args: list[tuple[bool, Any]]
    kwargs: dict[str, tuple[bool, Any]]
    site: Site

    @classmethod
    def infer(cls, batch: Any, call: Call) -> CallTemplate | None:
        """The template of ``call`` made from ``batch``, or None if its input is not an element of the batch."""
        elements = _elements(batch)

        def source(value: Any) -> tuple[bool, Any]:
            key = next((k for k, v in elements if v is value), None)
            return (True, key) if key is not None else (False, value)

        args, kwargs = [source(a) for a in call.args], {k: source(v) for k, v in call.kwargs.items()}
        if isinstance(call.site, str):
            from_batch = kwargs[call.site][0]
        else:
            from_batch = args[call.site if isinstance(call.site, int) else call.site[0]][0]
        return cls(args, kwargs, call.site) if from_batch else None

    def call(self, batch: Any) -> Call | None:
        """The call on ``batch``, or None if ``batch`` lacks an element the template reads (another layout)."""
        elements = dict(_elements(batch))
        if any(spec[1] not in elements for spec in (*self.args, *self.kwargs.values()) if spec[0]):
            return None

        def value(spec: tuple[bool, Any]) -> Any:
            return elements[spec[1]] if spec[0] else spec[1]

        return Call(tuple(value(a) for a in self.args), {k: value(v) for k, v in self.kwargs.items()}, self.site)


def _elements(batch: Any) -> list[tuple[Any, Any]]:
    """The batch's elements by key or position, and the batch itself (key ``...``)."""
    if isinstance(batch, Mapping):
        return [*batch.items(), (..., batch)]
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        return [*enumerate(batch), (..., batch)]
    return [(..., batch)]
