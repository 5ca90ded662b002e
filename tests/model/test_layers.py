"""The training layer computes what PyTorch's encoder layer computes, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.layers import encoder_layer_training


@pytest.mark.parametrize("width,heads,steps", [(128, 4, 40), (64, 8, 7)])
def test_training_layer_matches_pytorchs_layer_and_its_gradients(width, heads, steps):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True).train()
    x = torch.randn(6, steps, width, requires_grad=True)
    expected = layer(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *layer.parameters()])
    got = encoder_layer_training(layer, x)
    got_grads = torch.autograd.grad(got.square().sum(), [x, *layer.parameters()])
    assert torch.allclose(got, expected, atol=1e-5)
    for a, b in zip(got_grads, expected_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_pre_norm_layers_fall_back_to_pytorchs_forward():
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
    x = torch.randn(2, 5, 32)
    assert torch.equal(encoder_layer_training(layer, x), layer(x))
