"""The ``rbc`` command: ``run``, ``simulate``, ``reconstruct``, ``assess``, ``report``.

Each subcommand is a thin wrapper over a library function; ``rbc CMD --help`` documents it.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from rbclib.profile import PROFILE_NAMES


def _cmd_run(args: argparse.Namespace) -> int:
    from rbclib.pipeline import NotebookFailed, RunInterrupted, run_notebooks

    only = [s for part in args.only for s in part.split(",") if s] if args.only else None
    run_dir = args.run_dir or Path("runs") / args.profile
    try:
        run_notebooks(profile=args.profile, run_dir=run_dir, seed=args.seed, only=only,
                      start_from=args.start_from, notebooks_dir=args.notebooks)
    except NotebookFailed as exc:
        print(f"rbc run: {exc}", file=sys.stderr)
        return 1
    except RunInterrupted as exc:
        print(f"rbc run: {exc}", file=sys.stderr)
        return 130
    return 0


def _cmd_assess(args: argparse.Namespace) -> int:
    from rbclib.study.assess import assess, load_schemes
    from rbclib.study.image import OpticsOptions
    from rbclib.study.inputs import LATEST, resolve_model
    from rbclib.study.segmenter import Segmenter

    model, note = resolve_model(args.model)
    if args.model is None or args.model == LATEST:
        print(f"rbc assess: model: {note}", file=sys.stderr)
    result = assess(args.input, args.out, segmenter=Segmenter(model, trim_halo=args.trim_halo, device=args.device),
                    model_note=note, day_map=args.day_map,
                    optics=OpticsOptions(args.wavelength, args.pixel_size, args.medium_index, args.numerical_aperture),
                    schemes=load_schemes(args.schemes) if args.schemes else None,
                    overlays=not args.no_overlays, seed=args.seed, on_error=None, batch_images=args.batch_images)
    import matplotlib.pyplot as plt

    for fig in result.figures.values():
        plt.close(fig)
    for path, problem in result.failures:
        print(f"rbc assess: skipped {path}: {problem}", file=sys.stderr)
    print(f"rbc assess: {len(result.processed)} image(s) analysed, {len(result.skipped)} already done, "
          f"{len(result.failures)} skipped with problems; {len(result.cells)} cells; report: {result.out_dir / 'report.md'}")
    return 1 if result.failures else 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from rbclib.study.finetune import TWIN_FIELDS, finetune_model, read_fields, twin_rehearsal_fields
    from rbclib.study.inputs import resolve_model
    from rbclib.study.twin_match import match_twin

    model, note = resolve_model(args.model)
    fields, optics = read_fields(args.fields)
    val, _ = read_fields(args.val) if args.val else (None, None)
    n_twin = TWIN_FIELDS if args.twin_fields is None else args.twin_fields
    print(f"rbc finetune: {len(fields)} annotated field(s) at {optics.pixel_size_m * 1e6:.4f} um/px and "
          f"{optics.wavelength_m * 1e9:.1f} nm, with {n_twin} twin field(s) of those optics; starting from {note}",
          file=sys.stderr)
    match = None
    if n_twin and not args.unmatched_twin:
        match = match_twin([p.phase for p in fields], [p.labels for p in fields], optics, seed=args.seed)
        print(f"rbc finetune: {match.describe()}", file=sys.stderr)
    out = finetune_model(model, fields, args.out, pixel_size_m=optics.pixel_size_m, val_fields=val, seed=args.seed,
                         rehearsal_fields=twin_rehearsal_fields(optics, n_twin, seed=args.seed, match=match),
                         device=args.device, progress=not args.quiet, **_budget(args))
    print(f"rbc finetune: model folder {out} (use it with: rbc assess INPUT -o OUT --model {out})")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    import numpy as np

    from rbclib.core.io import list_images, read_image
    from rbclib.study.finetune import adapt_batchnorm, adapt_ssl, finetune_model, pseudo_label_fields
    from rbclib.study.inputs import resolve_model

    model, _ = resolve_model(args.model)
    files = list_images(args.phases) if args.phases.is_dir() else [args.phases]
    images = [read_image(f) for f in files]
    phases = [np.asarray(img.data, np.float32) for img in images]
    pixel_size_m = images[0].optics().pixel_size_m
    if args.method == "batchnorm":
        out = adapt_batchnorm(model, phases, args.out, pixel_size_m=pixel_size_m, seed=args.seed)
    elif args.method == "ssl":
        out = adapt_ssl(model, phases, args.out, pixel_size_m=pixel_size_m, seed=args.seed, progress=not args.quiet)
    else:
        pseudo = pseudo_label_fields(model, phases, pixel_size_m=pixel_size_m, names=[f.stem for f in files])
        out = finetune_model(model, pseudo, args.out, pixel_size_m=pixel_size_m, seed=args.seed,
                             progress=not args.quiet, **_budget(args))
    print(f"rbc adapt: {args.method} on {len(phases)} phase image(s); model folder {out}")
    return 0


def _cmd_default_model(args: argparse.Namespace) -> int:
    from rbclib.study.default_model import RECIPE, SHIPPED_MODEL_DIR, build_default_model

    command = "rbc default-model" + (" --ship" if args.ship else "") + (f" --recipe {args.recipe}" if args.recipe else "")
    folder = build_default_model(args.out, recipe_path=args.recipe or RECIPE,
                                 ship=SHIPPED_MODEL_DIR if args.ship else None, command=command)
    print(f"rbc default-model: model and card in {folder} (MODEL_CARD.md)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rbclib.physics.recording import HologramSettings
    from rbclib.physics.simulated_datasets import simulate_dataset, simulate_storage_series

    realism = {k: getattr(args, k) for k in _SIMULATE_RANGES if getattr(args, k) is not None}
    hologram = {k: realism.pop(k) for k in ("noise_nm", "noise_corr_um", "coherence", "beam_ratio") if k in realism}
    if args.dust is not None:
        hologram["dust"] = (int(args.dust), int(args.dust))
    if args.carrier is not None:
        hologram["carrier"] = args.carrier
    settings = HologramSettings(**hologram)
    if args.storage_series:
        if args.day is not None or args.mixture is not None:
            raise ValueError("--storage-series sets the class mixture per storage day; drop --day / --mixture")
        out = simulate_storage_series(args.out, seed=args.seed, images_per_day=args.n_fields, field_px=args.field_px,
                                      cells_per_field=args.cells_per_field, progress=not args.quiet,
                                      overwrite=args.overwrite, settings=settings, **realism)
    else:
        out = simulate_dataset(args.out, n_fields=args.n_fields, seed=args.seed, field_px=args.field_px,
                               cells_per_field=args.cells_per_field, mixture=args.mixture, day=args.day,
                               bit_depth=args.bit_depth, progress=not args.quiet, overwrite=args.overwrite,
                               settings=settings, **realism)
    print(f"rbc simulate: dataset written to {out}")
    return 0


_SIMULATE_RANGES = {
    # option: help; each takes X (pinned) or LOW,HIGH (drawn per field), limits: rbclib.physics.recording.SETTING_LIMITS
    "density_per_1000um2": "cell density (default 2,10)",
    "flat_discocyte_fraction": "share of discocytes drawn flat-topped like the real fresh cells (default 0)",
    "touching_fraction": "share of cells touching another (default 0.1,0.6)",
    "overlap_fraction": "share of cells lying on another (default 0,0.12)",
    "platelets_per_cell": "platelets per cell, background class (default 0,0.08)",
    "debris_per_1000um2": "debris specks, background class (default 0,3)",
    "defocus_um": "object-plane defocus [um] (default -6,6)",
    "noise_nm": "coherent (speckle) noise, optical path s.d. [nm] (default 3,25, log-uniform)",
    "noise_corr_um": "correlation length of that noise [um] (default 0.3,1.5)",
    "coherence": "fringe contrast factor (default 0.6,0.95)",
    "beam_ratio": "reference / object amplitude (default 0.6,1.7)",
}


def _number_pair(text: str, cast: type, expected: str) -> tuple[Any, Any]:
    """``A,B`` -> (cast(A), cast(B)); else an argparse error saying what was ``expected``."""
    try:
        a, b = (cast(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    return a, b


def _range_arg(option: str):
    """argparse type: X or LOW,HIGH within the setting's limits, the message naming ``--option``."""
    def parse(text: str) -> float | tuple[float, float]:
        from rbclib.physics.recording import check_setting

        try:
            values = [float(v) for v in text.split(",")]
            value = values[0] if len(values) == 1 else tuple(values)
            check_setting(option, value, label="--" + option.replace("_", "-"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) if "allowed range" in str(exc) else
                                             f"expected X or LOW,HIGH (numbers), got {text!r}") from None
        return value
    return parse


