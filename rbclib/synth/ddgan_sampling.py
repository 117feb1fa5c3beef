"""Sampling the trained DDGANs of :mod:`rbclib.synth.ddgan`.

The EMA generator of a model folder (:func:`load_generator`), the reverse chain x_T -> x_0
(:func:`sample_x0`), class maps of generated one-hot masks (:func:`mask_from_x0`), phase/mask
pairs from G_p then G_M (:func:`generate_pairs`; class-conditional models are asked for the
classes of :func:`draw_classes`) and the compute of one sampling pass (:func:`generator_compute`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rbclib.core.labels import CELL_CLASS_NAMES
from rbclib.core.training import load_checkpoint, pick_device
from rbclib.physics.simulate import parse_mixture
from rbclib.seg.datasets import denormalise_phase
from rbclib.synth.ddgan import DDGANConfig, build_nets, seed_for
from rbclib.synth.ddgan_schedule import make_schedule, posterior_sample
from rbclib.synth.nets import Generator


def load_generator(model_dir: str | Path, *, device: str | torch.device = "cpu") -> tuple[Generator, DDGANConfig]:
    """EMA generator and its config from a model folder's ``generator.pt``.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        A DDGAN model folder.
    device : str or torch.device, optional
        Where the generator goes (default "cpu").

    Returns
    -------
    generator : rbclib.synth.nets.Generator
        In eval mode, on ``device``.
    config : DDGANConfig
        Its config.

    Raises
    ------
    FileNotFoundError
        The folder has no ``generator.pt``.
    """
    path = Path(model_dir) / "generator.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained DDGAN generator (run notebook 03 first)")
    state = load_checkpoint(path)
    config = DDGANConfig.from_dict(state["config"])
    g, _ = build_nets(config)
    g.load_state_dict(state["generator_ema"])
    return g.to(pick_device(device)).eval(), config


@torch.no_grad()
def sample_x0(generator: Generator, config: DDGANConfig, n: int, *, seed: int, cond: torch.Tensor | None = None,
              classes: torch.Tensor | None = None, batch_size: int = 32, n_steps: int | None = None,
              progress: bool = False) -> torch.Tensor:
    """Run the reverse chain x_T -> x_0 for ``n`` samples.

    Sample i draws all its noise from its own generator seeded by (seed, i), so it does
    not depend on ``batch_size``. Runs on the generator's device; the noise is drawn on the
    CPU, so samples repeat across devices up to floating point.

    Parameters
    ----------
    generator : rbclib.synth.nets.Generator
        The (EMA) generator (:func:`load_generator`).
    config : DDGANConfig
        Its config.
    n : int
        Samples to draw.
    seed : int
        Seed of the samples' noise.
    cond : torch.Tensor, optional
        (n, 1, H, W) normalised phase for G_M (H, W may differ from patch_px when divisible
        by the network's stride).
    classes : torch.Tensor, optional
        (n,) class labels, required by a class-conditional model and ignored otherwise.
    batch_size : int, optional
        Samples per forward pass.
    n_steps : int, optional
        Overrides T (for timing studies; the networks were trained for config.n_steps).
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    torch.Tensor
        (n, C, P, P) CPU tensor in [-1, 1].

    Raises
    ------
    ValueError
        A class-conditional model without ``n`` class labels.

    Notes
    -----
    The parameters are the chain's inputs (generator, config, count, seed, conditioning
    phase, classes) plus batching, a step-count override for timing studies and a progress
    bar; its callers (:func:`generate_pairs`, :mod:`rbclib.synth.mask_segmenter`,
    :mod:`rbclib.synth.ddgan_figures`, the benchmarks) each pass a different subset.
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
    """Class maps and confidence of generated one-hot masks.

    Parameters
    ----------
    x0 : torch.Tensor
        (n, 5, H, W) generated one-hot in [-1, 1], on the CPU.

    Returns
    -------
    labels : numpy.ndarray
        (n, H, W) uint8 class maps.
    confidence : numpy.ndarray
        (n, H, W) float32 per pixel: the winning channel's share of the channels mapped to
        [0, 1] ((x + 1) / 2), 1 for a clean one-hot, 0.5 for a tie of two classes.
    """
    p = ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
    conf = p.max(dim=1).values / p.sum(dim=1).clamp_min(1e-6)
    return x0.argmax(dim=1).numpy().astype(np.uint8), conf.numpy().astype(np.float32)


