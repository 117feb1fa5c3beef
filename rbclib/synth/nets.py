"""Networks of the denoising diffusion GAN (Xiao, Kreis & Vahdat, ICLR 2022).

Generator: a U-Net that predicts x0 from (x_t, t, z); the time embedding is added inside
each residual block and the latent z enters every normalisation layer through adaptive
group norm (a FiLM scale and shift computed from z by a small mapping network).
Discriminator: a down-sampling residual network judging the pair (x_{t-1}, x_t) at step t.
Its convolutions start from He (leaky-ReLU) initialisation: with PyTorch's default the
activations shrank about 8x over three blocks, the logits stayed within +-0.2 and, on the
quick budget (420 steps), the generator's feature Frechet distance was 94; with He init 22.
An optional conditioning image (the phase patch for the mask model G_M) is concatenated
to the input of both networks. With ``n_classes`` both networks are class-conditional (the
class of the cell a patch is centred on): the generator adds a learnt class embedding to
its style vector (so the class enters every normalisation layer, like z), the
discriminator adds a projection term <embed(y), features> to its logit (Miyato & Koyama,
ICLR 2018). Widths are configurable so the same code gives small CPU
nets at 64 px and paper-like nets at 256 px.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of step numbers.

    Parameters
    ----------
    t : torch.Tensor
        (B,) step numbers.
    dim : int
        Embedding size (an odd one is zero-padded).

    Returns
    -------
    torch.Tensor
        (B, dim) float32 embedding: sines, then cosines.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _labels(y: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Class labels (B,) of a class-conditional network's batch ``x``; an error when missing."""
    if y is None or y.shape != x.shape[:1]:
        raise ValueError(f"a class-conditional network needs one class label per sample ({x.shape[0]}), got "
                         f"{None if y is None else tuple(y.shape)}")
    return y


def _groups(ch: int) -> int:
    return math.gcd(ch, 8) or 1


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from a style vector w: GN(h) * (1 + g(w)) + b(w).

    g and b start at zero, so the layer starts as a plain GroupNorm.

    Parameters
    ----------
    channels : int
        Channels of h.
    style_dim : int
        Size of w.
    """

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.style = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.style.weight)
        nn.init.zeros_(self.style.bias)

    def forward(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Normalise ``h`` with the scale and shift of ``w``.

        Parameters
        ----------
        h : torch.Tensor
            (B, channels, H, W) features.
        w : torch.Tensor
            (B, style_dim) style vectors.

        Returns
        -------
        torch.Tensor
            (B, channels, H, W).
        """
        gamma, beta = self.style(w)[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1.0 + gamma) + beta


class GenBlock(nn.Module):
    """Residual block: AdaGN(z) -> SiLU -> conv, + time embedding, AdaGN(z) -> SiLU -> conv.

    Parameters
    ----------
    in_ch, out_ch : int
        Input and output channels (a 1x1 skip convolution when they differ).
    t_dim : int
        Size of the time embedding.
    style_dim : int
        Size of the style vector.
    """

    def __init__(self, in_ch: int, out_ch: int, t_dim: int, style_dim: int):
        super().__init__()
        self.norm1 = AdaptiveGroupNorm(in_ch, style_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(t_dim, out_ch)
        self.norm2 = AdaptiveGroupNorm(out_ch, style_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_ch, H, W) features.
        temb : torch.Tensor
            (B, t_dim) time embedding.
        w : torch.Tensor
            (B, style_dim) style vectors.

        Returns
        -------
        torch.Tensor
            (B, out_ch, H, W), the residual sum divided by sqrt(2).
        """
        h = self.conv1(F.silu(self.norm1(x, w)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h, w)))
        return (h + self.skip(x)) / math.sqrt(2.0)


class Generator(nn.Module):
    """x0 predictor G(x_t, t, z[, cond]) -> (B, out_channels, H, W) in [-1, 1].

    Parameters
    ----------
    in_channels : int
        Channels of x_t.
    cond_channels : int, optional
        Channels of the conditioning image (0, the default, for none).
    widths : tuple of int, optional
        Channels per U-Net level, default (32, 64, 128); H and W must be divisible by
        2 ** (len(widths) - 1).
    blocks : int, optional
        Residual blocks per level, default 1.
    z_dim : int, optional
        Latent size, default 32.
    n_classes : int, optional
        Class labels y of a class-conditional generator (0, the default: unconditional).
    """

    def __init__(self, *, in_channels: int, cond_channels: int = 0, widths: tuple[int, ...] = (32, 64, 128),
                 blocks: int = 1, z_dim: int = 32, n_classes: int = 0):
        super().__init__()
        self.in_channels, self.cond_channels, self.z_dim = in_channels, cond_channels, z_dim
        t_dim = style_dim = 4 * widths[0]
        self.t_dim = t_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.z_map = nn.Sequential(nn.Linear(z_dim, style_dim), nn.SiLU(), nn.Linear(style_dim, style_dim),
                                   nn.SiLU(), nn.Linear(style_dim, style_dim))
        self.class_embed = nn.Embedding(n_classes, style_dim) if n_classes else None
        self.stem = nn.Conv2d(in_channels + cond_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = widths[0]
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList([GenBlock(ch if b == 0 else w, w, t_dim, style_dim) for b in range(blocks)]))
            ch = w
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = nn.ModuleList([GenBlock(ch, ch, t_dim, style_dim) for _ in range(2)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up.append(nn.ModuleList([GenBlock(ch + w if b == 0 else w, w, t_dim, style_dim) for b in range(blocks)]))
            ch = w
            if i > 0:
                self.upsample.append(nn.Conv2d(w, w, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor, cond: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x0.

        Parameters
        ----------
        x_t : torch.Tensor
            (B, in_channels, H, W) noisy sample.
        t : torch.Tensor
            (B,) step numbers.
        z : torch.Tensor
            (B, z_dim) latents.
        cond : torch.Tensor, optional
            (B, cond_channels, H, W) conditioning image.
        y : torch.Tensor, optional
            (B,) class labels; required by a class-conditional generator.

        Returns
        -------
        torch.Tensor
            (B, in_channels, H, W) x0 prediction in [-1, 1].

        Raises
        ------
        ValueError
            When a class-conditional generator gets no label per sample.
        """
        temb = self.t_mlp(timestep_embedding(t, self.t_dim))
        w = self.z_map(z)
        if self.class_embed is not None:
            w = w + self.class_embed(_labels(y, x_t))
        h = self.stem(x_t if cond is None else torch.cat([x_t, cond], dim=1))
        skips = []
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, temb, w)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, temb, w)
        for j, level in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in level:
                h = block(h, temb, w)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.out(F.silu(self.out_norm(h))))


