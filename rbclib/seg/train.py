"""Fine-tuning a segmentation model: cross-entropy + Dice loss, AdamW, cosine schedule.

One loop for one process (device chosen automatically: cuda, mps, cpu) and for several
under ``torchrun --nproc_per_node N -m rbclib.launch seg ...`` (DistributedDataParallel with a
DistributedSampler; the global batch is split over the ranks; rank 0 validates and
writes). A model folder holds ``config.json``, ``best.pt`` (best validation Dice),
``last.pt`` (weights, plus optimiser and schedule until the last epoch, for resuming after
an interruption) and ``log.csv`` (one row per epoch). Checkpoints embed the config as a JSON string and load
with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from rbclib.seg.config import DEFAULT_CONFIG, SegConfig, make_config
from rbclib.seg.datasets import (BalancedCropDataset, Pair, PatchDataset, load_pairs, load_pairs_folder,
                             read_splits)
from rbclib.seg.infer import check_mask_classes, model_from_config, predict_image
from rbclib.core.distributed import (barrier, broadcast_buffers, check_ranks_in_sync, mean_over_ranks, rank_share,
                                     start_distributed)
from rbclib.core.files import write_json
from rbclib.core.labels import IGNORE
from rbclib.core.training import (CHECKPOINT, autocast, channels_last, fused_optimiser, progress as progress_bar,
                                  read_log_rows, restore, resume_state, save_checkpoint, write_log)


class CEDiceLoss(nn.Module):
    """L_CE-Dice: ``ce_weight`` * cross-entropy + ``dice_weight`` * (1 - soft Dice).

    The Dice is averaged over the classes present in the batch (smp ``DiceLoss``); pixels
    labelled ``rbclib.core.labels.IGNORE`` count in neither.

    Parameters
    ----------
    ce_weight, dice_weight : float
        Weights of the two terms.
    """

    def __init__(self, *, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.ce = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss of a batch.

        Parameters
        ----------
        logits : torch.Tensor
            (B, C, H, W) float class scores.
        target : torch.Tensor
            (B, H, W) integer class labels, ``IGNORE`` where unknown.

        Returns
        -------
        total, ce, dice : torch.Tensor
            Scalar losses: the weighted sum, the cross-entropy and the Dice loss.
        """
        ce, dice = self.ce(logits, target), self.dice(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice


def split_validation(stems: Sequence[str], *, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out a seeded share of the training images for validation.

    Parameters
    ----------
    stems : sequence of str
        Names of the training images.
    fraction : float
        Share held out (at least one image when > 0).
    seed : int
        Seed of the draw.

    Returns
    -------
    train, validation : list of str
        Sorted stems of each part.

    Raises
    ------
    ValueError
        Nothing would be left to train on.
    """
    stems = sorted(stems)
    n_val = 0 if fraction <= 0 else max(1, int(round(fraction * len(stems))))
    if n_val >= len(stems):
        raise ValueError(f"cannot hold out {n_val} of {len(stems)} training images for validation")
    order = np.random.default_rng(seed).permutation(len(stems))
    val = sorted(stems[i] for i in order[:n_val])
    return [s for s in stems if s not in set(val)], val


def _strip(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that must match to resume (not bookkeeping); keys a config of an
    older version lacks count as their defaults."""
    cfg = {**{k: v for k, v in DEFAULT_CONFIG.items()
              if k in ("adversarial_weight", "postprocess", "pretrained_lr_scale", "warmup_steps", "infer_tile",
                       "trim_halo")}, **cfg}
    return {k: v for k, v in cfg.items() if k not in ("train_images", "val_images", "n_train_patches", "world_size")}


def _parameter_groups(model: nn.Module, cfg: SegConfig, *, pretrained: bool) -> list[dict[str, Any]]:
    """AdamW parameter groups: the encoder and decoder at ``pretrained_lr_scale`` x ``lr`` when
    they hold SSL weights (``pretrained``) and the scale is not 1, else one group."""
    scale = cfg.pretrained_lr_scale
    if not pretrained or scale == 1.0:
        return [{"params": list(model.parameters())}]
    body = [p for part in (model.encoder, model.decoder) for p in part.parameters()]
    ids = {id(p) for p in body}
    return [{"params": body, "lr": cfg.lr * scale},
            {"params": [p for p in model.parameters() if id(p) not in ids]}]


def _schedule(optimiser: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> Any:
    """Cosine decay over ``total_steps``, after a linear warm-up from 1 % over ``warmup_steps``
    (0: none) when there is one."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    if warmup_steps <= 0:
        return cosine(optimiser, T_max=max(total_steps, 1))
    warmup_steps = min(warmup_steps, max(total_steps - 1, 1))
    return torch.optim.lr_scheduler.SequentialLR(
        optimiser, [torch.optim.lr_scheduler.LinearLR(optimiser, start_factor=0.01, total_iters=warmup_steps),
                    cosine(optimiser, T_max=max(total_steps - warmup_steps, 1))], milestones=[warmup_steps])


def train_segmenter(train_pairs: Sequence[Pair], val_pairs: Sequence[Pair], *, model_name: str, out_dir: str | Path,
                    config: dict[str, Any], init_from: str | Path | None = None,
                    init_model: str | Path | None = None, extra_pairs_dir: str | Path | None = None, seed: int,
                    device: str | torch.device | None = None, resume: bool = True,
                    progress: bool = True) -> Path:
    """Train a segmentation model and write its model folder.

    The model trains on patches of ``train_pairs`` (+ the pairs in ``extra_pairs_dir``, used
    as they are) and is validated each epoch on the full ``val_pairs`` images (tiled
    inference, in bfloat16 autocast when the training runs in it, as ``rbc assess`` does;
    mean Dice overall, :mod:`rbclib.seg.metrics`). ``adversarial_weight`` > 0 trains a
    conditional GAN: a PatchGAN discriminator of (phase, class probabilities) pairs steps
    after each generator step (:class:`rbclib.seg.gan_watershed.Adversary`).

    Parameters
    ----------
    train_pairs, val_pairs : sequence of rbclib.seg.datasets.Pair
        Phase maps [rad] with their label maps.
    model_name : str
        "resunet" or a baseline of :mod:`rbclib.seg.models`.
    out_dir : str or pathlib.Path
        The model folder to write.
    config : dict
        :class:`rbclib.seg.config.SegConfig` keys (``model_name`` is taken from the argument).
    init_from : str or pathlib.Path, optional
        An SSL model folder loaded with :func:`rbclib.seg.pretrained.load_into_resunet` (ResUnet only).
    init_model : str or pathlib.Path, optional
        A trained segmentation model folder whose weights start the training (fine-tuning;
        ``config`` must describe the same architecture, :func:`rbclib.seg.config.finetune_config`).
    extra_pairs_dir : str or pathlib.Path, optional
        A folder of extra pairs (curated synthetic ones, 04).
    seed : int
        Seed of the initial weights, patches and validation.
    device : str or torch.device, optional
        Torch device (None: cuda, mps or cpu).
    resume : bool
        Continue from ``out_dir/last.pt`` when it was written with the same config (a
        finished run returns at once); False starts afresh.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Notes
    -----
    One loop holds the state that resuming and DistributedDataParallel must keep together
    (model, optimiser, schedule, adversary, sampler epoch, best score, log), so it is one
    function; the parameters are the model folder's inputs, each recorded in its config.
    """
    from rbclib.seg.metrics import dice_per_class, mean_scores

    rank, world, distributed, dev = start_distributed(device)
    out_dir = Path(out_dir)
    c = SegConfig.from_dict({**config, "model_name": model_name})
    cfg = c.to_dict()
    if init_from and init_model:
        raise ValueError("start from SSL weights (init_from) or from a trained model (init_model), not both")
    cfg.update(seed=int(seed), init_from=str(init_from) if init_from else None,
               **({"init_model": str(init_model)} if init_model else {}),
               extra_pairs_dir=str(extra_pairs_dir) if extra_pairs_dir else None)
    rank_share(c.batch_size, world)
    for pair in list(train_pairs) + list(val_pairs):
        check_mask_classes(pair.labels, c.classes, source=f"label map {pair.name}")

    # Data
    kw = dict(patch=c.patch, overlap=c.overlap, in_channels=c.in_channels,
              phase_range=c.phase_range)
    grid = PatchDataset(train_pairs, mode="paper" if c.patch_mode == "balanced" else c.patch_mode,
                        rotations=c.rotations, **kw)
    if c.patch_mode == "balanced":  # class-balanced random crops, as many per epoch as the grid has patches or set
        length = c.crops_per_epoch or len(grid)
        grid = BalancedCropDataset(train_pairs, patch=c.patch, length=length, seed=int(seed),
                                   in_channels=c.in_channels, phase_range=c.phase_range,
                                   phase_gain=c.phase_gain)
    sets: list[Dataset] = [grid]
    if extra_pairs_dir:
        extra = load_pairs_folder(extra_pairs_dir, allow_ignore=True)
        for pair in extra:
            check_mask_classes(pair.labels, c.classes, source=f"{extra_pairs_dir}: {pair.name}")
        sets.append(PatchDataset(extra, mode="cover", rotations=1, **kw))
    train_set = ConcatDataset(sets)
    cfg.update(train_images=[p.name for p in train_pairs], val_images=[p.name for p in val_pairs],
               n_train_patches=len(train_set), world_size=world)
    per_rank = min(c.batch_size // world, max(1, len(train_set) // world))
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=int(seed), drop_last=True)
    loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"no full training batch: {len(train_set)} patches for batch size {per_rank} x {world}")

    # Model, optimiser, schedule (same seed -> same initial weights for every arm)
    torch.manual_seed(int(seed))
    model = model_from_config(cfg)
    if init_from:
        if model_name != "resunet":
            raise ValueError(f"init_from (SSL weights) needs model_name='resunet', got {model_name!r}")
        from rbclib.seg.pretrained import load_into_resunet

        model = load_into_resunet(model, init_from)
    if init_model:
        _load_trained_weights(model, init_model)
    model = channels_last(model, dev)
    optimiser = torch.optim.AdamW(_parameter_groups(model, c, pretrained=init_from is not None),
                                  lr=c.lr, weight_decay=c.weight_decay,
                                  fused=fused_optimiser(dev))
    steps = len(loader) if not c.max_steps_per_epoch else min(len(loader), c.max_steps_per_epoch)
    total_steps = c.epochs * steps
    scheduler = _schedule(optimiser, total_steps, c.warmup_steps)
    loss_fn = CEDiceLoss(ce_weight=c.ce_weight, dice_weight=c.dice_weight)
    adversary = None
    if c.adversarial_weight > 0:
        from rbclib.seg.gan_watershed import Adversary

        adversary = Adversary(c.in_channels, c.classes, weight=c.adversarial_weight,
                              device=dev, world=world, bf16=c.autocast_bf16)

    start_epoch, best_score, log_rows = 0, -math.inf, []
    last_path = out_dir / CHECKPOINT
    ckpt = (resume_state(out_dir, _strip(cfg), stored=lambda saved: _strip(json.loads(saved["config"])))
            if resume else None)
    if ckpt is not None:
        if int(ckpt["epoch"]) + 1 >= c.epochs:
            return out_dir  # finished earlier: nothing to do
        restore(ckpt, {"model": model, "optimizer": optimiser, "scheduler": scheduler,
                       **({"adversary": adversary} if adversary is not None else {})})
        start_epoch, best_score = int(ckpt["epoch"]) + 1, float(ckpt["best_score"])
        log_rows = read_log_rows(out_dir, upto="epoch", last=start_epoch - 1)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg)
    net = (nn.parallel.DistributedDataParallel(model, find_unused_parameters=_has_unused_parameters(model, c))
           if distributed else model)
    cfg_json = json.dumps(cfg)

    bar = progress_bar(total_steps, initial=start_epoch * steps, desc=f"train {out_dir.name}",
                       enabled=progress and rank == 0)
    for epoch in range(start_epoch, c.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(int(seed) * 100_003 + epoch)  # dropout etc.: a function of (seed, epoch), so resuming is exact
        sampler.set_epoch(epoch)
        if isinstance(grid, BalancedCropDataset):
            grid.set_epoch(epoch)
        net.train()
        sums = np.zeros(4)  # loss, CE, Dice loss, discriminator loss (GAN only)
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(dev, non_blocking=True)
            with autocast(dev, c.autocast_bf16):
                logits = net(x)
            loss, ce, dice = loss_fn(logits.float(), y)
            if adversary is not None:
                loss = loss + adversary.generator_loss(x, logits)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            d_loss = adversary.update(x, y, logits) if adversary is not None else 0.0
            sums += [loss.item(), ce.item(), dice.item(), d_loss]
            bar.update(1)
        sums /= steps
        if distributed:
            broadcast_buffers(model)  # BatchNorm statistics: rank 0's, as DDP uses at every forward
            if adversary is not None:
                adversary.sync_buffers()
            sums = mean_over_ranks(sums, dev, world)
        row = {"epoch": epoch, "train_loss": sums[0], "train_ce": sums[1], "train_dice_loss": sums[2],
               "lr": scheduler.get_last_lr()[-1]}
        if adversary is not None:
            row["train_discriminator_loss"] = sums[3]
        if rank == 0:
            if val_pairs:
                scores = mean_scores(dice_per_class(predict_image(model, p.phase, config=cfg,
                                                                  batch_size=c.val_batch_size,
                                                                  fast=c.autocast_bf16).labels, p.labels)
                                     for p in val_pairs)
                row.update({f"val_dice_{k}": v for k, v in scores.items()})
                score = scores["overall"] if not math.isnan(scores["overall"]) else -math.inf
            else:
                score = -float(sums[0])
            row["seconds"] = time.perf_counter() - t0
            log_rows.append(row)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            if score > best_score or epoch == start_epoch == 0:
                best_score = max(score, best_score)
                save_checkpoint(out_dir / "best.pt", {"model": state, "epoch": epoch, "score": score, "config": cfg_json})
            last = {"model": state, "epoch": epoch, "best_score": best_score, "config": cfg_json}
            if epoch + 1 < c.epochs:  # optimiser state only while there is something to resume
                last.update(optimizer=optimiser.state_dict(), scheduler=scheduler.state_dict())
                if adversary is not None:
                    last["adversary"] = adversary.state_dict()
            save_checkpoint(last_path, last)
            write_log(out_dir, log_rows)
            bar.set_postfix(loss=f"{sums[0]:.3f}", val_dice=f"{row.get('val_dice_overall', float('nan')):.3f}")
        barrier(distributed)
    bar.close()
    if distributed:
        check_ranks_in_sync([model], out_dir, rank, world)
    return out_dir


def _load_trained_weights(model: nn.Module, model_dir: str | Path) -> None:
    """Copy a trained model folder's weights into ``model`` (fine-tuning); ValueError naming the
    folder when they do not fit its architecture."""
    from rbclib.seg.infer import load_model

    trained, _ = load_model(model_dir, device="cpu")
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as exc:
        raise ValueError(f"{model_dir}: its weights do not fit the model being trained ({str(exc)[:200]}); "
                         "fine-tune with its own architecture (rbclib.seg.config.finetune_config)") from None


def _has_unused_parameters(model: nn.Module, cfg: SegConfig) -> bool:
    """True when some parameters take no part in the forward pass (e.g. smp PSPNet's
    unused deepest encoder stage), which DDP must be told about."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(torch.zeros(2, cfg.in_channels, 64, 64, device=dev)).sum()
    grads = torch.autograd.grad(out, params, allow_unused=True)
    model.train(was_training)
    return any(g is None for g in grads)


def train_from_run(run_dir: str | Path, *, model_name: str, out_dir: str | Path, config: dict[str, Any], seed: int,
                   val_fraction: float = 0.15, init_from: str | Path | None = None,
                   extra_pairs_dir: str | Path | None = None, device: str | torch.device | None = None,
                   progress: bool = True) -> Path:
    """Train on a run folder's train split (``splits.json``), holding out part of it for validation.

    What inference needs of the run goes into the model's config: the pixel size of its
    ``optics.json``, and halo trimming when its twin drew flat-topped discocytes.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.
    model_name, out_dir, config, seed, init_from, extra_pairs_dir, device, progress
        As for :func:`train_segmenter`.
    val_fraction : float
        Share of the train split held out for validation (seeded, :func:`split_validation`).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Notes
    -----
    It passes :func:`train_segmenter`'s parameters on one to one, with the run folder in
    place of the pairs.
    """
    from rbclib.core.paths import RunPaths
    from rbclib.physics.simulated_datasets import drew_flat_discocytes

    train_stems, val_stems = split_validation(read_splits(run_dir)["train"], fraction=val_fraction, seed=seed)
    paths = RunPaths(run_dir)
    if paths.optics_json.is_file():
        from rbclib.core.config import Optics

        config = {**config, "pixel_size_m": Optics.from_json(paths.optics_json).pixel_size_m}
    if drew_flat_discocytes(paths.simulated):
        config = {**config, "trim_halo": True}
    return train_segmenter(load_pairs(run_dir, train_stems), load_pairs(run_dir, val_stems), model_name=model_name,
                           out_dir=out_dir, config=config, init_from=init_from, extra_pairs_dir=extra_pairs_dir,
                           seed=seed, device=device, progress=progress)


def config_from_profile(table: dict[str, Any], model_name: str) -> dict[str, Any]:
    """Training config of a model from a ``profiles/segment.toml`` table.

    Parameters
    ----------
    table : dict
        The profile's segment table: the :data:`rbclib.seg.config.DEFAULT_CONFIG` keys it sets,
        with ``encoder`` for the ResUnet and ``baseline_encoder`` for the baselines.
    model_name : str
        The model; GAN + Watershed adds its generator, GAN loss and watershed.

    Returns
    -------
    dict
        The checked config (:func:`rbclib.seg.config.make_config`).
    """
    cfg = {k: v for k, v in table.items() if k in DEFAULT_CONFIG}
    cfg["encoder"] = table["encoder"] if model_name == "resunet" else table.get("baseline_encoder", table["encoder"])
    if model_name != "resunet":
        cfg.pop("decoder_channels", None)
    if model_name == "gan_watershed":
        from rbclib.seg.gan_watershed import ADVERSARIAL_WEIGHT, ENCODER_NAME

        cfg.update(encoder=ENCODER_NAME, adversarial_weight=ADVERSARIAL_WEIGHT, postprocess="watershed")
    return make_config(cfg, model_name=model_name)


def arm_inputs(run_dir: str | Path) -> dict[str, dict[str, Path | None]]:
    """The ResUnet arms whose inputs exist in a run folder.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.

    Returns
    -------
    dict
        ``{arm: {"extra_pairs_dir", "init_from"}}``: ``backbone`` always; ``da`` with
        ``synthetic/train/`` (04); ``ssl`` with ``models/ssl/`` (05); ``da_ssl`` with both.
        Order: backbone, da, ssl, da_ssl.
    """
    from rbclib.core.paths import SEG_ARMS, RunPaths

    paths = RunPaths(run_dir)
    synthetic = paths.synthetic / "train"
    ssl = paths.model_dir("ssl")
    has_da = (synthetic / "phase").is_dir() and any((synthetic / "phase").glob("*.tif"))
    has_ssl = (ssl / "config.json").is_file()
    wanted = {"backbone": (False, False), "da": (True, False), "ssl": (False, True), "da_ssl": (True, True)}
    return {arm: {"extra_pairs_dir": synthetic if da else None, "init_from": ssl if use_ssl else None}
            for arm in SEG_ARMS for da, use_ssl in [wanted[arm]]
            if (has_da or not da) and (has_ssl or not use_ssl)}


def read_log(model_dir: str | Path) -> pd.DataFrame:
    """A model folder's training log.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The model folder.

    Returns
    -------
    pandas.DataFrame
        ``log.csv``: one row per epoch.

    Raises
    ------
    FileNotFoundError
        The folder has no log.
    """
    path = Path(model_dir) / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log")
    return pd.read_csv(path)


def plot_loss_curves(model_dirs: dict[str, str | Path] | Sequence[str | Path]):
    """Training loss and validation Dice per epoch of one or more model folders.

    Parameters
    ----------
    model_dirs : dict or sequence
        ``{name: folder}``, or folders (named by their folder names).

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: loss and validation Dice.
    """
    import matplotlib.pyplot as plt

    if not isinstance(model_dirs, dict):
        model_dirs = {Path(d).name: d for d in model_dirs}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, folder in model_dirs.items():
        log = read_log(folder)
        ax1.plot(log["epoch"] + 1, log["train_loss"], marker=".", label=name)
        if "val_dice_overall" in log:
            ax2.plot(log["epoch"] + 1, log["val_dice_overall"], marker=".", label=name)
    ax1.set(xlabel="epoch", ylabel="CE + Dice loss", title="training loss")
    ax2.set(xlabel="epoch", ylabel="Dice (overall)", title="validation Dice")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

