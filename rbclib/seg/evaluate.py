"""Evaluation of trained segmenters on a test split: the paper's Tables 1-3 and Figure 6.

Per image: Dice (eq. 13) and AJI (eq. 14) per cell class from ``rbclib.seg.metrics``; over
the test set: ``rbclib.seg.metrics.mean_scores`` (class means over images, Overall = mean of
the four classes). Ground-truth instances come from ``<run>/instances/`` when present
(02_annotate), else connected components. Two inference protocols: ``"tiled"`` (whole
image, overlapping blended tiles) and ``"paper"`` (non-overlapping 3 x 3 grid; scored on
the covered top-left region only).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from rbclib.seg.datasets import Pair
from rbclib.seg.infer import Prediction, check_mask_classes, predict_image, predict_paper_protocol
from rbclib.core.labels import instances_from_labels
from rbclib.seg.metrics import CELL_CLASS_NAMES, aji_per_class, dice_per_class, mean_scores
from rbclib.core.markdown import markdown_table

# Table rows in the paper's order; model folder name -> method name.
METHOD_NAMES: dict[str, str] = {
    "unet": "U-Net",
    "deeplabv3plus": "DeepLab v3+",
    "fcn": "FCN",
    "pspnet": "PSPNet",
    "gan_watershed": "GAN + Watershed",
    "ddgan_mask": "Denoising diffusion GAN",
    "seg_backbone": "ResUnet (backbone)",
    "seg_da": "ResUnet + DA",
    "seg_ssl": "ResUnet + SSL",
    "seg_da_ssl": "ResUnet + DA&SSL",
    "seg_finetuned": "Fine-tuned trained model",
}
TABLE_COLUMNS: tuple[str, ...] = tuple(n.capitalize() for n in CELL_CLASS_NAMES) + ("Overall",)


@dataclass
class ModelEvaluation:
    """Scores of one model on a test set.

    Attributes
    ----------
    name : str
        The model (folder) name.
    per_image : pandas.DataFrame
        One row per image and metric: image, metric "dice"/"aji", class columns, overall.
    seconds : float
        Total inference time [s].
    predictions : dict[str, numpy.ndarray]
        Image name -> (H, W) class map, for figures; default empty.
    """

    name: str
    per_image: pd.DataFrame
    seconds: float
    predictions: dict[str, np.ndarray] = field(default_factory=dict)

    def mean(self, metric: str) -> dict[str, float]:
        """Test-set means of one metric (:func:`rbclib.seg.metrics.mean_scores`).

        Parameters
        ----------
        metric : {"dice", "aji"}
            The metric of the rows to average.

        Returns
        -------
        dict[str, float]
            Class name -> NaN-aware mean over images, plus ``overall`` (mean of the four class means).
        """
        rows = self.per_image[self.per_image["metric"] == metric]
        return mean_scores(rows[list(CELL_CLASS_NAMES)].to_dict("records"))


def score_image(pred_labels: np.ndarray, true_labels: np.ndarray, *, covered: np.ndarray | None = None,
                pred_instances: np.ndarray | None = None,
                true_instances: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Dice and AJI of one image.

    Parameters
    ----------
    pred_labels, true_labels : numpy.ndarray
        (H, W) predicted and ground-truth class maps 0..4.
    covered : numpy.ndarray, optional
        (H, W) bool map: scoring is restricted to the bounding box of the covered pixels (the
        paper protocol's 768 x 768 of 900 x 900).
    pred_instances : numpy.ndarray, optional
        (H, W) predicted instance map; default: connected components of ``pred_labels``.
    true_instances : numpy.ndarray, optional
        (H, W) ground-truth instance map; default: components of each class.

    Returns
    -------
    dice, aji : dict[str, float]
        Class name -> score, plus ``overall`` (:mod:`rbclib.seg.metrics`).
    """
    if covered is not None and not covered.all():
        ys, xs = np.nonzero(covered)
        sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        pred_labels, true_labels = pred_labels[sl], true_labels[sl]
        pred_instances = None if pred_instances is None else pred_instances[sl]
        true_instances = None if true_instances is None else true_instances[sl]
    if pred_instances is None:
        pred_instances = instances_from_labels(pred_labels)
    return (dice_per_class(pred_labels, true_labels),
            aji_per_class(pred_labels, true_labels, pred_instances=pred_instances, true_instances=true_instances))


