"""Networks: embeddings, the MLP and the U-Net, class labels with a null label, the factory."""

import math

import pytest
import torch
from torch import nn

from driftlab.core import ConfigError
from driftlab.diffusion import Denoiser
from driftlab.diffusion.networks import (
    MLP,
    FourierEmbedding,
    PositionalEmbedding,
    UNet,
    build_network,
)


# ----- embeddings -------------------------------------------------------------------------
def test_positional_embedding_values():
    emb = PositionalEmbedding(4, max_positions=10000)
    out = emb(torch.tensor([0.0, 1.0]))
    # Frequencies 10000^(-0/2) = 1 and 10000^(-1/2) = 0.01: [cos c, cos c/100, sin c, sin c/100].
    expected = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]]
    )
    assert torch.allclose(out, expected, atol=1e-6)
    assert "freqs" not in emb.state_dict()  # a function of (dim, max_positions), not saved


def test_fourier_embedding_is_seeded_saved_and_on_the_circle():
    torch.manual_seed(0)
    a = FourierEmbedding(64, scale=16)
    torch.manual_seed(0)
    b = FourierEmbedding(64, scale=16)
    assert torch.equal(a.freqs, b.freqs) and "freqs" in a.state_dict()
    assert 8 < a.freqs.std() < 24  # N(0, 16^2) frequencies
    out = a(torch.linspace(-2, 2, 7))
    assert out.shape == (7, 64)
    assert torch.allclose(out[:, :32] ** 2 + out[:, 32:] ** 2, torch.ones(7, 32), atol=1e-5)


@pytest.mark.parametrize("cls", [FourierEmbedding, PositionalEmbedding])
def test_embedding_dim_must_be_even(cls):
    with pytest.raises(ConfigError, match=r"dim must be even.*got 7"):
        cls(7)


# ----- MLP --------------------------------------------------------------------------------
def test_mlp_shapes_layers_and_zero_start():
    net = MLP(2, hidden=32, depth=3)
    assert [(m.in_features, m.out_features) for m in net.layers] == [(2, 32), (32, 32), (32, 32)]
    out = net(torch.randn(5, 2), torch.randn(5))
    assert out.shape == (5, 2) and torch.equal(out, torch.zeros(5, 2))
    assert net(torch.randn(5, 2), 0.3).shape == (5, 2)  # a scalar c_noise is shared