def _carrier_arg(text: str) -> tuple[float, float]:
    fy, fx = _number_pair(text, float, "FY,FX in cycles/px (two numbers) for --carrier")
    if not (0.1 <= math.hypot(fy, fx) and max(abs(fy), abs(fx)) <= 0.45 and fx > 0):
        raise argparse.ArgumentTypeError(f"--carrier {text}: need |f| >= 0.1, |fy|, |fx| <= 0.45 and fx > 0 cycles/px")
    return fy, fx


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from rbclib.physics.phase_files import reconstruct_files

    overrides = {"wavelength_m": args.wavelength, "pixel_size_m": args.pixel_size, "n_medium": args.medium_index,
                 "numerical_aperture": args.numerical_aperture}
    refocus = None if args.refocus is None else ("auto" if args.refocus == "auto" else float(args.refocus))
    failed: list[str] = []

    def skip(path, problem: str) -> None:
        failed.append(f"rbc reconstruct: skipped {path}: {problem}")

    written = reconstruct_files(args.holograms, args.out, background=args.background, refocus=refocus,
                                optics_overrides={k: v for k, v in overrides.items() if v is not None},
                                filter=args.filter, filter_size=args.filter_size, sign=args.sign,
                                progress=not args.quiet, on_error=skip, overwrite=args.overwrite)
    for line in failed:
        print(line, file=sys.stderr)
    if not written:
        raise ValueError(f"no hologram could be reconstructed ({len(failed)} file(s) skipped)")
    print(f"rbc reconstruct: {len(written)} phase image(s) written to {args.out}"
          + (f"; {len(failed)} file(s) skipped (listed on stderr)" if failed else ""))
    return 1 if failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    import shutil

    from rbclib.core.files import read_json
    from rbclib.report import write_run_report
    from rbclib.summary import update_readme, write_summary

    run_dir = args.run_dir or Path("runs") / (args.profile or "quick")
    md, html = write_run_report(run_dir, profile=args.profile)
    summary = write_summary(run_dir)
    print(f"rbc report: {md}, {html} and {summary}")
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary, args.results)
        print(f"rbc report: copied to {args.results}")
    if args.readme:
        data = read_json(summary)
        update_readme(args.readme, data, data.get("profile") or args.profile or "quick")
        print(f"rbc report: measured block of {args.readme} updated")
    return 0


