import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gensens.functional import layer_spectral_norms, spectral_norm_product
from lightning_gensens.functional.spectral_norm import conv_input_shapes
from tests.helpers import toy_mlp


def _dense_conv_matrix(conv: nn.Conv2d, shape: tuple[int, ...]) -> np.ndarray:
    """The convolution as a dense matrix: apply it to every basis vector of the input space."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    out = F.conv2d(basis, conv.weight.detach(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.reshape(n, -1).T.numpy()


def test_linear_product_matches_numpy():
    net = toy_mlp((6, 9, 4, 3))
    expected = np.prod([np.linalg.norm(m.weight.detach().numpy(), 2) for m in net if isinstance(m, nn.Linear)])
    assert math.isclose(float(spectral_norm_product(net)), expected, rel_tol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0)])
def test_conv_operator_norm_matches_dense_matrix(stride, padding):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=stride, padding=padding), nn.ReLU(), nn.Flatten()).double()
    x = torch.randn(4, 2, 7, 7, dtype=torch.float64)
    net = nn.Sequential(*net, nn.Linear(net(x).shape[1], 2).double())
    shapes = conv_input_shapes(net, x)
    assert shapes == {"0": (2, 7, 7)}
    norms = layer_spectral_norms(net, shapes)
    dense = np.linalg.norm(_dense_conv_matrix(net[0], (2, 7, 7)), 2)
    assert math.isclose(float(norms[0]), dense, rel_tol=1e-6)
    assert not math.isclose(dense, np.linalg.norm(net[0].weight.detach().reshape(3, -1).numpy(), 2), rel_tol=1e-3)


def test_conv_needs_input_shape():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="example_input"):
        spectral_norm_product(net)