def test_mlp_fits_a_small_regression_target():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, c_noise = torch.randn(64, 2, generator=g), torch.randn(64, generator=g)
    target = torch.stack([torch.sin(2 * x[:, 1]) + c_noise, x[:, 0] * x[:, 1]], dim=1)
    net = MLP(2, hidden=64, depth=3, embedding="positional", emb_dim=32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = float((net(x, c_noise) - target).square().mean())
    for _ in range(300):
        loss = (net(x, c_noise) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float((net(x, c_noise) - target).square().mean())
    assert initial > 0.8 and final < 0.01


def _randomise(net: nn.Module) -> None:
    """Undo the zero start (output, residual and attention projections) so that the output
    depends on every input."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.05 * torch.randn_like(param))


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_class_labels_change_output_and_null_equals_none(kind):
    torch.manual_seed(0)
    net = MLP(4, hidden=32, num_classes=3) if kind == "mlp" else UNet(num_classes=3, channels=16)
    assert net.label_embedding.table.num_embeddings == 4  # 3 classes + the null label
    _randomise(net)
    x = torch.randn(6, 4) if kind == "mlp" else torch.randn(6, 1, 8, 8)
    c_noise = torch.randn(6)
    zero, one = (
        net(x, c_noise, torch.zeros(6, dtype=torch.long)),
        net(x, c_noise, torch.ones(6).long()),
    )
    assert (zero - one).abs().max() > 1e-3
    null = net(x, c_noise, torch.full((6,), 3))
    assert torch.equal(null, net(x, c_noise, None))
    with pytest.raises(ValueError, match=r"class_labels must lie in 0\.\.3.*got values in 0\.\.4"):
        net(x, c_noise, torch.tensor([0, 1, 2, 3, 4, 0]))


def test_labels_rejected_without_classes():
    with pytest.raises(ValueError, match="num_classes=0"):
        MLP(2)(torch.randn(3, 2), torch.randn(3), torch.zeros(3, dtype=torch.long))


# ----- U-Net ------------------------------------------------------------------------------
def test_unet_default_size_zero_start_and_denoiser():
    torch.manual_seed(0)
    net = UNet()
    assert sum(p.numel() for p in net.parameters()) == 701_345
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(net(x, torch.randn(4)), torch.zeros(4, 1, 8, 8))
    # Zero output: EDM's denoiser starts at c_skip x = sd^2 / (sigma^2 + sd^2) x.
    sigma = torch.tensor([0.1, 0.5, 1.0, 10.0])
    denoised = Denoiser(net, "edm")(x, sigma)
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.allclose(denoised, c_skip[:, None, None, None] * x)


def test_unet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = UNet(channels=16, num_classes=10, num_res_blocks=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, target = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8)
    labels = torch.arange(8)
    # Zero-started layers (output, residual convs, attention projections) pass gradient on
    # only once they have moved, so the third step reaches every parameter.
    for _ in range(3):
        opt.zero_grad()
        (net(x, torch.randn(8), labels) - target).square().mean().backward()
        opt.step()
    silent = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert silent == []


def test_unet_scales_to_larger_rgb_images():
    net = UNet(
        in_channels=3,
        resolution=16,
        channels=16,
        channel_mult=(1, 2, 2),
        attention_resolutions=(8,),
    )
    _randomise(net)
    out = net(torch.randn(2, 3, 16, 16), torch.randn(2))
    assert out.shape == (2, 3, 16, 16) and out.abs().max() > 0
    n_attention = sum(type(m).__name__ == "Attention" for m in net.modules())
    assert n_attention == 1 + 1 + 2  # middle, encoder and decoder at 8x8 (1 and 2 blocks)


def test_unet_rejects_bad_config_and_input():
    with pytest.raises(ConfigError, match=r"divisible by .* = 4.*got 10"):
        UNet(resolution=10, channel_mult=(1, 2, 2))
    with pytest.raises(
        ConfigError, match=r"attention_resolutions entry must be one of 8, 4; got 2"
    ):
        UNet(attention_resolutions=(2,))
    with pytest.raises(ConfigError, match="embedding must be one of 'fourier', 'positional'"):
        UNet(embedding="learned")
    with pytest.raises(ValueError, match=r"x must have shape \[B, 1, 8, 8\], got \(2, 1, 16, 16\)"):
        UNet()(torch.randn(2, 1, 16, 16), torch.zeros(2))


# ----- factory ----------------------------------------------------------------------------
def test_build_network_kinds_and_shapes():
    net = build_network("mlp", (2,), hidden=16)
    assert isinstance(net, MLP) and net(torch.randn(3, 2), torch.zeros(3)).shape == (3, 2)
    flat = build_network("mlp", (1, 8, 8), num_classes=10, hidden=16)
    out = flat(torch.randn(3, 1, 8, 8), torch.zeros(3), class_labels=torch.tensor([0, 5, 10]))
    assert out.shape == (3, 1, 8, 8)
    unet = build_network("unet", (3, 16, 16), num_classes=2, channels=16)
    assert isinstance(unet, UNet) and unet.in_channels == 3 and unet.resolution == 16


def test_build_network_errors_name_the_value():
    with pytest.raises(ConfigError, match="network kind must be one of 'mlp', 'unet'; got 'cnn'"):
        build_network("cnn", (2,))
    with pytest.raises(ConfigError, match="unknown MLP option 'width'; allowed: hidden"):
        build_network("mlp", (2,), width=3)
    with pytest.raises(ConfigError, match="unknown UNet option 'resolution'"):
        build_network("unet", (1, 8, 8), resolution=16)
    with pytest.raises(ConfigError, match=r"square images.*got \(1, 8, 4\)"):
        build_network("unet", (1, 8, 4))
