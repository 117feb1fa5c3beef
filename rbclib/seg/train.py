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

from rbclib.seg.datasets import (PHASE_RANGE_RAD, BalancedCropDataset, Pair, PatchDataset, load_pairs, load_pairs_folder,
                             read_splits)
from rbclib.seg.infer import check_mask_classes, model_from_config, predict_image
from rbclib.core.distributed import (barrier, broadcast_buffers, check_ranks_in_sync, mean_over_ranks, rank_share,
                                     start_distributed)
from rbclib.core.files import write_json
from rbclib.core.labels import IGNORE
from rbclib.core.training import (CHECKPOINT, autocast, channels_last, fused_optimiser, progress as progress_bar,
                                  read_log_rows, restore, resume_state, save_checkpoint, write_log)

PATCH_MODES = ("paper", "cover", "balanced")

# Every key a training config may hold, with its default (profiles set most of them).
DEFAULT_CONFIG: dict[str, Any] = {
    "model_name": "resunet",
    "encoder": "resnet50",
    "decoder_channels": [1024, 512, 256, 128, 64],  # ResUnet only (the paper's decoder)
    "pixel_size_m": 0.1441e-6,  # pixel size of the training images [m]; inference resamples to it
    "in_channels": 3,
    "classes": 5,
    "patch": 256,          # training patch side [px]
    "patch_mode": "paper",  # "paper": non-overlapping grid; "cover": overlapping tiles; "balanced": class-balanced random crops
    "overlap": 32,         # px shared by tiles ("cover" patches and inference)
    "rotations": 4,        # x4 rotation augmentation of the acquired pairs (1: off)
    "epochs": 50,
    "max_steps_per_epoch": 0,  # 0: a full pass over the patches; else at most this many batches
    "batch_size": 8,       # global batch (split over DDP ranks)
    "lr": 3e-4,
    "weight_decay": 1e-4,
    "ce_weight": 1.0,
    "dice_weight": 1.0,
    "val_batch_size": 8,
    "autocast_bf16": False,  # bfloat16 autocast of the training forward pass (weights stay float32)
    "phase_range": list(PHASE_RANGE_RAD),
    "phase_gain": [1.0, 1.0],  # balanced crops: phase x a log-uniform gain from this range (instrument disagreement)
    "adversarial_weight": 0.0,  # > 0: a PatchGAN discriminator adds this x its GAN loss (GAN + Watershed)
    "postprocess": "none",  # "watershed": inference splits touching cells (rbclib.seg.watershed)
    "pretrained_lr_scale": 1.0,  # learning-rate factor of the encoder and decoder when initialised from SSL weights
    "warmup_steps": 0,     # linear learning-rate warm-up over the first steps, then the cosine decay
    "infer_tile": 0,       # inference tile side [px] (0: the training patch)
    "trim_halo": False,    # inference: drop model pixels beyond a cell's bright body (twins with flat-topped discocytes)
}
POSTPROCESS = ("none", "watershed")


def make_config(config: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """DEFAULT_CONFIG updated with ``config`` and ``overrides``; unknown keys are errors."""
    cfg = dict(DEFAULT_CONFIG)
    for src in (config or {}, overrides):
        unknown = set(src) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
        cfg.update(src)
    cfg["phase_range"] = [float(v) for v in cfg["phase_range"]]
    cfg["phase_gain"] = [float(v) for v in cfg["phase_gain"]]
    if cfg["patch_mode"] not in PATCH_MODES:
        raise ValueError(f"patch_mode {cfg['patch_mode']!r}: expected one of {PATCH_MODES}")
    if cfg["postprocess"] not in POSTPROCESS:
        raise ValueError(f"postprocess {cfg['postprocess']!r}: expected one of {POSTPROCESS}")
    if cfg["model_name"] != "resunet":
        cfg.pop("decoder_channels")  # the baselines keep their own decoders
    return cfg


class CEDiceLoss(nn.Module):
    """L_CE-Dice: ``ce_weight`` * cross-entropy + ``dice_weight`` * (1 - soft Dice), the
    Dice averaged over the classes present in the batch (smp ``DiceLoss``); pixels labelled
    ``rbclib.core.labels.IGNORE`` count in neither."""

    def __init__(self, *, ce_weight: float = 1.0, dice_weight: float = 1.0):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.ce = nn.CrossEntropyLoss(ignore_index=IGNORE)
        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=IGNORE)
        self.ce_weight, self.dice_weight = ce_weight, dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (total, ce, dice) losses."""
        ce, dice = self.ce(logits, target), self.dice(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice


def split_validation(stems: Sequence[str], *, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``fraction`` of the training stems (at least one if fraction > 0) for
    validation -> (train stems, validation stems); seeded."""
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


