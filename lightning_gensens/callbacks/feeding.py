"""Feeding the measures: the model's own validation forward passes, and the model called on the probe's and the
pools' batches as it was called on the validation batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_gensens.batches import BatchToXY
from lightning_gensens.callbacks.session import Session
from lightning_gensens.capture import Captured, ForwardCapture, exclusive
from lightning_gensens.replay import Call, CallTemplate


class Feeder:
    """Feeds ``session`` what ``capture`` records of ``net``, with each batch's labels (``batch_to_xy``)."""

    def __init__(self, net: nn.Module, capture: ForwardCapture, session: Session, batch_to_xy: BatchToXY) -> None:
        self.net, self.capture, self.session, self.batch_to_xy = net, capture, session, batch_to_xy
        self.template: CallTemplate | None = None
        """How the model was called from a validation batch, to call it so on the others."""

    def validation(self, batch: Any, record: Captured) -> None:
        """Feed the model's own forward pass on a validation batch."""
        record.y = self.batch_to_xy(batch)[1]
        if self.template is None and record.call is not None:
            self.template = CallTemplate.infer(batch, record.call)
        if record.y is not None and record.y.shape[0] != record.logits.shape[0]:
            raise ValueError(
                f"the validation batch has {record.y.shape[0]} labels but the model's last forward call saw "
                f"{record.logits.shape[0]} samples; pass `batch_to_xy=` or `module=` to match them."
            )
        self.session.feed("val", record)

    def batch(self, batch: Any, split: str) -> Call:
        """Call the model on ``batch`` as it was called on the validation batches, and feed the record."""
        x, y = self.batch_to_xy(batch)
        example = self.session.example
        if example is not None and example.call is not None and x.shape[1:] != example.call.input.shape[1:]:
            raise ValueError(
                f"the {split} batches have inputs of shape {tuple(x.shape[1:])}, but the model was measured on "
                f"inputs of shape {tuple(example.call.input.shape[1:])}."
            )
        call = self.template.call(batch) if self.template is not None else None
        call = call or Call((x,))
        if not x.shape[0]:  # nothing to measure, and a model may refuse an empty batch
            return call
        with torch.no_grad():  # the measures differentiate what they need themselves
            self.net(*call.args, **call.kwargs)
        record = self.capture.pop()
        if record is not None:
            record.y = y
            self.session.feed(split, record)
        return call

    def time_call(self, call: Call, clock: Callable[[], float]) -> float:
        """Seconds of one forward call of the model on ``clock``, recorded by no capture (synchronised on CUDA: the
        unit of the budget's guesses is timed a few times once per fit)."""
        cuda = call.input.device.type == "cuda"
        with exclusive(None), torch.no_grad():
            if cuda:
                torch.cuda.synchronize(call.input.device)
            start = clock()
            self.net(*call.args, **call.kwargs)
            if cuda:
                torch.cuda.synchronize(call.input.device)
            return clock() - start
