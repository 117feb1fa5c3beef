"""Benchmark: `rbc assess` throughput, this version against an earlier one, same run, warm.

Simulates N 900 x 900 holograms with background holograms and ground truth (a twin dataset
folder), then runs ``rbclib.study.assess.assess`` on it end to end (reconstruction, segmentation,
measurement, per-image files, tables, figures, report) with

- **baseline**: the pipeline of an earlier commit (``--baseline-rev``, default the last
  commit before the shipped default model), exported with ``git archive`` and run from
  there, with ``--baseline-model`` (default: the same model as this version);
- **this version**: the working tree's ``rbclib`` with ``--model`` (default: the shipped
  default model).

Each runs in its own process with the same threads and data; a first call on one
image warms imports and caches, then the best of ``--repeats`` timed calls counts. Prints
holograms per second and the ratio, how much the two outputs agree (pixel labels, cells per
image, class counts) and the Dice of each against the ground truth. Then the stages of this
version one by one (read + reconstruct, segment, clean-up + measure, write), each in
holograms per second. Run:

    .venv/bin/python benchmarks/bench_assess.py [--model DIR] [--baseline-model RUN/models/seg_da] [--n 12]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASELINE_REV = "8ce0247"  # last commit before the shipped default model (issue 32)


def _worker(src: str, model: str, data: str, out: str, repeats: int) -> None:
    """Run in a child process: time assess() from the rbclib under ``src``; print JSON."""
    sys.path.insert(0, src)
    import warnings

    warnings.simplefilter("ignore")
    import importlib
    import inspect

    # the layout of the tree under src decides (an editable install of this checkout would
    # otherwise serve rbclib.study.assess to a baseline of the flat layout)
    nested = (Path(src) / "rbclib" / "study" / "assess.py").is_file()
    assess = importlib.import_module("rbclib.study.assess" if nested else "rbclib.assess").assess
    assert Path(inspect.getsourcefile(assess)).resolve().is_relative_to(Path(src).resolve()), inspect.getsourcefile(assess)
    warm = Path(out + "_warm")
    one = Path(out + "_one")
    shutil.copytree(data, one, dirs_exist_ok=True)
    for sub in ("holograms", "backgrounds", "phase", "labels", "instances"):
        for f in sorted((one / sub).glob("*"))[1:]:
            f.unlink()
    if "segmenter" in inspect.signature(assess).parameters:   # assess takes a Segmenter (built per call, as
        segmenter_class = importlib.import_module("rbclib.study.segmenter").Segmenter   # the baseline loads its model)

        def run(source, target):
            return assess(source, target, segmenter=segmenter_class(model), progress=False, on_error=None)
    else:
        def run(source, target):
            return assess(source, target, model_dir=model, progress=False, on_error=None)
    run(one, warm)
    best = float("inf")
    for r in range(repeats):
        target = Path(out) if r == repeats - 1 else Path(f"{out}_r{r}")
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        res = run(data, target)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"seconds": best, "images": len(res.processed), "cells": len(res.cells),
                      "failures": len(res.failures)}))


def _run_worker(src: Path, model: Path, data: Path, out: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(src), str(model), str(data), str(out), str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"bench_assess: worker for {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _export(rev: str, dest: Path) -> Path:
    """``rbclib`` of commit ``rev`` under ``dest`` (git archive)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "rbclib"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _compare(old: Path, new: Path, data: Path) -> dict:
    """Agreement of two assess outputs and their Dice against the dataset's ground truth."""
    import pandas as pd

    from rbclib.core.io import read_labels
    from rbclib.seg.metrics import dice_per_class

    stems = sorted(p.stem for p in (data / "labels").glob("*.png"))
    agree, truth, a, b = [], [], [], []
    for s in stems:
        la, lb = read_labels(old / "labels" / f"{s}.png"), read_labels(new / "labels" / f"{s}.png")
        agree.append(float(np.mean(la == lb)))
        truth.append(read_labels(data / "labels" / f"{s}.png"))
        a.append(la)
        b.append(lb)
    dice_old = dice_per_class(np.concatenate(a), np.concatenate(truth))["overall"]
    dice_new = dice_per_class(np.concatenate(b), np.concatenate(truth))["overall"]
    ca, cb = pd.read_csv(old / "cells.csv"), pd.read_csv(new / "cells.csv")
    per_image = (cb.groupby("image").size() - ca.groupby("image").size()).abs()
    classes = pd.concat({"baseline": ca["class_name"].value_counts(), "this version": cb["class_name"].value_counts()},
                        axis=1).fillna(0).astype(int)
    ra, rb = pd.read_csv(old / "ratios.csv"), pd.read_csv(new / "ratios.csv")
    key = [c for c in ("day", "class_name") if c in ra.columns]
    col = "ratio" if "ratio" in ra.columns else [c for c in ra.columns if c not in key][0]
    merged = ra.merge(rb, on=key, suffixes=("_old", "_new"))
    return {"pixel_agreement": float(np.mean(agree)), "pixel_agreement_min": float(np.min(agree)),
            "dice_overall_baseline": dice_old, "dice_overall_this": dice_new,
            "cells_baseline": int(len(ca)), "cells_this": int(len(cb)),
            "max_cell_count_change_per_image": int(per_image.max()) if len(per_image) else 0,
            "max_ratio_change_pp": float(100 * (merged[f"{col}_new"] - merged[f"{col}_old"]).abs().max()),
            "classes": classes.to_dict()}


