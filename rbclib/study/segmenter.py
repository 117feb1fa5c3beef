"""A trained segmentation model applied to phase maps of any pixel size (``rbc assess``):
resampling to the model's pixel size, tiled inference, then the clean-up of its instances
(fragments, faint objects, halo, touching cells) and per-cell class confidence."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rbclib.core.config import PIXEL_SIZE_RANGE_M, Optics
from rbclib.core.labels import instance_classes, instances_from_labels
from rbclib.seg.watershed import split_touching

RESAMPLE_TOLERANCE = 0.01  # relative pixel-size difference below which no resampling is done


def resample(image: np.ndarray, scale: float, *, order: int) -> np.ndarray:
    """Rescale a 2-D image by ``scale``.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) phase, label or instance map.
    scale : float
        Output size / input size.
    order : int
        Interpolation order: 1 (with anti-aliasing when shrinking) for phase, 0 for label /
        instance maps.

    Returns
    -------
    numpy.ndarray
        The rescaled image in ``image``'s dtype; the input itself when |scale - 1| < 1 %
        (:data:`RESAMPLE_TOLERANCE`).
    """
    from skimage.transform import rescale

    if abs(scale - 1.0) < RESAMPLE_TOLERANCE:
        return image
    out = rescale(image, scale, order=order, preserve_range=True, anti_aliasing=(order > 0 and scale < 1),
                  mode="edge" if order > 0 else "constant")
    return out.astype(image.dtype, copy=False)


def check_resampled_size(shape: tuple[int, ...], scale: float, pixel_size_m: float, model_pixel_size_m: float) -> None:
    """Refuse a resampling that would exceed the pixel cap of an input image.

    Memory stays bounded whatever pixel size is claimed.

    Parameters
    ----------
    shape : tuple of int
        The image's shape, (H, W, ...).
    scale : float
        The resampling factor (``pixel_size_m / model_pixel_size_m``).
    pixel_size_m : float
        The image's pixel size [m], named in the message.
    model_pixel_size_m : float
        The model's pixel size [m], named in the message.

    Raises
    ------
    ValueError
        The resampled image would hold more than :data:`rbclib.core.io.MAX_IMAGE_PIXELS` pixels.
    """
    from rbclib.core.io import MAX_IMAGE_PIXELS

    h, w = (int(round(n * scale)) for n in shape[:2])
    if h * w > MAX_IMAGE_PIXELS:
        raise ValueError(f"at {pixel_size_m:g} m/px, {scale:.3g}x the model's {model_pixel_size_m:g} m/px, this "
                         f"{shape[0]} x {shape[1]} px image would be resampled to {h} x {w} px, more than the "
                         f"{MAX_IMAGE_PIXELS:,} pixels allowed; check --pixel-size (the pixel size at the sample)")


def resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label or instance map to ``shape``, in its own dtype.

    The pixels of scikit-image's order-0 ``resize`` (output pixel centres mapped onto the
    input grid), without its float64 copies (an 8000 px int32 map: 0.26 GB instead of about 1 GB).

    Parameters
    ----------
    image : numpy.ndarray
        (h, w) label or instance map.
    shape : tuple of int
        (H, W) output shape.

    Returns
    -------
    numpy.ndarray
        (H, W) map in ``image``'s dtype; ``image`` itself when it has that shape already.
    """
    if image.shape == tuple(shape):
        return image
    (h, w), (out_h, out_w) = image.shape[:2], shape
    rows = np.minimum(((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.intp), w - 1)
    return image[np.ix_(rows, cols)]


MIN_CELL_AREA_UM2 = 15.0
"""Smallest plausible red cell [um^2]: a disc 4.4 um across, below the smallest
(micro)spherocytes (~5 um, 20 um^2; Bessis 1973) and far below a discocyte (~48 um^2).
Smaller objects are fragments (pieces of a halo, debris, platelets) and are not counted."""


def clean_instances(labels: np.ndarray, instances: np.ndarray, *, pixel_size_m: float,
                    min_area_um2: float = MIN_CELL_AREA_UM2,
                    fragment_fraction: float = 0.35) -> tuple[np.ndarray, np.ndarray, int]:
    """Merge class fragments into their cell and drop fragments too small to be a cell.

    Instances are connected components per class, so a cell whose rim the model gives
    partly to another class splits into a cell and a small fragment that would count as a
    second cell. A component touching a larger one, with less than ``fragment_fraction``
    of its area, joins it (taking its class), and so does one enclosed by a larger one
    whatever its size (a cell's centre given another class than its ring, as on defocused
    real holograms); any other component smaller than ``min_area_um2``
    (:data:`MIN_CELL_AREA_UM2`) becomes background.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.
    instances : numpy.ndarray
        (H, W) instance ids (0 background).
    pixel_size_m : float
        Pixel size [m] of the maps.
    min_area_um2 : float, optional
        Smallest cell area [um^2] (default :data:`MIN_CELL_AREA_UM2`).
    fragment_fraction : float, optional
        Area fraction of a touching larger component below which a component joins it
        (default 0.35).

    Returns
    -------
    labels : numpy.ndarray
        (H, W) uint8 class map, a new array.
    instances : numpy.ndarray
        (H, W) int32 instances numbered 1..N, a new array.
    dropped : int
        Number of fragments dropped.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels).astype(np.uint8).copy()
    inst = np.asarray(instances).astype(np.int32).copy()
    if not inst.any():
        return labels, inst, 0
    dropped = 0
    areas = np.bincount(inst.ravel())
    min_px = min_area_um2 / (pixel_size_m * 1e6) ** 2
    slices = ndi.find_objects(inst)
    order = np.argsort(areas[1:], kind="stable") + 1
    for i in order:
        sl = slices[i - 1]
        if sl is None or areas[i] == 0:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        win = inst[grown]
        own = win == i
        ring = ndi.binary_dilation(own, structure=np.ones((3, 3), bool)) & ~own
        neighbours = np.unique(win[ring])
        neighbours = neighbours[(neighbours > 0) & (neighbours != i)]
        if neighbours.size:
            big = int(neighbours[np.argmax(areas[neighbours])])
            enclosed = neighbours.size == 1 and not (win[ring] == 0).any() and areas[i] < areas[big]
            if areas[i] < fragment_fraction * areas[big] or enclosed:
                lab = labels[grown]
                lab[own] = lab[win == big][0]
                win[own] = big
                areas[big] += areas[i]
                areas[i] = 0
                continue
        if areas[i] < min_px:
            labels[grown][own] = 0
            win[own] = 0
            areas[i] = 0
            dropped += 1
    from skimage.segmentation import relabel_sequential

    return labels, relabel_sequential(inst)[0].astype(np.int32), dropped


HALO_CORE_FRACTION = 0.4
HALO_REACH_UM = 1.0
"""A cell pixel lies within ``HALO_REACH_UM`` of its cell's bright body: phase above
``HALO_CORE_FRACTION`` of the image's typical cell peak (holes in the body, a discocyte's
dimple, count as body). Real holograms carry halos and slow background bumps next to cells
that a model trained on the twin can paint as cell, merging neighbours into one object (the
non-telecentric real hologram: 16 objects against 41 cells); the optics' blur spreads a
cell's edge over 1.1-2.4 um 10-90 % (benchmarks/bench_realism.py), so 1 um beyond the 40 %
level keeps the edge."""


HALO_BODY_SHARE = 0.25
"""A piece of the class map with less of its area in a bright cell body is halo, not cell:
without this rule the pieces of halo that trimming cuts off a cell were counted as cells
(the non-telecentric real hologram with the quick model: 53 objects against 41 cells)."""


def trim_halo(labels: np.ndarray, phase: np.ndarray, *, pixel_size_m: float,
              core_fraction: float = HALO_CORE_FRACTION, reach_um: float = HALO_REACH_UM) -> np.ndarray:
    """Set to background the cell pixels farther than ``reach_um`` from any bright cell body.

    See :data:`HALO_CORE_FRACTION`. The typical peak is the median, over the connected cell
    regions of at least :data:`MIN_CELL_AREA_UM2`, of their 95th-percentile phase (needs
    three such regions, else nothing is trimmed). Then a connected piece (per class) with
    less than :data:`HALO_BODY_SHARE` of its pixels in a bright body is halo left beside a
    cell and goes too.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.
    phase : numpy.ndarray
        (H, W) phase [rad], medium 0.
    pixel_size_m : float
        Pixel size [m] of the maps.
    core_fraction : float, optional
        Bright body: phase above this fraction of the typical cell peak
        (default :data:`HALO_CORE_FRACTION`).
    reach_um : float, optional
        How far beyond a body cell pixels are kept [um] (default :data:`HALO_REACH_UM`).

    Returns
    -------
    numpy.ndarray
        (H, W) uint8 labels, a new array.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    labels = np.asarray(labels).astype(np.uint8).copy()
    regions, n = ndi.label(labels > 0)
    area_um2 = np.bincount(regions.ravel(), minlength=n + 1)[1:] * (pixel_size_m * 1e6) ** 2
    big = np.flatnonzero(area_um2 >= MIN_CELL_AREA_UM2) + 1
    if len(big) < 3:
        return labels
    phase = np.asarray(phase, np.float64)
    peaks = ndi.labeled_comprehension(phase, regions, big, lambda v: np.percentile(v, 95), float, 0.0)
    body = ndi.binary_fill_holes(phase > core_fraction * float(np.median(peaks)))
    reach_px = max(1, int(round(reach_um / (pixel_size_m * 1e6))))
    allowed = ndi.binary_dilation(body, structure=disk(reach_px))
    labels[~allowed] = 0
    pieces = instances_from_labels(labels)       # what is left of a halo must not count as a cell
    if pieces.max():
        share = np.asarray(ndi.mean(body, pieces, np.arange(1, pieces.max() + 1)))
        labels[np.isin(pieces, np.flatnonzero(share < HALO_BODY_SHARE) + 1)] = 0
    return labels