def _refocus_arg(text: str) -> str:
    from rbclib.physics.refocus import MAX_REFOCUS_M

    if text != "auto":
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--refocus takes a distance in metres or 'auto', got {text!r}") from None
        if not (math.isfinite(value) and abs(value) <= MAX_REFOCUS_M):
            raise argparse.ArgumentTypeError(f"--refocus {text}: a distance within -{MAX_REFOCUS_M:g}..{MAX_REFOCUS_M:g} m "
                                             "(e.g. 5e-6), or 'auto'")
    return text


def _optics_arg(field: str, option: str):
    """argparse type: a number within the physical range of ``Optics.<field>`` (SI units)."""
    def parse(text: str) -> float:
        from rbclib.core.config import OPTICS_RANGES

        lo, hi = OPTICS_RANGES[field]
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"{option} {text}: expected a number within {lo:g}..{hi:g} (SI units)")
        return value
    return parse


def _filter_size_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 0.5):
        raise argparse.ArgumentTypeError(f"--filter-size {text}: a fraction of the carrier distance in (0, 0.5]")
    return value


def _int_in(lo: int, hi: int, option: str):
    """argparse type: a whole number within lo..hi, the message naming ``option``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{option} {text}: a whole number within {lo}..{hi}")
        return value
    return parse


_SEED = _int_in(0, 2 ** 32 - 1, "--seed")
"""argparse type of every ``--seed``: numpy's seed range."""


def _checked_by(check, option: str):
    """argparse type: ``check(text)``'s value, its ValueError becoming a usage error naming ``option``."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{option} {text}: {exc}") from None
    return parse


def _storage_day(text: str) -> float:
    from rbclib.physics.simulate import storage_mixture

    day = float(text)
    storage_mixture(day)  # ValueError outside the modelled days
    return day


def _mixture(text: str) -> str:
    from rbclib.physics.simulate import parse_mixture

    parse_mixture(text)
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _cells_range(text: str) -> tuple[int, int]:
    lo, hi = _number_pair(text, int, "MIN,MAX (two integers)")
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 <= MIN <= MAX, got {text!r}")
    return lo, hi


def _add_budget_arguments(p: argparse.ArgumentParser) -> None:
    """Fine-tuning budget options; unset ones take :mod:`rbclib.study.finetune`'s defaults."""
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: rbclib.study.finetune.FINETUNE_EPOCHS)")
    p.add_argument("--steps", type=_positive_int,
                   help="batches per epoch (default: rbclib.study.finetune.FINETUNE_STEPS)")


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """The fine-tuning options given on the command line, as keywords of :func:`rbclib.study.finetune.finetune_model`."""
    given = {"epochs": args.epochs, "steps_per_epoch": args.steps, "lr": getattr(args, "lr", None)}
    return {k: v for k, v in given.items() if v is not None}


def _add_optics_arguments(p: argparse.ArgumentParser) -> None:
    """Optics overrides shared by the commands that read microscope images (SI units)."""
    p.add_argument("--wavelength", type=_optics_arg("wavelength_m", "--wavelength"), metavar="M",
                   help="illumination wavelength [m], e.g. 682.5e-9")
    p.add_argument("--pixel-size", type=_optics_arg("pixel_size_m", "--pixel-size"), metavar="M",
                   help="pixel size at the sample [m], e.g. 0.1441e-6")
    p.add_argument("--medium-index", type=_optics_arg("n_medium", "--medium-index"), metavar="N",
                   help="refractive index of the medium, e.g. 1.3334")
    p.add_argument("--numerical-aperture", type=_optics_arg("numerical_aperture", "--numerical-aperture"), metavar="NA",
                   help="objective NA, e.g. 0.65 (sets the sideband filter radius NA/wavelength; default 0.7)")


