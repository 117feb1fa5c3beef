"""Speed of the quick-profile DDGANs on this CPU: generated pairs per second, and sampling
time against the number of denoising steps T (ratios to T = 1, measured in the same run).

Uses the trained models of ``--run-dir`` when present, else freshly initialised networks of
the same architecture (speed does not depend on the weights).

    .venv/bin/python benchmarks/bench_diffusion.py [--run-dir runs/quick] [--n 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rbclib.synth import ddgan as dd
from rbclib.synth.ddgan_sampling import load_generator, resize_patches, sample_x0
from rbclib.profile import get_profile
from rbclib.core.paths import RunPaths


def nets(run_dir: Path, profile: str):
    P = get_profile(profile)["diffusion"]
    out = {}
    for kind in dd.KINDS:
        folder = RunPaths(run_dir).model_dir(f"ddgan_{kind}")
        if (folder / "generator.pt").exists():
            out[kind] = load_generator(folder)
        else:
            cfg = dd.config_from_profile(P, kind)
            torch.manual_seed(0)
            out[kind] = (dd.build_nets(cfg)[0].eval(), cfg)
    return out


def time_pairs(models, n: int, batch: int, n_steps: int | None = None) -> float:
    """Seconds to generate n (phase, mask) pairs: G_p chain, then G_M chain on its output."""
    (gp, cp), (gm, cm) = models["phase"], models["mask"]
    t0 = time.perf_counter()
    ph = sample_x0(gp, cp, n, seed=0, batch_size=batch, n_steps=n_steps)
    ph = resize_patches(ph, cp.native_px)
    cond = F.avg_pool2d(ph, cm.downsample) if cm.downsample > 1 else ph
    sample_x0(gm, cm, n, seed=1, cond=cond, batch_size=batch, n_steps=n_steps)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/quick"))
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--n", type=int, default=64, help="pairs per timing")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = nets(args.run_dir, args.profile)
    cfg = models["phase"][1]
    print(f"models: {'trained' if (RunPaths(args.run_dir).model_dir('ddgan_phase') / 'generator.pt').exists() else 'untrained'}"
          f", patch {cfg.native_px} px (network {cfg.patch_px} px), trained T = {cfg.n_steps}, threads {args.threads}")
    time_pairs(models, min(args.n, args.batch), args.batch)  # warm-up
    base = None
    print(f"{'T':>3} {'seconds':>9} {'pairs/s':>9} {'time / time(T=1)':>17}")
    for T in (1, 2, 3, 4):
        s = time_pairs(models, args.n, args.batch, n_steps=T)
        base = base or s
        print(f"{T:>3} {s:9.2f} {args.n / s:9.1f} {s / base:17.2f}")
    s = time_pairs(models, args.n, args.batch)
    print(f"profile T = {cfg.n_steps}: {args.n / s:.1f} generated pairs per second "
          f"({args.n} pairs, batch {args.batch})")


if __name__ == "__main__":
    main()