def evaluate_predictor(name: str, predict: Callable[[np.ndarray], Prediction], pairs: Sequence[Pair], *,
                       true_instances: dict[str, np.ndarray] | None = None, classes: int = 5,
                       progress: bool = True) -> ModelEvaluation:
    """Run ``predict(phase) -> Prediction`` on every pair and score it (timed).

    Parameters
    ----------
    name : str
        The model name (also in the progress bar).
    predict : Callable[[numpy.ndarray], rbclib.seg.infer.Prediction]
        Phase (H, W) [rad] -> prediction, e.g. from :func:`model_predictor`.
    pairs : Sequence[rbclib.seg.datasets.Pair]
        The test pairs.
    true_instances : dict[str, numpy.ndarray], optional
        Pair name -> ground-truth instance map; default: components of each class.
    classes : int, optional
        Number of classes the ground truth is checked against, default 5.
    progress : bool, optional
        Show a progress bar, default True.

    Returns
    -------
    ModelEvaluation
        Per-image scores, total predict time [s] and the predicted class maps.
    """
    from tqdm.auto import tqdm

    rows, preds, seconds = [], {}, 0.0
    for pair in tqdm(pairs, desc=f"evaluate {name}", disable=not progress):
        check_mask_classes(pair.labels, classes, source=f"ground truth {pair.name}")
        t0 = time.perf_counter()
        pred = predict(pair.phase)
        seconds += time.perf_counter() - t0
        dice, aji = score_image(pred.labels, pair.labels, covered=pred.covered,
                                pred_instances=pred.instances,
                                true_instances=(true_instances or {}).get(pair.name))
        rows += [{"image": pair.name, "metric": "dice", **dice}, {"image": pair.name, "metric": "aji", **aji}]
        preds[pair.name] = pred.labels
    return ModelEvaluation(name=name, per_image=pd.DataFrame(rows), seconds=seconds, predictions=preds)


def model_predictor(model: Any, config: dict[str, Any], *, protocol: str = "tiled", fast: bool = False,
                    batch_size: int = 8) -> Callable[[np.ndarray], Prediction]:
    """``phase -> Prediction`` for a loaded model.

    Parameters
    ----------
    model : Any
        The loaded segmentation model.
    config : dict[str, Any]
        Its training config.
    protocol : {"tiled", "paper"}, optional
        "tiled" (default; whole image) or "paper" (non-overlapping grid).
    fast : bool, optional
        Passed to the predictor, default False.
    batch_size : int, optional
        Tiles per forward pass, default 8.

    Returns
    -------
    Callable[[numpy.ndarray], rbclib.seg.infer.Prediction]
        The predictor.

    Raises
    ------
    ValueError
        On an unknown ``protocol``.
    """
    if protocol == "tiled":
        return lambda phase: predict_image(model, phase, config=config, batch_size=batch_size, fast=fast)
    if protocol == "paper":
        return lambda phase: predict_paper_protocol(model, phase, config=config, batch_size=batch_size, fast=fast)
    raise ValueError(f"unknown protocol {protocol!r}; use 'tiled' or 'paper'")


def find_model_folders(run_dir: str | Path) -> dict[str, Path]:
    """Segmentation model folders of a run, in the paper's table order.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.

    Returns
    -------
    dict[str, pathlib.Path]
        Folder name -> folder, for ``models/seg_<arm>/`` and baselines, those with a
        ``config.json`` and ``best.pt``; empty when there is no models folder.
    """
    from rbclib.core.paths import RunPaths

    models = RunPaths(run_dir).models
    if not models.is_dir():
        return {}
    found = {d.name: d for d in models.iterdir()
             if d.is_dir() and (d.name.startswith("seg_") or d.name in METHOD_NAMES and d.name != "ddgan_mask")
             and (d / "config.json").is_file() and (d / "best.pt").is_file()}
    return {k: found[k] for k in _order(list(found))}


