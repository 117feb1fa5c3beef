"""One call from a hologram or phase image to its cells: :func:`analyse` runs what ``rbc
assess`` runs on one image (reconstruction, segmentation with the shipped default model or any
model folder, clean-up, per-cell measurements) and returns a :class:`CellAnalysis`.

    from rbclib import analyse
    result = analyse("hologram.png", pixel_size_m=0.1465e-6)
    result.cells            # one row per cell: class, confidence, area, dry mass, ...
    result.class_shares()   # share of cells per class
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rbclib.core.config import Optics


@dataclass
class CellAnalysis:
    """What :func:`analyse` found in one image.

    Attributes
    ----------
    phase : numpy.ndarray
        (H, W) float32 [rad], medium 0.
    labels : numpy.ndarray
        (H, W) uint8 class map 0..4 (0 medium).
    instances : numpy.ndarray
        (H, W) int32 cell ids 1..N (0 medium).
    cells : pandas.DataFrame
        One row per cell (:func:`rbclib.physics.measure.measure_cells` columns plus
        ``class_name`` and ``class_confidence``).
    optics : rbclib.core.config.Optics
        The optics used, with where each value came from.
    model : pathlib.Path
        The model folder.
    kind : str
        "hologram" (reconstructed) or "phase" (read as radians).
    """

    phase: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    cells: pd.DataFrame
    optics: Optics
    model: Path
    kind: str

    def class_shares(self) -> pd.Series:
        """Share of the cells in each class.

        Returns
        -------
        pandas.Series
            Index: class names, values sum to 1; empty without cells.
        """
        return self.cells["class_name"].value_counts(normalize=True) if len(self.cells) else pd.Series(dtype=float)


@functools.lru_cache(maxsize=4)
def _segmenter(model_dir: Path, device: str | None) -> Any:
    from rbclib.study.segmenter import Segmenter

    return Segmenter(model_dir, device=device)


def analyse(image: str | Path | np.ndarray, *, model: str | Path | None = None, pixel_size_m: float | None = None,
            wavelength_m: float | None = None, n_medium: float | None = None, background: np.ndarray | None = None,
            device: str | None = None) -> CellAnalysis:
    """Cells of one hologram or phase image.

    Parameters
    ----------
    image : str, pathlib.Path or numpy.ndarray
        An image file (hologram or phase TIFF; optics from its metadata where present) or
        an (H, W) array: integer arrays and arrays with an off-axis sideband are holograms,
        other float arrays phase [rad].
    model : str or pathlib.Path, optional
        A model folder, None for the shipped default model, ``"latest"`` for the best model of
        the latest run (:func:`rbclib.study.inputs.resolve_model`).
    pixel_size_m, wavelength_m : float, optional
        Pixel size at the sample [m] and wavelength [m]; override the file's metadata and the defaults.
    n_medium : float, optional
        Refractive index of the medium; overrides the file's metadata and the default.
    background : numpy.ndarray, optional
        Background hologram of an array hologram.
    device : str, optional
        Torch device (None: automatic).

    Returns
    -------
    CellAnalysis
        Phase, class map, instances, per-cell table, optics, model and kind of the image.
    """
    from rbclib.physics.phase_files import ReconstructorCache
    from rbclib.study.image import LoadedImage, OpticsOptions, analyse_image, has_sideband, load_phase
    from rbclib.study.inputs import ImageJob, resolve_model

    model_dir, _ = resolve_model(model)
    options = OpticsOptions(wavelength_m=wavelength_m, pixel_size_m=pixel_size_m, n_medium=n_medium)
    if isinstance(image, np.ndarray):
        job = ImageJob(image="array", path=Path("<array>"))
        overrides = options.overrides()
        optics = Optics().replace(**overrides, provenance={k: "given by the user" for k in overrides}) \
            if overrides else Optics()
        provenance = {k: optics.provenance.get(k, "") for k in ("wavelength_m", "pixel_size_m", "n_medium")}
        if np.issubdtype(image.dtype, np.integer) or has_sideband(image):
            rec = ReconstructorCache()(image, background=background, background_name="given background", optics=optics,
                                       source="array")
            loaded = LoadedImage(rec.phase.astype(np.float32), optics, "hologram",
                                 "background hologram" if background is not None else "numerical", provenance)
        else:
            loaded = LoadedImage(np.asarray(image, np.float32), optics, "phase", "", provenance)
    else:
        path = Path(image).expanduser()
        job = ImageJob(image=path.stem, path=path)
        loaded = load_phase(job, optics=options)
    segmenter = _segmenter(Path(model_dir).resolve(), device)
    segmented = segmenter(loaded.phase, loaded.optics.pixel_size_m)
    result = analyse_image(job, loaded, segmented, min_area_um2=segmenter.min_area_um2)
    return CellAnalysis(phase=result.phase, labels=result.labels, instances=result.instances, cells=result.cells,
                        optics=loaded.optics, model=Path(model_dir), kind=loaded.kind)
