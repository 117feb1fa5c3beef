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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rbclib.core.config import check_known_fields
from rbclib.core.distributed import (average_gradients, barrier, check_ranks_in_sync, mean_over_ranks, rank_share,
                                     start_distributed)
from rbclib.seg.datasets import PHASE_RANGE_RAD, CropPicker, denormalise_phase, normalise_phase
from rbclib.synth.nets import Discriminator, Generator
from rbclib.core.io import read_instances, read_labels, read_phase
from rbclib.core.files import read_json, write_json
from rbclib.core.labels import CELL_CLASS_NAMES, N_CLASSES
from rbclib.core.paths import RunPaths
from rbclib.physics.simulate import parse_mixture
from rbclib.core.training import (CHECKPOINT, autocast, channels_last, fused_optimiser, load_checkpoint, pick_device,
                                  progress as progress_bar, read_log_rows, restore, resume_state, save_checkpoint,
                                  write_log)

KINDS = ("phase", "mask")


@dataclass
class DDGANConfig:
    """Everything needed to rebuild and train one DDGAN (stored as config.json).

    kind: "phase" (G_p, 1 channel) or "mask" (G_M, 5 channels, conditioned on phase);
    patch_px: patch side [px] the networks see; downsample: data pixels per network pixel
    (a patch covers patch_px * downsample data pixels; outputs are resized back, so
    generated pairs always have the data's pixel size); n_steps: denoising steps T;
    g_widths / d_widths: channels per level; g_blocks: residual blocks per level;
    z_dim: latent size; epochs x iters_per_epoch optimiser steps of batch_size patches;
    r1_gamma / r1_every: lazy R1 weight and interval; ema: EMA decay; lambda_l1: weight of
    the L1 term |x0 - x0'| in the generator loss (default 1 for the mask, the paper's, and 0
    for the phase); cell_crop_fraction: share of crops centred on a cell pixel;
    class_balanced_crops: draw the centre's cell class uniformly (see CropPicker);
    crop_centre: "pixel" (a crop is centred on a random pixel of a cell) or "cell" (on a
    cell's centroid; needs the instance maps);
    class_conditional: both networks take the class of the cell (or pixel) a patch is
    centred on (0 for the uniform crops) as a label y (:mod:`rbclib.synth.nets`), and
    sampling asks for a class per patch;
    autocast_bf16: bfloat16 autocast of the networks' forward passes
    (:func:`rbclib.core.training.autocast`; losses in float32); channels_last: the networks in
    channels-last memory (:func:`rbclib.core.training.channels_last`, faster convolutions on GPUs).
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
        return 1 if self.kind == "phase" else N_CLASSES

    @property
    def cond_channels(self) -> int:
        return 0 if self.kind == "phase" else 1

    @property
    def n_classes(self) -> int:
        """Class labels of a class-conditional model (0: unconditional)."""
        return N_CLASSES if self.class_conditional else 0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DDGANConfig":
        check_known_fields(cls, data, "DDGAN config keys")
        return cls(**data)


# ----------------------------------------------------------------------------- schedule
@dataclass
class Schedule:
    """Discrete VP schedule; arrays indexed by t = 0..T (index 0: no noise)."""

    betas: torch.Tensor
    alpha_bars: torch.Tensor
    post_x0: torch.Tensor = field(init=False)
    post_xt: torch.Tensor = field(init=False)
    post_var: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        a, ab = 1.0 - self.betas, self.alpha_bars
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        ab_prev[0] = 1.0
        denom = (1.0 - ab).clamp_min(1e-12)
        self.post_x0 = ab_prev.sqrt() * self.betas / denom
        self.post_xt = a.sqrt() * (1.0 - ab_prev) / denom
        self.post_var = self.betas * (1.0 - ab_prev) / denom
        self.post_x0[0], self.post_xt[0], self.post_var[0] = 1.0, 0.0, 0.0

    @property
    def n_steps(self) -> int:
        return len(self.betas) - 1

    def to(self, device: torch.device) -> "Schedule":
        """The same schedule with its tensors on ``device``."""
        return Schedule(self.betas.to(device), self.alpha_bars.to(device))


def make_schedule(n_steps: int, *, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """beta_t = 1 - exp(-beta_min/T - 0.5 (beta_max - beta_min)(2t - 1)/T^2), t = 1..T (Xiao et al.)."""
    t = torch.arange(1, n_steps + 1, dtype=torch.float64)
    betas = 1.0 - torch.exp(-beta_min / n_steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / n_steps**2)
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
    alpha_bars = torch.cumprod(1.0 - betas, dim=0)
    return Schedule(betas.float(), alpha_bars.float())


def _bc(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return v[t][:, None, None, None]


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I); t (B,) in 0..T."""
    return _bc(s.alpha_bars.sqrt(), t) * x0 + _bc((1.0 - s.alpha_bars).sqrt(), t) * noise


