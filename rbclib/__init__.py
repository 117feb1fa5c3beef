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
    "Optics": "rbclib.config", "get_profile": "rbclib.config",
    "read_image": "rbclib.io", "read_phase": "rbclib.io", "write_phase": "rbclib.io", "ImageFileError": "rbclib.io",
    # 01 holograms -> phase, and the digital twin
    "reconstruct": "rbclib.holography", "Reconstructor": "rbclib.holography",
    "reconstruct_files": "rbclib.holography",
    "simulate_field": "rbclib.simulate", "simulate_dataset": "rbclib.simulate",
    "simulate_storage_series": "rbclib.simulate",
    # per-cell physics
    "measure_cells": "rbclib.measure",
    # segmentation
    "build_resunet": "rbclib.models", "build_model": "rbclib.models", "train_segmenter": "rbclib.train",
    "load_model": "rbclib.infer", "predict_image": "rbclib.infer", "predict_images": "rbclib.infer",
    "dice_per_class": "rbclib.metrics", "aji_per_class": "rbclib.metrics",
    # the storage study on a user's images (the function is rbclib.assess.assess: a package
    # attribute cannot be both the module rbclib.assess and its function)
    "Segmenter": "rbclib.segmenter",
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