def _parameter_groups(model: nn.Module, cfg: dict[str, Any], *, pretrained: bool) -> list[dict[str, Any]]:
    """AdamW parameter groups: the encoder and decoder at ``pretrained_lr_scale`` x ``lr`` when
    they hold SSL weights (``pretrained``) and the scale is not 1, else one group."""
    scale = float(cfg["pretrained_lr_scale"])
    if not pretrained or scale == 1.0:
        return [{"params": list(model.parameters())}]
    body = [p for part in (model.encoder, model.decoder) for p in part.parameters()]
    ids = {id(p) for p in body}
    return [{"params": body, "lr": float(cfg["lr"]) * scale},
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
                    extra_pairs_dir: str | Path | None = None, seed: int,
                    device: str | torch.device | None = None, resume: bool = True,
                    progress: bool = True) -> Path:
    """Train ``model_name`` on patches of ``train_pairs`` (+ the pairs in
    ``extra_pairs_dir``, used as they are), validating each epoch on the full
    ``val_pairs`` images (tiled inference, in bfloat16 autocast when the training runs in it,
    as ``rbc assess`` does; mean Dice overall, ``rbclib.seg.metrics``).

    init_from: an SSL model folder loaded with ``rbclib.seg.pretrained.load_into_resunet`` (ResUnet only).
    ``adversarial_weight`` > 0 trains a conditional GAN: a PatchGAN discriminator of (phase,
    class probabilities) pairs steps after each generator step (:class:`rbclib.seg.gan_watershed.Adversary`).
    resume: continue from ``out_dir/last.pt`` when it was written with the same config
    (a finished run returns at once); False starts afresh. Returns ``out_dir``.
    """
    from rbclib.seg.metrics import dice_per_class, mean_scores

    rank, world, distributed, dev = start_distributed(device)
    out_dir = Path(out_dir)
    cfg = make_config(config, model_name=model_name)
    cfg.update(seed=int(seed), init_from=str(init_from) if init_from else None,
               extra_pairs_dir=str(extra_pairs_dir) if extra_pairs_dir else None)
    rank_share(int(cfg["batch_size"]), world)
    for pair in list(train_pairs) + list(val_pairs):
        check_mask_classes(pair.labels, int(cfg["classes"]), source=f"label map {pair.name}")

    # Data
    kw = dict(patch=int(cfg["patch"]), overlap=int(cfg["overlap"]), in_channels=int(cfg["in_channels"]),
              phase_range=tuple(cfg["phase_range"]))
    grid = PatchDataset(train_pairs, mode="paper" if cfg["patch_mode"] == "balanced" else cfg["patch_mode"],
                        rotations=int(cfg["rotations"]), **kw)
    if cfg["patch_mode"] == "balanced":  # as many class-balanced random crops per epoch as the grid has patches
        grid = BalancedCropDataset(train_pairs, patch=int(cfg["patch"]), length=len(grid), seed=int(seed),
                                   in_channels=int(cfg["in_channels"]), phase_range=tuple(cfg["phase_range"]),
                                   phase_gain=tuple(cfg["phase_gain"]))
    sets: list[Dataset] = [grid]
    if extra_pairs_dir:
        extra = load_pairs_folder(extra_pairs_dir, allow_ignore=True)
        for pair in extra:
            check_mask_classes(pair.labels, int(cfg["classes"]), source=f"{extra_pairs_dir}: {pair.name}")
        sets.append(PatchDataset(extra, mode="cover", rotations=1, **kw))
    train_set = ConcatDataset(sets)
    cfg.update(train_images=[p.name for p in train_pairs], val_images=[p.name for p in val_pairs],
               n_train_patches=len(train_set), world_size=world)
    per_rank = min(cfg["batch_size"] // world, max(1, len(train_set) // world))
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
    model = channels_last(model, dev)
    optimiser = torch.optim.AdamW(_parameter_groups(model, cfg, pretrained=init_from is not None),
                                  lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                                  fused=fused_optimiser(dev))
    steps = len(loader) if not cfg["max_steps_per_epoch"] else min(len(loader), int(cfg["max_steps_per_epoch"]))
    total_steps = int(cfg["epochs"]) * steps
    scheduler = _schedule(optimiser, total_steps, int(cfg["warmup_steps"]))
    loss_fn = CEDiceLoss(ce_weight=float(cfg["ce_weight"]), dice_weight=float(cfg["dice_weight"]))
    adversary = None
    if float(cfg["adversarial_weight"]) > 0:
        from rbclib.seg.gan_watershed import Adversary

        adversary = Adversary(int(cfg["in_channels"]), int(cfg["classes"]), weight=float(cfg["adversarial_weight"]),
                              device=dev, world=world, bf16=bool(cfg["autocast_bf16"]))

    start_epoch, best_score, log_rows = 0, -math.inf, []
    last_path = out_dir / CHECKPOINT
    ckpt = (resume_state(out_dir, _strip(cfg), stored=lambda saved: _strip(json.loads(saved["config"])))
            if resume else None)
    if ckpt is not None:
        if int(ckpt["epoch"]) + 1 >= int(cfg["epochs"]):
            return out_dir  # finished earlier: nothing to do
        restore(ckpt, {"model": model, "optimizer": optimiser, "scheduler": scheduler,
                       **({"adversary": adversary} if adversary is not None else {})})
        start_epoch, best_score = int(ckpt["epoch"]) + 1, float(ckpt["best_score"])
        log_rows = read_log_rows(out_dir, upto="epoch", last=start_epoch - 1)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "config.json", cfg)
    net = (nn.parallel.DistributedDataParallel(model, find_unused_parameters=_has_unused_parameters(model, cfg))
           if distributed else model)
    cfg_json = json.dumps(cfg)

    bar = progress_bar(total_steps, initial=start_epoch * steps, desc=f"train {out_dir.name}",
                       enabled=progress and rank == 0)
    for epoch in range(start_epoch, int(cfg["epochs"])):
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
            with autocast(dev, bool(cfg["autocast_bf16"])):
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
                                                                  batch_size=int(cfg["val_batch_size"]),
                                                                  fast=bool(cfg["autocast_bf16"])).labels, p.labels)
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
            if epoch + 1 < int(cfg["epochs"]):  # optimiser state only while there is something to resume
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


def _has_unused_parameters(model: nn.Module, cfg: dict[str, Any]) -> bool:
    """True when some parameters take no part in the forward pass (e.g. smp PSPNet's
    unused deepest encoder stage), which DDP must be told about."""
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(torch.zeros(2, int(cfg["in_channels"]), 64, 64, device=dev)).sum()
    grads = torch.autograd.grad(out, params, allow_unused=True)
    model.train(was_training)
    return any(g is None for g in grads)


def train_from_run(run_dir: str | Path, *, model_name: str, out_dir: str | Path, config: dict[str, Any], seed: int,
                   val_fraction: float = 0.15, init_from: str | Path | None = None,
                   extra_pairs_dir: str | Path | None = None, device: str | torch.device | None = None,
                   progress: bool = True) -> Path:
    """Train on a run folder's train split (``splits.json``), holding out ``val_fraction``
    of it (seeded) for validation; see :func:`train_segmenter`. What inference needs of the
    run goes into the model's config: the pixel size of its ``optics.json``, and halo trimming
    when its twin drew flat-topped discocytes."""
    from rbclib.core.paths import RunPaths
    from rbclib.physics.simulate import drew_flat_discocytes

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
    """Training config of ``model_name`` from a ``profiles/segment.toml`` table: the
    DEFAULT_CONFIG keys it sets, with ``encoder`` for the ResUnet and ``baseline_encoder``
    for the baselines; GAN + Watershed adds its generator, GAN loss and watershed."""
    cfg = {k: v for k, v in table.items() if k in DEFAULT_CONFIG}
    cfg["encoder"] = table["encoder"] if model_name == "resunet" else table.get("baseline_encoder", table["encoder"])
    if model_name != "resunet":
        cfg.pop("decoder_channels", None)
    if model_name == "gan_watershed":
        from rbclib.seg.gan_watershed import ADVERSARIAL_WEIGHT, ENCODER_NAME

        cfg.update(encoder=ENCODER_NAME, adversarial_weight=ADVERSARIAL_WEIGHT, postprocess="watershed")
    return make_config(cfg, model_name=model_name)


def arm_inputs(run_dir: str | Path) -> dict[str, dict[str, Path | None]]:
    """The ResUnet arms whose inputs exist in a run folder -> {arm: {"extra_pairs_dir",
    "init_from"}}: ``backbone`` always; ``da`` with ``synthetic/train/`` (04); ``ssl`` with
    ``models/ssl/`` (05); ``da_ssl`` with both. Order: backbone, da, ssl, da_ssl."""
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
    """A model folder's ``log.csv`` as a DataFrame."""
    path = Path(model_dir) / "log.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log")
    return pd.read_csv(path)


def plot_loss_curves(model_dirs: dict[str, str | Path] | Sequence[str | Path]):
    """Training loss and validation Dice per epoch of one or more model folders ->
    matplotlib Figure (two panels)."""
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