def q_step(s: Schedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I); t (B,) in 1..T."""
    return _bc((1.0 - s.betas).sqrt(), t) * x_prev + _bc(s.betas.sqrt(), t) * noise


def posterior_sample(s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0); deterministic (= x0) at t = 1."""
    mean = _bc(s.post_x0, t) * x0 + _bc(s.post_xt, t) * x_t
    return mean + _bc(s.post_var.sqrt(), t) * noise


# ----------------------------------------------------------------------------- data
def load_split_fields(run_dir: str | Path, split: str = "train") -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Phase maps [rad] and class maps of one split of a run folder (``splits.json``)."""
    paths = RunPaths(run_dir)
    splits = read_json(paths.splits_json)
    if split not in splits:
        raise ValueError(f"{paths.splits_json}: no split {split!r} (has {sorted(splits)})")
    phases, labels = [], []
    for stem in splits[split]:
        phase = read_phase(paths.phase / f"{stem}.tif").data
        lab = read_labels(paths.labels / f"{stem}.png")
        if phase.shape != lab.shape:
            raise ValueError(f"{paths.labels / (stem + '.png')}: shape {lab.shape} differs from phase {phase.shape}")
        phases.append(phase)
        labels.append(lab)
    return phases, labels, list(splits[split])


def load_instances(run_dir: str | Path, stems: list[str]) -> list[np.ndarray]:
    """Instance maps (``instances/<stem>.png``, written by 02) of the fields ``stems``."""
    paths = RunPaths(run_dir)
    return [read_instances(paths.instances / f"{stem}.png") for stem in stems]


class PatchSampler:
    """Random square crops (with random rot90 / flip) of phase + labels fields.

    Crop positions come from :class:`CropPicker` (cell-centred, class-balanced). Crops are ``patch_px * downsample`` data pixels, average-pooled by
    ``downsample``. ``sample`` returns normalised phase (n, 1, P, P), one-hot masks
    scaled to [-1, 1] (n, 5, P, P; soft at cell edges when pooled), float32 tensors, and the
    class each crop is centred on (n,) int64 (0 for uniform crops).
    """

    def __init__(self, phases: list[np.ndarray], labels: list[np.ndarray], *, patch_px: int, downsample: int = 1,
                 cell_fraction: float = 0.9, class_balanced: bool = True, phase_range_rad: tuple[float, float] = PHASE_RANGE_RAD,
                 instances: list[np.ndarray] | None = None):
        if not phases:
            raise ValueError("PatchSampler: no training fields given")
        small = [p.shape for p in phases if min(p.shape) < patch_px * downsample]
        if small:
            raise ValueError(f"PatchSampler: fields {small[:3]} are smaller than the {patch_px * downsample} px patches")
        self.phases = [normalise_phase(p, phase_range_rad) for p in phases]
        self.labels = [np.asarray(lab, dtype=np.uint8) for lab in labels]
        self.picker = CropPicker(self.labels, cell_fraction=cell_fraction, class_balanced=class_balanced,
                                 instances=instances)
        self.patch_px, self.downsample = patch_px, downsample

    @classmethod
    def for_config(cls, phases: list[np.ndarray], labels: list[np.ndarray], config: "DDGANConfig",
                   instances: list[np.ndarray] | None = None) -> "PatchSampler":
        if config.crop_centre == "cell" and instances is None:
            raise ValueError("DDGANConfig.crop_centre='cell' needs the instance maps of the training fields")
        return cls(phases, labels, patch_px=config.patch_px, downsample=config.downsample,
                   cell_fraction=config.cell_crop_fraction, class_balanced=config.class_balanced_crops,
                   phase_range_rad=config.phase_range_rad,
                   instances=instances if config.crop_centre == "cell" else None)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        P, f, ph, lab, centre = self.patch_px * self.downsample, self.downsample, [], [], []
        for _ in range(n):
            c, i, y, x = self.picker.pick_with_class(rng, P)
            centre.append(c)
            p, m = self.phases[i][y:y + P, x:x + P], self.labels[i][y:y + P, x:x + P]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            p, m = np.rot90(p, k), np.rot90(m, k)
            if flip:
                p, m = p[:, ::-1], m[:, ::-1]
            ph.append(p)
            lab.append(m)
        phase = torch.from_numpy(np.ascontiguousarray(np.stack(ph)))[:, None]
        onehot = F.one_hot(torch.from_numpy(np.ascontiguousarray(np.stack(lab))).long(), N_CLASSES)
        onehot = onehot.permute(0, 3, 1, 2).float()
        if f > 1:
            phase, onehot = F.avg_pool2d(phase, f), F.avg_pool2d(onehot, f)
        return phase, onehot * 2.0 - 1.0, torch.tensor(centre, dtype=torch.long)


# ----------------------------------------------------------------------------- model
def build_nets(config: DDGANConfig) -> tuple[Generator, Discriminator]:
    g = Generator(in_channels=config.channels, cond_channels=config.cond_channels, widths=config.g_widths,
                  blocks=config.g_blocks, z_dim=config.z_dim, n_classes=config.n_classes)
    d = Discriminator(channels=config.channels, cond_channels=config.cond_channels, widths=config.d_widths,
                      n_classes=config.n_classes)
    return g, d


def seed_for(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def train_ddgan(phases: list[np.ndarray], labels: list[np.ndarray], *, config: DDGANConfig, out_dir: str | Path,
                seed: int, instances: list[np.ndarray] | None = None, device: str | torch.device | None = None,
                resume: bool = True, on_epoch_end: Callable[[int, Generator], None] | None = None,
                progress: bool = True) -> Path:
    """Train one DDGAN on patches of phase maps [rad] + class maps; returns ``out_dir``.

    instances: the fields' instance maps, needed when ``config.crop_centre == "cell"``.

    device: where the networks train (default :func:`rbclib.core.training.pick_device`:
    cuda, mps or cpu). Every epoch appends to ``log.csv`` and rewrites ``last.pt`` and
    ``generator.pt``; with ``resume`` an existing ``last.pt`` with the same config continues
    where it stopped (randomness is re-derived per epoch from (seed, epoch), so a resumed run
    matches an uninterrupted one on the same device). ``on_epoch_end(epoch, ema_generator)``
    may plot. Under ``torchrun`` (``python -m rbclib.launch ddgan ...``) each rank trains on
    ``batch_size / world`` patches of its own, the gradients are averaged over the ranks
    (:mod:`rbclib.core.distributed`) and rank 0 writes.
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
    cfg = config.to_dict()
    save_checkpoint(out / CHECKPOINT, {"config": cfg, "epoch": epoch, "step": step, "generator": g.state_dict(),
                                       "discriminator": d.state_dict(), "generator_ema": g_ema.state_dict(),
                                       "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()})
    save_checkpoint(out / "generator.pt", {"config": cfg, "epoch": epoch, "generator_ema": g_ema.state_dict()})


def load_generator(model_dir: str | Path, *, device: str | torch.device = "cpu") -> tuple[Generator, DDGANConfig]:
    """EMA generator (eval mode, on ``device``) and its config from a model folder's ``generator.pt``."""
    path = Path(model_dir) / "generator.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained DDGAN generator (run notebook 03 first)")
    state = load_checkpoint(path)
    config = DDGANConfig.from_dict(state["config"])
    g, _ = build_nets(config)
    g.load_state_dict(state["generator_ema"])
    return g.to(pick_device(device)).eval(), config


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_x0(generator: Generator, config: DDGANConfig, n: int, *, seed: int, cond: torch.Tensor | None = None,
              classes: torch.Tensor | None = None, batch_size: int = 32, n_steps: int | None = None,
              progress: bool = False) -> torch.Tensor:
    """Run the reverse chain x_T -> x_0 for ``n`` samples; (n, C, P, P) in [-1, 1].

    Sample i draws all its noise from its own generator seeded by (seed, i), so it does
    not depend on ``batch_size``. ``cond``: (n, 1, H, W) normalised phase for G_M (H, W
    may differ from patch_px when divisible by the network's stride). ``classes``: (n,) class
    labels, required by a class-conditional model and ignored otherwise. ``n_steps``
    overrides T (for timing studies; the networks were trained for config.n_steps). Runs on the
    generator's device; the noise is drawn on the CPU, so samples repeat across devices up to
    floating point. Returns a CPU tensor.
    """
    T = n_steps or config.n_steps
    if config.class_conditional and (classes is None or len(classes) != n):
        raise ValueError(f"a class-conditional DDGAN ({config.kind}) needs {n} class labels")
    dev = next(generator.parameters()).device
    sched = make_schedule(T, beta_min=config.beta_min, beta_max=config.beta_max).to(dev)
    H, W = (config.patch_px, config.patch_px) if cond is None else tuple(cond.shape[-2:])
    C = config.channels
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sampling {config.kind}", disable=not progress, leave=False):
        idx = range(start, min(n, start + batch_size))
        gens = [torch.Generator().manual_seed(seed_for(seed, 3, i)) for i in idx]
        x = torch.stack([torch.randn(C, H, W, generator=gi) for gi in gens]).to(dev)
        c = None if cond is None else cond[start:start + len(idx)].to(dev)
        y = classes[start:start + len(idx)].to(dev) if config.class_conditional else None
        for t_val in range(T, 0, -1):
            z = torch.stack([torch.randn(config.z_dim, generator=gi) for gi in gens]).to(dev)
            noise = torch.stack([torch.randn(C, H, W, generator=gi) for gi in gens]).to(dev)
            t = torch.full((len(idx),), t_val, dtype=torch.long, device=dev)
            x0 = generator(x, t, z, c, y)
            x = posterior_sample(sched, x0, x, t, noise)
        out.append(x0.cpu())
    return torch.cat(out) if out else torch.zeros(0, C, H, W)


def mask_from_x0(x0: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5, H, W) generated one-hot in [-1, 1] -> class map (n, H, W) uint8 and confidence.

    Confidence per pixel: the winning channel's share of the channels mapped to [0, 1]
    ((x + 1) / 2), 1 for a clean one-hot, 0.5 for a tie of two classes.
    """
    p = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
    conf = p.max(dim=1).values / p.sum(dim=1).clamp_min(1e-6)
    return x0.argmax(dim=1).numpy().astype(np.uint8), conf.numpy().astype(np.float32)


@dataclass
class SyntheticPairs:
    """Generated pairs: phase (n, P, P) float32 [rad], labels (n, P, P) uint8, confidence (n, P, P),
    and the class each pair was asked for (n,) uint8 (0 from unconditional generators)."""

    phase: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    asked_class: np.ndarray


def draw_classes(n: int, *, seed: int, share: dict[str, float] | str | None = None) -> np.ndarray:
    """Class labels (n,) uint8 for class-conditional sampling: ``round(n * share)`` of each
    cell class (the remainder to the largest shares), in a seeded random order; ``share``:
    weights per cell class as :func:`rbclib.physics.simulate.parse_mixture` reads them
    (default: the four cell classes equally)."""
    fractions = parse_mixture(share) if share is not None else dict.fromkeys(CELL_CLASS_NAMES, 1 / len(CELL_CLASS_NAMES))
    quota = n * np.array([fractions[name] for name in CELL_CLASS_NAMES])
    counts = np.floor(quota).astype(int)
    counts[np.argsort(-(quota - counts), kind="stable")[:n - counts.sum()]] += 1
    classes = np.repeat(np.arange(1, len(CELL_CLASS_NAMES) + 1), counts).astype(np.uint8)
    return np.random.default_rng(seed_for(seed, 12)).permutation(classes)


def generate_pairs(phase_model_dir: str | Path, mask_model_dir: str | Path, n: int, *, seed: int,
                   batch_size: int = 32, progress: bool = True, class_share: dict[str, float] | str | None = None,
                   device: str | torch.device | None = None) -> SyntheticPairs:
    """n pairs: a phase patch from G_p, then a mask from G_M conditioned on it (Fig. 2c);
    sampled on ``device`` (default :func:`rbclib.core.training.pick_device`). Class-conditional
    generators are asked for the classes of :func:`draw_classes` (``class_share``: weights per
    cell class, default equal), the same class for a pair's phase and mask."""
    gp, cp = load_generator(phase_model_dir, device=pick_device(device))
    gm, cm = load_generator(mask_model_dir, device=pick_device(device))
    if cp.phase_range_rad != cm.phase_range_rad:
        raise ValueError(f"{phase_model_dir} and {mask_model_dir} normalise phase differently")
    if cp.native_px != cm.native_px:
        raise ValueError(f"{phase_model_dir} makes {cp.native_px} px patches but {mask_model_dir} expects {cm.native_px} px")
    conditional = cp.class_conditional or cm.class_conditional
    asked = draw_classes(n, seed=seed, share=class_share) if conditional else np.zeros(n, np.uint8)
    classes = torch.from_numpy(asked.astype(np.int64))
    phase_n = sample_x0(gp, cp, n, seed=seed_for(seed, 10), classes=classes, batch_size=batch_size, progress=progress)
    phase_n = resize_patches(phase_n, cp.native_px).clamp(-1.0, 1.0)
    cond = F.avg_pool2d(phase_n, cm.downsample) if cm.downsample > 1 else phase_n
    m0 = sample_x0(gm, cm, n, seed=seed_for(seed, 11), cond=cond, classes=classes, batch_size=batch_size,
                   progress=progress)
    labels, conf = mask_from_x0(resize_patches(m0, cm.native_px))
    return SyntheticPairs(denormalise_phase(phase_n[:, 0].numpy(), cp.phase_range_rad), labels, conf, asked)


def resize_patches(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (n, C, h, w) to (n, C, size, size); identity when already that size."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def generator_compute(model_dir: str | Path) -> dict[str, float]:
    """Parameters and MACs of one sampling pass (T generator calls) per patch, via torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    g, cfg = load_generator(model_dir)
    P = cfg.patch_px
    x = torch.zeros(1, cfg.channels, P, P)
    cond = torch.zeros(1, 1, P, P) if cfg.cond_channels else None
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        g(x, torch.ones(1, dtype=torch.long), torch.zeros(1, cfg.z_dim), cond)
    macs_step = fc.get_total_flops() / 2.0
    return {"params": float(sum(p.numel() for p in g.parameters())), "macs_per_step": macs_step,
            "macs_per_patch": macs_step * cfg.n_steps, "n_steps": float(cfg.n_steps), "patch_px": float(P),
            "downsample": float(cfg.downsample)}


def config_from_profile(stage: dict[str, Any], kind: str) -> DDGANConfig:
    """DDGANConfig of ``kind`` from a profile's diffusion table ([common] then [<kind>] keys)."""
    return DDGANConfig(kind=kind, **{**stage.get("common", {}), **stage.get(kind, {})})
