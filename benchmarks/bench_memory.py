"""Benchmark: peak memory of `rbc assess` on one large phase image, against a small one.

Builds a SIDE x SIDE phase TIFF (default 8000 px at 0.1441 um/px) by tiling the phase of
twin fields (cells everywhere, as in a dense real field), and a 900 px image cut from it
(the baseline), then runs ``rbc assess`` on each in its own process and reads the process's
peak resident memory (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``, the largest RSS of
the child). Prints both peaks, their ratio, the cells found and seconds. The target of issue
33: at most 3 GB for an 8000 x 8000 image. Run:

    .venv/bin/python benchmarks/bench_memory.py [--side 8000] [--model DIR]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _phase_mosaic(side: int, seed: int) -> np.ndarray:
    """A side x side phase map [rad] tiled from the true phase of 512 px twin fields."""
    from rbclib.physics.simulate import simulate_field

    tiles = [simulate_field(seed + i, field_px=512).phase.astype(np.float32) for i in range(4)]
    reps = -(-side // 512)
    rows = [np.concatenate([tiles[(r + c) % 4] for c in range(reps)], axis=1) for r in range(reps)]
    return np.concatenate(rows, axis=0)[:side, :side]


def _assess_peak(image: Path, out: Path, model: str | None) -> tuple[float, float, str]:
    """(peak RSS [GB] of a child `rbc assess`, seconds, its last stdout line)."""
    cmd = [sys.executable, "-c", "import resource, sys; from rbclib.cli import main; rc = main(sys.argv[1:]); "
           "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)",
           "assess", str(image), "-o", str(out), "--no-overlays"] + (["--model", model] if model else [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"rbc assess failed on {image}:\n{done.stderr[-2000:]}")
    lines = done.stdout.strip().splitlines()
    peak_kb = float(next(line.split()[1] for line in lines if line.startswith("peak_kb")))
    summary = next((line for line in lines if line.startswith("rbc assess:")), "")
    return peak_kb / 1024 ** 2, seconds, summary


def main() -> None:
    from rbclib.core.config import Optics
    from rbclib.core.io import write_phase

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        phase = _phase_mosaic(args.side, args.seed)
        optics = Optics()
        write_phase(work / "large" / "large.tif", phase, optics)
        write_phase(work / "small" / "small.tif", np.ascontiguousarray(phase[:900, :900]), optics)
        del phase
        small = _assess_peak(work / "small" / "small.tif", work / "out_small", args.model)
        large = _assess_peak(work / "large" / "large.tif", work / "out_large", args.model)
    print(f"rbc assess peak RSS, {resource.getpagesize()} B pages, model {args.model or 'shipped default'}:")
    print(f"  baseline 900 x 900 px: {small[0]:.2f} GB, {small[1]:.0f} s ({small[2]})")
    print(f"  {args.side} x {args.side} px: {large[0]:.2f} GB, {large[1]:.0f} s ({large[2]})")
    print(f"  ratio {large[0] / small[0]:.2f}x for {(args.side / 900) ** 2:.0f}x the pixels; target <= 3 GB: "
          f"{'met' if large[0] <= 3.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
