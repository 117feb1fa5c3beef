"""The GAN + Watershed baseline of the paper's Tables 1-3, after Kim et al. (IEEE J. Biomed.
Health Inform. 26, 1318, 2022; the paper's ref. 25): a conditional GAN whose generator
segments and classifies the cells of a phase image, and a marker-controlled watershed that
splits touching cells (:func:`rbclib.seg.watershed.split_touching`, applied at inference when
a config says ``postprocess = "watershed"``).

The generator is a pix2pix U-Net (Isola et al., CVPR 2017: 4 x 4 convolutions of stride 2,
BatchNorm, LeakyReLU down and ReLU up, skip connections, dropout in the innermost up block)
with widths 64-128-256-384-512 over five levels: 12.99 M parameters at 3 input channels and 5
classes, near Kim et al.'s 13,043,269 (Table 3). Their exact layer widths are not published;
these are chosen to match the count. It takes 5.05 GMACs per 256 px patch (``count_macs``);
the 81 GMACs of the paper's Table 3 cannot be reached by a 13 M-parameter U-Net of this kind
and are not reproduced. The discriminator is a PatchGAN on (phase, class
probabilities) pairs: real pairs carry the one-hot ground truth, fake ones the generator's
softmax. The generator trains on the segmenters' CE + Dice loss plus
``adversarial_weight`` x the non-saturating GAN loss, in the training loop of every model
(:func:`rbclib.seg.train.train_segmenter`, same patches, budget and seed).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rbclib.core.distributed import average_gradients, broadcast_buffers
from rbclib.core.labels import IGNORE
from rbclib.core.training import autocast, fused_optimiser

GENERATOR_WIDTHS = (64, 128, 256, 384, 512)
ADVERSARIAL_WEIGHT = 0.1
"""Weight of the GAN loss beside CE + Dice (about 1). pix2pix weighs its L1 term 100x the GAN
loss; a tenth keeps the adversarial term a correction to the segmentation loss, not its rival."""
DISCRIMINATOR_LR = 2e-4  # pix2pix's Adam settings (betas 0.5, 0.999)
DISCRIMINATOR_WIDTH = 32
"""First-layer width of the PatchGAN (pix2pix: 64). At 64 one discriminator update and the
generator's adversarial pass took 1.7x the generator's own step (8 x 128 px, 2-core CPU);
at 32 the compute is a quarter."""
ENCODER_NAME = "pix2pix"  # the ``encoder`` entry of a GAN + Watershed config (it has no ResNet encoder)


class Pix2PixUNet(nn.Module):
    """pix2pix U-Net generator: (B, in_channels, H, W) -> (B, classes, H, W) logits.

    H and W must be multiples of 2 ** len(widths) (32 by default).

    Parameters
    ----------
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.
    widths : tuple of int, optional
        Channels of the down levels, outermost first; default :data:`GENERATOR_WIDTHS`
        (64-128-256-384-512).
    """

    def __init__(self, in_channels: int = 3, classes: int = 5, widths: tuple[int, ...] = GENERATOR_WIDTHS):
        super().__init__()
        self.down = nn.ModuleList()
        prev = in_channels
        for i, w in enumerate(widths):
            innermost, outermost = i == len(widths) - 1, i == 0
            layers: list[nn.Module] = [nn.Conv2d(prev, w, 4, stride=2, padding=1, bias=outermost or innermost)]
            if not (outermost or innermost):
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.ReLU(inplace=True) if innermost else nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            prev = w
        self.up = nn.ModuleList()
        outs = list(reversed(widths[:-1]))
        for i, w in enumerate(outs):
            layers = [nn.ConvTranspose2d(prev if i == 0 else 2 * prev, w, 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i == 0:
                layers.append(nn.Dropout(0.5))
            self.up.append(nn.Sequential(*layers))
            prev = w
        self.head = nn.ConvTranspose2d(2 * prev, classes, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_channels, H, W) normalised phase.

        Returns
        -------
        torch.Tensor
            (B, classes, H, W) logits.
        """
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        skips.pop()  # the innermost output is x itself
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], 1)
        return self.head(x)


