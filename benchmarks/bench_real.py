"""The default model on real RBC holograms: cell count against an independent count and the
share of discocytes in fresh blood (issue 13).

For every real RBC hologram in ``../shared/data/holograms/`` (skipped when absent), ``rbc
assess`` runs with the optics assumed for the file (``rbclib.physics.realism.REAL_OPTICS``); an
independent threshold + watershed finder (``rbclib.physics.image_statistics.find_cells``) counts the cells of
the same reconstruction. Targets: the model's count within 15 % of the independent one, and
at least 80 % discocytes (the holograms show fresh blood). Exit 1 when a target fails.

    python benchmarks/bench_real.py [--model runs/quick/models/seg_backbone] [--figures figures/]
Without --model: the shipped default model; --model latest: the best of the latest ``make run``. --figures copies the overlays there.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import pandas as pd

    from rbclib.physics import realism
    from rbclib.study.inputs import resolve_model
    from rbclib.study.transfer import COUNT_TOLERANCE, FRESH_DISCOCYTE_MIN, real_hologram_check

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder, or `latest` for the best of the latest run (default: the shipped "
                                   "default model)")
    p.add_argument("--data", type=Path, default=realism.shared_data_dir(), help="real data folder")
    p.add_argument("--figures", type=Path, help="copy each overlay to FIGURES/real_<hologram>.png")
    args = p.parse_args()
    paths = realism.real_hologram_paths(args.data)
    if not paths:
        print(f"SKIP: no real RBC hologram under {args.data / 'holograms'}")
        return 0
    model, note = resolve_model(args.model)
    print(note)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            t0 = time.perf_counter()
            row = real_hologram_check(path, model, Path(tmp) / path.stem)
            row["seconds"] = time.perf_counter() - t0
            if args.figures and row["overlay"]:
                args.figures.mkdir(parents=True, exist_ok=True)
                shutil.copy(row["overlay"], args.figures / f"real_{path.stem}.png")
            rows.append(row)
    table = pd.DataFrame(rows).drop(columns="overlay").set_index("hologram")
    with pd.option_context("display.width", 200):
        print(table.round(3).to_string())
    ok = bool(table.count_ok.all() and table.discocytes_ok.all())
    print(f"targets: count within {COUNT_TOLERANCE:.0%} of the independent count on every hologram: "
          f"{'PASS' if table.count_ok.all() else 'FAIL'}; at least {FRESH_DISCOCYTE_MIN:.0%} discocytes: "
          f"{'PASS' if table.discocytes_ok.all() else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