def method_name(folder_name: str) -> str:
    """Table row name of a model folder (``seg_backbone`` -> "ResUnet (backbone)").

    Parameters
    ----------
    folder_name : str
        The model folder name.

    Returns
    -------
    str
        Its method name, or ``folder_name`` itself when unknown.
    """
    return METHOD_NAMES.get(folder_name, folder_name)


def _order(names: Sequence[str]) -> list[str]:
    known = list(METHOD_NAMES)
    return sorted(names, key=lambda n: (known.index(n) if n in known else len(known), n))


def score_table(evaluations: dict[str, ModelEvaluation], metric: str) -> pd.DataFrame:
    """Table 1 (metric="dice") or Table 2 ("aji").

    Parameters
    ----------
    evaluations : dict[str, ModelEvaluation]
        Model folder name -> its evaluation.
    metric : {"dice", "aji"}
        The metric of the table.

    Returns
    -------
    pandas.DataFrame
        One row per method (paper order), columns Method, Discocyte, Spherocyte, Echinocyte,
        Stomatocyte, Overall.
    """
    rows = []
    for key in _order(list(evaluations)):
        mean = evaluations[key].mean(metric)
        rows.append({"Method": method_name(key), **{c: mean[c.lower()] for c in TABLE_COLUMNS}})
    return pd.DataFrame(rows, columns=["Method", *TABLE_COLUMNS])


def compute_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Table 3 of compute figures.

    Parameters
    ----------
    rows : dict[str, dict[str, float]]
        {folder name: {"time_s", "parameters", "macs_g"}}.

    Returns
    -------
    pandas.DataFrame
        Columns Method, Time (s), Parameters, MACs (G), rows in the paper's order.
    """
    out = [{"Method": method_name(k), "Time (s)": rows[k]["time_s"], "Parameters": int(rows[k]["parameters"]),
            "MACs (G)": rows[k]["macs_g"]} for k in _order(list(rows))]
    return pd.DataFrame(out, columns=["Method", "Time (s)", "Parameters", "MACs (G)"])


def to_markdown(table: pd.DataFrame, *, digits: int = 4) -> str:
    """A score table as Markdown (:func:`rbclib.core.markdown.markdown_table`).

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`score_table` or :func:`compute_table`.
    digits : int, optional
        Decimals of floats, default 4.

    Returns
    -------
    str
        Right-aligned Markdown: floats with ``digits`` decimals, NaN as "-", integers with
        thousands separators.
    """
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        if isinstance(v, (int, np.integer)):
            return f"{int(v):,}"
        return str(v)

    return markdown_table(table, fmt=fmt, right_align=True)


def plot_comparison(pairs: Sequence[Pair], predictions: dict[str, dict[str, np.ndarray]]):
    """Figure 6 layout: one row per image; columns input phase, ground truth, then each method.

    Parameters
    ----------
    pairs : Sequence[rbclib.seg.datasets.Pair]
        The images shown, one row each.
    predictions : dict[str, dict[str, numpy.ndarray]]
        Model folder name -> {pair name -> (H, W) predicted class map}.

    Returns
    -------
    matplotlib.figure.Figure
        The figure, class maps in the paper colours.
    """
    import matplotlib.pyplot as plt

    from rbclib.core.labels import colourize

    methods = _order(list(predictions))
    ncol = 2 + len(methods)
    fig, axes = plt.subplots(len(pairs), ncol, figsize=(2.2 * ncol, 2.2 * len(pairs)), squeeze=False)
    for r, pair in enumerate(pairs):
        panels = [("input phase", None), ("ground truth", pair.labels)] + \
                 [(method_name(m), predictions[m][pair.name]) for m in methods]
        for c, (title, lab) in enumerate(panels):
            ax = axes[r, c]
            if lab is None:
                ax.imshow(pair.phase, cmap="gray")
            else:
                ax.imshow(colourize(lab), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(pair.name, fontsize=8)
    fig.tight_layout()
    return fig
