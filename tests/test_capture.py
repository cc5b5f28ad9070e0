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
