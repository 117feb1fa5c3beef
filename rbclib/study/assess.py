"""``rbc assess``: a folder of holograms or phase images -> per-cell table, overlays,
class ratios per storage day and a Markdown report (Park et al. 2025, section 5.4).

Inputs are found by :mod:`rbclib.study.inputs` (files, dataset folders, storage series, day
maps; the model); one image is read and analysed by :mod:`rbclib.study.image`. A loader thread reconstructs
ahead and a finisher thread measures and writes while the model runs. Results per image are
written atomically under ``OUT/per_image/``; a finished image is skipped on the next run
(resumable); a file that fails is reported and skipped.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from rbclib.core.files import (
    ImageFileError,
    check_output_dir,
    file_sha256,
    output_lock,
    read_json,
    write_csv,
    write_json,
    write_text,
)
from rbclib.core.io import write_instances, write_labels
from rbclib.core.markdown import md_code, md_text, one_line
from rbclib.core.prefetch import prefetched
from rbclib.physics.phase_files import ReconstructorCache
from rbclib.study.image import (
    ImageResult,
    LoadedImage,
    OpticsOptions,
    analyse_image,
    load_phase,
)
from rbclib.study.inputs import ImageJob, discover_inputs, resolve_model
from rbclib.study.segmenter import (
    FAINT_FRACTION,
    MIN_CELL_AREA_UM2,
    RESAMPLE_TOLERANCE,
    Segmenter,
)


@dataclass
class AssessResult:
    """Outputs of :func:`assess`: folder, tables and what happened.

    Attributes
    ----------
    out_dir : pathlib.Path
        The output folder.
    cells : pandas.DataFrame
        One row per cell of every finished image (``cells.csv``).
    summary : rbclib.study.storage_report.StorageSummary or None
        Ratios, indices, measurements and, with ground truth, errors and confusion; None
        when no image could be analysed.
    failures : list of tuple of str
        (file, problem) of each skipped file.
    skipped : list of str
        Images finished by an earlier run and not recomputed.
    processed : list of str
        Images analysed by this run.
    model_dir : pathlib.Path
        The model folder used (resolved).
    model_note : str
        How the model was chosen, as the report says it.
    figures : dict of str to matplotlib.figure.Figure
        The summary figures by name (also saved under ``figures/``).
    """

    out_dir: Path
    cells: pd.DataFrame
    summary: Any
    failures: list[tuple[str, str]]
    skipped: list[str]
    processed: list[str]
    model_dir: Path
    model_note: str
    figures: dict[str, Any] = field(default_factory=dict)


def _fingerprint(job: ImageJob) -> dict[str, Any]:
    """The SHA-256 of each input file of ``job``: a file replaced by other bytes, whatever its
    size and time stamp, is analysed again."""
    files = [p for p in (job.path, job.background, job.truth_labels, job.truth_instances, job.optics_json)
             if p is not None]
    return {str(p): file_sha256(p) for p in files}


def _model_fingerprint(model_path: Path) -> dict[str, Any]:
    """What identifies a model's answers: the SHA-256 of its config and of its weights."""
    config = model_path / "config.json"
    weights = model_path / "best.pt"
    return {"config_sha256": file_sha256(config) if config.is_file() else None,
            "weights_sha256": file_sha256(weights) if weights.is_file() else None}


def _stderr(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg, file=sys.stderr)