def _stages(model: Path, data: Path, out: Path) -> dict:
    """Holograms per second of this version's stages, run one after the other (no overlap)."""
    from rbclib.study.assess import _write_image_outputs
    from rbclib.physics.phase_files import ReconstructorCache
    from rbclib.study.image import analyse_image, load_phase
    from rbclib.study.inputs import discover_inputs
    from rbclib.study.segmenter import Segmenter

    jobs = discover_inputs(data)
    seg = Segmenter(model)
    recon = ReconstructorCache()
    seg(load_phase(jobs[0], reconstructors=recon).phase, seg.pixel_size_m)  # warm
    times = {}
    t0 = time.perf_counter()
    loaded = [load_phase(j, reconstructors=recon) for j in jobs]
    times["read + reconstruct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    predicted = seg.predict_many([ld.phase for ld in loaded], [ld.optics.pixel_size_m for ld in loaded])
    times["segment (model)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    segmented = [seg.finish(p, ld.phase.shape) for p, ld in zip(predicted, loaded)]
    times["clean-up + split"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = [analyse_image(j, ld, sg, min_area_um2=seg.min_area_um2) for j, ld, sg in zip(jobs, loaded, segmented)]
    times["measure + truth"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j, r in zip(jobs, results):
        _write_image_outputs(out, j, r, key={}, overlays=True, model_px=seg.pixel_size_m, model_px_source="")
    times["write (labels, instances, overlay, csv, json)"] = time.perf_counter() - t0
    return {k: len(jobs) / v for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder of this version (default: the shipped default model; "
                                        "`latest`: the best model of the latest run)")
    parser.add_argument("--baseline-model", help="model folder of the baseline (default: the same as --model)")
    parser.add_argument("--n", type=int, default=12, help="number of simulated holograms")
    parser.add_argument("--size", type=int, default=900, help="hologram side [px]")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per version (best counts)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline pipeline")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        src, model, data, out, repeats = args.worker
        _worker(src, model, data, out, int(repeats))
        return {}

    from rbclib.physics.simulated_datasets import simulate_dataset
    from rbclib.study.inputs import resolve_model

    try:
        model = resolve_model(args.model, [REPO / "runs"])[0].resolve()
        base_model = resolve_model(args.baseline_model, [REPO / "runs"])[0].resolve() if args.baseline_model else model
    except FileNotFoundError as exc:
        raise SystemExit(f"bench_assess: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="bench_assess_") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        simulate_dataset(data, n_fields=args.n, seed=args.seed, field_px=args.size, progress=False)
        base_src = _export(args.baseline_rev, tmp / "baseline")
        base = _run_worker(base_src, base_model, data, tmp / "out_baseline", args.repeats)
        this = _run_worker(REPO, model, data, tmp / "out_this", args.repeats)
        agreement = _compare(tmp / "out_baseline", tmp / "out_this", data)
        stages = _stages(model, data, tmp / "out_stages")
    ratio = base["seconds"] / this["seconds"]
    print(f"rbc assess on {args.n} simulated {args.size}x{args.size} holograms (with background holograms), "
          f"model {model}, baseline model {base_model}, {os.cpu_count()} CPU(s), best of {args.repeats}")
    print(f"{'version':36s} {'s':>7s} {'holo/s':>7s} {'cells':>6s}")
    for name, r in (("baseline " + args.baseline_rev, base), ("this version", this)):
        print(f"{name:36s} {r['seconds']:7.2f} {r['images'] / r['seconds']:7.2f} {r['cells']:6d}")
    print(f"speed ratio this / baseline: {ratio:.2f}x (target >= 3x)")
    print(f"pixel labels agreeing: {100 * agreement['pixel_agreement']:.2f} % (worst image "
          f"{100 * agreement['pixel_agreement_min']:.2f} %); Dice vs truth: baseline "
          f"{agreement['dice_overall_baseline']:.4f}, this {agreement['dice_overall_this']:.4f}; cells "
          f"{agreement['cells_baseline']} -> {agreement['cells_this']} (largest change in one image "
          f"{agreement['max_cell_count_change_per_image']}); largest class-ratio change "
          f"{agreement['max_ratio_change_pp']:.2f} pp")
    print("stages of this version, one after the other [holograms/s]:")
    for k, v in stages.items():
        print(f"  {k:48s} {v:7.2f}")
    out = {"n": args.n, "size": args.size, "baseline_rev": args.baseline_rev, "model": str(model),
           "baseline_model": str(base_model), "baseline": base, "this": this,
           "speed_ratio": ratio, "agreement": agreement, "stages_holograms_per_s": stages}
    if args.json:
        from rbclib.core.files import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