class DiscBlock(nn.Module):
    """Residual down-sampling block with the time embedding added after the first conv.

    Parameters
    ----------
    in_ch, out_ch : int
        Input and output channels.
    t_dim : int
        Size of the time embedding.
    """

    def __init__(self, in_ch: int, out_ch: int, t_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(t_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_ch, H, W) features.
        temb : torch.Tensor
            (B, t_dim) time embedding.

        Returns
        -------
        torch.Tensor
            (B, out_ch, H / 2, W / 2), the residual sum divided by sqrt(2).
        """
        h = F.leaky_relu(self.conv1(F.leaky_relu(x, 0.2)), 0.2) + self.temb(temb)[:, :, None, None]
        h = F.avg_pool2d(self.conv2(h), 2)
        return (h + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """D(x_{t-1}, x_t, t[, cond][, y]) -> (B,) logits.

    Parameters
    ----------
    channels : int
        Channels of x.
    cond_channels : int, optional
        Channels of the condition (0, the default, for none).
    widths : tuple of int, optional
        Channels per down-sampling block, default (32, 64, 128).
    n_classes : int, optional
        Class labels y of a class-conditional (projection) discriminator (0, the default:
        unconditional).
    """

    def __init__(self, *, channels: int, cond_channels: int = 0, widths: tuple[int, ...] = (32, 64, 128),
                 n_classes: int = 0):
        super().__init__()
        t_dim = 4 * widths[0]
        self.t_dim = t_dim
        self.t_mlp = nn.Sequential(nn.Linear(t_dim, t_dim), nn.LeakyReLU(0.2), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv2d(2 * channels + cond_channels, widths[0], 3, padding=1)
        chans = [widths[0], *widths]
        self.blocks = nn.ModuleList([DiscBlock(chans[i], chans[i + 1], t_dim) for i in range(len(widths))])
        self.head = nn.Linear(widths[-1], 1)
        self.class_embed = nn.Embedding(n_classes, widths[-1]) if n_classes else None
        if self.class_embed is not None:  # the projection starts at 0: the logit is the unconditional one
            nn.init.zeros_(self.class_embed.weight)
        for m in self.modules():  # variance-preserving init for leaky-ReLU convs (He et al. 2015)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                cond: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Judge the pair (x_{t-1}, x_t) at step t.

        Parameters
        ----------
        x_prev : torch.Tensor
            (B, channels, H, W) x_{t-1}.
        x_t : torch.Tensor
            (B, channels, H, W) x_t.
        t : torch.Tensor
            (B,) step numbers.
        cond : torch.Tensor, optional
            (B, cond_channels, H, W) condition.
        y : torch.Tensor, optional
            (B,) class labels; required by a class-conditional discriminator.

        Returns
        -------
        torch.Tensor
            (B,) real/fake logits.

        Raises
        ------
        ValueError
            When a class-conditional discriminator gets no label per sample.
        """
        temb = self.t_mlp(timestep_embedding(t, self.t_dim))
        parts = [x_prev, x_t] + ([] if cond is None else [cond])
        h = self.stem(torch.cat(parts, dim=1))
        for block in self.blocks:
            h = block(h, temb)
        h = F.leaky_relu(h, 0.2).sum(dim=(2, 3))
        logit = self.head(h).squeeze(1)
        if self.class_embed is not None:
            logit = logit + (self.class_embed(_labels(y, x_t)) * h).sum(dim=1)
        return logit
