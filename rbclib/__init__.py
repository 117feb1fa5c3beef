"""rbc-holo: digital holographic microscopy of stored red blood cells.

The public API is the names below (``from rbclib import reconstruct, Optics, ...``): they
stay stable when modules move. Each is imported on first use, so ``import rbclib`` stays
light (no torch until a model is needed). The package map (which module does what, what
each stage reads and writes, conventions) is docs/ARCHITECTURE.md in the repository.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    # optics and files
    "Optics": "rbclib.core.config", "get_profile": "rbclib.profile",
    "read_image": "rbclib.core.io", "read_phase": "rbclib.core.io", "write_phase": "rbclib.core.io", "ImageFileError": "rbclib.core.files",
    # 01 holograms -> phase, and the digital twin
    "reconstruct": "rbclib.physics.holography", "Reconstructor": "rbclib.physics.holography",
    "reconstruct_files": "rbclib.physics.phase_files",
    "simulate_field": "rbclib.physics.simulate", "simulate_dataset": "rbclib.physics.simulated_datasets",
    "simulate_storage_series": "rbclib.physics.simulated_datasets",
    # per-cell physics
    "measure_cells": "rbclib.physics.measure",
    # segmentation
    "build_resunet": "rbclib.seg.models", "build_model": "rbclib.seg.models", "train_segmenter": "rbclib.seg.train",
    "load_model": "rbclib.seg.infer", "predict_image": "rbclib.seg.infer", "predict_images": "rbclib.seg.infer",
    "dice_per_class": "rbclib.seg.metrics", "aji_per_class": "rbclib.seg.metrics",
    # the storage study on a user's images
    "Segmenter": "rbclib.study.segmenter", "assess": "rbclib.study.assess",
    # one image -> its cells, with the shipped default model
    "analyse": "rbclib.study.analyse", "CellAnalysis": "rbclib.study.analyse",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'rbclib' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
