"""relaydiff.networks: EDM preconditioning, conditioning, rebuild from JSON config."""

import json

import pytest
import torch

from relaydiff.networks import EDMPrecond, build_network

TINY = dict(model_channels=8, channel_mult=(1, 2), attn_resolutions=(4,), num_blocks=1)


@pytest.mark.parametrize("embedding_type", ["positional", "fourier"])
def test_shapes_and_identity_at_small_sigma(embedding_type):
    torch.manual_seed(0)
    net = EDMPrecond(8, 3, label_dim=0, embedding_type=embedding_type, **TINY).eval()
    x = torch.randn(3, 3, 8, 8)
    assert net(x, torch.full((3,), 2.0)).shape == x.shape
    # c_skip -> 1 and c_out -> 0 as sigma -> 0: D(x; sigma) -> x (EDM Table 1).
    torch.testing.assert_close(net(x, 1e-6), x, atol=1e-5, rtol=0)


def test_zero_init_output_is_c_skip_x():
    net = EDMPrecond(8, 3, **TINY).eval()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    c_skip = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(net(x, sigma), c_skip[:, None, None, None] * x)


def test_class_labels_int_or_onehot_and_dropout():
    torch.manual_seed(0)
    net = EDMPrecond(8, 3, label_dim=5, label_dropout=1.0, **TINY)
    for p in net.parameters():  # leave the zero init so labels reach the output
        torch.nn.init.normal_(p, std=0.1)
    net.eval()
    x, sigma = torch.randn(2, 3, 8, 8), torch.ones(2)
    labels = torch.tensor([1, 4])
    a = net(x, sigma, labels)
    torch.testing.assert_close(a, net(x, sigma, torch.nn.functional.one_hot(labels, 5).float()))
    assert not torch.allclose(a, net(x, sigma, torch.tensor([2, 0])))
    net.train()  # label_dropout=1: every label dropped -> the unconditional model
    torch.testing.assert_close(net(x, sigma, labels), net(x, sigma, None))


def test_build_network_roundtrip_json():
    spec = {"class_name": "EDMPrecond",
            "kwargs": dict(img_resolution=8, img_channels=3, label_dim=2, model_channels=8,
                           channel_mult=[1, 2], attn_resolutions=[4])}
    spec = json.loads(json.dumps(spec))
    torch.manual_seed(0)
    a = build_network(spec)
    b = build_network(spec)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(a(x, torch.ones(2)), b(x, torch.ones(2)))
    with pytest.raises(ValueError, match="unknown network class"):
        build_network({"class_name": "Nope", "kwargs": {}})
