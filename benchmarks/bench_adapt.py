"""Adapting the shipped default model to a microscope it has not seen.

The microscope is a twin set outside the shipped model's training randomisation:
- 532 nm light and 0.2 um/px at the sample (the model trained at 682.5 nm, 0.1441 um/px);
- coherent noise of 33-40 nm (training: 4-32 nm);
- the sample 6.5-8 um below focus, unrefocused (training: -6 to +6 um);
- every discocyte flat-topped (training: half of them).

Its truth stands in for the user's corrections. Methods, each scored on the same ``--test-fields``
test fields as ``rbc assess`` segments them (Dice and AJI overall, per-cell class accuracy):
- ``shipped_home``: the reference, the shipped model on as many fields of its own twin (same
  area, its optics), to show the drop;
- ``shipped``: no adaptation;
- ``bn_adapt``: BatchNorm statistics re-estimated on the unlabelled training-pool fields;
- ``pseudo_label``: fine-tuned on the shipped model's confident pseudo-labels of those fields;
- ``ssl_adapt``: the paper's SSL (MoCo v2 + reconstruction) on tiles of those fields, started
  from the shipped encoder and decoder, put back under the shipped head (``--ssl-steps``);
- ``finetune_shipped``: fine-tuned on 1, 2 or 4 annotated fields;
- ``finetune_twin``: the same, with ``RECIPE_TWIN_FIELDS`` fields of the shipped model's
  training twin recorded by this microscope's optics (wavelength, pixel size) beside them
  (:func:`rbclib.study.finetune.twin_rehearsal_fields`);
- ``finetune_matched``: the same, with ``TWIN_FIELDS`` (16) fields of the twin matched to the
  annotated fields' noise, defocus and flat-topped discocytes
  (:func:`rbclib.study.twin_match.match_twin`), as ``rbc finetune`` does by default;
- ``bn_finetune``: ``bn_adapt`` first (no labels), then fine-tuned on the 1, 2 or 4 fields;
- ``scratch``: the same architecture and budget from random weights on the same fields;
- ``full``: the shipped model fine-tuned on all 12 training fields.

Every training has the same budget (``--epochs`` x ``--steps`` batches, however few the
fields). The test fields hold few cells of the rare classes (the 18 fields: 5 spherocytes,
18 echinocytes and 16 stomatocytes beside 560 discocytes; 54 fields: 23, 41 and 52), and the
overall Dice weighs the four classes equally, so fewer ``--test-fields`` give noisy means; two
false spherocytes cost 18 fields about 0.08. Rows are kept per number of test fields. Writes
``benchmarks/results/adaptation.csv`` (``method,n_fields,seed,dice_overall,aji_overall,
cell_accuracy,minutes,test_fields``) and ``benchmarks/results/annotation_effort.csv`` (the share of
detected cells whose pre-filled class the user must change, and actions per cell with and
without pre-filling, accepting a page of ``PAGE`` cells in one action).

    python benchmarks/bench_adapt.py                 # everything, about 3 hours on 2 CPU cores
    python benchmarks/bench_adapt.py --seeds 0 --fields 2 --methods shipped finetune_shipped
    python benchmarks/bench_adapt.py --test-fields 54 --fields 2 --methods finetune_matched full
    python benchmarks/bench_adapt.py --test-fields 54 --fields 2 --methods shipped_home shipped finetune_twin
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rbclib.core.config import Optics
from rbclib.core.files import write_csv
from rbclib.physics.recording import HologramSettings

REPO = Path(__file__).resolve().parents[1]
OPTICS = Optics().replace(wavelength_m=532e-9, pixel_size_m=0.2e-6)
SETTINGS = HologramSettings(noise_nm=(33.0, 40.0))
CELLS = {"defocus_um": (-8.0, -6.5), "flat_discocyte_fraction": 1.0, "density_per_1000um2": (4.0, 8.0)}
FIELD_PX = 369          # 73.8 um, the quick twin's field side
POOL, TEST = 12, 18     # training-pool and test fields
PAGE = 12               # cells accepted in one action
METHODS = ("shipped_home", "shipped", "bn_adapt", "pseudo_label", "ssl_adapt", "finetune_shipped", "finetune_twin",
           "finetune_matched", "bn_finetune", "scratch", "full")
RECIPE_TWIN_FIELDS = 8  # twin fields of finetune_twin
SCRATCH_LR = 1e-3       # the shipped model's own training rate, for training from random weights


def microscope_fields(seed: int, n: int) -> list[tuple]:
    """(Pair, true instances) of ``n`` fields of the unseen microscope, reconstructed as 01 does."""
    return _fields(seed, n, field_px=FIELD_PX, optics=OPTICS, settings=SETTINGS, **CELLS)


def home_fields(seed: int, n: int) -> list[tuple]:
    """(Pair, true instances) of ``n`` fields of the shipped model's own twin, of the same area."""
    return _fields(seed, n, field_px=512, optics=Optics(), settings=None,
                   density_per_1000um2=CELLS["density_per_1000um2"], flat_discocyte_fraction=0.5)


