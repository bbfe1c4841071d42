"""Networks ``F(x_in, c_noise, class_labels)`` for the denoisers of :mod:`denoisers` (EDM eq. 7).

Every network here takes the preconditioned input ``x_in = c_in(sigma) x_hat``, the scalar
noise condition ``c_noise [B]`` and optional integer ``class_labels [B]``, and returns a tensor
of the input's shape, so :class:`driftlab.diffusion.Denoiser` can wrap any of them.

- :class:`FourierEmbedding` and :class:`PositionalEmbedding` turn ``c_noise`` into a vector:
  random Fourier features (Tancik et al. 2020, used by NCSN++, Song et al. 2021) or the
  sinusoidal position embedding of the Transformer (used by DDPM, Ho et al. 2020). Both follow
  NVlabs/edm ``training/networks.py``.
- :class:`MLP` is a residual-free multilayer perceptron for vectors (the 2-D toy sets).
- :class:`UNet` is a small DDPM / ADM-style U-Net (Ho et al. 2020; Dhariwal & Nichol 2021):
  residual blocks with group norm, the embedding added in every block, self-attention at the
  lowest resolution, skip connections from the encoder to the decoder.

Class conditioning follows classifier-free guidance (Ho & Salimans 2022) as implemented by DiT
(Peebles & Xie 2023): the label table has ``num_classes + 1`` rows, the last one the learned
"no class" label used for label dropout in training and for the unconditional branch in
sampling. ``class_labels=None`` means "no class" for every sample.
"""

from __future__ import annotations

import inspect
import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual name)

from driftlab.core.config import ConfigError, check_choice, check_int, check_nonnegative

EMBEDDINGS = ("fourier", "positional")
NETWORKS = ("mlp", "unet")


# ----- noise embeddings -------------------------------------------------------------------
def _check_even(name: str, value: int) -> int:
    check_int(name, value, minimum=2)
    if value % 2:
        raise ConfigError(f"{name} must be even (cos and sin halves), got {value}")
    return value