@dataclass
class SyntheticPairs:
    """Generated pairs.

    Attributes
    ----------
    phase : numpy.ndarray
        (n, P, P) float32 phase [rad].
    labels : numpy.ndarray
        (n, P, P) uint8 class maps.
    confidence : numpy.ndarray
        (n, P, P) float32 per-pixel confidence (:func:`mask_from_x0`).
    asked_class : numpy.ndarray
        (n,) uint8 class each pair was asked for (0 from unconditional generators).
    """

    phase: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    asked_class: np.ndarray


def draw_classes(n: int, *, seed: int, share: dict[str, float] | str | None = None) -> np.ndarray:
    """Class labels for class-conditional sampling.

    Parameters
    ----------
    n : int
        Labels to draw.
    seed : int
        Seed of their order.
    share : dict of str to float or str, optional
        Weights per cell class as :func:`rbclib.physics.simulate.parse_mixture` reads them
        (default: the four cell classes equally).

    Returns
    -------
    numpy.ndarray
        (n,) uint8: ``round(n * share)`` of each cell class (the remainder to the largest
        shares), in a seeded random order.
    """
    fractions = parse_mixture(share) if share is not None else dict.fromkeys(CELL_CLASS_NAMES, 1 / len(CELL_CLASS_NAMES))
    quota = n * np.array([fractions[name] for name in CELL_CLASS_NAMES])
    counts = np.floor(quota).astype(int)
    counts[np.argsort(-(quota - counts), kind="stable")[:n - counts.sum()]] += 1
    classes = np.repeat(np.arange(1, len(CELL_CLASS_NAMES) + 1), counts).astype(np.uint8)
    return np.random.default_rng(seed_for(seed, 12)).permutation(classes)


def generate_pairs(phase_model_dir: str | Path, mask_model_dir: str | Path, n: int, *, seed: int,
                   batch_size: int = 32, progress: bool = True, class_share: dict[str, float] | str | None = None,
                   device: str | torch.device | None = None) -> SyntheticPairs:
    """``n`` pairs: a phase patch from G_p, then a mask from G_M conditioned on it (Fig. 2c).

    Class-conditional generators are asked for the classes of :func:`draw_classes`, the
    same class for a pair's phase and mask.

    Parameters
    ----------
    phase_model_dir, mask_model_dir : str or pathlib.Path
        Model folders of G_p and G_M.
    n : int
        Pairs to generate.
    seed : int
        Seed of the samples and classes.
    batch_size : int, optional
        Samples per forward pass.
    progress : bool, optional
        Show progress bars.
    class_share : dict of str to float or str, optional
        Weights per cell class (default equal).
    device : str or torch.device, optional
        Where to sample (default :func:`rbclib.core.training.pick_device`).

    Returns
    -------
    SyntheticPairs
        Phase, labels, confidence and asked class of each pair, at the data's pixel size.

    Raises
    ------
    ValueError
        The two models normalise phase differently or make patches of different sizes.
    """
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
    """Bilinear resize of square patches.

    Parameters
    ----------
    x : torch.Tensor
        (n, C, h, w) patches.
    size : int
        Output side [px].

    Returns
    -------
    torch.Tensor
        (n, C, size, size); ``x`` itself when already that size.
    """
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def generator_compute(model_dir: str | Path) -> dict[str, float]:
    """Parameters and MACs of one sampling pass (T generator calls) per patch, via torch's FLOP counter.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        A DDGAN model folder.

    Returns
    -------
    dict of str to float
        ``params``, ``macs_per_step``, ``macs_per_patch``, ``n_steps``, ``patch_px``, ``downsample``.
    """
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
