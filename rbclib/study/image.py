"""One image of ``rbc assess``: hologram or phase map -> phase at known optics
(:func:`load_phase`), then segmentation and per-cell measurements (:func:`analyse_image`).

Per image: integer-typed images are camera holograms and are reconstructed
(:class:`rbclib.physics.phase_files.ReconstructorCache`), float images are phase maps [rad]; the phase
is resampled to the model's pixel size, segmented by tiled inference
(:func:`rbclib.seg.infer.predict_images`, several images per forward pass), mapped back to the
image grid and measured (:func:`rbclib.physics.measure.measure_cells`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rbclib.core.config import Optics
from rbclib.core.files import ImageFileError
from rbclib.core.io import read_image, read_instances, read_labels
from rbclib.core.labels import CLASS_NAMES, instance_classes, instances_from_labels
from rbclib.physics.phase_files import ReconstructorCache, hologram_background
from rbclib.study.inputs import ImageJob


@dataclass
class OpticsOptions:
    """Optics given on the command line (None: from the file's metadata, else defaults).

    Attributes
    ----------
    wavelength_m : float or None
        Illumination wavelength [m].
    pixel_size_m : float or None
        Pixel size at the sample [m].
    n_medium : float or None
        Refractive index of the medium.
    numerical_aperture : float or None
        Objective NA.
    """

    wavelength_m: float | None = None
    pixel_size_m: float | None = None
    n_medium: float | None = None
    numerical_aperture: float | None = None

    def overrides(self) -> dict[str, float]:
        """The values given, as Optics overrides.

        Returns
        -------
        dict of str to float
            Optics field name -> value, for the fields that are not None.
        """
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class ImageResult:
    """What :func:`analyse_image` found: cells table, maps (input grid), phase and facts.

    Attributes
    ----------
    cells : pandas.DataFrame
        One row per cell (:func:`rbclib.physics.measure.measure_cells` plus ``image``, ``day``,
        ``class_confidence`` and ``delta_n_assumed``).
    phase : numpy.ndarray
        (H, W) float32 phase [rad].
    labels : numpy.ndarray
        (H, W) uint8 class map on the input grid.
    instances : numpy.ndarray
        (H, W) int32 instance map on the input grid.
    info : dict
        Facts of the image: file, day, kind, compensation, shape, optics and their
        provenance, scale to the model, cell and fragment counts, minimum cell area.
    truth_classes : list of str or None
        Class names of the true cells, when ground truth exists.
    confusion : pandas.DataFrame or None
        Per-cell confusion counts (:func:`rbclib.seg.metrics.cell_confusion`), when ground
        truth exists.
    """

    cells: pd.DataFrame
    phase: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    info: dict[str, Any]
    truth_classes: list[str] | None = None
    confusion: pd.DataFrame | None = None


SIDEBAND_PROBE_PX = 1024
"""Side of the central square of a floating-point image that :func:`has_sideband` searches."""


def has_sideband(image: np.ndarray) -> bool:
    """Whether ``image`` is an off-axis hologram: its spectrum holds a sideband
    (:func:`rbclib.physics.sideband.find_sideband`).

    Decides, for floating-point files, between a hologram and a phase map; integer files are
    camera images, so holograms, anyway. Fringes fill a hologram, so the central
    :data:`SIDEBAND_PROBE_PX` square decides: an 8000 px image costs no more memory than a
    1024 px one.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) image.

    Returns
    -------
    bool
        True when a sideband is found.
    """
    from rbclib.physics.sideband import find_sideband

    h, w = image.shape[:2]
    y0, x0 = max(0, (h - SIDEBAND_PROBE_PX) // 2), max(0, (w - SIDEBAND_PROBE_PX) // 2)
    try:
        find_sideband(image[y0:y0 + SIDEBAND_PROBE_PX, x0:x0 + SIDEBAND_PROBE_PX])
    except ImageFileError:
        return False
    return True


PHASE_LIMIT_RAD = 60.0
"""A floating-point image with larger values is not a phase map: a spherocyte 4.3 um high at
an index step of 0.1 and 405 nm reaches about 6.7 rad, three stacked cells about 20; camera
counts (0-255 or 0-65535) stored as float go far beyond."""


@dataclass
class LoadedImage:
    """An input file as phase.

    Attributes
    ----------
    phase : numpy.ndarray
        (H, W) float32 phase [rad].
    optics : rbclib.core.config.Optics
        Its optics.
    kind : str
        "hologram" or "phase".
    compensation : str
        How a hologram's background was compensated ("background hologram", "numerical" or
        "numerical (its background hologram was refused)"); "" for a phase map.
    provenance : dict of str to str
        Where each optics value (wavelength, pixel size, medium index) came from.
    """

    phase: np.ndarray
    optics: Optics
    kind: str
    compensation: str
    provenance: dict[str, str]


def load_phase(job: ImageJob, *, optics: OpticsOptions | None = None,
               reconstructors: ReconstructorCache | None = None) -> LoadedImage:
    """Read ``job``'s file and reconstruct it if it is a hologram.

    Parameters
    ----------
    job : rbclib.study.inputs.ImageJob
        The image; its ``optics_json`` gives the default optics, its ``background`` the
        background hologram.
    optics : OpticsOptions, optional
        Optics given on the command line; they win over the file's metadata.
    reconstructors : rbclib.physics.phase_files.ReconstructorCache, optional
        Reconstructors shared across images (default: a new cache).

    Returns
    -------
    LoadedImage
        The phase, its optics and how it was obtained. A background hologram refused as not
        empty is warned about and the hologram compensated numerically instead.

    Raises
    ------
    rbclib.core.files.ImageFileError, ValueError
        Bad input, e.g. a floating-point image with values beyond :data:`PHASE_LIMIT_RAD`
        and no sideband.
    """
    overrides = (optics or OpticsOptions()).overrides()
    img = read_image(job.path)
    default = None
    if job.optics_json is not None:
        default = Optics.from_json(job.optics_json)
        default = default.replace(**{k: getattr(default, k) for k in ("wavelength_m", "pixel_size_m", "n_medium")},
                                  provenance={k: f"{job.optics_json}" for k in ("wavelength_m", "pixel_size_m", "n_medium")})
    opt = img.optics(default, **overrides)
    provenance = {k: opt.provenance.get(k, "") for k in ("wavelength_m", "pixel_size_m", "n_medium")}
    if np.issubdtype(img.data.dtype, np.integer) or img.data.dtype == bool or has_sideband(img.data):
        from rbclib.physics.holography import BackgroundNotEmpty

        bg, bg_name = hologram_background(img, job.background)
        reconstruct = reconstructors or ReconstructorCache()
        compensation = "background hologram" if bg is not None else "numerical"
        try:
            rec = reconstruct(img.data, background=bg, background_name=bg_name, optics=opt, source=str(job.path))
        except BackgroundNotEmpty as exc:
            warnings.warn(f"{exc}; {job.path} is compensated numerically instead", stacklevel=2)
            rec = reconstruct(img.data, background=None, background_name="", optics=opt, source=str(job.path))
            compensation = "numerical (its background hologram was refused)"
        return LoadedImage(rec.phase.astype(np.float32), opt, "hologram", compensation, provenance)
    phase = np.asarray(img.data, dtype=np.float32)  # no copy of a float32 file
    top = float(np.nanmax(np.abs(phase))) if phase.size else 0.0
    if top > PHASE_LIMIT_RAD:
        raise ImageFileError(job.path, f"a floating-point image with values up to {top:.4g} and no off-axis "
                             f"sideband: neither a phase map in radians (no cell reaches {PHASE_LIMIT_RAD:g} rad) "
                             "nor a hologram")
    return LoadedImage(phase, opt, "phase", "", provenance)


def analyse_image(job: ImageJob, loaded: LoadedImage, segmented: tuple, *, min_area_um2: float) -> ImageResult:
    """Per-cell table of a segmented image and, when ground truth exists, its per-cell confusion counts.

    Parameters
    ----------
    job : rbclib.study.inputs.ImageJob
        The image (its id, day and ground truth files).
    loaded : LoadedImage
        Its phase and optics (:func:`load_phase`).
    segmented : tuple
        A :meth:`rbclib.study.segmenter.Segmenter.__call__` result.
    min_area_um2 : float
        Smallest cell area [um^2] the clean-up used, recorded in ``info``.

    Returns
    -------
    ImageResult
        Cells, maps and facts; with ground truth also the true classes and confusion counts.

    Raises
    ------
    rbclib.core.files.ImageFileError
        The ground truth's shape does not match the image.
    """
    from rbclib.physics.measure import measure_cells

    phase, opt = loaded.phase, loaded.optics
    labels, instances, conf, scale, dropped = segmented
    cells = measure_cells(phase, instances, optics=opt, labels=labels)
    cells = cells[cells["class_id"] > 0].reset_index(drop=True)
    cells.insert(0, "image", job.image)
    cells.insert(1, "day", job.day)
    cells.insert(4, "class_confidence", [conf.get(int(i), math.nan) for i in cells["cell_id"]])
    cells["delta_n_assumed"] = opt.delta_n
    info = {"image": job.image, "file": str(job.path), "day": job.day, "kind": loaded.kind,
            "compensation": loaded.compensation, "shape": list(phase.shape),
            "optics": {k: getattr(opt, k) for k in ("wavelength_m", "pixel_size_m", "n_medium")},
            "optics_provenance": loaded.provenance, "scale_to_model": scale, "n_cells": int(len(cells)),
            "fragments_dropped": int(dropped), "min_cell_area_um2": min_area_um2}
    result = ImageResult(cells=cells, phase=phase, labels=labels, instances=instances, info=info)
    if job.truth_labels is not None:
        from rbclib.seg.metrics import cell_confusion

        t_lab = read_labels(job.truth_labels)
        t_inst = read_instances(job.truth_instances) if job.truth_instances is not None else None
        if t_lab.shape != labels.shape:
            raise ImageFileError(job.truth_labels, f"ground truth of shape {t_lab.shape} does not match the image "
                                 f"{labels.shape}")
        result.confusion, _ = cell_confusion(labels, t_lab, true_instances=t_inst, pred_instances=instances)
        if t_inst is None:
            t_inst = instances_from_labels(t_lab)
        result.truth_classes = [CLASS_NAMES[c] for c in instance_classes(t_lab, t_inst).values() if c > 0]
    return result
