"""Label efficiency: the four ResUnet arms with 2, 4, 8 and all labelled training fields (issue 15).

The paper's claim is that diffusion augmentation (DA) and self-supervised pretraining (SSL)
pay where labels are scarce. This benchmark tests it on a finished run folder (``make run``:
02's fields and labels, 05's SSL model):

* a labelled level is the first n fields of one seeded permutation of the train split
  (nested: the 2 fields are among the 4, ...); ``all`` is the whole train split;
* at each level the two diffusion GANs (03's profile sizes, seed 0) train on that level's
  fields only, and 04's automatic curation (same class request, real cell ranges from the
  level's fields) picks the synthetic pairs of the ``da`` arms, so no arm sees labels the
  others do not; the ``ssl`` arms start from the run's SSL model (05: unlabelled images);
* every arm and seed trains the same steps with the same config (the profile's, with
  ``--epochs`` epochs) and no validation split (a held-out labelled field would be more
  labels than the level allows): the final weights (``last.pt``) are scored on the run's
  test split (Dice and AJI, whole-image tiled inference, as 07).

Writes ``benchmarks/results/label_efficiency_<profile>.csv`` (columns ``n_labelled_fields,
arm, seed, dice_overall, aji_overall``, one row per trained model, appended as each finishes)
and its figure (mean and sd per arm against labelled fields). Models live in
``runs/label_efficiency/<profile>/``; an interrupted run resumes there (a scored model is not
retrained, a half-trained one continues from ``last.pt``).

    python benchmarks/bench_label_efficiency.py --run-dir runs/quick            # about 1.5 h on 2 cores
    python benchmarks/bench_label_efficiency.py --run-dir runs/smoke --profile smoke --epochs 1 --levels 2 all --seeds 0
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["n_labelled_fields", "arm", "seed", "dice_overall", "aji_overall"]
ARMS = ("backbone", "da", "ssl", "da_ssl")
SUBSET_SEED = 0  # the permutation that orders the labelled fields (one nested series for every arm and seed)


def labelled_subsets(stems: list[str], levels: list[str]) -> dict[int, list[str]]:
    """{n: the first n stems of one seeded permutation} for each level ("all" = every stem)."""
    order = [sorted(stems)[i] for i in np.random.default_rng(SUBSET_SEED).permutation(len(stems))]
    sizes = sorted({len(stems) if lv == "all" else int(lv) for lv in levels})
    too_many = [n for n in sizes if not 1 <= n <= len(stems)]
    if too_many:
        sys.exit(f"--levels {too_many}: the train split has {len(stems)} fields (use 1..{len(stems)} or 'all')")
    return {n: order[:n] for n in sizes}


def prepare_synthetic(run_dir: Path, level_dir: Path, stems: list[str], *, profile: str) -> Path:
    """Train G_p and G_M on ``stems`` and curate their pairs as 04 does -> the synthetic train folder."""
    import torch

    from rbclib.core.config import Optics
    from rbclib.core.files import write_json
    from rbclib.profile import get_profile
    from rbclib.physics.simulate import parse_mixture
    from rbclib.seg.datasets import load_pairs
    from rbclib.synth import curate as cu
    from rbclib.synth import curation_decisions as cdec
    from rbclib.synth import ddgan as dd
    from rbclib.synth.ddgan_data import load_instances
    from rbclib.synth.ddgan_sampling import generate_pairs
    from rbclib.synth import scores as ev
    from rbclib.synth.morphology import cell_table, real_ranges

    train_dir = level_dir / "synthetic" / "train"
    if (level_dir / "synthetic" / "selection.json").is_file():
        return train_dir
    P = get_profile(profile)["diffusion"]
    request = parse_mixture("discocyte=0.25,spherocyte=0.25,echinocyte=0.25,stomatocyte=0.25")
    optics = Optics.from_json(run_dir / "optics.json")
    pairs = load_pairs(run_dir, stems)
    phases, labels = [p.phase for p in pairs], [p.labels for p in pairs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 03/04's setting: the small DDGAN nets run fastest on one thread here
    try:
        dirs = {}
        for kind in ("phase", "mask"):
            dirs[kind] = dd.train_ddgan(phases, labels, config=dd.config_from_profile(P, kind),
                                        out_dir=level_dir / "models" / f"ddgan_{kind}", seed=0, progress=False,
                                        instances=load_instances(run_dir, stems))
        cfg = dd.config_from_profile(P, "phase")
        real_phase, real_labels = ev.real_patches(phases, labels, patch_px=cfg.native_px, n=P["n_eval_patches"], seed=0,
                                                  cell_fraction=cfg.cell_crop_fraction,
                                                  class_balanced=cfg.class_balanced_crops)
        ranges = real_ranges(cell_table(real_phase, real_labels, pixel_size_m=optics.pixel_size_m))
        gen = generate_pairs(dirs["phase"], dirs["mask"], P["n_candidates"], seed=0, batch_size=P["sample_batch"],
                                progress=False, class_share=request)
    finally:
        torch.set_num_threads(threads)
    cand_dir = level_dir / "synthetic" / "candidates"
    cu.write_candidates(gen.phase, gen.labels, gen.confidence, cand_dir, optics=optics, ranges=ranges, progress=False)
    table = cu.read_candidates(cand_dir)
    store = cdec.CurationDecisions(level_dir / "synthetic" / "decisions.json")
    cdec.auto_curate(store, table, P["n_select"], request=request, min_consistency=P["min_consistency"])
    accepted = store.ids("accept")
    cu.write_synthetic_train(cand_dir, accepted, train_dir, optics=optics, progress=False)
    write_json(level_dir / "synthetic" / "selection.json",
               {"accepted": accepted, "labelled_fields": stems, "balance_deviation_pp":
                cu.balance_deviation_pp(table, accepted, request), "cell_quality_mean":
                float(table.loc[accepted, "cell_quality"].mean()) if accepted else float("nan")})
    return train_dir


def train_and_score(run_dir: Path, model_dir: Path, stems: list[str], *, arm: str, seed: int, config: dict,
                    synthetic: Path | None, ssl_dir: Path, test_pairs: list, true_instances: dict) -> tuple[float, float]:
    """Train one ResUnet arm on ``stems`` (no validation) and score its final weights on the test pairs."""
    from rbclib.seg import evaluate as ev
    from rbclib.seg.datasets import load_pairs
    from rbclib.seg.infer import load_model
    from rbclib.seg.train import train_segmenter

    train_segmenter(load_pairs(run_dir, stems), [], model_name="resunet", out_dir=model_dir, config=config, seed=seed,
                    init_from=ssl_dir if "ssl" in arm else None,
                    extra_pairs_dir=synthetic if arm.startswith("da") else None, progress=False)
    model, cfg = load_model(model_dir, checkpoint="last.pt")
    result = ev.evaluate_predictor(model_dir.name, ev.model_predictor(model, cfg, batch_size=8), test_pairs,
                                   true_instances=true_instances, classes=cfg["classes"], progress=False)
    return result.mean("dice")["overall"], result.mean("aji")["overall"]


def plot(results: pd.DataFrame, path: Path, *, title: str) -> None:
    """Mean +/- sd over seeds of Dice and AJI per arm against labelled fields (log2 axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rbclib.core.files import atomic_path

    stats = results.groupby(["arm", "n_labelled_fields"])[["dice_overall", "aji_overall"]].agg(["mean", "std"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("dice_overall", "aji_overall")):
        for i, arm in enumerate(ARMS):
            if arm not in stats.index.get_level_values(0):
                continue
            s = stats.loc[arm]
            shift = 2 ** (0.04 * (i - 1.5))  # side by side, so that the error bars do not hide each other
            ax.errorbar(s.index * shift, s[(metric, "mean")], yerr=s[(metric, "std")].fillna(0), marker="o",
                        capsize=3, label=arm)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(results["n_labelled_fields"].unique()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set(xlabel="labelled training fields", ylabel=metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "quick", help="a finished make run (02 and 05 done)")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper", "gpu"])
    p.add_argument("--levels", nargs="+", default=["2", "4", "8", "all"], help="labelled fields per level, or 'all'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--epochs", type=int, default=5, help="epochs per model (quick: 80 steps each; make run trains 10)")
    p.add_argument("--work-dir", type=Path, default=None, help="models (default runs/label_efficiency/<profile>)")
    p.add_argument("--results", type=Path, default=None,
                   help="CSV (default benchmarks/results/label_efficiency_<profile>.csv; the figure goes beside it)")
    args = p.parse_args()

    from rbclib.core.config import Optics
    from rbclib.core.files import write_csv
    from rbclib.core.io import read_instances
    from rbclib.core.paths import RunPaths
    from rbclib.profile import get_profile
    from rbclib.seg.datasets import load_pairs, read_splits
    from rbclib.seg.train import config_from_profile

    paths = RunPaths(args.run_dir)
    ssl_dir = paths.model_dir("ssl")
    if not paths.splits_json.is_file():
        print(f"{paths.splits_json}: missing; run `make run` (or notebooks 01-02) first")
        return 1
    if any("ssl" in a for a in args.arms) and not (ssl_dir / "config.json").is_file():
        print(f"{ssl_dir}: no SSL model; run 05_ssl_pretrain first or drop the ssl arms (--arms backbone da)")
        return 1
    work = args.work_dir or ROOT / "runs" / "label_efficiency" / args.profile
    out_csv = args.results or ROOT / "benchmarks" / "results" / f"label_efficiency_{args.profile}.csv"
    done = pd.read_csv(out_csv) if out_csv.is_file() else pd.DataFrame(columns=COLUMNS)
    config = config_from_profile(get_profile(args.profile)["segment"], "resunet")
    config.update(epochs=args.epochs, pixel_size_m=Optics.from_json(paths.optics_json).pixel_size_m)
    subsets = labelled_subsets(read_splits(paths.root)["train"], args.levels)
    test_pairs = load_pairs(paths.root, "test")
    true_instances = {q.name: read_instances(paths.instances / f"{q.name}.png") for q in test_pairs
                      if (paths.instances / f"{q.name}.png").is_file()}
    steps = args.epochs * (config["max_steps_per_epoch"] or 0)
    print(f"levels {sorted(subsets)} fields, arms {args.arms}, seeds {args.seeds}, {args.epochs} epochs "
          f"({steps or 'full-pass'} steps) per model; {len(test_pairs)} test fields; models in {work}")
    t_start = time.perf_counter()
    for n, stems in subsets.items():
        level_dir = work / f"n{n:03d}"
        synthetic = None
        if any(a.startswith("da") for a in args.arms):
            t0 = time.perf_counter()
            synthetic = prepare_synthetic(paths.root, level_dir, stems, profile=args.profile)
            print(f"[{n} fields] synthetic pairs ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        for seed in args.seeds:
            for arm in args.arms:
                if ((done.n_labelled_fields == n) & (done.arm == arm) & (done.seed == seed)).any():
                    continue
                t0 = time.perf_counter()
                dice, aji = train_and_score(paths.root, level_dir / "models" / f"seg_{arm}_seed{seed}", stems, arm=arm,
                                            seed=seed, config=config, synthetic=synthetic, ssl_dir=ssl_dir,
                                            test_pairs=test_pairs, true_instances=true_instances)
                row = pd.DataFrame([dict(zip(COLUMNS, (n, arm, seed, dice, aji)))])
                done = row if done.empty else pd.concat([done, row], ignore_index=True)
                write_csv(out_csv, done.sort_values(["n_labelled_fields", "arm", "seed"]), index=False)
                print(f"[{n} fields] {arm:8s} seed {seed}: Dice {dice:.3f} AJI {aji:.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"total {(time.perf_counter() - t_start) / 60:.1f} min")
    done = done[done.n_labelled_fields.isin(list(subsets)) & done.arm.isin(args.arms) & done.seed.isin(args.seeds)]
    table = done.groupby(["n_labelled_fields", "arm"], sort=True)[["dice_overall", "aji_overall"]].agg(["mean", "std"])
    with pd.option_context("display.width", 160):
        print(table.round(3).to_string())
    plot(done, out_csv.with_suffix(".png"),
         title=f"{args.profile}: {steps or args.epochs} {'steps' if steps else 'epochs'} per model, mean and sd over "
               f"seeds {args.seeds}, test split of {args.run_dir.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
