"""Model-assisted annotation: a trained model's class probabilities for the annotation session
of stage 02 (:class:`rbclib.annotate.session.AnnotationSession`, ``suggest=``).

The model segments each phase image the way ``rbc assess`` does (resampled to its pixel size,
tiled), and its class probabilities are mapped back to the image's grid, where the session
averages them over each proposed cell.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from rbclib.study.segmenter import Segmenter, resize_to


def model_suggestions(model_dir: str | Path | None = None, *,
                      device: str | None = None) -> Callable[[np.ndarray, float], np.ndarray]:
    """Class probabilities of a trained model, as the annotation session asks for them.

    Parameters
    ----------
    model_dir : str or pathlib.Path, optional
        A model folder, ``"latest"``, or None for the shipped default model
        (:func:`rbclib.study.inputs.resolve_model`).
    device : str, optional
        Torch device (None: cuda, mps or cpu).

    Returns
    -------
    callable
        ``(phase [rad] (H, W), pixel size [m]) -> (5, H, W)`` float32 class probabilities on
        the phase's grid (nearest neighbour from the model's grid).
    """
    from rbclib.study.inputs import resolve_model

    segmenter = Segmenter(resolve_model(model_dir)[0], device=device)

    def suggest(phase: np.ndarray, pixel_size_m: float) -> np.ndarray:
        (predicted,) = segmenter.predict_many([np.asarray(phase, np.float32)], [pixel_size_m])
        probs = np.asarray(predicted[0].probs, np.float32)
        return np.stack([resize_to(p, phase.shape) for p in probs])

    return suggest
