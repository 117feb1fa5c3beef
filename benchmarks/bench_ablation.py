"""The paper's ablation (backbone, +DA, +SSL, +DA&SSL, and the baselines) rerun end to end.

Runs notebooks 01-07 once per seed, each seed in its own run folder
(``runs/ablation/<profile>/seed_<k>/``, resumable: a finished seed is not rerun), then
prints Tables 1 and 2 (Dice and AJI per class) as mean +/- standard deviation over seeds.

    python benchmarks/bench_ablation.py --profile quick --seeds 0 1 2

The quick profile takes roughly 30-40 min per seed on a 2-core CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from rbclib.pipeline import run_notebooks

CLASSES = ["Discocyte", "Spherocyte", "Echinocyte", "Stomatocyte", "Overall"]


def run_seed(profile: str, seed: int, root: Path) -> Path:
    run_dir = root / f"seed_{seed}"
    if not (run_dir / "tables" / "aji.csv").exists():
        run_notebooks(profile=profile, run_dir=run_dir, seed=seed, only=[f"{n:02d}" for n in range(1, 8)])
    return run_dir


def summarise(run_dirs: list[Path], table: str) -> pd.DataFrame:
    """Mean and standard deviation over seeds of one table (dice or aji), by method."""
    frames = [pd.read_csv(d / "tables" / f"{table}.csv").assign(seed=d.name) for d in run_dirs]
    data = pd.concat(frames, ignore_index=True)
    cols = [c for c in CLASSES if c in data.columns]
    grouped = data.groupby("Method", sort=False)[cols]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    return mean.round(3).astype(str) + " +/- " + std.round(3).astype(str)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=None, help="default runs/ablation/<profile>")
    args = parser.parse_args()
    root = args.root or Path("runs") / "ablation" / args.profile
    run_dirs = [run_seed(args.profile, seed, root) for seed in args.seeds]
    for table, title in (("dice", "Table 1: Dice"), ("aji", "Table 2: AJI")):
        print(f"\n{title}, mean +/- sd over seeds {args.seeds} (profile {args.profile})")
        print(summarise(run_dirs, table).to_string())


if __name__ == "__main__":
    main()
