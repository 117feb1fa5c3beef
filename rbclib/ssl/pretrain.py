"""Self-supervised pretraining of the ResUnet (paper section 3, eqs. 10-12).

MoCo v2 (He et al. 2020; Chen et al. 2020) on the ResUnet encoder plus an MSE
reconstruction through the U-Net decoder:

- two random crops c, c' of one image (random resized crop, flips, 90-degree rotations;
  then intensity jitter, Gaussian blur and noise on the network input only);
- the query encoder + MLP projection head embeds c (z), the momentum encoder + its head
  embeds c' (z'); InfoNCE with temperature against a queue of earlier keys (eq. 10);
- the decoder + a 1x1 reconstruction head rebuilds c from the query features and c' from
  the momentum features (eq. 11, mean squared error against the crops before the
  intensity augmentations);
- total loss L = L_contrastive + rec_weight * L_rec (eq. 12; rec_weight 1 is the paper).

A model folder holds ``config.json``, ``encoder_decoder.pt`` (the weights 06_finetune loads
with :func:`rbclib.seg.pretrained.load_into_resunet`), ``last.pt`` (full state, for resuming) and ``log.csv``
(losses per step).

The corpora are in :mod:`rbclib.ssl.corpus`, the probes in :mod:`rbclib.ssl.probe`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from rbclib.core.config import check_known_fields
from rbclib.core.distributed import (average_gradients, barrier, broadcast_buffers, check_ranks_in_sync,
                                     mean_over_ranks, rank_share, start_distributed)
from rbclib.core.files import ImageFileError, write_json
from rbclib.core.training import (
    CHECKPOINT,
    autocast,
    channels_last,
    fused_optimiser,
    read_log_rows,
    restore,
    resume_state,
    save_checkpoint,
    write_log,
)
from rbclib.core.training import progress as progress_bar
from rbclib.seg.datasets import normalise_phase
from rbclib.seg.pretrained import WEIGHTS_FILE, load_pretrained_weights
from rbclib.ssl.corpus import corpus_kind, describe_corpus
from rbclib.ssl.moco import MoCoResUnet



# Normalised value of 0 rad (the medium): the point intensity jitter scales around.
BACKGROUND_VALUE = float(normalise_phase(np.zeros(1))[0])


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SSLConfig:
    """Settings of one pretraining run (defaults suited to a few thousand images).

    Attributes
    ----------
    encoder : str
        ResNet of the ResUnet ("resnet18/34/50/101").
    decoder_channels : tuple of int
        Its U-Net decoder (the paper's by default; must match the ResUnet of 06).
    in_channels : int
        ResUnet input channels (the single-channel crop is replicated).
    crop_px : int
        Side of each crop fed to the network [px], a multiple of 32.
    crop_scale : tuple of float
        (min, max) crop area as a fraction of the image.
    batch_size, steps : int
        Images per step, and optimisation steps of AdamW at ``lr`` with cosine decay.
    lr, weight_decay : float
        AdamW learning rate and weight decay.
    queue_size : int
        Negatives K in eq. 10 (keep below the corpus size, or old keys of the same image
        become negatives; :func:`queue_size_for`).
    momentum : float
        EMA factor of the momentum encoder, in [0, 1).
    temperature : float
        tau of eq. 10.
    proj_hidden, proj_dim : int
        Hidden and output size of the MLP projection head.
    rec_weight : float
        Weight of eq. 11 in eq. 12.
    flip : bool
        Random flips and 90-degree rotations.
    intensity_jitter : float
        Relative gain (and half of it as offset) jitter of the input.
    blur_prob : float
        Probability of a Gaussian blur.
    blur_sigma_px : tuple of float
        (min, max) sigma of the blur [px].
    noise_std : float
        Additive noise (normalised units).
    save_every : int
        Checkpoint period [steps].
    autocast_bf16 : bool
        bfloat16 autocast of the forward pass (:func:`rbclib.core.training.autocast`).
    channels_last : bool
        The network in channels-last memory (:func:`rbclib.core.training.channels_last`).

    Raises
    ------
    ValueError
        A crop that is not a positive multiple of 32, a bad crop scale, a count below 1, a
        momentum outside [0, 1) or a temperature <= 0.
    """

    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = (1024, 512, 256, 128, 64)
    in_channels: int = 3
    crop_px: int = 64
    crop_scale: tuple[float, float] = (0.3, 1.0)
    batch_size: int = 32
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    queue_size: int = 1024
    momentum: float = 0.99
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    rec_weight: float = 1.0
    flip: bool = True
    intensity_jitter: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.1, 1.5)
    noise_std: float = 0.03
    save_every: int = 50
    autocast_bf16: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.crop_px % 32 or self.crop_px < 32:
            raise ValueError(f"SSLConfig.crop_px={self.crop_px} must be a positive multiple of 32")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"SSLConfig.crop_scale={self.crop_scale} must satisfy 0 < min <= max <= 1")
        for name in ("batch_size", "steps", "queue_size", "save_every", "proj_hidden", "proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"SSLConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"SSLConfig.momentum={self.momentum} must be in [0, 1)")
        if self.temperature <= 0:
            raise ValueError(f"SSLConfig.temperature={self.temperature} must be > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SSLConfig":
        """Build from a dict (profile table or config.json).

        Parameters
        ----------
        data : dict
            Field name -> value; lists become tuples.

        Returns
        -------
        SSLConfig
            The checked config.

        Raises
        ------
        ValueError
            An unknown key, or a value the config refuses.
        """
        check_known_fields(cls, data, "SSL settings")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data (``config.json``, the resume identity).

        Returns
        -------
        dict
            Field name -> value, tuples as lists.
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _as_config(config: SSLConfig | dict[str, Any]) -> SSLConfig:
    return config if isinstance(config, SSLConfig) else SSLConfig.from_dict(dict(config))


# --------------------------------------------------------------------------- augmentation
def _random_resized_box(h: int, w: int, scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with area fraction in ``scale`` and
    aspect ratio in [3/4, 4/3] (log-uniform)."""
    area = h * w
    for _ in range(10):
        s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g))
        r = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand((), generator=g)))
        ch, cw = int(round(math.sqrt(area * s / r))), int(round(math.sqrt(area * s * r)))
        if 0 < ch <= h and 0 < cw <= w:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def two_crops(images: torch.Tensor, config: SSLConfig, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Two augmented views of each image of a batch.

    Parameters
    ----------
    images : torch.Tensor
        (B, 1, H, W) images in [-1, 1].
    config : SSLConfig
        Crop size and scale, flips and the input augmentations.
    generator : torch.Generator
        The random source (CPU).

    Returns
    -------
    tuple of torch.Tensor
        (input_1, target_1, input_2, target_2), each (B, 1, crop_px, crop_px): the targets
        are the random resized crops after flips/rotations (c, c' of eq. 11), the inputs
        add intensity jitter around the medium level, Gaussian blur and noise.
    """
    from torchvision.transforms.v2 import functional as TF

    cfg, g = config, generator
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for img in images:
        for view in range(2):
            top, left, ch, cw = _random_resized_box(img.shape[-2], img.shape[-1], cfg.crop_scale, g)
            crop = TF.resized_crop(img, top, left, ch, cw, [cfg.crop_px, cfg.crop_px], antialias=True)
            if cfg.flip:
                crop = torch.rot90(crop, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))
                if float(torch.rand((), generator=g)) < 0.5:
                    crop = torch.flip(crop, dims=(-1,))
            crop = crop.clamp(-1.0, 1.0)
            x = crop
            j = cfg.intensity_jitter
            gain = 1.0 + j * (2 * float(torch.rand((), generator=g)) - 1)
            offset = 0.5 * j * (2 * float(torch.rand((), generator=g)) - 1)
            x = (x - BACKGROUND_VALUE) * gain + BACKGROUND_VALUE + offset
            if float(torch.rand((), generator=g)) < cfg.blur_prob:
                lo, hi = cfg.blur_sigma_px
                sigma = lo + (hi - lo) * float(torch.rand((), generator=g))
                k = 2 * math.ceil(3 * sigma) + 1
                x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
            if cfg.noise_std > 0:
                x = x + cfg.noise_std * torch.randn(x.shape, generator=g)
            outs[2 * view].append(x.clamp(-1.0, 1.0))
            outs[2 * view + 1].append(crop)
    return tuple(torch.stack(o) for o in outs)


# --------------------------------------------------------------------------- training
def _batch(corpus: Dataset, indices: torch.Tensor) -> torch.Tensor:
    items = [corpus[int(i)] for i in indices]
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 1:
        raise ValueError(f"corpus items must be (1, H, W) tensors of one size, got {sorted(shapes)}")
    return torch.stack(items)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def queue_size_for(n_images: int, *, queue_size: int, batch_size: int) -> int:
    """The negatives queue K (eq. 10) a corpus of ``n_images`` allows.

    Parameters
    ----------
    n_images : int
        Images in the corpus.
    queue_size : int
        The queue asked for.
    batch_size : int
        Images per step.

    Returns
    -------
    int
        At most ``queue_size``, below ``n_images - batch_size`` (a longer queue still holds
        keys of the images of the current batch, which then count as their own negatives),
        and at least one batch.
    """
    return max(int(batch_size), min(int(queue_size), int(n_images) - int(batch_size)))


def pretrain_ssl(corpus: Dataset, *, out_dir: str | Path, config: SSLConfig | dict[str, Any], seed: int,
                 progress: bool = True, device: str | None = None, init_model: str | Path | None = None) -> Path:
    """Pretrain the ResUnet encoder+decoder with MoCo v2 + reconstruction on ``corpus``.

    Writes ``out_dir``/config.json, encoder_decoder.pt, last.pt and log.csv. If ``out_dir``
    holds a ``last.pt`` of the same config, corpus and seed, training resumes from its step
    (and returns at once if finished). Batches and augmentations of step s derive from
    (seed, s), so a resumed run equals an uninterrupted one up to floating point. Under
    ``torchrun`` (``python -m rbclib.launch ssl ...``) each rank takes its share of the
    step's batch, the gradients are averaged and every rank's keys join the queue
    (:mod:`rbclib.core.distributed`); rank 0 writes.

    Parameters
    ----------
    corpus : torch.utils.data.Dataset
        (1, H, W) float tensors in [-1, 1] (H, W >= crop_px not required; crops are resized).
    out_dir : str or pathlib.Path
        The model folder.
    config : SSLConfig or dict
        The settings (a dict is read by :meth:`SSLConfig.from_dict`).
    seed : int
        The run's seed.
    progress : bool, optional
        Show a progress bar.
    device : str, optional
        Where to train (None: cuda, mps or cpu, whichever is there).
    init_model : str or pathlib.Path, optional
        A trained segmentation model folder whose encoder and decoder start the pretraining
        (adapting it to unlabelled images of another microscope); ``config`` must name its
        encoder and decoder channels. None: random weights.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        A corpus of fewer than 2 images or of mixed sizes, a ``last.pt`` of another run, or an
        ``init_model`` of another architecture.

    Notes
    -----
    One function holds the loop because its state (the model with its queue, optimiser,
    scheduler, step and log rows) is what ``last.pt`` saves and resuming must restore; the
    nested ``save`` writes all of it. Each step itself is short (:func:`two_crops`, the
    model's forward pass, one optimiser step); the rest is resume and DDP plumbing.
    """
    cfg = _as_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(corpus) < 2:
        raise ValueError(f"corpus has {len(corpus)} image(s); contrastive pretraining needs at least 2")
    rank, world, distributed, dev = start_distributed(device)
    per_rank = rank_share(cfg.batch_size, world)
    ident = {"ssl": cfg.to_dict(), "seed": int(seed), "corpus": describe_corpus(corpus), "corpus_kind": corpus_kind(corpus)}

    torch.manual_seed(seed)
    model = MoCoResUnet(cfg, generator=torch.Generator().manual_seed(seed))
    if init_model is not None:
        ident["init_model"] = str(init_model)
        _start_from_segmenter(model, init_model)
    model.world = world
    model = channels_last(model, dev) if cfg.channels_last else model.to(dev)
    opt = torch.optim.AdamW(model.online_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=fused_optimiser(dev))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    step, rows = 0, []
    state_path = out / CHECKPOINT
    state = resume_state(out, ident, stored=lambda saved: json.loads(saved["ident"]), map_location=dev)
    if state is not None:
        restore(state, {"model": model, "optimizer": opt, "scheduler": sched})
        step = int(state["step"])
        rows = read_log_rows(out, upto="step", last=step)

    def save(seconds: float) -> None:
        if distributed:
            broadcast_buffers(model)  # BatchNorm statistics: rank 0's (the queues already agree)
        if rank != 0:
            return
        save_checkpoint(state_path, {"ident": json.dumps(ident), "model": model.state_dict(),
                                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step})
        save_checkpoint(out / WEIGHTS_FILE, {"config": cfg.to_dict(), "encoder": model.encoder.state_dict(),
                                             "decoder": model.decoder.state_dict(),
                                             "rec_head": model.rec_head.state_dict(), "step": step})
        write_log(out, rows, columns=["step", "epoch", "loss", "contrastive", "rec", "accuracy", "lr", "seconds"])
        write_json(out / "config.json", {**ident, "steps_done": step, "device": str(dev),
                                         "train_seconds": seconds, "torch": torch.__version__,
                                         "weights": WEIGHTS_FILE})

    model.train()
    start = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
    bar = progress_bar(cfg.steps, initial=step, desc="SSL pretraining", enabled=progress and rank == 0)
    while step < cfg.steps:
        g = _step_generator(seed, step)
        idx = torch.randperm(len(corpus), generator=g)[: cfg.batch_size]
        if len(idx) < cfg.batch_size:
            idx = idx[torch.randint(0, len(idx), (cfg.batch_size,), generator=g)]
        if distributed:  # this rank's share of the global batch, its own augmentations
            idx, g = idx[rank * per_rank:(rank + 1) * per_rank], _step_generator(seed * 1_000 + rank, step)
        views = [v.to(dev) for v in two_crops(_batch(corpus, idx), cfg, g)]
        with autocast(dev, cfg.autocast_bf16):
            losses = model(*views)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        average_gradients(model.online_parameters(), world)
        opt.step()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        step += 1
        values = mean_over_ranks([float(v.detach()) for v in losses.values()], dev, world)
        rows.append({"step": step, "epoch": step * cfg.batch_size / len(corpus),
                     **dict(zip(losses, map(float, values))), "lr": lr, "seconds": time.perf_counter() - start})
        bar.update(1)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save(rows[-1]["seconds"])
    bar.close()
    barrier(distributed)  # rank 0 has written its last save before any rank looks for it
    if not (out / WEIGHTS_FILE).exists():
        save(rows[-1]["seconds"] if rows else 0.0)
    if distributed:
        check_ranks_in_sync([model], out, rank, world)
    return out


def _start_from_segmenter(model: MoCoResUnet, model_dir: str | Path) -> None:
    """Copy a trained segmentation model's encoder and decoder into ``model`` (both its query and
    key encoders); ValueError naming the folder when the architectures differ."""
    from rbclib.seg.infer import load_model

    trained, _ = load_model(model_dir, device="cpu")
    try:
        for part in ("encoder", "decoder"):
            getattr(model, part).load_state_dict(getattr(trained, part).state_dict())
        model.encoder_k.load_state_dict(trained.encoder.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"{model_dir}: its encoder and decoder do not fit this SSL config "
                         f"({str(exc)[:200]})") from None


def read_ssl_log(ssl_dir: str | Path) -> pd.DataFrame:
    """The per-step loss log of an SSL folder.

    Parameters
    ----------
    ssl_dir : str or pathlib.Path
        The SSL model folder.

    Returns
    -------
    pandas.DataFrame
        ``log.csv``: step, epoch, loss, contrastive, rec, accuracy, lr, seconds.

    Raises
    ------
    rbclib.core.files.ImageFileError
        The folder has no ``log.csv``.
    """
    path = Path(ssl_dir) / "log.csv"
    if not path.exists():
        raise ImageFileError(path, "SSL log not found")
    return pd.read_csv(path)


# --------------------------------------------------------------------------- transfer
# --------------------------------------------------------------------------- plots
def plot_ssl_log(log: pd.DataFrame) -> "Any":
    """Loss curves (total, contrastive eq. 10, reconstruction eq. 11) and the contrastive
    top-1 accuracy against step.

    Parameters
    ----------
    log : pandas.DataFrame
        :func:`read_ssl_log`'s table.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for col, label in (("loss", "total (eq. 12)"), ("contrastive", "InfoNCE (eq. 10)"), ("rec", "reconstruction MSE (eq. 11)")):
        ax1.plot(log["step"], log[col], label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(log["step"], log["accuracy"])
    ax2.set_xlabel("step")
    ax2.set_ylabel("positive ranked first among 1 + K")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def plot_ssl_views(corpus: Dataset, ssl_dir: str | Path, *, n: int = 4, seed: int = 0) -> "Any":
    """For ``n`` corpus images: the image, crop c, the augmented input and the decoder's
    reconstruction of it.

    Parameters
    ----------
    corpus : torch.utils.data.Dataset
        (1, H, W) float tensors in [-1, 1].
    ssl_dir : str or pathlib.Path
        The SSL model folder whose pretrained weights reconstruct.
    n : int, optional
        Images shown.
    seed : int, optional
        Seed of the images and views drawn.

    Returns
    -------
    matplotlib.figure.Figure
        One row per image.
    """
    import matplotlib.pyplot as plt

    saved = load_pretrained_weights(ssl_dir)
    cfg = SSLConfig.from_dict(saved["config"])
    model = MoCoResUnet(cfg)
    model.encoder.load_state_dict(saved["encoder"])
    model.decoder.load_state_dict(saved["decoder"])
    model.rec_head.load_state_dict(saved["rec_head"])
    model.eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(corpus), generator=g)[:n]
    images = _batch(corpus, idx)
    in_q, tgt_q, _, _ = two_crops(images, cfg, g)
    rec = model.reconstruct(in_q)
    fig, axes = plt.subplots(len(idx), 4, figsize=(8, 2 * len(idx)), squeeze=False)
    for r in range(len(idx)):
        for c, (img, title) in enumerate(((images[r, 0], "image"), (tgt_q[r, 0], "crop c"),
                                          (in_q[r, 0], "augmented input"), (rec[r, 0], "reconstruction"))):
            axes[r, c].imshow(img.numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
