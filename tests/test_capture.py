import pytest
import torch
from torch import nn

from lightning_gensens.capture import ForwardCapture


def test_records_input_logits_and_preactivations_even_inplace():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(6, 4)
    with ForwardCapture(net, preactivations=True) as cap:
        out = net(x)
    record = cap.records[-1] if cap.records else None
    assert record is None  # detach clears
    cap = ForwardCapture(net, preactivations=True).attach()
    cap.enabled = True
    out = net(x)
    record = cap.pop()
    h1 = net[0](x)
    assert torch.equal(record.x, x) and torch.equal(record.logits, out)
    assert torch.allclose(record.preacts[0], h1) and (record.preacts[0] < 0).any()
    assert torch.allclose(record.preacts[1], net[2](torch.relu(h1)))
    cap.detach()
    assert not net._forward_hooks and not net[1]._forward_pre_hooks and not net[3]._forward_pre_hooks


def test_disabled_hooks_record_nothing():
    net = nn.Sequential(nn.Linear(4, 2))
    cap = ForwardCapture(net).attach()
    net(torch.randn(2, 4))
    assert cap.pop() is None
    cap.detach()


def test_refuses_what_it_cannot_capture():
    with pytest.raises(ValueError, match="no nn.Linear"):
        ForwardCapture(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="module '1' is GELU"):
        ForwardCapture(nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 2)), preactivations=True)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(ValueError, match="functional F.relu"):
        ForwardCapture(Functional(), preactivations=True)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x), x

    with ForwardCapture(Pair()) as cap:  # a tuple's first element is the logits
        cap.model(torch.randn(2, 3))
        assert cap.pop().logits.shape == (2, 2)

    class Named(Pair):
        def forward(self, x):
            return {"scores": self.a(x)}

    with ForwardCapture(Named()) as cap, pytest.raises(TypeError, match="output_fn"):
        cap.model(torch.randn(2, 3))
    with ForwardCapture(Named(), output_fn=lambda out: out["scores"]) as cap:
        cap.model(x=torch.randn(4, 3))  # keyword calls are captured too
        assert cap.pop().logits.shape == (4, 2)


class _DictNet(nn.Module):
    """Called with one mapping, as ``self(batch)``; returns ``{"logits": …}``."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, batch):
        return {"logits": self.linear(batch["x"]) + batch["shift"][:, None]}


def test_a_call_with_one_mapping_is_recorded_and_replayed_with_the_input_changed_inside_it():
    from lightning_gensens.replay import CallTemplate, Replay

    net, batch = _DictNet(), {"x": torch.randn(6, 4), "shift": torch.arange(6.0), "y": torch.zeros(6)}
    cap = ForwardCapture(net).attach()
    cap.enabled = True
    out = net(batch)
    record = cap.pop()
    cap.detach()
    assert record.call.site == (0, "x") and torch.equal(record.x, batch["x"])
    assert torch.equal(record.logits, out["logits"])
    part = record.take(slice(2))
    assert torch.equal(part.call.input, batch["x"][:2]) and torch.equal(part.call.args[0]["shift"], torch.arange(2.0))
    replay = Replay(net, lambda o: o["logits"]).attach()
    z = torch.randn(2, 4)
    with replay.replaying(part.call):
        assert torch.equal(net(z), net.linear(z) + torch.arange(2.0)[:, None])
    replay.detach()
    other = {"x": torch.randn(3, 4), "shift": torch.ones(3), "y": torch.zeros(3)}
    call = CallTemplate.infer(batch, record.call).call(other)  # the probe's batches are called the same way
    assert call.args[0] is other and torch.equal(call.input, other["x"])


def test_the_output_layer_s_input_is_recorded_where_its_output_is_the_logits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(5, 1, 10)
    cap = ForwardCapture(net, head=True).attach()
    cap.enabled = True
    net(x)
    record = cap.pop()
    assert torch.equal(record.head, net[2](net[1](net[0](x))))
    assert torch.equal(record.take(slice(1, 3)).head, record.head[1:3])
    cap.record_head = False
    net(x)
    assert cap.pop().head is None
    cap.detach()
    assert not net[3]._forward_hooks

    class LastIsNotTheOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(4, 2)
            self.side = nn.Linear(4, 4)  # registered last, applied first

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x + self.side(x))

    other = LastIsNotTheOutput()
    with ForwardCapture(other, head=True) as cap:
        other(torch.randn(3, 4))
        assert cap.pop().head is None
