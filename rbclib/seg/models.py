"""Segmentation networks: the paper's ResUnet and the baselines of Tables 1-3 (the GAN +
Watershed generator lives in :mod:`rbclib.seg.gan_watershed`).

All models map a (B, in_channels, H, W) float tensor (phase normalised to [-1, 1],
replicated to ``in_channels``) to (B, classes, H, W) logits. H and W must be multiples
of 32 (the encoders downsample five times; tiles are 256 or 128 px). Weights are always
randomly initialised: nothing is ever downloaded.
"""
from __future__ import annotations

from typing import Any, Callable

import segmentation_models_pytorch as smp
import torch
from torch import nn

from rbclib.seg.gan_watershed import build_gan_watershed

# The ResUnet decoder of the paper (Table 3: 73,688,197 parameters).
RESUNET_DECODER_CHANNELS = (1024, 512, 256, 128, 64)
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101")


def build_resunet(encoder: str = "resnet50", *, in_channels: int = 3, classes: int = 5,
                  decoder_channels: tuple[int, ...] = RESUNET_DECODER_CHANNELS) -> nn.Module:
    """The paper's ResUnet: smp U-Net, ResNet encoder, decoder (1024, 512, 256, 128, 64),
    segmentation head replaced by a 1x1 convolution. 73,688,197 parameters at resnet50.

    Parameters
    ----------
    encoder : str, optional
        ResNet encoder, one of :data:`ENCODERS`; default "resnet50".
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.
    decoder_channels : tuple of int, optional
        Five decoder stages, default :data:`RESUNET_DECODER_CHANNELS`. Exists for CPU profiles
        only: on 2 CPU cores a resnet18 training step (8 x 128 px) takes 1.52 s with the
        paper's decoder and 0.23 s with (256, 128, 64, 32, 16).

    Returns
    -------
    torch.nn.Module
        The model, randomly initialised.

    Raises
    ------
    ValueError
        On an unsupported encoder or not 5 decoder stages.
    """
    _check_encoder(encoder)
    decoder_channels = tuple(int(c) for c in decoder_channels)
    if len(decoder_channels) != 5:
        raise ValueError(f"decoder_channels needs 5 stages, got {decoder_channels}")
    model = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                     classes=classes, decoder_channels=decoder_channels)
    model.segmentation_head = nn.Conv2d(decoder_channels[-1], classes, kernel_size=1)
    return model


def build_unet(encoder: str = "resnet50", *, in_channels: int = 3, classes: int = 5) -> nn.Module:
    """Plain U-Net baseline: smp defaults (decoder 256..16, 3x3 head), random init.

    Parameters
    ----------
    encoder : str, optional
        ResNet encoder, one of :data:`ENCODERS`; default "resnet50".
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.

    Returns
    -------
    torch.nn.Module
        The model, randomly initialised.

    Raises
    ------
    ValueError
        On an unsupported encoder.
    """
    _check_encoder(encoder)
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)


def build_deeplabv3plus(encoder: str = "resnet50", *, in_channels: int = 3, classes: int = 5) -> nn.Module:
    """DeepLab v3+ baseline (smp; output stride 16, ASPP), random init.

    Parameters
    ----------
    encoder : str, optional
        ResNet encoder, one of :data:`ENCODERS`; default "resnet50".
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.

    Returns
    -------
    torch.nn.Module
        The model, randomly initialised.

    Raises
    ------
    ValueError
        On an unsupported encoder.
    """
    _check_encoder(encoder)
    return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)


def build_pspnet(encoder: str = "resnet50", *, in_channels: int = 3, classes: int = 5) -> nn.Module:
    """PSPNet baseline (smp; pyramid pooling on the stride-8 features), random init.

    Parameters
    ----------
    encoder : str, optional
        ResNet encoder, one of :data:`ENCODERS`; default "resnet50".
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.

    Returns
    -------
    torch.nn.Module
        The model, randomly initialised.

    Raises
    ------
    ValueError
        On an unsupported encoder.
    """
    _check_encoder(encoder)
    return smp.PSPNet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)


class _TensorOutput(nn.Module):
    """Wraps a torchvision segmentation model so that it returns the ``"out"`` tensor."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_fcn(encoder: str = "resnet50", *, in_channels: int = 3, classes: int = 5) -> nn.Module:
    """FCN baseline from torchvision (weights=None, weights_backbone=None, no aux head).

    resnet50/101: torchvision's ``fcn_resnet*`` (dilated, output stride 8); resnet18/34
    (CPU profiles): the same FCN head on an undilated torchvision ResNet (stride 32),
    since basic blocks do not support dilation.

    Parameters
    ----------
    encoder : str, optional
        ResNet encoder, one of :data:`ENCODERS`; default "resnet50".
    in_channels : int, optional
        Input channels, default 3.
    classes : int, optional
        Output classes, default 5.

    Returns
    -------
    torch.nn.Module
        The model, randomly initialised.

    Raises
    ------
    ValueError
        On an unsupported encoder.
    """
    _check_encoder(encoder)
    from torchvision.models import resnet18, resnet34
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    if encoder in ("resnet50", "resnet101"):
        ctor = fcn_resnet50 if encoder == "resnet50" else fcn_resnet101
        net = ctor(weights=None, weights_backbone=None, num_classes=classes, aux_loss=False)
        backbone = net.backbone
    else:
        resnet = (resnet18 if encoder == "resnet18" else resnet34)(weights=None)
        backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        net = FCN(backbone, FCNHead(512, classes))
    if in_channels != 3:
        old = backbone.conv1
        backbone.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return _TensorOutput(net)


MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resunet": build_resunet,
    "unet": build_unet,
    "deeplabv3plus": build_deeplabv3plus,
    "fcn": build_fcn,
    "pspnet": build_pspnet,
    "gan_watershed": build_gan_watershed,
}
# Names of the methods in the paper's tables.
DISPLAY_NAMES: dict[str, str] = {
    "resunet": "ResUnet",
    "unet": "U-Net",
    "deeplabv3plus": "DeepLab v3+",
    "fcn": "FCN",
    "pspnet": "PSPNet",
    "gan_watershed": "GAN + Watershed",
}
BASELINES: tuple[str, ...] = ("unet", "deeplabv3plus", "fcn", "pspnet", "gan_watershed")


def build_model(name: str, **kw: Any) -> nn.Module:
    """Build a model by name.

    Parameters
    ----------
    name : str
        "resunet", "unet", "deeplabv3plus", "fcn", "pspnet" or "gan_watershed".
    **kw
        Keyword arguments (encoder, in_channels, classes) for its builder.

    Returns
    -------
    torch.nn.Module
        The model, randomly initialised.

    Raises
    ------
    ValueError
        On an unknown name (or bad builder arguments).
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](**kw)


def _check_encoder(encoder: str) -> None:
    if encoder not in ENCODERS:
        raise ValueError(f"unsupported encoder {encoder!r}; choose one of {list(ENCODERS)}")
