"""Stage 02 on simulated 900 x 900 fields: metric speed, proposal quality, measurement errors.

1. AJI speed: ``aji_per_class`` (bincount on id pairs) against a baseline that loops
   over instances with boolean masks (the textbook implementation), same maps, same run.
2. Proposal AJI against the simulator's instances, on the true phase and on the phase
   reconstructed from the simulated hologram (``rbclib.physics.holography.reconstruct``).
3. Per-cell measurements (true instances, reconstructed phase) against the simulator's
   true dry mass and volume, isolated cells only (not touching another cell or the edge).

    .venv/bin/python benchmarks/bench_annotate.py [--fields 4] [--field-px 900]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from rbclib.annotate.proposals import propose_cells, proposal_quality
from rbclib.physics.holography import reconstruct
from rbclib.core.labels import CELL_CLASSES, instances_from_labels
from rbclib.physics.measure import compare_with_truth, measure_cells
from rbclib.seg.metrics import aji_per_class
from rbclib.physics.simulate import simulate_field


def aji_loop(pred: np.ndarray, true: np.ndarray) -> list[float]:
    """Baseline: Kumar's AJI per class with one boolean mask per instance pair."""
    out = []
    p_inst, t_inst = instances_from_labels(pred), instances_from_labels(true)
    for cls in CELL_CLASSES:
        p = np.where(pred == cls, p_inst, 0)
        t = np.where(true == cls, t_inst, 0)
        p_ids = [i for i in np.unique(p) if i]
        num = den = 0
        used = set()
        for g in (i for i in np.unique(t) if i):
            gm = t == g
            best, best_iou = None, 0.0
            for s in p_ids:
                sm = p == s
                iou = (gm & sm).sum() / (gm | sm).sum()
                if iou > best_iou:
                    best, best_iou = s, iou
            if best is None:
                den += gm.sum()
            else:
                num += (gm & (p == best)).sum()
                den += (gm | (p == best)).sum()
                used.add(best)
        den += sum((p == s).sum() for s in p_ids if s not in used)
        out.append(num / den if den else float("nan"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--field-px", type=int, default=900)
    args = parser.parse_args()
    rows, errors = [], []
    t_fast = t_loop = 0.0
    for seed in range(args.fields):
        f = simulate_field(seed, field_px=args.field_px)
        rec = reconstruct(f.hologram, background=f.background, optics=f.optics).phase
        shifted = np.roll(f.labels, (2, 3), axis=(0, 1))
        t0 = time.perf_counter()
        fast = aji_per_class(shifted, f.labels)
        t1 = time.perf_counter()
        slow = aji_loop(shifted, f.labels)
        t2 = time.perf_counter()
        t_fast, t_loop = t_fast + t1 - t0, t_loop + t2 - t1
        assert np.allclose([fast[k] for k in ("discocyte", "spherocyte", "echinocyte", "stomatocyte")], slow,
                           equal_nan=True)
        for name, phase in (("true phase", f.phase), ("reconstructed", rec)):
            t0 = time.perf_counter()
            prop = propose_cells(phase, pixel_size_m=f.optics.pixel_size_m)
            rows.append({"field": seed, "phase": name, "seconds": time.perf_counter() - t0,
                         **proposal_quality(prop.instances, f.instances)})
        measured = measure_cells(rec, f.instances, optics=f.optics).assign(image=str(seed))
        errors.append(compare_with_truth(measured, f.cells.assign(image=str(seed)), n_medium=f.optics.n_medium))
    print(f"AJI per class, {args.fields} fields of {args.field_px}^2: vectorised {t_fast / args.fields * 1e3:.1f} ms, "
          f"mask loop {t_loop / args.fields * 1e3:.1f} ms per image; speed-up x{t_loop / t_fast:.1f} (same values)")
    q = pd.DataFrame(rows)
    print("\nProposal quality vs simulator instances (per image):")
    print(q.groupby("phase")[["aji", "matched_iou50", "n_true", "n_proposed", "seconds"]].agg(["mean", "min"]).round(4).to_string())
    e = pd.concat(errors, ignore_index=True)
    iso = e[~e.touching & ~e.touches_edge]
    print(f"\nMeasurements on the reconstructed phase, {len(iso)} isolated cells (|relative error|):")
    print(iso[["dry_mass_rel_err", "volume_rel_err", "volume_true_dn_rel_err"]].abs()
          .describe(percentiles=[0.5, 0.95]).loc[["mean", "50%", "95%", "max"]].round(4))
    print("volume_rel_err assumes optics.n_cell; volume_true_dn_rel_err uses each cell's true index.")


if __name__ == "__main__":
    main()