FAINT_FRACTION = 0.5
"""An object whose mean phase is below this fraction of the image's median object is not a
cell: every red cell carries about the same haemoglobin (MCH 27-33 pg) over a similar area,
so cells of one image share their mean phase within about +-40 % (spherocytes highest),
while the halos between touching cells, platelets and debris are far fainter. On the real
RBC holograms of ../shared/data, the quick model's objects split into cells (0.9-1.1 of the
median) and faint halo pieces (0.25-0.45)."""


def drop_faint_objects(labels: np.ndarray, instances: np.ndarray, phase: np.ndarray, *,
                       min_fraction: float = FAINT_FRACTION) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop objects whose mean phase is below ``min_fraction`` of the median over the image's
    objects (:data:`FAINT_FRACTION`; needs at least three objects).

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.
    instances : numpy.ndarray
        (H, W) instance ids (0 background).
    phase : numpy.ndarray
        (H, W) phase [rad], medium 0.
    min_fraction : float, optional
        Default :data:`FAINT_FRACTION`.

    Returns
    -------
    labels : numpy.ndarray
        (H, W) uint8 class map, a new array.
    instances : numpy.ndarray
        (H, W) int32 instances numbered 1..N, a new array.
    dropped : int
        Number of objects dropped.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    labels, inst = np.asarray(labels).astype(np.uint8).copy(), np.asarray(instances).astype(np.int32).copy()
    ids = np.unique(inst[inst > 0])
    if len(ids) < 3:
        return labels, inst, 0
    mean = np.asarray(ndi.mean(np.asarray(phase, np.float64), inst, ids))
    faint = ids[mean < min_fraction * float(np.median(mean))]
    gone = np.isin(inst, faint)
    labels[gone], inst[gone] = 0, 0
    return labels, relabel_sequential(inst)[0].astype(np.int32), int(len(faint))