class FourierEmbedding(nn.Module):
    """Random Fourier features of ``c_noise``: ``[cos(2 pi f c), sin(2 pi f c)]``,
    ``f ~ N(0, scale^2)`` drawn once and kept fixed (NCSN++, Song et al. 2021; EDM
    ``FourierEmbedding``).

    The frequencies are a buffer, so they travel with the ``state_dict``; they are drawn from
    torch's global generator, so ``torch.manual_seed`` before construction fixes them.
    """

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        _check_even("dim", dim)
        check_nonnegative("scale", scale)
        self.dim = dim
        self.register_buffer("freqs", torch.randn(dim // 2) * float(scale))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * (2 * math.pi * self.freqs.to(c_noise.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of ``c_noise`` with geometric frequencies ``max_positions^(-i/(d/2))``,
    ``i = 0 .. d/2 - 1`` (Vaswani et al. 2017, as used for DDPM's time index, Ho et al. 2020;
    EDM ``PositionalEmbedding``). Suited to ``c_noise`` spanning ~1 to ``max_positions``."""

    def __init__(self, dim: int, max_positions: int = 10000) -> None:
        super().__init__()
        _check_even("dim", dim)
        check_int("max_positions", max_positions, minimum=1)
        self.dim = dim
        exponents = torch.arange(dim // 2, dtype=torch.float32) / (dim // 2)
        # A buffer that is not saved: it is a pure function of (dim, max_positions).
        self.register_buffer("freqs", float(max_positions) ** -exponents, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * self.freqs.to(c_noise.dtype)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def make_noise_embedding(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """``"fourier"``: :class:`FourierEmbedding`; ``"positional"``: :class:`PositionalEmbedding`."""
    check_choice("embedding", kind, EMBEDDINGS)
    if kind == "fourier":
        return FourierEmbedding(dim, scale=fourier_scale)
    return PositionalEmbedding(dim)


def _batch_noise(c_noise: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``c_noise`` as ``[B]`` in ``x``'s dtype (a scalar is shared by the whole batch)."""
    c_noise = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device)
    if c_noise.ndim == 0:
        return c_noise.expand(x.shape[0])
    if c_noise.shape != (x.shape[0],):
        raise ValueError(
            f"c_noise must be a scalar or have shape [{x.shape[0]}], got {tuple(c_noise.shape)}"
        )
    return c_noise.to(x.dtype)


class LabelEmbedding(nn.Module):
    """A learned vector per class plus one for "no class" (row ``num_classes``), the
    classifier-free guidance null label (Ho & Salimans 2022; DiT's ``LabelEmbedder``)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, class_labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        device = self.table.weight.device
        if class_labels is None:
            class_labels = torch.full((batch,), self.num_classes, device=device)
        class_labels = torch.as_tensor(class_labels, device=device)
        if class_labels.shape != (batch,) or class_labels.is_floating_point():
            raise ValueError(
                f"class_labels must be an integer tensor of shape [{batch}], "
                f"got {class_labels.dtype} {tuple(class_labels.shape)}"
            )
        low, high = (int(class_labels.min()), int(class_labels.max())) if batch else (0, 0)
        if low < 0 or high > self.num_classes:
            raise ValueError(
                f"class_labels must lie in 0..{self.num_classes} ({self.num_classes} = no class), "
                f"got values in {low}..{high}"
            )
        return self.table(class_labels.long())


def _check_no_labels(class_labels: torch.Tensor | None) -> None:
    if class_labels is not None:
        raise ValueError("class_labels were given to a network built with num_classes=0")


# ----- MLP for vectors --------------------------------------------------------------------
class MLP(nn.Module):
    """A multilayer perceptron ``F(x, c_noise, class_labels)`` for vectors ``x [B, dim]``.

    ``depth`` hidden layers of width ``hidden`` with SiLU:
    ``dim -> hidden -> ... -> hidden -> dim`` (``depth = 3``: ``Linear(dim, hidden)``, two
    ``Linear(hidden, hidden)``, ``Linear(hidden, dim)``). The noise embedding (plus the label
    embedding when ``num_classes > 0``) goes through ``Linear -> SiLU`` once and is then added,
    through its own linear map, to the pre-activation of every hidden layer, so every layer
    knows the noise level (the scheme of DDPM's residual blocks, applied to an MLP). The output
    layer starts at zero, so the denoiser starts as ``c_skip x_hat``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        embedding: str = "fourier",
        emb_dim: int = 128,
        num_classes: int = 0,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("depth", depth, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=0)
        self.noise_embedding = make_noise_embedding(embedding, emb_dim, fourier_scale)
        self.noise_map = nn.Linear(emb_dim, hidden)
        self.label_embedding = LabelEmbedding(num_classes, hidden) if num_classes else None
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.emb_layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")
        emb = self.noise_map(self.noise_embedding(_batch_noise(c_noise, x)))
        if self.label_embedding is not None:
            emb = emb + self.label_embedding(class_labels, x.shape[0])
        else:
            _check_no_labels(class_labels)
        emb = F.silu(emb)
        h = x
        for layer, emb_layer in zip(self.layers, self.emb_layers, strict=True):
            h = F.silu(layer(h) + emb_layer(emb))
        return self.out(h)


# ----- U-Net for images -------------------------------------------------------------------
def _groups(channels: int) -> int:
    """Group count for GroupNorm: up to 32 groups of at least 4 channels (EDM's rule),
    reduced to a divisor of ``channels``."""
    groups = max(1, min(32, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def _zero(module: nn.Module) -> nn.Module:
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))) + W emb)))`` (DDPM / ADM residual block).

    The second convolution starts at zero, so each block starts as the identity (ADM's
    ``zero_module``), which keeps the untrained network's activations at the input's scale.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the ``H x W`` positions, residual, output projection
    started at zero (ADM's ``AttentionBlock``); heads of 64 channels where possible."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // 64) if channels % 64 == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, HW, C/heads]
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (DDPM, ADM with ``conv_resample``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (DDPM, ADM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """A small U-Net ``F(x, c_noise, class_labels)`` for images ``x [B, C, H, W]``, ``H = W``.

    The architecture of DDPM (Ho et al. 2020) with ADM's refinements (Dhariwal & Nichol 2021):

    - noise embedding (``"positional"``, DDPM, or ``"fourier"``, NCSN++) of ``channels``
      features, mapped by ``Linear -> SiLU -> Linear`` to ``4 * channels``; a learned label
      vector (with a "no class" row) is added when ``num_classes > 0``;
    - encoder: per level ``l`` with width ``channels * channel_mult[l]``, ``num_res_blocks``
      residual blocks (each adds ``W emb`` after its first convolution), self-attention after
      each block at ``attention_resolutions``, then a stride-2 convolution except at the last
      level; every block's output is kept as a skip connection;
    - middle: residual block, attention, residual block at the lowest resolution;
    - decoder: per level, ``num_res_blocks + 1`` residual blocks each taking one skip
      connection by concatenation, then nearest-neighbour upsampling and a convolution;
    - output: GroupNorm, SiLU, a 3x3 convolution started at zero, so the untrained network
      outputs exactly 0 and the denoiser starts as ``c_skip x_hat``.

    ``attention_resolutions=None`` puts attention at the lowest resolution only
    (``resolution / 2^(len(channel_mult) - 1)``); ``()`` turns attention off outside the
    middle block. The defaults (32 channels, one residual block per level, 8x8 -> 4x4) are
    sized for CPU training on 8x8 digits: 701,345 parameters, about 0.09-0.1 s of one core
    for a forward and backward pass of 128 digits (the DDPM-like 64 channels with two blocks
    per level: 4.0M parameters, about 0.4 s). For larger images raise ``channels``,
    ``num_res_blocks`` (ADM uses 2-3) and lengthen ``channel_mult`` (e.g. ``(1, 2, 2, 2)`` at
    32x32, as DDPM on CIFAR-10).
    """

    def __init__(
        self,
        in_channels: int = 1,
        resolution: int = 8,
        channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] | None = None,
        num_classes: int = 0,
        dropout: float = 0.0,
        embedding: str = "positional",
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.resolution = check_int("resolution", resolution, minimum=1)
        check_int("channels", channels, minimum=2)
        channel_mult = tuple(channel_mult)
        if not channel_mult:
            raise ConfigError("channel_mult must name at least one level, got ()")
        for mult in channel_mult:
            check_int("channel_mult entry", mult, minimum=1)
        check_int("num_res_blocks", num_res_blocks, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=0)
        if not 0.0 <= check_nonnegative("dropout", dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        levels = len(channel_mult)
        if resolution % 2 ** (levels - 1):
            raise ConfigError(
                f"resolution must be divisible by 2^(len(channel_mult) - 1) = {2 ** (levels - 1)} "
                f"to downsample {levels - 1} times, got {resolution}"
            )
        lowest = resolution // 2 ** (levels - 1)
        resolutions = [resolution // 2**level for level in range(levels)]
        if attention_resolutions is None:
            attention_resolutions = (lowest,)
        attention_resolutions = tuple(attention_resolutions)
        for res in attention_resolutions:
            check_choice("attention_resolutions entry", res, resolutions)

        emb_ch = 4 * channels
        self.noise_embedding = make_noise_embedding(embedding, channels, fourier_scale)
        self.noise_map = nn.Sequential(
            nn.Linear(channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch)
        )
        self.label_embedding = LabelEmbedding(num_classes, emb_ch) if num_classes else None

        self.input = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.encoder = nn.ModuleList()
        skips = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.encoder.append(ResBlock(ch, channels * mult, emb_ch, dropout))
                ch = channels * mult
                if resolutions[level] in attention_resolutions:
                    self.encoder.append(Attention(ch))
                skips.append(ch)
            if level < levels - 1:
                self.encoder.append(Downsample(ch))
                skips.append(ch)
        self.middle = nn.ModuleList(
            [ResBlock(ch, ch, emb_ch, dropout), Attention(ch), ResBlock(ch, ch, emb_ch, dropout)]
        )
        self.decoder = nn.ModuleList()
        for level in reversed(range(levels)):
            for _ in range(num_res_blocks + 1):
                self.decoder.append(
                    ResBlock(ch + skips.pop(), channels * channel_mult[level], emb_ch, dropout)
                )
                ch = channels * channel_mult[level]
                if resolutions[level] in attention_resolutions:
                    self.decoder.append(Attention(ch))
            if level > 0:
                self.decoder.append(Upsample(ch))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        expected = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}"
            )
        emb = self.noise_map(self.noise_embedding(_batch_noise(c_noise, x)))
        if self.label_embedding is not None:
            emb = emb + self.label_embedding(class_labels, x.shape[0])
        else:
            _check_no_labels(class_labels)
        emb = F.silu(emb)  # every block applies its own linear map to SiLU(emb), as in ADM

        h = self.input(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, emb)
            if not isinstance(block, Attention):  # attention refines the block's own skip
                skips.append(h)
            else:
                skips[-1] = h
        for block in self.middle:
            h = block(h, emb)
        for block in self.decoder:
            if isinstance(block, ResBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


# ----- factory ----------------------------------------------------------------------------
class _Flatten(nn.Module):
    """Run a vector network on samples of any shape by flattening them (e.g. an MLP on digits)."""

    def __init__(self, net: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self.shape = tuple(shape)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.net(x.reshape(x.shape[0], -1), c_noise, class_labels)
        return out.reshape(x.shape)


def _check_config(cls: type, config: dict, fixed: tuple[str, ...]) -> None:
    allowed = [
        name for name in inspect.signature(cls.__init__).parameters if name not in ("self", *fixed)
    ]
    for key in config:
        if key not in allowed:
            raise ConfigError(
                f"unknown {cls.__name__} option {key!r}; allowed: {', '.join(allowed)}"
            )


def build_network(
    kind: str, shape: tuple[int, ...], num_classes: int = 0, **config: object
) -> nn.Module:
    """Build a network for samples of per-sample ``shape``.

    - ``"mlp"``: :class:`MLP` with ``dim = prod(shape)``; samples of more than one dimension
      (e.g. ``(1, 8, 8)``) are flattened on the way in and reshaped on the way out.
    - ``"unet"``: :class:`UNet` with ``in_channels, resolution = shape[0], shape[1]``;
      ``shape`` must be ``(C, H, W)`` with ``H = W``.

    ``config`` holds the remaining constructor options; unknown names raise ``ConfigError``.
    """
    check_choice("network kind", kind, NETWORKS)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"shape must be a non-empty tuple of positive sizes, got {shape}")
    if kind == "mlp":
        _check_config(MLP, config, ("dim", "num_classes"))
        net = MLP(math.prod(shape), num_classes=num_classes, **config)
        return net if len(shape) == 1 else _Flatten(net, shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ConfigError(f"unet needs square images, shape (C, H, H); got {shape}")
    _check_config(UNet, config, ("in_channels", "resolution", "num_classes"))
    return UNet(in_channels=shape[0], resolution=shape[1], num_classes=num_classes, **config)
