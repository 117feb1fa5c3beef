"""Denoising diffusion GANs for phase patches (G_p) and phase-conditioned masks (G_M).

Method: Xiao, Kreis & Vahdat, ICLR 2022, as used by Park et al. 2025, eqs. (1)-(9).
With T steps and the discretised VP schedule beta_t = 1 - exp(-beta_min/T -
0.5 (beta_max - beta_min)(2t - 1)/T^2), training draws t in 1..T, x_{t-1} ~ q(x_{t-1}|x0)
and x_t ~ q(x_t|x_{t-1}); the generator predicts x0' = G(x_t, t, z) and x'_{t-1} is
drawn from the posterior q(x_{t-1}|x_t, x0'). The discriminator D(x_{t-1}, x_t, t) sees
real and generated pairs (non-saturating loss, lazy R1 penalty on real pairs); the
sampler keeps an EMA of the generator weights. The mask model takes the normalised
phase patch as an extra input of both networks and adds lambda_l1 * |m0 - m0'|. The same
L1 term on G_p's x0 is this project's addition (the paper has none; default off): at the
quick budget the discriminator never learns to tell real from generated (accuracy 0.34-0.61
at every step t in all nine generators of a quick run), and the x0 term is what
makes G_p draw cell-sized, cell-bright objects (see 03). Two more additions of this
project, both off by default (the quick profile turns them on): patches centred on a cell's
centroid (``crop_centre = "cell"``) and class-conditional networks (``class_conditional``;
sampling asks for a class per pair). With them the x0 term draws round, one-class cells of
the asked class instead of lumpy blobs (03, "What to expect").

Data in the networks: phase normalised by ``rbclib.seg.datasets.normalise_phase`` (1
channel); masks one-hot, scaled to [-1, 1] (5 channels).

Model folder: ``config.json``, ``last.pt`` (full training state, for resume),
``generator.pt`` (EMA generator + config, for sampling), ``log.csv`` (losses per epoch).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from rbclib.core.config import check_known_fields
from rbclib.core.distributed import (average_gradients, barrier, check_ranks_in_sync, mean_over_ranks, rank_share,
                                     start_distributed)
from rbclib.seg.datasets import PHASE_RANGE_RAD
from rbclib.synth.ddgan_data import PatchSampler
from rbclib.synth.ddgan_schedule import make_schedule, posterior_sample, q_sample, q_step
from rbclib.synth.nets import Discriminator, Generator
from rbclib.core.files import write_json
from rbclib.core.labels import N_CLASSES
from rbclib.core.training import (CHECKPOINT, autocast, channels_last, fused_optimiser, progress as progress_bar,
                                  read_log_rows, restore, resume_state, save_checkpoint, write_log)

KINDS = ("phase", "mask")


@dataclass
class DDGANConfig:
    """Everything needed to rebuild and train one DDGAN (stored as config.json).

    Attributes
    ----------
    kind : str
        "phase" (G_p, 1 channel) or "mask" (G_M, 5 channels, conditioned on phase).
    patch_px : int
        Patch side [px] the networks see.
    downsample : int
        Data pixels per network pixel (a patch covers patch_px * downsample data pixels;
        outputs are resized back, so generated pairs always have the data's pixel size).
    n_steps : int
        Denoising steps T (1..8).
    beta_min, beta_max : float
        Limits of the VP schedule (:func:`rbclib.synth.ddgan_schedule.make_schedule`).
    g_widths, d_widths : tuple of int
        Channels per level of the generator and the discriminator.
    g_blocks : int
        Residual blocks per level of the generator.
    z_dim : int
        Latent size.
    batch_size, epochs, iters_per_epoch : int
        epochs x iters_per_epoch optimiser steps of batch_size patches.
    lr_g, lr_d : float
        Adam learning rates of the generator and the discriminator.
    betas : tuple of float
        Adam betas of both.
    r1_gamma : float
        Lazy R1 weight.
    r1_every : int
        Lazy R1 interval [steps].
    ema : float
        EMA decay of the sampling generator.
    lambda_l1 : float or None
        Weight of the L1 term |x0 - x0'| in the generator loss (None: 1 for the mask, the
        paper's, and 0 for the phase).
    cell_crop_fraction : float
        Share of crops centred on a cell pixel.
    class_balanced_crops : bool
        Draw the centre's cell class uniformly (see :class:`rbclib.seg.datasets.CropPicker`).
    class_conditional : bool
        Both networks take the class of the cell (or pixel) a patch is centred on (0 for the
        uniform crops) as a label y (:mod:`rbclib.synth.nets`), and sampling asks for a
        class per patch.
    crop_centre : str
        "pixel" (a crop is centred on a random pixel of a cell) or "cell" (on a cell's
        centroid; needs the instance maps).
    phase_range_rad : tuple of float
        Phase range [rad] mapped to [-1, 1] (``rbclib.seg.datasets.normalise_phase``).
    autocast_bf16 : bool
        bfloat16 autocast of the networks' forward passes
        (:func:`rbclib.core.training.autocast`; losses in float32).
    channels_last : bool
        The networks in channels-last memory (:func:`rbclib.core.training.channels_last`,
        faster convolutions on GPUs).

    Raises
    ------
    ValueError
        An unknown ``kind`` or ``crop_centre``, ``n_steps`` outside 1..8, or a ``patch_px``
        the networks' levels cannot halve.
    """

    kind: str = "phase"
    patch_px: int = 64
    downsample: int = 1
    n_steps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    g_widths: tuple[int, ...] = (32, 64, 128)
    g_blocks: int = 1
    d_widths: tuple[int, ...] = (32, 64, 128)
    z_dim: int = 32
    batch_size: int = 16
    epochs: int = 4
    iters_per_epoch: int = 50
    lr_g: float = 1.6e-4
    lr_d: float = 1.25e-4
    betas: tuple[float, float] = (0.5, 0.9)
    r1_gamma: float = 0.05
    r1_every: int = 4
    ema: float = 0.995
    lambda_l1: float | None = None
    cell_crop_fraction: float = 0.9
    class_balanced_crops: bool = True
    class_conditional: bool = False
    crop_centre: str = "pixel"
    phase_range_rad: tuple[float, float] = PHASE_RANGE_RAD
    autocast_bf16: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DDGANConfig.kind={self.kind!r}; expected one of {KINDS}")
        if not 1 <= self.n_steps <= 8:
            raise ValueError(f"DDGANConfig.n_steps={self.n_steps}; DDGAN uses a few steps (1..8)")
        div = 2 ** max(len(self.g_widths) - 1, len(self.d_widths))
        if self.patch_px % div:
            raise ValueError(f"patch_px={self.patch_px} must be divisible by {div} for these widths")
        for name in ("g_widths", "d_widths", "betas", "phase_range_rad"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.crop_centre not in ("pixel", "cell"):
            raise ValueError(f"DDGANConfig.crop_centre={self.crop_centre!r}; expected 'pixel' or 'cell'")
        if self.lambda_l1 is None:
            self.lambda_l1 = 1.0 if self.kind == "mask" else 0.0

    @property
    def native_px(self) -> int:
        """Patch side in data pixels."""
        return self.patch_px * self.downsample

    @property
    def channels(self) -> int:
        """Channels of x: 1 for the phase, one per class for the mask."""
        return 1 if self.kind == "phase" else N_CLASSES

    @property
    def cond_channels(self) -> int:
        """Conditioning channels: 0 for the phase, 1 (the phase) for the mask."""
        return 0 if self.kind == "phase" else 1

    @property
    def n_classes(self) -> int:
        """Class labels of a class-conditional model (0: unconditional)."""
        return N_CLASSES if self.class_conditional else 0

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data (``config.json``).

        Returns
        -------
        dict
            Field name -> value, tuples as lists.
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DDGANConfig":
        """Build from a dict (``config.json`` or a profile table).

        Parameters
        ----------
        data : dict
            Field name -> value.

        Returns
        -------
        DDGANConfig
            The checked config.

        Raises
        ------
        ValueError
            An unknown key, or a value the config refuses.
        """
        check_known_fields(cls, data, "DDGAN config keys")
        return cls(**data)


# ----------------------------------------------------------------------------- model
def build_nets(config: DDGANConfig) -> tuple[Generator, Discriminator]:
    """A fresh generator and discriminator of a config.

    Parameters
    ----------
    config : DDGANConfig
        Channels, widths, blocks, latent size and classes.

    Returns
    -------
    generator : rbclib.synth.nets.Generator
        The generator (random weights, on the CPU).
    discriminator : rbclib.synth.nets.Discriminator
        The discriminator (random weights, on the CPU).
    """
    g = Generator(in_channels=config.channels, cond_channels=config.cond_channels, widths=config.g_widths,
                  blocks=config.g_blocks, z_dim=config.z_dim, n_classes=config.n_classes)
    d = Discriminator(channels=config.channels, cond_channels=config.cond_channels, widths=config.d_widths,
                      n_classes=config.n_classes)
    return g, d


def seed_for(seed: int, *parts: int) -> int:
    """A seed derived from ``seed`` and ``parts`` (``numpy.random.SeedSequence``).

    Parameters
    ----------
    seed : int
        The run's seed.
    *parts : int
        What the seed is for (a purpose number, an epoch, a rank, a sample index).

    Returns
    -------
    int
        A 32-bit seed, the same for the same arguments.
    """
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def train_ddgan(phases: list[np.ndarray], labels: list[np.ndarray], *, config: DDGANConfig, out_dir: str | Path,
                seed: int, instances: list[np.ndarray] | None = None, device: str | torch.device | None = None,
                resume: bool = True, on_epoch_end: Callable[[int, Generator], None] | None = None,
                progress: bool = True) -> Path:
    """Train one DDGAN on patches of phase maps + class maps.

    Every epoch appends to ``log.csv`` and rewrites ``last.pt`` and ``generator.pt``. Under
    ``torchrun`` (``python -m rbclib.launch ddgan ...``) each rank trains on
    ``batch_size / world`` patches of its own, the gradients are averaged over the ranks
    (:mod:`rbclib.core.distributed`) and rank 0 writes.

    Parameters
    ----------
    phases : list of numpy.ndarray
        (H, W) phase maps [rad] of the training fields.
    labels : list of numpy.ndarray
        (H, W) class maps of the same fields.
    config : DDGANConfig
        What to train, and how.
    out_dir : str or pathlib.Path
        The model folder.
    seed : int
        The run's seed.
    instances : list of numpy.ndarray, optional
        The fields' instance maps, needed when ``config.crop_centre == "cell"``.
    device : str or torch.device, optional
        Where the networks train (default :func:`rbclib.core.training.pick_device`: cuda,
        mps or cpu).
    resume : bool, optional
        Continue from an existing ``last.pt`` with the same config where it stopped
        (randomness is re-derived per epoch from (seed, epoch), so a resumed run matches an
        uninterrupted one on the same device).
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, ema_generator)``, called on rank 0 after each epoch; may plot.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        ``last.pt`` belongs to another config (:func:`rbclib.core.training.resume_state`),
        or the fields cannot give patches (:class:`rbclib.synth.ddgan_data.PatchSampler`).

    Notes
    -----
    One function holds the loop because its state (three networks, two optimisers, the
    step counter, the lazy-R1 schedule and the log rows) is what ``last.pt`` saves and
    resuming must restore; splitting the discriminator and generator steps out would pass
    all of it back and forth. The parameters are the data, the config and the run's
    plumbing (folder, seed, device, resume, callback, progress bar) that notebook 03,
    ``rbclib.launch`` and the tests pass.
    """
    out = Path(out_dir)
    rank, world, distributed, dev = start_distributed(device)
    per_rank = rank_share(config.batch_size, world)
    ranked = (rank,) if distributed else ()  # each rank draws its own share of the batch
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    sampler = PatchSampler.for_config(phases, labels, config, instances)
    sched = make_schedule(config.n_steps, beta_min=config.beta_min, beta_max=config.beta_max).to(dev)
    torch.manual_seed(seed_for(seed, 0))
    g, d = build_nets(config)
    g_ema, _ = build_nets(config)
    g_ema.load_state_dict(g.state_dict())
    g_ema.requires_grad_(False)
    place = (lambda net: channels_last(net, dev)) if config.channels_last else (lambda net: net.to(dev))
    g, d, g_ema = place(g), place(d), place(g_ema)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr_g, betas=config.betas, fused=fused_optimiser(dev))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=config.betas, fused=fused_optimiser(dev))
    start_epoch, rows, step = 0, [], 0
    state = resume_state(out, config.to_dict(), stored=lambda saved: saved["config"]) if resume else None
    if state is not None:
        restore(state, {"generator": g, "discriminator": d, "generator_ema": g_ema, "opt_g": opt_g, "opt_d": opt_d})
        start_epoch, step = int(state["epoch"]), int(state["step"])
        rows = read_log_rows(out, upto="epoch", last=start_epoch)
    if rank == 0:
        write_json(out / "config.json", config.to_dict())
    mask = config.kind == "mask"
    bar = progress_bar(config.epochs * config.iters_per_epoch, initial=start_epoch * config.iters_per_epoch,
                       desc=f"DDGAN {config.kind}", enabled=progress and rank == 0)
    for epoch in range(start_epoch, config.epochs):
        rng = np.random.default_rng(seed_for(seed, 1, epoch, *ranked))
        torch.manual_seed(seed_for(seed, 2, epoch, *ranked))
        sums = {"loss_d": 0.0, "loss_g": 0.0, "loss_l1": 0.0, "r1": 0.0}
        t0 = time.perf_counter()
        for _ in range(config.iters_per_epoch):
            phase, onehot, centre = (v.to(dev) for v in sampler.sample(rng, per_rank))
            x0, cond = (onehot, phase) if mask else (phase, None)
            y = centre if config.class_conditional else None
            B = x0.shape[0]
            t = torch.randint(1, config.n_steps + 1, (B,)).to(dev)
            x_prev = q_sample(sched, x0, t - 1, torch.randn_like(x0))
            x_t = q_step(sched, x_prev, t, torch.randn_like(x0))
            # discriminator
            do_r1 = config.r1_gamma > 0 and step % config.r1_every == 0
            x_prev.requires_grad_(do_r1)
            with autocast(dev, config.autocast_bf16):
                d_real = d(x_prev, x_t, t, cond, y).float()
            loss_d = F.softplus(-d_real).mean()
            r1 = torch.zeros((), device=dev)
            if do_r1:
                grad, = torch.autograd.grad(d_real.sum(), x_prev, create_graph=True)
                r1 = grad.pow(2).flatten(1).sum(1).mean()
                loss_d = loss_d + 0.5 * config.r1_gamma * config.r1_every * r1
            with torch.no_grad(), autocast(dev, config.autocast_bf16):
                x0_fake = g(x_t, t, torch.randn(B, config.z_dim).to(dev), cond, y).float()
            x_prev_fake = posterior_sample(sched, x0_fake, x_t, t, torch.randn_like(x0))
            with autocast(dev, config.autocast_bf16):
                d_fake = d(x_prev_fake, x_t, t, cond, y).float()
            loss_d = loss_d + F.softplus(d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            average_gradients(d.parameters(), world)
            opt_d.step()
            # generator
            with autocast(dev, config.autocast_bf16):
                x0_fake = g(x_t, t, torch.randn(B, config.z_dim).to(dev), cond, y).float()
            x_prev_fake = posterior_sample(sched, x0_fake, x_t, t, torch.randn_like(x0))
            with autocast(dev, config.autocast_bf16):
                d_gen = d(x_prev_fake, x_t, t, cond, y).float()
            loss_g = F.softplus(-d_gen).mean()
            loss_l1 = (x0_fake - x0).abs().mean() if config.lambda_l1 > 0 else torch.zeros((), device=dev)
            opt_g.zero_grad(set_to_none=True)
            (loss_g + config.lambda_l1 * loss_l1).backward()
            average_gradients(g.parameters(), world)
            opt_g.step()
            with torch.no_grad():
                for pe, p in zip(g_ema.parameters(), g.parameters()):
                    pe.lerp_(p, 1.0 - config.ema)
            step += 1
            for k, v in (("loss_d", loss_d), ("loss_g", loss_g), ("loss_l1", loss_l1), ("r1", r1)):
                sums[k] += float(v.detach())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, d=f"{float(loss_d.detach()):.3f}", g=f"{float(loss_g.detach()):.3f}")
        means = mean_over_ranks([v / config.iters_per_epoch for v in sums.values()], dev, world)
        if rank == 0:
            rows.append({"epoch": epoch + 1, "step": step, **dict(zip(sums, map(float, means))),
                         "seconds": time.perf_counter() - t0})
            _save_state(out, config, g, d, g_ema, opt_g, opt_d, epoch + 1, step)
            write_log(out, rows)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, g_ema)
        barrier(distributed)
    bar.close()
    if distributed:
        check_ranks_in_sync([g, d, g_ema], out, rank, world)
    return out


def _save_state(out: Path, config: DDGANConfig, g, d, g_ema, opt_g, opt_d, epoch: int, step: int) -> None:
    """Write ``last.pt`` (full training state) and ``generator.pt`` (EMA generator + config).

    Notes
    -----
    The parameters are exactly what ``last.pt`` must hold to resume: the config, the three
    networks, the two optimisers, the epoch and the step, passed from :func:`train_ddgan`'s loop.
    """
    cfg = config.to_dict()
    save_checkpoint(out / CHECKPOINT, {"config": cfg, "epoch": epoch, "step": step, "generator": g.state_dict(),
                                       "discriminator": d.state_dict(), "generator_ema": g_ema.state_dict(),
                                       "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()})
    save_checkpoint(out / "generator.pt", {"config": cfg, "epoch": epoch, "generator_ema": g_ema.state_dict()})


def config_from_profile(stage: dict[str, Any], kind: str) -> DDGANConfig:
    """DDGANConfig of ``kind`` from a profile's diffusion table.

    Parameters
    ----------
    stage : dict
        The profile's ``diffusion`` table; its ``common`` sub-table, then its ``<kind>``
        sub-table, give the fields.
    kind : str
        "phase" or "mask".

    Returns
    -------
    DDGANConfig
        The config.
    """
    return DDGANConfig(kind=kind, **{**stage.get("common", {}), **stage.get(kind, {})})