def _fields(seed: int, n: int, *, field_px: int, optics: Optics, settings: HologramSettings | None,
            **cells) -> list[tuple]:
    from rbclib.physics.simulate import simulate_field
    from rbclib.study.default_model import reconstructed_pair

    return [reconstructed_pair(simulate_field(np.random.default_rng(ss), field_px=field_px, optics=optics,
                                              settings=settings, **cells), f"field_{seed}_{i:02d}", source=f"field {i}")
            for i, ss in enumerate(np.random.SeedSequence(seed).spawn(n))]


def score(model_dir: Path, test: list[tuple], pixel_size_m: float = OPTICS.pixel_size_m
          ) -> tuple[dict[str, float], dict[str, float]]:
    """(scores, annotation effort) of a model folder on the test fields, segmenting as rbc assess does."""
    from rbclib.seg.metrics import aji_per_class, cell_confusion, confusion_accuracy, dice_per_class, mean_scores
    from rbclib.study.segmenter import Segmenter

    segmenter = Segmenter(model_dir)
    dice, aji, confusion = [], [], None
    for pair, inst in test:
        labels, instances, *_ = segmenter(pair.phase, pixel_size_m)
        dice.append(dice_per_class(labels, pair.labels))
        aji.append(aji_per_class(labels, pair.labels, pred_instances=instances, true_instances=inst))
        conf, _ = cell_confusion(labels, pair.labels, true_instances=inst, pred_instances=instances)
        confusion = conf if confusion is None else confusion + conf
    cells = confusion.iloc[:-1]                       # the true cells (not the false-detection row)
    detected = int(cells.to_numpy().sum() - cells["missed"].sum())
    correct = int(sum(cells.loc[name, name] for name in cells.index))
    changes = (detected - correct) / max(detected, 1)
    return ({"dice_overall": mean_scores(dice)["overall"], "aji_overall": mean_scores(aji)["overall"],
             "cell_accuracy": confusion_accuracy(confusion)["overall"]},
            {"cells": detected, "changes_share": changes, "actions_per_cell_prefilled": changes + 1 / PAGE,
             "actions_per_cell_manual": 1.0})


def scratch_model(shipped: Path, fields: list, out: Path, *, epochs: int, steps: int, seed: int) -> Path:
    """The shipped architecture trained from random weights on ``fields`` with the same budget."""
    from rbclib.seg.config import finetune_config
    from rbclib.seg.infer import read_model_config
    from rbclib.seg.train import train_segmenter
    from rbclib.study.finetune import at_model_pixel_size

    base = read_model_config(shipped)
    config = finetune_config(base, epochs=epochs, max_steps_per_epoch=steps, lr=SCRATCH_LR,
                             crops_per_epoch=steps * int(base["batch_size"]))
    pairs = at_model_pixel_size(fields, OPTICS.pixel_size_m, config["pixel_size_m"])
    return train_segmenter(pairs, pairs, model_name=config["model_name"], out_dir=out, config=config, seed=seed,
                           progress=False)


