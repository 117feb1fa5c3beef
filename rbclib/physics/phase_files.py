"""Holograms on disk -> phase files (``rbc reconstruct``, stage 01): :func:`reconstruct_files`
reconstructs files and folders with one :class:`rbclib.physics.holography.Reconstructor` per
set-up (going past bad files), :func:`reconstruction_errors` is 01's error table against the
twin's truth and :func:`figure_reconstruction` its figure."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from rbclib.core.config import Optics
from rbclib.core.files import ImageFileError, check_output_dir, write_json
from rbclib.core.io import LoadedImage, list_images, read_image, write_phase
from rbclib.physics.holography import Reconstructor
from rbclib.physics.reconstruction_result import Reconstruction
from rbclib.physics.sideband import spectrum_image

if TYPE_CHECKING:
    import pandas as pd


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ImageFileError(p, "folder holds no hologram files")
            files.extend(found)
        else:
            files.append(p)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ImageFileError(f, f"two inputs share the name {f.stem!r} ({stems[f.stem]}); outputs would collide")
        stems[f.stem] = f
    if not files:
        raise ValueError("no holograms given")
    return files


def background_file(background: str | Path | None, stem: str) -> Path | None:
    """The background hologram of the hologram named ``stem``.

    Parameters
    ----------
    background : str or pathlib.Path or None
        One background hologram file for every hologram, a folder holding one per hologram
        under the same stem, or None.
    stem : str
        The hologram's file name without its suffix.

    Returns
    -------
    pathlib.Path or None
        The file, or None when ``background`` is None.

    Raises
    ------
    ImageFileError
        ``background`` does not exist, or its folder holds no file named ``stem``.
    """
    if background is None:
        return None
    background = Path(background)
    if background.is_file():
        return background
    if not background.is_dir():
        raise ImageFileError(background, "background hologram not found")
    found = [p for p in list_images(background) if p.stem == stem]
    if not found:
        raise ImageFileError(background, f"no background hologram named {stem}.* for hologram {stem!r}")
    return found[0]


def hologram_background(image: LoadedImage, background: str | Path | None) -> tuple[np.ndarray | None, str]:
    """The background hologram that goes with a hologram read from disk.

    Parameters
    ----------
    image : rbclib.core.io.LoadedImage
        The hologram as read by :func:`rbclib.core.io.read_image`.
    background : str or pathlib.Path or None
        A background file or folder (:func:`background_file`); None: the hologram file's
        own background (NPZ ``bg_data``) if it has one.

    Returns
    -------
    background : numpy.ndarray or None
        (H, W) background hologram, or None (numerical compensation).
    name : str
        Where it came from, for messages ("" when there is none).
    """
    found = background_file(background, image.path.stem)
    if found is not None:
        return read_image(found).data, str(found)
    if image.background is not None:
        return image.background, f"{image.path} [background]"
    return None, ""


class ReconstructorCache:
    """One :class:`rbclib.physics.holography.Reconstructor` per set-up (hologram shape, optics,
    with or without a background hologram): the sideband, filter and sign found on one hologram
    serve the next (re-detected only if the sideband moved).

    Parameters
    ----------
    shared_background : rbclib.core.io.LoadedImage, optional
        One background hologram for every hologram: prepared once by each Reconstructor
        instead of with every hologram.
    refocus : float or str, optional
        Refocus distance [m], "auto", or None (no refocusing).
    max_size : int, optional
        Set-ups kept; the cache is emptied when a new one would exceed it.
    **options
        Further options of :class:`rbclib.physics.holography.Reconstructor`.
    """

    def __init__(self, *, shared_background: LoadedImage | None = None, refocus: float | str | None = None,
                 max_size: int = 8, **options: Any) -> None:
        self.shared_background, self.refocus, self.max_size, self.options = shared_background, refocus, max_size, options
        self._cache: dict[tuple, Reconstructor] = {}

    def __call__(self, hologram: np.ndarray, *, optics: Optics, background: np.ndarray | None = None,
                 background_name: str = "", source: str = "") -> Reconstruction:
        """Reconstruct one hologram with the Reconstructor of its set-up.

        Parameters
        ----------
        hologram : numpy.ndarray
            (H, W) camera hologram.
        optics : rbclib.core.config.Optics
            Its optics.
        background : numpy.ndarray, optional
            (H, W) background hologram of this hologram (ignored with a shared background).
        background_name, source : str
            Names of the background and the hologram, for messages.

        Returns
        -------
        rbclib.physics.reconstruction_result.Reconstruction
            Phase [rad] and what the reconstruction found.
        """
        shared = self.shared_background
        if shared is not None and shared.data.shape != hologram.shape:
            raise ImageFileError(shared.path, f"background hologram of shape {shared.data.shape} does not match "
                                 f"the shape {hologram.shape} of {source}")
        has_background = shared is not None or background is not None
        key = (hologram.shape, repr(sorted(optics.to_dict().items())), has_background)
        if key not in self._cache:
            if len(self._cache) >= self.max_size:
                self._cache.clear()
            self._cache[key] = Reconstructor(hologram.shape, optics=optics, refocus=self.refocus,
                                             background=None if shared is None else shared.data,
                                             background_source=str(shared.path) if shared is not None else background_name,
                                             **self.options)
        if shared is not None:
            background, background_name = None, str(shared.path)
        return self._cache[key](hologram, background=background, source=source, background_source=background_name)


def reconstruct_files(paths: Iterable[str | Path], out_dir: str | Path, *, background: str | Path | None = None,
                      optics: Optics | None = None, refocus: float | str | None = None, progress: bool = True,
                      optics_overrides: dict[str, float] | None = None,
                      on_error: Callable[[Path, str], None] | None = None, overwrite: bool = False,
                      **options: Any) -> list[Path]:
    """Reconstruct hologram files (or folders of them) into ``out_dir/<stem>.tif``.

    Writes float32 phase TIFFs (optics in their description) and ``out_dir/optics.json``
    (optics of the first file). Holograms of one shape and optics share one
    :class:`Reconstructor` (sideband, filter and sign found once).

    Parameters
    ----------
    paths : iterable of str or pathlib.Path
        Hologram files or folders of them.
    out_dir : str or pathlib.Path
        The output folder, checked before any work (:func:`rbclib.core.files.check_output_dir`).
    background : str or pathlib.Path, optional
        One background hologram file for all holograms, or a folder holding one per hologram
        under the same stem; without it a file's own background (NPZ ``bg_data``) is used,
        else numerical compensation.
    optics : rbclib.core.config.Optics, optional
        Default optics, replaced field by field by the file's metadata and then by
        ``optics_overrides``.
    refocus : float or str, optional
        Refocus distance [m], "auto", or None (no refocusing).
    progress : bool, optional
        Show a progress bar (default True).
    optics_overrides : dict of str to float, optional
        Optics field -> value, e.g. ``{"wavelength_m": 633e-9}``.
    on_error : callable, optional
        Called with (file, problem) for a hologram that cannot be reconstructed, and the
        batch goes on (default None: the first such file raises).
    overwrite : bool, optional
        Replace existing phase files of the same names (default False: refused).
    **options
        Those of :class:`Reconstructor`.

    Returns
    -------
    list of pathlib.Path
        The written phase paths.

    Raises
    ------
    ValueError
        An output would replace an input hologram, or existing phase files of the same names
        are found without ``overwrite`` (both before any work).
    rbclib.core.files.ImageFileError
        The background is not found, or (without ``on_error``) a hologram cannot be read.

    Notes
    -----
    The parameters are ``rbc reconstruct``'s options, which the command passes one to one
    (notebook 01 passes the same ones), plus the Reconstructor's options passed through.
    """
    from tqdm.auto import tqdm

    check_output_dir(out_dir)
    files = _expand(paths)
    inputs = {f.resolve() for f in files}
    clash = [f for f in files if (Path(out_dir) / f"{f.stem}.tif").resolve() in inputs]
    if clash:
        raise ValueError(f"{out_dir}: writing {clash[0].stem}.tif there would replace the input hologram {clash[0]}; "
                         "choose another output folder")
    taken = [Path(out_dir) / f"{f.stem}.tif" for f in files if (Path(out_dir) / f"{f.stem}.tif").exists()]
    if taken and not overwrite:
        raise ValueError(f"{out_dir}: already holds {len(taken)} of the phase images to write (e.g. {taken[0].name}); "
                         "choose another folder, or overwrite them (overwrite=True, rbc reconstruct --overwrite)")
    if background is not None and not Path(background).exists():
        raise ImageFileError(background, "background hologram not found")
    shared = read_image(background) if background is not None and Path(background).is_file() else None
    out_dir = Path(out_dir)
    reconstruct = ReconstructorCache(shared_background=shared, refocus=refocus, max_size=len(files), **options)
    written: list[Path] = []
    first_optics: Optics | None = None
    for f in tqdm(files, desc="reconstruct", disable=not progress):
        try:
            img = read_image(f)
            opt = img.optics(default=optics, **(optics_overrides or {}))
            bg, bg_name = (None, "") if shared is not None else hologram_background(img, background)
            rec = reconstruct(img.data, optics=opt, background=bg, background_name=bg_name, source=str(f))
            out = out_dir / f"{f.stem}.tif"
            write_phase(out, rec.phase, opt)
        except (ImageFileError, ValueError) as exc:
            if on_error is None:
                raise
            on_error(f, getattr(exc, "problem", None) or str(exc))
            continue
        written.append(out)
        first_optics = first_optics or opt
    if first_optics is not None:
        write_json(out_dir / "optics.json", first_optics.to_dict())
    return written


def reconstruction_errors(phase_paths: Iterable[str | Path], truth_dir: str | Path) -> "pd.DataFrame":
    """Error of reconstructed phase images against a simulated dataset's true phase.

    Parameters
    ----------
    phase_paths : iterable of str or pathlib.Path
        Reconstructed ``<stem>.tif`` files.
    truth_dir : str or pathlib.Path
        The dataset folder (its ``phase/<stem>.tif`` in-focus truth and
        ``labels/<stem>.png`` cell masks).

    Returns
    -------
    pandas.DataFrame
        One row per image: ``image``, ``rmse_cells_rad``, ``rmse_background_rad``,
        ``max_abs_error_rad``, ``cell_fraction``.

    Raises
    ------
    rbclib.core.files.ImageFileError
        A phase image's shape differs from its truth.
    """
    import pandas as pd

    truth_dir = Path(truth_dir)
    rows = []
    for path in map(Path, phase_paths):
        phase = read_image(path).data
        truth = read_image(truth_dir / "phase" / path.name).data
        cells = read_image(truth_dir / "labels" / f"{path.stem}.png", allow_constant=True).data > 0
        if phase.shape != truth.shape:
            raise ImageFileError(path, f"shape {phase.shape} differs from its truth {truth.shape}")
        err = phase.astype(np.float64) - truth
        rows.append({"image": path.stem, "rmse_cells_rad": float(np.sqrt(np.mean(err[cells] ** 2))),
                     "rmse_background_rad": float(np.sqrt(np.mean(err[~cells] ** 2))),
                     "max_abs_error_rad": float(np.abs(err).max()), "cell_fraction": float(cells.mean())})
    return pd.DataFrame(rows)


def figure_reconstruction(hologram: np.ndarray, rec: Reconstruction, *, true_phase: np.ndarray | None = None,
                          title: str = "") -> "Any":
    """Figure: hologram, spectrum with the sideband and filter marked, phase, and the
    error against ``true_phase`` when given.

    Parameters
    ----------
    hologram : numpy.ndarray
        (H, W) camera hologram.
    rec : rbclib.physics.reconstruction_result.Reconstruction
        Its reconstruction (phase [rad], sideband and filter radius [cycles/px]).
    true_phase : numpy.ndarray, optional
        (H, W) true phase [rad]; adds an error panel.
    title : str, optional
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (not saved).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    n = 4 if true_phase is not None else 3
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), constrained_layout=True)
    axes[0].imshow(hologram, cmap="gray")
    axes[0].set_title("hologram")
    spec = spectrum_image(hologram)
    h, w = spec.shape
    axes[1].imshow(spec, cmap="magma", extent=(-0.5, 0.5, 0.5, -0.5), vmin=np.percentile(spec, 50))
    fy, fx = rec.sideband
    axes[1].add_patch(Circle((fx, fy), rec.filter_radius, fill=False, color="cyan", lw=1.5))
    axes[1].plot([fx], [fy], "c+", ms=10)
    axes[1].set_title("spectrum, sideband used")
    axes[1].set_xlabel("fx [cycles/px]")
    axes[1].set_ylabel("fy [cycles/px]")
    im = axes[2].imshow(rec.phase, cmap="viridis")
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="phase [rad]")
    axes[2].set_title(f"phase (background std {rec.background_std:.3f} rad)")
    if true_phase is not None:
        err = rec.phase - true_phase
        lim = float(np.percentile(np.abs(err), 99.5)) or 1.0
        im = axes[3].imshow(err, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=axes[3], shrink=0.8, label="error [rad]")
        axes[3].set_title("phase - true phase")
    for ax in axes[[0, 2] + ([3] if n == 4 else [])]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig
