"""Reading, validating and atomically writing holograms, phase images, masks and tables.

Every reader names the file and the problem when input is bad; every writer writes to a
temporary file beside the target and renames it, so an interrupted run never leaves a
half-written file.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rbclib.core.config import Optics
from rbclib.core.files import ImageFileError, atomic_path
from rbclib.core.labels import check_labels

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npz", ".h5", ".hdf5")

# HDF5 / TIFF metadata keys (qpformat's spelling first) -> Optics field.
_META_KEYS = {
    "wavelength": "wavelength_m",
    "wavelength_m": "wavelength_m",
    "pixel size": "pixel_size_m",
    "pixel_size": "pixel_size_m",
    "pixel_size_m": "pixel_size_m",
    "medium index": "n_medium",
    "medium_index": "n_medium",
    "n_medium": "n_medium",
    "n_cell": "n_cell",
    "alpha_m3_per_kg": "alpha_m3_per_kg",
    "numerical aperture": "numerical_aperture",
    "numerical_aperture": "numerical_aperture",
}


@dataclass
class LoadedImage:
    """A 2-D image read from disk.

    Attributes
    ----------
    path : pathlib.Path
        The file it was read from.
    data : numpy.ndarray
        (H, W) array (original dtype for camera images, float32 for phase).
    meta : dict
        Optics found in the file, as Optics field names (SI units).
    background : numpy.ndarray or None
        A background hologram stored in the same file (NPZ ``bg_data``), if any.
    """

    path: Path
    data: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    background: np.ndarray | None = None

    def optics(self, default: Optics | None = None, **overrides: Any) -> Optics:
        """Optics from the file's metadata, then ``overrides`` (non-None), over ``default``.

        Parameters
        ----------
        default : Optics, optional
            The optics the file and overrides change (default ``Optics()``).
        **overrides
            Optics field name -> value; None values are skipped. They win over the metadata.

        Returns
        -------
        Optics
            ``default`` with the file's and the user's values, each with its provenance
            ("metadata of <file>" or "given by the user"); ``default`` itself when none is given.
        """
        base = default or Optics()
        given = {k: v for k, v in self.meta.items() if k in _META_KEYS.values()}
        prov = {k: f"metadata of {self.path.name}" for k in given}
        given.update({k: v for k, v in overrides.items() if v is not None})
        prov.update({k: "given by the user" for k, v in overrides.items() if v is not None})
        return base.replace(**given, provenance=prov) if given else base


def check_image(arr: np.ndarray, path: str | Path, *, allow_constant: bool = False) -> np.ndarray:
    """Check a 2-D, finite, non-empty, non-constant image; return it unchanged.

    Parameters
    ----------
    arr : numpy.ndarray
        The image.
    path : str or pathlib.Path
        Where it came from, named in the error.
    allow_constant : bool, optional
        Accept an image whose pixels are all equal (default False).

    Returns
    -------
    numpy.ndarray
        ``arr`` (as an array), unchanged.

    Raises
    ------
    ImageFileError
        A colour, stacked, empty, non-numeric, complex, non-finite or (unless
        ``allow_constant``) constant image.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        raise ImageFileError(path, f"colour image of shape {arr.shape}; expected one grey-level 2-D image")
    if arr.ndim != 2:
        raise ImageFileError(path, f"expected one 2-D image, got an array of shape {arr.shape}"
                             + (" (a stack? pass one image at a time)" if arr.ndim == 3 else ""))
    if arr.size == 0 or min(arr.shape) < 2:
        raise ImageFileError(path, f"empty image (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ImageFileError(path, f"non-numeric pixel type {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ImageFileError(path, f"complex-valued image ({arr.dtype}): a complex field is not a phase image; "
                             "save its unwrapped phase (e.g. skimage.restoration.unwrap_phase(np.angle(field))) "
                             "as a float TIFF in radians")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ImageFileError(path, f"{n_bad} NaN or infinite pixel(s)")
    if not allow_constant and arr.min() == arr.max():
        raise ImageFileError(path, f"constant image (every pixel is {arr.flat[0]})")
    return arr


def _rgb_to_grey(arr: np.ndarray) -> np.ndarray:
    """Camera images saved as RGB with equal channels (or colour) -> luminance, same dtype kind."""
    rgb = arr[..., :3].astype(np.float32)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return arr[..., 0]
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


MAX_IMAGE_PIXELS = 100_000_000
"""Largest image read (10,000 x 10,000 px, 400 MB as float32); a file declaring more is
refused before its pixels are read (a 1 kB TIFF can declare gigabytes)."""


def _check_size(shape: tuple[int, ...], path: Path) -> None:
    n = int(np.prod(shape, dtype=np.float64)) if len(shape) else 0
    if n > MAX_IMAGE_PIXELS:
        raise ImageFileError(path, f"declares {'x'.join(map(str, shape))} values, more than the "
                             f"{MAX_IMAGE_PIXELS:,} pixels an image may have")


def _npz_member_shape(npz: Any, key: str) -> tuple[int, ...]:
    """Shape of array ``key`` of an open NPZ file, from its header only."""
    with npz.zip.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(reader(fh)[0])


def read_image(path: str | Path, *, dataset: str | None = None, allow_constant: bool = False) -> LoadedImage:
    """Read one 2-D image (hologram or phase) from TIFF, PNG, JPEG, BMP, NPZ or HDF5.

    NPZ: array ``dataset`` or the first of ``data``/``hologram``/``phase``, or the only
    array; ``bg_data``/``background`` becomes ``.background``. HDF5: dataset
    ``dataset`` or the first 2-D dataset; its attributes (qpformat: ``wavelength``,
    ``pixel size``, ``medium index``) become ``.meta``. TIFF: optics written by
    :func:`write_phase` are read back, and the pixel size of OME-TIFF and ImageJ metadata;
    LZW, deflate and zstd compression are read through ``imagecodecs``. Colour PNG, JPEG
    and BMP images are converted to grey with a warning.

    Parameters
    ----------
    path : str or pathlib.Path
        The image file.
    dataset : str, optional
        The NPZ array or HDF5 dataset to read (default: chosen as above).
    allow_constant : bool, optional
        Accept an image whose pixels are all equal (default False).

    Returns
    -------
    LoadedImage
        The checked image (:func:`check_image`), its metadata and any background.

    Raises
    ------
    ImageFileError
        A missing file or a folder, an unsupported type, a file declaring more than
        :data:`MAX_IMAGE_PIXELS` values, a palette image, an ambiguous or missing array,
        any decoder error, or an image :func:`check_image` refuses.

    Notes
    -----
    One branch per file format (TIFF, PNG/JPEG/BMP, NPZ, HDF5), each with its own size check
    before the pixels are decoded and its own metadata, all inside one ``try`` so that any
    decoder's error becomes one :class:`ImageFileError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ImageFileError(path, "file not found")
    if path.is_dir():
        raise ImageFileError(path, "is a folder, expected an image file")
    suffix = path.suffix.lower()
    meta: dict[str, Any] = {}
    background = None
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if tif.series:
                    _check_size(tuple(tif.series[0].shape), path)
                data = tif.asarray()
                desc = tif.pages[0].description if tif.pages else ""
                pixel_size_m = _tiff_pixel_size_m(tif, path)
            meta.update(_meta_from_description(desc))
            if pixel_size_m is not None and "pixel_size_m" not in meta:
                meta["pixel_size_m"] = pixel_size_m
        elif suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            from PIL import Image

            with Image.open(path) as img:
                img.load()
                mode = img.mode
                data = np.asarray(img)
            if data.ndim == 3:
                warnings.warn(f"{path}: colour image ({mode}) converted to grey (ITU-R 601 luma)", stacklevel=2)
                data = _rgb_to_grey(data)
            if mode == "P":
                raise ImageFileError(path, "palette image; masks must be stored as grey-level class maps")
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                key = dataset or next((k for k in ("data", "hologram", "phase") if k in keys), None)
                if key is None:
                    if len(keys) != 1:
                        raise ImageFileError(path, f"cannot tell which array is the image among {keys}; name it")
                    key = keys[0]
                if key not in keys:
                    raise ImageFileError(path, f"no array {key!r} (has {keys})")
                _check_size(_npz_member_shape(npz, key), path)
                data = npz[key]
                for bkey in ("bg_data", "background"):
                    if bkey in keys:
                        _check_size(_npz_member_shape(npz, bkey), path)
                        background = npz[bkey]
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as h5:
                name = dataset or _first_2d_dataset(h5, path)
                if name is None:
                    raise ImageFileError(path, "no 2-D dataset in the HDF5 file")
                if name not in h5:
                    raise ImageFileError(path, f"no dataset {name!r} in the HDF5 file")
                _check_size(tuple(h5[name].shape), path)
                data = h5[name][()]
                attrs = {**dict(h5.attrs), **dict(h5[name].attrs)}
            for key, value in attrs.items():
                if key in _META_KEYS:
                    meta[_META_KEYS[key]] = float(value)
        else:
            raise ImageFileError(path, f"unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    except ImageFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error becomes a named-file error
        raise ImageFileError(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    data = check_image(data, path, allow_constant=allow_constant)
    if background is not None:
        background = check_image(background, f"{path} [background]")
    return LoadedImage(path=path, data=data, meta=meta, background=background)


def _first_2d_dataset(h5: Any, path: Path) -> str | None:
    """The first 2-D dataset of an HDF5 file; a warning names it when there are several."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if hasattr(obj, "shape") and len(obj.shape) == 2:
            found.append(name)

    h5.visititems(visit)
    if len(found) > 1:
        warnings.warn(f"{path}: {len(found)} 2-D datasets {found[:5]}; using the first, {found[0]!r} "
                      "(read_image(..., dataset=NAME) picks another)", stacklevel=3)
    return found[0] if found else None


_LENGTH_UNITS_M = {"m": 1.0, "mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3, "cm": 1e-2, "centimeter": 1e-2,
                   "um": 1e-6, "\u00b5m": 1e-6, "\u03bcm": 1e-6, "micron": 1e-6, "microns": 1e-6,
                   "micrometer": 1e-6, "micrometre": 1e-6, "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9}


def _length_m(value: float, unit: str) -> float | None:
    """``value`` in ``unit`` (a spelling of m, mm, cm, um, nm) as metres; None for an unknown unit."""
    factor = _LENGTH_UNITS_M.get(unit.strip().lower().replace("\\u00b5", "\u00b5"))
    return None if factor is None or not np.isfinite(value) or value <= 0 else value * factor


def _tiff_pixel_size_m(tif: Any, path: Path) -> float | None:
    """The sample pixel size [m] an OME-TIFF (``PhysicalSizeX``/``Y``) or an ImageJ TIFF
    (``unit`` with the X/Y resolution tags) declares; None when the file declares none.

    Plain TIFF resolution tags (dots per inch or cm, 72 dpi by default) say nothing about the
    sample and are not read. Non-square pixels give a warning and the X size.
    """
    sizes: tuple[float | None, float | None] = (None, None)
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        pixels = next((el for el in ET.fromstring(tif.ome_metadata).iter() if el.tag.endswith("}Pixels")
                       or el.tag == "Pixels"), None)
        if pixels is not None:
            sizes = tuple(_length_m(float(pixels.get(f"PhysicalSize{ax}")), pixels.get(f"PhysicalSize{ax}Unit", "\u00b5m"))
                          if pixels.get(f"PhysicalSize{ax}") else None for ax in "XY")
    elif tif.is_imagej and tif.imagej_metadata and tif.imagej_metadata.get("unit"):
        unit, tags = str(tif.imagej_metadata["unit"]), tif.pages[0].tags

        def size(tag: str) -> float | None:
            if tag not in tags:
                return None
            num, den = tags[tag].value
            return _length_m(den / num, unit) if num else None

        sizes = (size("XResolution"), size("YResolution"))
    x, y = sizes
    if x is not None and y is not None and abs(x - y) > 0.01 * x:
        warnings.warn(f"{path}: non-square pixels ({x * 1e6:.4g} x {y * 1e6:.4g} um); using the X size", stacklevel=3)
    return x if x is not None else y


def _meta_from_description(desc: str) -> dict[str, Any]:
    try:
        info = json.loads(desc)
    except (TypeError, ValueError):
        return {}
    if not isinstance(info, dict):
        return {}
    optics = info.get("optics", info)
    return {_META_KEYS[k]: float(v) for k, v in optics.items() if k in _META_KEYS and isinstance(v, (int, float))}


def write_phase(path: str | Path, phase: np.ndarray, optics: Optics | None = None) -> None:
    """Write a float32 phase map [rad] as TIFF, with the optics as JSON in its description.

    Parameters
    ----------
    path : str or pathlib.Path
        The TIFF file to write.
    phase : numpy.ndarray
        (H, W) phase [rad]; written as float32.
    optics : Optics, optional
        The optics to record (default: none recorded).

    Raises
    ------
    ImageFileError
        ``phase`` is not a finite, non-empty 2-D image.
    """
    import tifffile

    arr = np.asarray(phase, dtype=np.float32)
    check_image(arr, path, allow_constant=True)
    desc = json.dumps({"units": "rad", "optics": optics.to_dict() if optics else {}})
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, description=desc, metadata=None)


def read_phase(path: str | Path) -> LoadedImage:
    """Read a phase image [rad] as float32 (any supported format).

    Parameters
    ----------
    path : str or pathlib.Path
        The image file; a constant image is accepted.

    Returns
    -------
    LoadedImage
        The image, ``data`` (H, W) float32 phase [rad].
    """
    img = read_image(path, allow_constant=True)
    img.data = img.data.astype(np.float32, copy=False)
    return img


def write_labels(path: str | Path, labels: np.ndarray, *, allow_ignore: bool = False) -> None:
    """Write a uint8 class map as PNG.

    Parameters
    ----------
    path : str or pathlib.Path
        The PNG file to write.
    labels : numpy.ndarray
        (H, W) class map, values 0..4.
    allow_ignore : bool, optional
        Also accept ``rbclib.core.labels.IGNORE`` (default False).

    Raises
    ------
    ValueError
        ``labels`` is not 2-D or holds other values.
    """
    from PIL import Image

    arr = check_labels(labels, source=str(path), allow_ignore=allow_ignore)
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode="L").save(tmp, format="PNG")


def read_labels(path: str | Path, *, allow_ignore: bool = False) -> np.ndarray:
    """Read a class map PNG.

    Parameters
    ----------
    path : str or pathlib.Path
        The PNG file.
    allow_ignore : bool, optional
        Also accept ``rbclib.core.labels.IGNORE`` (training pairs; default False).

    Returns
    -------
    numpy.ndarray
        (H, W) uint8 class map.

    Raises
    ------
    ValueError
        Values outside 0..4 (or ``IGNORE`` where ``allow_ignore``); the error names the file.
    """
    img = read_image(path, allow_constant=True)
    return check_labels(img.data, source=str(path), allow_ignore=allow_ignore)


def write_instances(path: str | Path, instances: np.ndarray) -> None:
    """Write an instance map (0 background, ids 1..65535) as uint16 PNG.

    Parameters
    ----------
    path : str or pathlib.Path
        The PNG file to write.
    instances : numpy.ndarray
        (H, W) integer instance map.

    Raises
    ------
    ImageFileError
        The map is not 2-D or holds ids outside 0..65535.
    """
    from PIL import Image

    arr = np.asarray(instances)
    if arr.ndim != 2:
        raise ImageFileError(path, f"instance map must be 2-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ImageFileError(path, "instance ids must lie in 0..65535")
    with atomic_path(path) as tmp:
        Image.fromarray(arr.astype(np.uint16)).save(tmp, format="PNG")


def read_instances(path: str | Path) -> np.ndarray:
    """Read an instance map PNG as int32.

    Parameters
    ----------
    path : str or pathlib.Path
        The PNG file.

    Returns
    -------
    numpy.ndarray
        (H, W) int32 instance map, 0 background.
    """
    return read_image(path, allow_constant=True).data.astype(np.int32)


def write_camera_image(path: str | Path, image: np.ndarray) -> None:
    """Write a camera image (uint8 or uint16) as PNG or TIFF, by suffix.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to write: TIFF for ``.tif``/``.tiff``, PNG otherwise.
    image : numpy.ndarray
        (H, W) uint8 or uint16 image.

    Raises
    ------
    ImageFileError
        ``image`` is neither uint8 nor uint16.
    """
    arr = np.asarray(image)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageFileError(path, f"camera images must be uint8 or uint16, got {arr.dtype}")
    with atomic_path(path) as tmp:
        if Path(path).suffix.lower() in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, arr)
        else:
            from PIL import Image

            Image.fromarray(arr).save(tmp, format="PNG")


def list_images(folder: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files of a folder, sorted by name (hidden files skipped).

    Parameters
    ----------
    folder : str or pathlib.Path
        The folder (not searched recursively).
    suffixes : tuple of str, optional
        Lower-case suffixes accepted (default :data:`IMAGE_SUFFIXES`).

    Returns
    -------
    list of pathlib.Path
        The image files.

    Raises
    ------
    ImageFileError
        ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFileError(folder, "folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