def assess(input_path: str | Path, out_dir: str | Path, *, segmenter: Segmenter | None = None,
           day_map: Mapping[str, float] | str | Path | None = None, optics: OpticsOptions | None = None,
           schemes: Mapping[str, Any] | None = None, n_boot: int = 2000, seed: int = 0, target_pp: float = 3.0,
           overlays: bool = True, progress: bool = True, model_note: str | None = None,
           on_error: Callable[[str], None] | None = _stderr, batch_images: int = 2) -> AssessResult:
    """Assess every image under ``input_path`` and write the study to ``out_dir``.

    Writes ``cells.csv`` (one row per cell), ``ratios.csv`` (class ratios with 95 % CI
    per day), ``indices.csv``, ``measurements.csv``, ``report.md`` + ``figures/*.png``,
    ``overlays/<image>.png``, ``labels/`` and ``instances/`` maps and, with ground truth,
    ``confusion.csv`` and ``ratio_errors.csv``. Finished images (``per_image/<image>.json``
    whose input files are unchanged and whose model and segmenter options are the same) are
    not recomputed. A file that fails is reported through ``on_error`` and in ``report.md``,
    then skipped.

    Parameters
    ----------
    input_path : str or pathlib.Path
        An image file, a folder of images, a dataset folder or a storage series
        (:func:`rbclib.study.inputs.discover_inputs`).
    out_dir : str or pathlib.Path
        Output folder; neither the input folder nor inside it.
    segmenter : rbclib.study.segmenter.Segmenter, optional
        The model with its clean-up options (minimum area, fragments, splitting, halo
        trimming, tiles, device); None: the shipped default model with the default options.
        Its weights are loaded only if some image needs them.
    day_map : mapping or str or pathlib.Path, optional
        Storage day of each image (:func:`rbclib.study.inputs.read_day_map`).
    optics : OpticsOptions, optional
        Optics given by the user, over the files' metadata.
    schemes : mapping, optional
        Morphology index schemes (:func:`load_schemes`); None: the built-in ones.
    n_boot, seed : int
        Bootstrap resamples of the confidence intervals, and their seed.
    target_pp : float
        Largest class-ratio error [percentage points] counted as within target, with ground truth.
    overlays : bool
        Write ``overlays/<image>.png``.
    progress : bool
        Show a progress bar.
    model_note : str, optional
        How the model was chosen, for the report; None: the model folder's name.
    on_error : callable, optional
        Called with one line per skipped file (default: printed to stderr); None: silent.
    batch_images : int
        Images segmented together (their tiles share forward passes).

    Returns
    -------
    AssessResult
        Tables, figures, processed, skipped and failed images.

    Raises
    ------
    ValueError
        A bad output folder, ``batch_images`` < 1, or bad inputs or day map.

    Notes
    -----
    One function holds the batch because the reading thread, the model and the finishing
    thread share its state (pending jobs, failures, the output lock); the stages it calls
    are separate functions (:func:`rbclib.study.image.load_phase`,
    :meth:`rbclib.study.segmenter.Segmenter.predict_many`, :func:`_finish`).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir).expanduser()
    source = Path(input_path).expanduser()
    source_dir = source if source.is_dir() else source.parent
    if out.resolve() == source_dir.resolve():
        raise ValueError(f"{out}: the output folder is the input folder; rbc assess would write its labels/, "
                         "instances/ and cells.csv over the input's (e.g. a dataset's ground truth). "
                         "Choose another -o folder")
    if source.is_dir() and out.resolve().is_relative_to(source_dir.resolve()):
        raise ValueError(f"{out}: the output folder lies inside the input folder {source_dir}, so a later run "
                         "would read the outputs as inputs. Choose a folder outside it")
    if batch_images < 1:
        raise ValueError(f"batch_images={batch_images}: at least 1 image per forward pass")
    jobs = discover_inputs(input_path, day_map=day_map)
    check_output_dir(out)
    with output_lock(out, "rbc assess"):
        if segmenter is None:
            model_path, resolved_note = resolve_model(None)
            segmenter = Segmenter(model_path)
            model_note = model_note or resolved_note
        model_path = segmenter.model_dir.resolve()
        model_note = model_note or md_code(segmenter.model_dir)
        if segmenter.trim_halo and segmenter.trim_halo_from_config:
            model_note += ("; halo trimming on, as its config says (trained on a twin with flat-topped discocytes; "
                           "`--no-trim-halo` turns it off)")
        model_key = {"model": str(model_path), **_model_fingerprint(model_path), **segmenter.options()}
        recon = ReconstructorCache()
        failures: list[tuple[str, str]] = []
        skipped: list[str] = []
        pending: list[tuple[ImageJob, dict]] = []
        done_keys: list[tuple[ImageJob, dict]] = []
        for job in jobs:
            try:
                key = {**model_key, "inputs": _fingerprint(job), "optics": (optics or OpticsOptions()).overrides()}
            except OSError as exc:
                failures.append((str(job.path), f"cannot read file ({exc})"))
                continue
            if _finished(out, job, key, overlays=overlays):
                skipped.append(job.image)
                done_keys.append((job, key))
            else:
                pending.append((job, key))
        processed: list[str] = []
        if pending:
            segmenter.load()  # a model that cannot load is one error, not one per image

        def skip(job: ImageJob, problem: str) -> None:
            """Report ``job`` as skipped and make sure it is not marked done."""
            failures.append((str(job.path), problem))
            if on_error is not None:
                on_error(f"rbc assess: skipped {job.path}: {problem}")
            (out / "per_image" / f"{job.image}.json").unlink(missing_ok=True)

        def problem_of(exc: BaseException) -> str:
            return getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}"

        def predict(chunk: list[tuple[ImageJob, dict, LoadedImage]]) -> list[tuple | BaseException]:
            """The model on a chunk at once; if that fails, image by image, so one bad image fails alone."""
            try:
                return segmenter.predict_many([ld.phase for _, _, ld in chunk],
                                              [ld.optics.pixel_size_m for _, _, ld in chunk])
            except Exception:  # noqa: BLE001 - retried image by image below
                outcomes: list[tuple | BaseException] = []
                for _, _, ld in chunk:
                    try:
                        outcomes += segmenter.predict_many([ld.phase], [ld.optics.pixel_size_m])
                    except Exception as exc:  # noqa: BLE001
                        outcomes.append(exc)
                return outcomes

        def finish(job: ImageJob, key: dict, loaded: LoadedImage, handed: list[tuple]) -> str | None:
            """Clean-up, measurement and files of one image; returns its problem, if any. The
            model's output comes in a list that is emptied here, so that its class
            probabilities are freed before the cells are measured (bounded memory)."""
            try:
                segmented = segmenter.finish(handed.pop(), loaded.phase.shape)
                res = analyse_image(job, loaded, segmented, min_area_um2=segmenter.min_area_um2)
            except Exception as exc:  # noqa: BLE001 - a bad file is reported and skipped, never stops the batch
                return problem_of(exc)
            try:
                _write_image_outputs(out, job, res, key=key, overlays=overlays, model_px=segmenter.pixel_size_m,
                                     model_px_source=segmenter.pixel_size_source)
            except OSError as exc:  # disk full, folder made read-only...: this image is not done, the rest go on
                return f"cannot write its results ({exc.strerror or exc})"
            return None

        # A pipeline of three threads: a loader reads and reconstructs the next holograms, the
        # main thread runs the model on ``batch_images`` at a time (their tiles share forward
        # passes), a finisher cleans up, measures and writes the images the model is done with.
        progress_bar = tqdm(total=len(pending), desc="assess", unit="image", disable=not progress)
        finishing: list[tuple[ImageJob, Any]] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="assess-finisher") as finisher:
            chunk: list[tuple[ImageJob, dict, LoadedImage]] = []
            loads = prefetched(lambda item: load_phase(item[0], optics=optics, reconstructors=recon), pending,
                               depth=max(2, batch_images))
            for n, ((job, key), fut) in enumerate(loads, start=1):
                try:
                    chunk.append((job, key, fut.result()))
                except Exception as exc:  # noqa: BLE001 - a bad file is reported and skipped, never stops the batch
                    skip(job, problem_of(exc))
                    progress_bar.update()
                if chunk and (len(chunk) >= batch_images or n == len(pending)):
                    for (job, key, loaded), predicted in zip(chunk, predict(chunk)):
                        if isinstance(predicted, BaseException):
                            skip(job, problem_of(predicted))
                        else:
                            finishing.append((job, finisher.submit(finish, job, key, loaded, [predicted])))
                        progress_bar.update()
                    chunk, predicted = [], None  # the finisher alone holds the model's outputs now
                    # bounded memory: wait for the finisher when it lags more than two chunks behind
                    unfinished = [f for _, f in finishing if not f.done()]
                    for f in unfinished[:max(0, len(unfinished) - 2 * batch_images)]:
                        f.result()
        progress_bar.close()
        for job, fut in finishing:
            problem = fut.result()
            if problem is None:
                processed.append(job.image)
            else:
                skip(job, problem)
        keys = {job.image: key for job, key in [*pending, *done_keys]}
        try:
            return _finish(out, jobs, keys, failures=failures, skipped=skipped, processed=processed,
                           model_path=model_path, model_note=model_note, input_path=Path(input_path),
                           schemes=schemes, n_boot=n_boot, seed=seed, target_pp=target_pp)
        except OSError as exc:  # e.g. the disk filled up: say so, and still name every skipped file
            where = f" ({exc.filename})" if exc.filename else ""
            raise ValueError(
                f"{out}: cannot write the tables and report: {exc.strerror or exc}{where}. The "
                f"{len(processed) + len(skipped)} finished image(s) are kept in per_image/ and a rerun resumes"
                + ("; skipped with problems: " + "; ".join(f"{f} ({why})" for f, why in failures) if failures
                   else "")) from exc


def _finished(out: Path, job: ImageJob, key: dict, *, overlays: bool) -> bool:
    """True when ``job`` was finished earlier with the same inputs, model and optics, and its
    overlay exists if ``overlays`` are wanted now."""
    record = out / "per_image" / f"{job.image}.json"
    if not (record.exists() and (out / "per_image" / f"{job.image}.csv").exists()):
        return False
    if overlays and not (out / "overlays" / f"{job.image}.png").exists():
        return False
    try:
        return read_json(record).get("key") == key
    except ImageFileError:
        return False


def _write_image_outputs(out: Path, job: ImageJob, res: ImageResult, *, key: dict, overlays: bool,
                         model_px: float, model_px_source: str) -> None:
    from PIL import Image

    from rbclib.core.files import atomic_path
    from rbclib.core.labels import overlay_rgb

    write_labels(out / "labels" / f"{job.image}.png", res.labels)
    write_instances(out / "instances" / f"{job.image}.png", res.instances)
    if overlays:
        rgb = overlay_rgb(res.phase, res.labels, instances=res.instances)
        with atomic_path(out / "overlays" / f"{job.image}.png") as tmp:
            # a preview: zlib level 1 encodes in 20 ms instead of 44 ms, 30 % larger
            Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)
    write_csv(out / "per_image" / f"{job.image}.csv", res.cells)
    extra = {"model_pixel_size_m": model_px, "model_pixel_size_source": model_px_source,
             "truth_classes": res.truth_classes,
             "confusion": res.confusion.to_dict(orient="split") if res.confusion is not None else None}
    # Written last: its presence marks the image as finished.
    write_json(out / "per_image" / f"{job.image}.json", {"key": key, **res.info, **extra})


def _finish(out: Path, jobs: list[ImageJob], keys: Mapping[str, dict], *, failures, skipped, processed,
            model_path: Path, model_note: str,
            input_path: Path, schemes, n_boot: int, seed: int, target_pp: float = 3.0) -> AssessResult:
    """Gather every finished image's results and write tables, figures and report.

    An image's results are gathered only when their key is ``keys[image]`` (this run's
    inputs, model and options); any other is reported as a failure, never mixed in.

    Parameters
    ----------
    out : pathlib.Path
        The output folder.
    jobs : list of rbclib.study.inputs.ImageJob
        Every image found under the input.
    keys : mapping of str to dict
        This run's resume key of each image.
    failures : list of tuple of str
        (file, problem) of the files skipped so far; extended here.
    skipped, processed : list of str
        Images finished earlier and images analysed now.
    model_path : pathlib.Path
        The model folder.
    model_note : str
        How the model was chosen, for the report.
    input_path : pathlib.Path
        What the user gave, for the report.
    schemes : mapping or None
        Morphology index schemes (None: the built-in ones).
    n_boot, seed : int
        Bootstrap resamples of the confidence intervals, and their seed.
    target_pp : float, optional
        Largest class-ratio error [percentage points] counted as within target.

    Returns
    -------
    AssessResult
        What :func:`assess` returns.

    Notes
    -----
    It has many parameters because it is the last step of :func:`assess`'s batch: it takes
    that batch's state (jobs, keys, the lists of failed, skipped and processed images) and
    the summary's options, which it passes on to :func:`rbclib.study.storage_report.summarise`.
    It is a function of its own so that :func:`assess` can turn a failed write (OSError)
    into one message that still names every skipped file.
    """
    from rbclib.study import storage_report

    failed = {f for f, _ in failures}
    frames, truth_rows, infos = [], [], []
    confusion = None
    images_by_day: dict[float, list[str]] = {}
    for job in jobs:
        if str(job.path) in failed:
            continue
        rec_path = out / "per_image" / f"{job.image}.json"
        if not rec_path.exists():
            continue
        rec = read_json(rec_path)
        if rec.get("key") != keys.get(job.image):
            failures.append((str(job.path), "its results in per_image/ were written by another run with other "
                                            "inputs, model or options; delete them and run again"))
            continue
        infos.append(rec)
        frame = pd.read_csv(out / "per_image" / f"{job.image}.csv")
        if "image" in frame.columns:
            frame["image"] = job.image  # the name as it is, not as neutralised in the CSV
        frame["day"] = job.day  # a changed day map applies without recomputing
        frames.append(frame)
        images_by_day.setdefault(job.day, []).append(job.image)
        if rec.get("truth_classes") is not None:
            truth_rows += [{"day": job.day, "image": job.image, "class_name": c} for c in rec["truth_classes"]]
        if rec.get("confusion"):
            c = rec["confusion"]
            part = pd.DataFrame(c["data"], index=c["index"], columns=c["columns"])
            confusion = part if confusion is None else confusion.add(part, fill_value=0)
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["image", "day", "cell_id", "class_id", "class_confidence", "class_name"])
    if cells.empty and not infos:
        summary = None
    else:
        truth = pd.DataFrame(truth_rows) if truth_rows else None
        summary = storage_report.summarise(cells, images_by_day=images_by_day, truth_cells=truth,
                                    confusion=confusion.astype(int) if confusion is not None else None,
                                    schemes=schemes, n_boot=n_boot, seed=seed, target_pp=target_pp)
    write_csv(out / "cells.csv", cells)
    figures: dict[str, Any] = {}
    fig_paths: dict[str, str] = {}
    if summary is not None:
        write_csv(out / "ratios.csv", summary.ratios)
        write_csv(out / "indices.csv", summary.indices)
        write_csv(out / "measurements.csv", summary.trends)
        if summary.errors is not None:
            write_csv(out / "ratio_errors.csv", summary.errors)
        if summary.confusion is not None:
            write_csv(out / "confusion.csv", summary.confusion, index=True)
        figures = storage_report.summary_figures(summary)
        for name, fig in figures.items():
            _save_figure(fig, out / "figures" / f"{name}.png")
            fig_paths[name] = f"figures/{name}.png"
    context = storage_report.ReportContext(
        input=f"{md_code(input_path)} ({len(jobs)} image file(s) found)", model=one_line(model_note),
        n_images=len(infos), sources=[one_line(s) for s in _source_lines(infos)],
        failures=[(md_text(f), md_text(p)) for f, p in failures], figures=fig_paths,
        files=_file_descriptions(summary), generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if summary is not None:
        write_text(out / "report.md", storage_report.render_report(summary, context))
    else:
        write_text(out / "report.md", _empty_report(context))
    return AssessResult(out_dir=out, cells=cells, summary=summary, failures=failures, skipped=skipped,
                        processed=processed, model_dir=model_path, model_note=model_note, figures=figures)


def _save_figure(fig: Any, path: Path) -> None:
    from rbclib.core.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _source_lines(infos: list[dict]) -> list[str]:
    if not infos:
        return []
    kinds = pd.Series([i["kind"] for i in infos]).value_counts()
    lines = ["Images: " + ", ".join(f"{n} {k}(s)" for k, n in kinds.items())
             + (" (holograms were reconstructed to phase; aberrations compensated by "
                + ", ".join(sorted({i['compensation'] for i in infos if i['kind'] == 'hologram'})) + ")"
                if "hologram" in kinds else "")]
    seen = {}
    for i in infos:
        o = i["optics"]
        k = (o["wavelength_m"], o["pixel_size_m"], o["n_medium"])
        seen.setdefault(k, i)
    for (wl, px, nm), i in seen.items():
        prov = i["optics_provenance"]
        lines.append(f"Optics: wavelength {wl * 1e9:.1f} nm ({md_text(prov.get('wavelength_m', ''))}); pixel size "
                     f"{px * 1e6:.4f} um ({md_text(prov.get('pixel_size_m', ''))}); medium index {nm:.4f} "
                     f"({md_text(prov.get('n_medium', ''))}).")
        if not any(w in prov.get("pixel_size_m", "") for w in ("metadata", "user", "optics.json")):
            lines.append("**The pixel size is the built-in default, not a value of your microscope: give "
                         "`--pixel-size` (and `--wavelength`) for correct sizes, masses and resampling.**")
    dropped = sum(int(i.get("fragments_dropped", 0)) for i in infos)
    lines.append(f"Fragments: {dropped} object(s) smaller than a plausible cell "
                 f"({infos[0].get('min_cell_area_um2', MIN_CELL_AREA_UM2):g} um^2) or with less than "
                 f"{FAINT_FRACTION:.0%} of the typical cell's mean phase (halo pieces, debris, platelets) were "
                 "dropped and not counted.")
    scales = sorted({round(float(i["scale_to_model"]), 4) for i in infos})
    mpx = infos[0].get("model_pixel_size_m")
    lines.append(f"Resampling: the model works at {mpx * 1e6:.4f} um/px ({infos[0].get('model_pixel_size_source')}); "
                 + ("images were used as they are." if scales == [1.0] or all(abs(s - 1) < RESAMPLE_TOLERANCE for s in scales)
                    else f"images were rescaled by {', '.join(f'{s:g}' for s in scales)} before segmentation and the "
                         "result mapped back to the image grid."))
    return lines


def _file_descriptions(summary: Any) -> dict[str, str]:
    files = {
        "cells.csv": "one row per cell: image, storage day, class, class_confidence (mean model probability of "
                     "the class over the cell, 0-1), position and measurements (area_um2, dry_mass_pg, "
                     "volume_um3, sphericity, ...; volume and sphericity assume the index difference in "
                     "delta_n_assumed)",
        "ratios.csv": "class ratio per storage day (fraction 0-1) with ci_low / ci_high and the CI method",
        "indices.csv": "morphology indices per day with 95 % CI",
        "measurements.csv": "mean / SD / median of each measurement per day and class",
        "overlays/": "each image in grey with the predicted classes coloured (red discocyte, blue spherocyte, "
                     "green echinocyte, yellow stomatocyte) and cell outlines in white",
        "labels/, instances/": "predicted class maps (0-4) and cell id maps as PNG",
        "per_image/": "per-image results; delete a file there to recompute that image",
    }
    if summary is not None and summary.confusion is not None:
        files["confusion.csv"] = "true class x predicted class cell counts"
    if summary is not None and summary.errors is not None:
        files["ratio_errors.csv"] = "estimated minus true class ratio per day, percentage points"
    return files


def _empty_report(context: Any) -> str:
    lines = ["# Stored red blood cell quality report", "", f"Generated {context.generated} by `rbc assess`.", "",
             f"- Input: {context.input}", f"- Model: {context.model}", "",
             "No image could be analysed, so there are no ratios. Problems:", ""]
    lines += [f"- {f}: {p}" for f, p in context.failures] or ["- none reported"]
    return "\n".join(lines) + "\n"


def load_schemes(path: str | Path) -> dict[str, Any]:
    """Morphology-index schemes from a TOML file.

    Parameters
    ----------
    path : str or pathlib.Path
        The TOML file: one table per scheme with a ``weights`` table (class name -> weight
        0..1) and a ``description``.

    Returns
    -------
    dict of str to rbclib.study.storage.IndexScheme
        The schemes by name (:func:`rbclib.study.storage.schemes_from_mapping`).

    Raises
    ------
    rbclib.core.files.ImageFileError
        The file cannot be read or parsed, or a scheme is invalid; the message names the file.
    """
    import tomllib

    from rbclib.study.storage import schemes_from_mapping

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageFileError(path, f"cannot read the index schemes ({exc})") from exc
    try:
        return schemes_from_mapping(data)
    except ValueError as exc:
        raise ImageFileError(path, str(exc)) from exc
