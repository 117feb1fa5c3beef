"""The training config of a segmentation model: :class:`SegConfig`, typed and checked.

Its dict form (:meth:`SegConfig.to_dict`, :func:`make_config`) is what a model folder's
``config.json`` holds, with the training's bookkeeping (seed, images, patches) beside it, and
what inference reads back (:func:`rbclib.seg.infer.read_model_config`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from rbclib.seg.datasets import PHASE_RANGE_RAD

PATCH_MODES = ("paper", "cover", "balanced")
"""Training patches: "paper" a non-overlapping grid, "cover" overlapping tiles, "balanced"
class-balanced random crops."""
POSTPROCESS = ("none", "watershed")
"""Inference post-processing: none, or splitting touching cells (:mod:`rbclib.seg.watershed`)."""
PAPER_DECODER = (1024, 512, 256, 128, 64)
"""The paper's ResUnet decoder channels, deepest first."""


@dataclass
class SegConfig:
    """Everything that decides how a segmentation model is built, trained and run.

    Values are converted to their field's type on creation (a TOML integer learning rate
    becomes a float), and bad choices are refused.

    Attributes
    ----------
    model_name : str
        "resunet" (the paper's) or a baseline of :mod:`rbclib.seg.models`.
    encoder : str
        Encoder name (smp / timm).
    decoder_channels : tuple of int or None
        ResUnet decoder channels, deepest first; None for the baselines (their own decoders).
    pixel_size_m : float
        Pixel size of the training images [m]; inference resamples to it.
    in_channels, classes : int
        Input channels (the phase repeated) and classes (background + 4 morphologies).
    patch : int
        Training patch side [px].
    patch_mode : str
        One of :data:`PATCH_MODES`.
    overlap : int
        Pixels shared by tiles ("cover" patches and inference).
    rotations : int
        x4 rotation augmentation of the acquired pairs (1: off).
    epochs, max_steps_per_epoch : int
        Epochs, and at most this many batches per epoch (0: a full pass over the patches).
    crops_per_epoch : int
        ``balanced`` patches only: random crops drawn per epoch (0: as many as the fields
        hold grid patches, so a few small fields give short epochs).
    batch_size, val_batch_size : int
        Global training batch (split over DDP ranks) and validation batch.
    lr, weight_decay : float
        AdamW learning rate and weight decay.
    ce_weight, dice_weight : float
        Weights of cross-entropy and Dice loss.
    autocast_bf16 : bool
        bfloat16 autocast of the training forward pass (weights stay float32).
    phase_range : tuple of float
        (low, high) phase [rad] mapped to [-1, 1].
    phase_gain : tuple of float
        Balanced crops: phase x a log-uniform gain from this range (instrument disagreement).
    adversarial_weight : float
        > 0: a PatchGAN discriminator adds this x its GAN loss (GAN + Watershed).
    postprocess : str
        One of :data:`POSTPROCESS`, applied at inference.
    pretrained_lr_scale : float
        Learning-rate factor of the encoder and decoder when initialised from SSL weights.
    warmup_steps : int
        Linear learning-rate warm-up over the first steps, then the cosine decay.
    infer_tile : int
        Inference tile side [px] (0: the training patch).
    trim_halo : bool
        Inference drops model pixels beyond a cell's bright body (twins with flat-topped discocytes).
    """

    model_name: str = "resunet"
    encoder: str = "resnet50"
    decoder_channels: tuple[int, ...] | None = PAPER_DECODER
    pixel_size_m: float = 0.1441e-6
    in_channels: int = 3
    classes: int = 5
    patch: int = 256
    patch_mode: str = "paper"
    overlap: int = 32
    rotations: int = 4
    epochs: int = 50
    max_steps_per_epoch: int = 0
    crops_per_epoch: int = 0
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    val_batch_size: int = 8
    autocast_bf16: bool = False
    phase_range: tuple[float, float] = field(default=PHASE_RANGE_RAD)
    phase_gain: tuple[float, float] = (1.0, 1.0)
    adversarial_weight: float = 0.0
    postprocess: str = "none"
    pretrained_lr_scale: float = 1.0
    warmup_steps: int = 0
    infer_tile: int = 0
    trim_halo: bool = False

    def __post_init__(self) -> None:
        for name, kind in get_type_hints(SegConfig).items():
            value = getattr(self, name)
            if kind in (int, float, bool, str):
                setattr(self, name, kind(value))
            elif value is not None:
                setattr(self, name, tuple(float(v) if name.startswith("phase_") else int(v) for v in value))
        if self.patch_mode not in PATCH_MODES:
            raise ValueError(f"patch_mode {self.patch_mode!r}: expected one of {PATCH_MODES}")
        if self.postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess {self.postprocess!r}: expected one of {POSTPROCESS}")
        if self.model_name != "resunet":
            self.decoder_channels = None  # the baselines keep their own decoders

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SegConfig:
        """A config from its dict form; keys a config of an older version lacks take their defaults.

        Parameters
        ----------
        values : dict
            Config keys and values (a profile table, a recipe, overrides).

        Returns
        -------
        SegConfig
            The checked config.

        Raises
        ------
        ValueError
            An unknown key, or a bad ``patch_mode`` or ``postprocess``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (lists for tuples; no ``decoder_channels`` for the baselines).

        Returns
        -------
        dict
            What ``config.json`` holds before the training adds its bookkeeping.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        if out["decoder_channels"] is None:
            del out["decoder_channels"]
        return out


DEFAULT_CONFIG: dict[str, Any] = SegConfig().to_dict()
"""Every key a training config may hold, with its default (profiles set most of them)."""


def make_config(config: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The dict form of a checked :class:`SegConfig`: the defaults updated with ``config`` and ``overrides``.

    Parameters
    ----------
    config : dict, optional
        Config keys and values.
    **overrides
        Keys that replace those of ``config``.

    Returns
    -------
    dict
        :meth:`SegConfig.to_dict` of the result.

    Raises
    ------
    ValueError
        An unknown key or a bad value (:meth:`SegConfig.from_dict`).
    """
    return SegConfig.from_dict({**(config or {}), **overrides}).to_dict()


def finetune_config(base: dict[str, Any], **training: Any) -> dict[str, Any]:
    """The config of a model fine-tuned from a trained one.

    Architecture, pixel size, phase range and inference options stay the trained model's (its
    weights only fit them); training keys may change.

    Parameters
    ----------
    base : dict
        The trained model's ``config.json`` (its bookkeeping keys are dropped).
    **training
        :class:`SegConfig` keys to change, e.g. ``epochs``, ``max_steps_per_epoch``, ``lr``.

    Returns
    -------
    dict
        The checked config (:func:`make_config`).

    Raises
    ------
    ValueError
        ``training`` changes a key the weights depend on, or is not a config key.
    """
    fixed = sorted(set(training) & set(WEIGHT_KEYS))
    if fixed:
        raise ValueError(f"fine-tuning keeps the trained model's {fixed}: its weights only fit them")
    known = {f.name for f in dataclasses.fields(SegConfig)}
    return make_config({k: v for k, v in base.items() if k in known}, **training)


WEIGHT_KEYS = ("model_name", "encoder", "decoder_channels", "in_channels", "classes")
"""Config keys the weights of a trained model depend on."""