PREDICT_OPTIONS = {"fast": None}
"""Default inference options of ``rbc assess`` (:func:`rbclib.seg.infer.predict_images`): the
training patch's tiles, bfloat16 where the hardware runs it. On 12 reconstructed twin
holograms (quick model, 2-core CPU with AVX-512-bf16) bfloat16 segmented 1.9x
faster than fp32, 99.97 % of pixels agreeing, test Dice 0.7341 -> 0.7340
(``benchmarks/bench_assess.py``)."""


class Segmenter:
    """A trained segmentation model plus its pixel size; segments phase maps of any pixel size.

    Objects far fainter than the image's typical cell are dropped (:func:`drop_faint_objects`).
    Everything else inference needs comes from ``config.json``: pixel size, phase range,
    tile, post-processing, classes. Config and weights are read on first use.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        A model folder of :func:`rbclib.seg.infer.load_model`.
    predict_options : mapping, optional
        Passed to :func:`rbclib.seg.infer.predict_images` over :data:`PREDICT_OPTIONS`
        (tile, overlap, batch_size, fast).
    min_area_um2, fragment_fraction : float, optional
        See :func:`clean_instances`.
    split : bool, optional
        Split touching cells (:func:`split_touching`) after the clean-up (default True).
    trim_halo : bool, optional
        First set to background what lies beyond a cell's bright body (:func:`trim_halo`);
        None (default): as the model's ``config.json`` says (``trim_halo``, set in training
        for twins with flat-topped discocytes). Such a model needs it (a quick backbone:
        real count ratio 0.84 / 1.00 / 0.61 without, 1.03 / 1.00 / 1.02 with it), while a
        model of the Evans-Fung twin does not: it raised that model's count on the
        non-telecentric real hologram from 39 to 52 (41 cells: halo it paints in another
        class than the cell survives as pieces).
    device : str, optional
        Torch device (None: cuda, mps or cpu, whichever is there).
    """

    def __init__(self, model_dir: str | Path, *, predict_options: Mapping[str, Any] | None = None,
                 min_area_um2: float = MIN_CELL_AREA_UM2, fragment_fraction: float = 0.35, split: bool = True,
                 trim_halo: bool | None = None, device: str | None = None):
        self.model_dir = Path(model_dir)
        self.device = device
        self.predict_options = {**PREDICT_OPTIONS, **(predict_options or {})}
        self.min_area_um2 = float(min_area_um2)
        self.fragment_fraction = float(fragment_fraction)
        self.split = bool(split)
        self.trim_halo_from_config = trim_halo is None
        self._trim_halo = trim_halo

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The model folder's checked ``config.json``, read on first use.

        Returns
        -------
        dict
            The config (:func:`rbclib.seg.infer.read_model_config`).
        """
        from rbclib.seg.infer import read_model_config

        return read_model_config(self.model_dir)

    @functools.cached_property
    def pixel_size_m(self) -> float:
        """Pixel size [m] of the images the model was trained on (:func:`model_pixel_size`).

        Returns
        -------
        float
            The pixel size [m].
        """
        return model_pixel_size(self.config, self.model_dir)[0]

    @property
    def pixel_size_source(self) -> str:
        """Where :attr:`pixel_size_m` comes from."""
        return model_pixel_size(self.config, self.model_dir)[1]

    @functools.cached_property
    def trim_halo(self) -> bool:
        """Whether halos are trimmed: as given, else as the model's config says.

        Returns
        -------
        bool
            True when :func:`trim_halo` runs before the clean-up.
        """
        return bool(self.config.get("trim_halo", False)) if self._trim_halo is None else bool(self._trim_halo)

    @functools.cached_property
    def model(self) -> Any:
        """The network, in eval mode on the device, loaded on first use (building a Segmenter is cheap).

        Returns
        -------
        torch.nn.Module
            The loaded model.
        """
        from rbclib.seg.infer import load_model

        model, _ = load_model(self.model_dir, device=self.device)
        return model

    def load(self) -> Segmenter:
        """Read the config and load the weights now instead of on first use.

        Returns
        -------
        Segmenter
            This segmenter, ready to run.
        """
        _ = self.model
        return self

    def options(self) -> dict[str, Any]:
        """What, beside the weights, decides this Segmenter's answer (for resume keys).

        Returns
        -------
        dict
            ``min_area_um2``, ``fragment_fraction``, ``split``, ``trim_halo`` and
            ``predict_options``.
        """
        return {"min_area_um2": self.min_area_um2, "fragment_fraction": self.fragment_fraction, "split": self.split,
                "trim_halo": self.trim_halo, "predict_options": dict(self.predict_options)}

    def __call__(self, phase: np.ndarray,
                 pixel_size_m: float) -> tuple[np.ndarray, np.ndarray, dict[int, float], float, int]:
        """Segment a phase map [rad] sampled at ``pixel_size_m``.

        Parameters
        ----------
        phase : numpy.ndarray
            (H, W) phase [rad], medium 0.
        pixel_size_m : float
            Its pixel size [m].

        Returns
        -------
        tuple
            (labels uint8, instances int32, {instance id: class confidence}, scale,
            fragments dropped) with the maps on the input grid; scale = pixel_size_m / model
            pixel size.
        """
        (predicted,) = self.predict_many([phase], [pixel_size_m])
        return self.finish(predicted, phase.shape)

    def predict_many(self, phases: list[np.ndarray], pixel_sizes_m: list[float]) -> list[tuple]:
        """The model's part of :meth:`__call__` for several phase maps, their tiles batched together.

        :meth:`finish` does the rest (it may run in another thread).

        Parameters
        ----------
        phases : list of numpy.ndarray
            (H, W) phase maps [rad], medium 0.
        pixel_sizes_m : list of float
            Their pixel sizes [m].

        Returns
        -------
        list of tuple
            (prediction, phase at the model's pixel size, scale) per phase map.

        Raises
        ------
        ValueError
            A phase map would be resampled beyond the pixel cap (:func:`check_resampled_size`).
        """
        from rbclib.seg.infer import predict_images

        scales = [px / self.pixel_size_m for px in pixel_sizes_m]
        for phase, scale, px in zip(phases, scales, pixel_sizes_m):
            check_resampled_size(phase.shape, scale, px, self.pixel_size_m)
        smalls = [resample(p.astype(np.float32), s, order=1) for p, s in zip(phases, scales)]
        preds = predict_images(self.model, smalls, config=self.config, **self.predict_options)
        return list(zip(preds, smalls, scales))

    def finish(self, predicted: tuple, shape: tuple[int, int]) -> tuple:
        """Clean-up of one :meth:`predict_many` result, mapped back to the input grid.

        Parameters
        ----------
        predicted : tuple
            One item of :meth:`predict_many`'s list.
        shape : tuple of int
            (H, W) of the input phase map.

        Returns
        -------
        tuple
            The :meth:`__call__` tuple.
        """
        pred, small, scale = predicted
        labels, instances = pred.labels, pred.instances
        if self.trim_halo:
            labels = trim_halo(labels, small, pixel_size_m=self.pixel_size_m)
            instances = instances_from_labels(labels)
        labels, instances, dropped = clean_instances(labels, instances, pixel_size_m=self.pixel_size_m,
                                                     min_area_um2=self.min_area_um2,
                                                     fragment_fraction=self.fragment_fraction)
        labels, instances, faint = drop_faint_objects(labels, instances, small)
        dropped += faint
        if self.split:
            instances = split_touching(labels, instances, pixel_size_m=self.pixel_size_m)
        conf = class_confidence(np.asarray(pred.probs), labels, instances)
        return resize_to(labels, shape), resize_to(instances, shape), conf, scale, dropped


def model_pixel_size(config: Mapping[str, Any], model_dir: str | Path | None = None) -> tuple[float, str]:
    """Pixel size [m] a model was trained at and where that came from.

    A model folder is self-contained: nothing is read from the run that trained it.

    Parameters
    ----------
    config : mapping
        The model's ``config.json``.
    model_dir : str or pathlib.Path, optional
        The model folder, named in the error.

    Returns
    -------
    pixel_size_m : float
        From the config (``pixel_size_m`` or ``optics.pixel_size_m``), else the paper's
        0.1441 um/px.
    source : str
        Where it came from (says so when it was assumed).

    Raises
    ------
    ValueError
        The config's pixel size is not a number within :data:`rbclib.core.config.PIXEL_SIZE_RANGE_M`.
    """
    for holder in (config, config.get("optics") or {}):
        if isinstance(holder, Mapping) and holder.get("pixel_size_m") is not None:
            value = holder["pixel_size_m"]
            where = f"{Path(model_dir) / 'config.json'}" if model_dir is not None else "the model's config"
            lo, hi = PIXEL_SIZE_RANGE_M
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"{where}: pixel_size_m={value!r} is not a pixel size at the sample "
                                 f"(expected {lo:g}..{hi:g} m, e.g. 1.441e-07)")
            return float(value), "the model's config.json"
    return Optics().pixel_size_m, "not recorded with the model: assumed the paper's 0.1441 um/px"


def class_confidence(probs: np.ndarray, labels: np.ndarray, instances: np.ndarray) -> dict[int, float]:
    """Mean probability of each instance's winning (majority) class over its pixels.

    Parameters
    ----------
    probs : numpy.ndarray
        (C, H, W) class probabilities.
    labels : numpy.ndarray
        (H, W) class map.
    instances : numpy.ndarray
        (H, W) instance ids.

    Returns
    -------
    dict of int to float
        {instance id: class confidence}; {} when there are no instances.
    """
    classes = instance_classes(labels, instances)
    if not classes:
        return {}
    ids = np.array(sorted(classes))
    win = np.array([classes[i] for i in ids])
    flat = instances.ravel()
    lut = np.full(int(instances.max()) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(ids.size)
    sel = flat > 0
    k = lut[flat[sel]]
    p = probs.reshape(probs.shape[0], -1)[:, sel]
    winp = p[win[k], np.arange(k.size)]
    sums = np.bincount(k, weights=winp, minlength=ids.size)
    counts = np.bincount(k, minlength=ids.size)
    return {int(i): float(s / c) for i, s, c in zip(ids, sums, counts) if c}
