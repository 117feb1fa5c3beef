"""Speed of one segmentation training epoch of a profile's ResUnet on this machine, against
the previous loop measured in the same run (ratio).

An epoch is ``max_steps_per_epoch`` steps (forward in the profile's autocast, CE + Dice loss,
backward, AdamW) plus the validation of ``--val-images`` full images of ``--val-side`` px
(the quick run validates 5 fields of 512 px). Baseline: the loop before 2026-12-02, AdamW
as a loop over the parameters (torch's single-tensor default on CPU) and validation in
float32; this version: fused AdamW (``rbclib.core.training.fused_optimiser``) and
validation in the training's autocast. Speed does not depend on the data, so the inputs
are random.

    .venv/bin/python benchmarks/bench_train.py [--profile quick] [--steps 20] [--repeats 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rbclib.core.training import autocast, channels_last, fused_optimiser
from rbclib.profile import get_profile
from rbclib.seg.infer import model_from_config, predict_image
from rbclib.seg.train import CEDiceLoss, config_from_profile


def step_seconds(cfg: dict, *, fused: bool, steps: int) -> float:
    """Median seconds of one training step after two warm-up steps."""
    dev = torch.device("cpu")
    torch.manual_seed(0)
    model = channels_last(model_from_config(cfg), dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]),
                            **({"fused": True} if fused else {"foreach": False}))
    loss_fn = CEDiceLoss()
    side, batch = int(cfg["patch"]), int(cfg["batch_size"])
    x = torch.randn(batch, int(cfg["in_channels"]), side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, int(cfg["classes"]), (batch, side, side))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with autocast(dev, bool(cfg["autocast_bf16"])):
            logits = model(x)
        loss = loss_fn(logits.float(), y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def validation_seconds(cfg: dict, *, fast: bool, images: int, side: int) -> float:
    """Seconds to segment ``images`` random phase images of ``side`` px as the validation does."""
    torch.manual_seed(0)
    model = channels_last(model_from_config(cfg), torch.device("cpu")).eval()
    phases = np.random.default_rng(0).normal(0.0, 1.0, (images, side, side)).astype(np.float32)
    predict_image(model, phases[0], config=cfg, batch_size=int(cfg["val_batch_size"]), fast=fast)  # warm-up
    t0 = time.perf_counter()
    for phase in phases:
        predict_image(model, phase, config=cfg, batch_size=int(cfg["val_batch_size"]), fast=fast)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    ap.add_argument("--val-images", type=int, default=5)
    ap.add_argument("--val-side", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=4, help="rounds, each variant once, in alternating order; the best counts")
    args = ap.parse_args()
    cfg = config_from_profile(get_profile(args.profile)["segment"], "resunet")
    bf16 = bool(cfg["autocast_bf16"])
    per_epoch = int(cfg["max_steps_per_epoch"]) or 100
    best = {"baseline": [np.inf, np.inf], "this version": [np.inf, np.inf]}
    variants = [("baseline", False, False), ("this version", fused_optimiser(torch.device("cpu")), bf16)]
    step_seconds(cfg, fused=False, steps=3)  # warm-up: the first model built in a process runs slower
    for round_ in range(args.repeats):
        for name, fused, fast in variants[::1 if round_ % 2 == 0 else -1]:  # alternate which goes first
            best[name][0] = min(best[name][0], step_seconds(cfg, fused=fused, steps=args.steps))
            best[name][1] = min(best[name][1], validation_seconds(cfg, fast=fast, images=args.val_images,
                                                                  side=args.val_side))
    print(f"profile {args.profile}: ResUnet {cfg['encoder']}, {cfg['batch_size']} x {cfg['patch']} px, "
          f"{per_epoch} steps + validation of {args.val_images} x {args.val_side} px per epoch, "
          f"{torch.get_num_threads()} threads")
    epoch = {}
    for name, (step, val) in best.items():
        epoch[name] = per_epoch * step + val
        print(f"{name:13s} step {step * 1e3:6.0f} ms   validation {val:5.2f} s   epoch {epoch[name]:6.1f} s")
    print(f"epoch speed-up, this version / baseline: {epoch['baseline'] / epoch['this version']:.2f}x")


if __name__ == "__main__":
    main()