def build_gan_watershed(encoder: str = ENCODER_NAME, *, in_channels: int = 3, classes: int = 5) -> nn.Module:
    """The GAN + Watershed generator (:class:`Pix2PixUNet`), random init.

    Parameters
    ----------
    encoder : str, optional
        Must be "pix2pix" (the name its configs carry, :data:`ENCODER_NAME`).
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.

    Returns
    -------
    torch.nn.Module
        The generator.

    Raises
    ------
    ValueError
        When ``encoder`` is not "pix2pix".
    """
    if encoder != ENCODER_NAME:
        raise ValueError(f"the GAN + Watershed generator is a pix2pix U-Net (encoder {ENCODER_NAME!r}), got {encoder!r}")
    return Pix2PixUNet(in_channels, classes)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix, three stride-2 levels).

    (B, channels, H, W) -> (B, 1, H / 8 - 2, W / 8 - 2) real/fake logits, one per
    overlapping patch.

    Parameters
    ----------
    channels : int
        Input channels (phase channels + classes).
    width : int, optional
        First-layer width, default :data:`DISCRIMINATOR_WIDTH`.
    """

    def __init__(self, channels: int, width: int = DISCRIMINATOR_WIDTH):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * w, 4 * w, 4, 1, 1, bias=False), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * w, 1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Judge a batch of (phase, class probabilities) pairs.

        Parameters
        ----------
        x : torch.Tensor
            (B, channels, H, W) input.

        Returns
        -------
        torch.Tensor
            (B, 1, H / 8 - 2, W / 8 - 2) real/fake logits.
        """
        return self.net(x)


class Adversary:
    """The discriminator side of the conditional GAN, beside a segmenter's training loop.

    ``generator_loss(x, logits)`` is the weighted non-saturating GAN loss of the generator's
    pairs (add it to the segmentation loss before ``backward``); ``update(x, y, logits)`` then
    takes one discriminator step on real (one-hot ``y``) and fake (softmax of the detached
    ``logits``) pairs. Under torchrun the discriminator's gradients are averaged over the
    ranks (``world``). ``state_dict`` / ``load_state_dict`` hold its weights and optimiser
    for resuming.

    Parameters
    ----------
    in_channels : int
        Phase input channels of the segmenter.
    classes : int
        Number of classes.
    weight : float
        Weight of the GAN loss beside the segmentation loss (:data:`ADVERSARIAL_WEIGHT`).
    device : torch.device
        Where the discriminator lives.
    world : int, optional
        Number of torchrun ranks its gradients are averaged over, default 1.
    bf16 : bool, optional
        bfloat16 autocast of its forward passes (as the generator's), default False.
    """

    def __init__(self, in_channels: int, classes: int, *, weight: float, device: torch.device, world: int = 1,
                 bf16: bool = False):
        self.net = PatchDiscriminator(in_channels + classes).to(device).to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=DISCRIMINATOR_LR, betas=(0.5, 0.999),
                                    fused=fused_optimiser(device))
        self.weight, self.classes, self.world = float(weight), int(classes), int(world)
        self.device, self.bf16 = device, bool(bf16)

    def _logits(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.bf16):
            out = self.net(torch.cat([x.float(), probs], 1).contiguous(memory_format=torch.channels_last))
        return out.float()

    def generator_loss(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """weight x BCE(D(x, softmax(logits)), real): the generator's adversarial loss.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_channels, H, W) input batch.
        logits : torch.Tensor
            (B, classes, H, W) generator logits (gradients flow through them).

        Returns
        -------
        torch.Tensor
            Scalar loss.
        """
        pred = self._logits(x, logits.float().softmax(1))
        return self.weight * F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))

    def update(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> float:
        """One discriminator step (pix2pix: half the summed real and fake BCE).

        Where ``y`` is ``IGNORE`` the real input takes the generator's probabilities, so the
        two inputs differ only where the labels are known.

        Parameters
        ----------
        x : torch.Tensor
            (B, in_channels, H, W) input batch.
        y : torch.Tensor
            (B, H, W) integer class targets, may hold ``IGNORE``.
        logits : torch.Tensor
            (B, classes, H, W) generator logits (detached here).

        Returns
        -------
        float
            The discriminator loss.
        """
        fake = logits.detach().float().softmax(1)
        known = (y != IGNORE).unsqueeze(1)
        real = F.one_hot(y.long().masked_fill(~known[:, 0], 0), self.classes).permute(0, 3, 1, 2).float()
        real = torch.where(known, real, fake)
        pred_real, pred_fake = self._logits(x, real), self._logits(x, fake)
        loss = 0.5 * (F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real))
                      + F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake)))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.net.parameters(), self.world)
        self.opt.step()
        return float(loss.item())

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics to every rank (call under torchrun only)."""
        broadcast_buffers(self.net)

    def state_dict(self) -> dict[str, Any]:
        """Weights and optimiser state, for resuming.

        Returns
        -------
        dict[str, Any]
            {"net": CPU copies of the weights, "opt": optimiser state}.
        """
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}, "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict[str, Any]
            {"net", "opt"} as :meth:`state_dict` returns them.
        """
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