def _merged(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """``new`` in place of the rows of the same method, field count and test fields in an existing table."""
    if path.is_file() and len(new):
        old = pd.read_csv(path)
        key = ["method", "n_fields", "test_fields"]
        rerun = old.set_index(key).index.isin(new.set_index(key).index)
        new = pd.concat([old[~rerun], new], ignore_index=True)
    order = {m: k for k, m in enumerate(METHODS)}
    table = new.sort_values(["test_fields", "method", "n_fields", "seed"],
                            key=lambda c: c.map(order) if c.name == "method" else c, kind="stable")
    return table.reset_index(drop=True)


def main() -> None:
    from rbclib.study.default_model import SHIPPED_MODEL_DIR
    from rbclib.study.finetune import (FINETUNE_EPOCHS, FINETUNE_STEPS, adapt_batchnorm, adapt_ssl, finetune_model,
                                       pseudo_label_fields, twin_rehearsal_fields)
    from rbclib.study.twin_match import match_twin

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fields", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--epochs", type=int, default=FINETUNE_EPOCHS)
    ap.add_argument("--steps", type=int, default=FINETUNE_STEPS, help="batches per epoch")
    ap.add_argument("--ssl-steps", type=int, default=60, help="SSL steps of ssl_adapt (CPU budget: about 3 min)")
    ap.add_argument("--test-fields", type=int, default=TEST, help="test fields (the first of them are always the same)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    pool, test = microscope_fields(3000, POOL), microscope_fields(4000, args.test_fields)
    pool_pairs = [p for p, _ in pool]
    budget = {"epochs": args.epochs, "steps_per_epoch": args.steps}
    rows, effort = [], []

    def record(method: str, n: int, seed: int | None, model: Path, seconds: float, on: list | None = None,
               pixel_size_m: float = OPTICS.pixel_size_m) -> None:
        scores, work = score(model, on or test, pixel_size_m)
        rows.append({"method": method, "n_fields": n, "seed": seed, **scores, "minutes": seconds / 60,
                     "test_fields": len(on or test)})
        effort.append({"method": method, "n_fields": n, "seed": seed, **work, "test_fields": len(on or test)})
        print(f"{method:17s} n={n:2d} seed={seed}: Dice {scores['dice_overall']:.3f}  AJI {scores['aji_overall']:.3f}  "
              f"cell accuracy {scores['cell_accuracy']:.3f}  changes {work['changes_share']:.2f}  "
              f"{seconds / 60:.1f} min", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_adapt_") as tmp:
        tmp = Path(tmp)
        if "shipped_home" in args.methods:
            record("shipped_home", 0, None, SHIPPED_MODEL_DIR, 0.0, on=home_fields(4000, args.test_fields),
                   pixel_size_m=Optics().pixel_size_m)
        if "shipped" in args.methods:
            record("shipped", 0, None, SHIPPED_MODEL_DIR, 0.0)
        for seed in args.seeds:
            if "bn_adapt" in args.methods:
                t0 = time.perf_counter()
                model = adapt_batchnorm(SHIPPED_MODEL_DIR, [p.phase for p in pool_pairs], tmp / f"bn_{seed}",
                                        pixel_size_m=OPTICS.pixel_size_m, seed=seed)
                record("bn_adapt", 0, seed, model, time.perf_counter() - t0)
            if "pseudo_label" in args.methods:
                t0 = time.perf_counter()
                pseudo = pseudo_label_fields(SHIPPED_MODEL_DIR, [p.phase for p in pool_pairs],
                                             pixel_size_m=OPTICS.pixel_size_m)
                model = finetune_model(SHIPPED_MODEL_DIR, pseudo, tmp / f"pseudo_{seed}", seed=seed,
                                       pixel_size_m=OPTICS.pixel_size_m, progress=False, **budget)
                record("pseudo_label", 0, seed, model, time.perf_counter() - t0)
            if "ssl_adapt" in args.methods:
                t0 = time.perf_counter()
                model = adapt_ssl(SHIPPED_MODEL_DIR, [p.phase for p in pool_pairs], tmp / f"ssl_{seed}",
                                  pixel_size_m=OPTICS.pixel_size_m, steps=args.ssl_steps, seed=seed)
                record("ssl_adapt", 0, seed, model, time.perf_counter() - t0)
            order = np.random.default_rng(seed).permutation(POOL)
            for n in args.fields:
                chosen = [pool_pairs[i] for i in order[:n]]
                if "finetune_shipped" in args.methods:
                    t0 = time.perf_counter()
                    model = finetune_model(SHIPPED_MODEL_DIR, chosen, tmp / f"ft_{n}_{seed}", seed=seed,
                                           pixel_size_m=OPTICS.pixel_size_m, progress=False, **budget)
                    record("finetune_shipped", n, seed, model, time.perf_counter() - t0)
                if "finetune_twin" in args.methods:
                    t0 = time.perf_counter()
                    rehearsal = twin_rehearsal_fields(OPTICS, RECIPE_TWIN_FIELDS, seed=seed)
                    model = finetune_model(SHIPPED_MODEL_DIR, chosen, tmp / f"ftt_{n}_{seed}", seed=seed,
                                           rehearsal_fields=rehearsal,
                                           pixel_size_m=OPTICS.pixel_size_m, progress=False, **budget)
                    record("finetune_twin", n, seed, model, time.perf_counter() - t0)
                if "finetune_matched" in args.methods:
                    t0 = time.perf_counter()
                    match = match_twin([p.phase for p in chosen], [p.labels for p in chosen], OPTICS, seed=seed)
                    print(f"finetune_matched n={n} seed={seed}: {match.describe()}", flush=True)
                    model = finetune_model(SHIPPED_MODEL_DIR, chosen, tmp / f"ftm_{n}_{seed}", seed=seed,
                                           rehearsal_fields=twin_rehearsal_fields(OPTICS, seed=seed, match=match),
                                           pixel_size_m=OPTICS.pixel_size_m, progress=False, **budget)
                    record("finetune_matched", n, seed, model, time.perf_counter() - t0)
                if "bn_finetune" in args.methods:
                    t0 = time.perf_counter()
                    start = adapt_batchnorm(SHIPPED_MODEL_DIR, [p.phase for p in pool_pairs], tmp / f"bnft_start_{seed}",
                                            pixel_size_m=OPTICS.pixel_size_m, seed=seed)
                    model = finetune_model(start, chosen, tmp / f"bnft_{n}_{seed}", seed=seed,
                                           pixel_size_m=OPTICS.pixel_size_m, progress=False, **budget)
                    record("bn_finetune", n, seed, model, time.perf_counter() - t0)
                if "scratch" in args.methods:
                    t0 = time.perf_counter()
                    model = scratch_model(SHIPPED_MODEL_DIR, chosen, tmp / f"scratch_{n}_{seed}", seed=seed,
                                          epochs=args.epochs, steps=args.steps)
                    record("scratch", n, seed, model, time.perf_counter() - t0)
            if "full" in args.methods:
                t0 = time.perf_counter()
                model = finetune_model(SHIPPED_MODEL_DIR, pool_pairs, tmp / f"full_{seed}", seed=seed,
                                       pixel_size_m=OPTICS.pixel_size_m, progress=False, **budget)
                record("full", POOL, seed, model, time.perf_counter() - t0)

    table = _merged(args.out / "adaptation.csv", pd.DataFrame(rows))
    write_csv(args.out / "adaptation.csv", table.round(4))
    write_csv(args.out / "annotation_effort.csv",
              _merged(args.out / "annotation_effort.csv", pd.DataFrame(effort)).round(4))
    scores = ["dice_overall", "aji_overall", "cell_accuracy", "minutes"]
    summary = table.groupby(["method", "n_fields", "test_fields"], sort=False, dropna=False)[scores]
    summary = summary.agg(["mean", "std"]).round(3)
    print(summary.to_string())


if __name__ == "__main__":
    main()