def build_parser() -> argparse.ArgumentParser:
    """The ``rbc`` argument parser: one sub-parser per command, each with its handler as ``func``.

    Returns
    -------
    argparse.ArgumentParser
        The parser of ``rbc`` and its commands ``run``, ``assess``, ``finetune``, ``adapt``,
        ``default-model``, ``simulate``, ``reconstruct`` and ``report``.

    Notes
    -----
    It is long because it declares the whole command-line surface: eight commands, each with
    its options and their help text, one after another; it holds no logic (the option types
    are the checked parsers above it, the work is in the ``_cmd_*`` handlers).
    """
    parser = argparse.ArgumentParser(
        prog="rbc", description=__doc__, epilog="Exit status: 0 done; 1 a problem with the input, the output folder "
        "or a model (one line naming the file; batches go on past a bad file, list every skipped file with its "
        "reason at the end and then exit 1); 2 a usage error found while reading the command line.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full Python traceback")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the numbered notebooks headless with papermill")
    p.add_argument("--profile", default="quick", choices=list(PROFILE_NAMES))
    p.add_argument("--only", action="append", help="notebook numbers, e.g. 01,03")
    p.add_argument("--from", dest="start_from", help="start at this notebook number, e.g. 03")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/<profile>)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--notebooks", type=Path, help="folder of notebooks (default: the repository's)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("assess", help="storage-quality report of a blood unit or a storage series",
                       description="Segment and classify the RBCs of every hologram or phase image under INPUT "
                                   "(a file, a folder, a dataset folder with holograms/ or phase/, or day_NN/ "
                                   "folders of a storage series) and write cells.csv, overlays, ratios.csv and "
                                   "report.md to OUT. Resumable: finished images are skipped.")
    p.add_argument("input", type=Path, metavar="INPUT", help="image file or folder")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument("--model", help="model folder, or `latest` for the best model of the latest `make run` "
                                   "(default: the default model shipped with rbc-holo)")
    p.add_argument("--day-map", type=Path, help="CSV with columns file,day giving each image's storage day")
    _add_optics_arguments(p)
    p.add_argument("--schemes", type=Path, help="TOML file of morphology-index weight schemes "
                                                 "([name] weights = {discocyte = 0, ...}, description = ...)")
    p.add_argument("--no-overlays", action="store_true", help="do not write overlay PNGs")
    p.add_argument("--trim-halo", action=argparse.BooleanOptionalAction, default=None,
                   help="drop model pixels beyond a cell's bright body (halo that merges neighbours); default: as the "
                        "model's config.json says (on for models trained on a twin with flat-topped discocytes)")
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the bootstrap confidence intervals")
    p.add_argument("--device", help="torch device of the model, e.g. cuda, cuda:1, cpu (default: cuda, mps or "
                                    "cpu, whichever is there)")
    p.add_argument("--batch-images", type=_positive_int, default=2, metavar="N",
                   help="images whose tiles go through the model together (default 2; more on a GPU)")
    p.set_defaults(func=_cmd_assess)

    p = sub.add_parser("finetune", help="fine-tune a trained model on a few annotated fields of your microscope",
                       description="Start from the shipped default model (or --model) and train on annotated "
                                   "fields: FIELDS/phase/<id>.tif with FIELDS/labels/<id>.png (what rbc simulate "
                                   "writes and notebook 02 exports). Fields are resampled to the model's pixel size. "
                                   "Writes a model folder that rbc assess --model takes.")
    p.add_argument("fields", type=Path, metavar="FIELDS", help="folder with phase/ and labels/")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT", help="new model folder")
    p.add_argument("--model", help="model folder to start from, or `latest` (default: the shipped default model)")
    p.add_argument("--val", type=Path, metavar="FIELDS", help="annotated fields that choose the best epoch "
                                                               "(default: the training fields)")
    p.add_argument("--twin-fields", type=_int_in(0, 1000, "--twin-fields"), metavar="N",
                   help="fields of the shipped model's training twin, recorded by your fields' optics, trained on "
                        "beside them to keep the classes your fields hardly hold (default: "
                        "rbclib.study.finetune.TWIN_FIELDS; 0: your fields only)")
    p.add_argument("--unmatched-twin", action="store_true",
                   help="draw the twin fields with the recipe's noise, defocus and discocyte shape (default: "
                        "matched to your fields' statistics, rbclib.study.twin_match)")
    _add_budget_arguments(p)
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: rbclib.study.finetune.FINETUNE_LR)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--device", help="torch device (default: cuda, mps or cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("adapt", help="adapt a trained model to your microscope without labels",
                       description="batchnorm: re-estimate the model's BatchNorm statistics on your phase images; "
                                   "pseudo-label: fine-tune it on its own confident classes of them; ssl: the paper's "
                                   "self-supervised pretraining on them, from the model's encoder and decoder. "
                                   "Writes a model folder that rbc assess --model takes.")
    p.add_argument("phases", type=Path, metavar="PHASES", help="phase image (float TIFF, rad) or folder of them")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUT", help="new model folder")
    p.add_argument("--method", choices=["batchnorm", "pseudo-label", "ssl"], default="batchnorm")
    p.add_argument("--model", help="model folder to adapt, or `latest` (default: the shipped default model)")
    _add_budget_arguments(p)
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser("default-model", help="train, check and card the default model (make default-model)",
                       description="Train the default model by its recipe (rbclib/models/recipe.toml) on the "
                                   "digital twin, check it on the twin, another microscope and the real holograms "
                                   "of ../shared/data, and write its model card. With --ship, copy it into the "
                                   "package (rbclib/models/default) with compressed weights.")
    p.add_argument("--out", type=Path, default=Path("runs/default-model"), help="work folder (default %(default)s)")
    p.add_argument("--recipe", type=Path, help="recipe TOML (default: rbclib/models/recipe.toml)")
    p.add_argument("--ship", action="store_true", help="write the result into rbclib/models/default")
    p.set_defaults(func=_cmd_default_model)

    p = sub.add_parser("simulate", help="write a simulated dataset of RBC holograms with ground truth",
                       description="Physics-based digital twin of off-axis DHM holograms of red blood cells "
                                   "(rbclib.physics.simulate): writes holograms/, backgrounds/, phase/, labels/, "
                                   "instances/, cells.csv, optics.json, splits.json to OUT.")
    p.add_argument("--n-fields", type=_int_in(1, 100_000, "--n-fields"), required=True, metavar="N",
                   help="number of fields (with --storage-series: fields per storage day)")
    p.add_argument("--seed", type=_SEED, required=True, metavar="S", help="random seed (same seed, same dataset)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="output dataset folder")
    p.add_argument("--day", type=_checked_by(_storage_day, "--day"), metavar="D", help="storage day 8..57: class mixture from the storage model")
    p.add_argument("--mixture", type=_checked_by(_mixture, "--mixture"), metavar="CLASS=F,...", help="class fractions, e.g. discocyte=0.7,spherocyte=0.1,"
                                                            "echinocyte=0.1,stomatocyte=0.1 (default: day 8)")
    p.add_argument("--field-px", type=_int_in(32, 8192, "--field-px"), default=900, metavar="PX", help="field side in pixels (default 900)")
    p.add_argument("--cells-per-field", type=_cells_range, metavar="MIN,MAX",
                   help="cells per field (default: from --density-per-1000um2)")
    for option, text in _SIMULATE_RANGES.items():
        p.add_argument("--" + option.replace("_", "-"), type=_range_arg(option), metavar="X|LO,HI",
                       help=f"{text}; X pins it, LO,HI draws it per field")
    p.add_argument("--dust", type=int, metavar="N", help="out-of-focus dust particles per field (default 0..6)")
    p.add_argument("--carrier", type=_carrier_arg, metavar="FY,FX",
                   help="pin the carrier [cycles/px] (default: drawn per field, |f| 0.28-0.36)")
    p.add_argument("--bit-depth", type=int, default=8, choices=[8, 12], help="camera bit depth")
    p.add_argument("--storage-series", action="store_true",
                   help="write the storage study instead: day_08/ ... day_57/ with N fields each")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier simulation in the output folder (refused without this flag)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("reconstruct", help="off-axis holograms -> phase images (float32 TIFF, rad)",
                       description="Reconstruct quantitative phase images from off-axis holograms "
                                   "(rbclib.physics.holography): writes DIR/<stem>.tif and DIR/optics.json. "
                                   "Optics come from the files' metadata, then these options.")
    p.add_argument("holograms", nargs="+", type=Path, metavar="HOLOGRAM",
                   help="hologram files or folders of them (TIFF, PNG, JPEG, BMP, NPZ, HDF5)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--background", type=Path, metavar="B", help="background hologram of the same set-up, or a folder of "
                   "them named like the holograms (default: a file's own, else numerical compensation)")
    _add_optics_arguments(p)
    p.add_argument("--refocus", type=_refocus_arg, metavar="M|auto",
                   help="propagate by M metres, or 'auto' (minimum average amplitude gradient within +-10 um)")
    p.add_argument("--filter", default="smooth disk", choices=["smooth disk", "disk", "gauss"],
                   help="sideband filter (default: smooth disk)")
    p.add_argument("--filter-size", type=_filter_size_arg, default=None, metavar="F",
                   help="filter radius as a fraction of the carrier distance (default: the objective's "
                        "cut-off NA/wavelength, at most half the carrier distance)")
    p.add_argument("--sign", type=int, choices=[1, -1], help="force the phase sign (default: cells positive, automatic)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace phase images already in the output folder")
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("report", help="write <run>/report.md and report.html from what the stages left",
                       description="Gather the tables, figures, timings, optics, profile and software versions of "
                                   "a run folder into report.md (figures linked) and report.html (self-contained), "
                                   "and its headline numbers into summary.json. `rbc run` does this after the last "
                                   "notebook; this re-makes it for any run.")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/<profile>)")
    p.add_argument("--profile", choices=list(PROFILE_NAMES),
                   help="profile to describe (default: the one recorded in timings.json)")
    p.add_argument("--results", type=Path, metavar="JSON",
                   help="also copy summary.json here (the committed docs/results/<profile>.json)")
    p.add_argument("--readme", type=Path, metavar="README",
                   help="replace the README's <!-- measured:<profile>:start/end --> block with the summary table")
    p.set_defaults(func=_cmd_report)

    # Further subcommands (simulate, reconstruct, assess) are added above this line,
    # each as a parser block plus a `_cmd_<name>` handler that calls the library.
    return parser


def _one_line_warning(message: Warning | str, category: type, filename: str, lineno: int, line: str | None = None) -> str:
    return f"rbc: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run one ``rbc`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``rbc``; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit status: 0 done; 1 a problem with the input, the output folder or a model
        (one line ``rbc <command>: error: ...`` on stderr, the traceback with ``--debug``);
        130 interrupted with Ctrl-C (finished files are kept). A usage error exits with 2
        from argparse. Warnings print on one line unless ``--debug``.
    """
    import pickle
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    shown = warnings.formatwarning
    if not args.debug:
        warnings.formatwarning = _one_line_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"rbc {args.command}: interrupted (Ctrl-C); finished files are kept, a rerun resumes", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
        if args.debug:
            raise
        print(f"rbc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    raise SystemExit(main())
