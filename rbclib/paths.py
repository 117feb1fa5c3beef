"""The layout of a run folder, defined once (docs/ARCHITECTURE.md, section 2).

A stage reads the artefacts of earlier stages and writes its own; all live below one
run folder, ``runs/<profile>/`` by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SEG_ARMS = ("backbone", "da", "ssl", "da_ssl")


@dataclass(frozen=True)
class RunPaths:
    """Paths of every artefact in a run folder ``root``."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    # 01_reconstruct
    @property
    def holograms(self) -> Path:
        return self.root / "holograms"

    @property
    def backgrounds(self) -> Path:
        return self.root / "backgrounds"

    @property
    def phase(self) -> Path:
        return self.root / "phase"

    @property
    def optics_json(self) -> Path:
        return self.root / "optics.json"

    @property
    def truth(self) -> Path:
        """Simulator ground truth carried forward by 01 (labels/, instances/, phase/, cells.csv)."""
        return self.root / "truth"

    # 02_annotate
    @property
    def labels(self) -> Path:
        return self.root / "labels"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    @property
    def cells_csv(self) -> Path:
        return self.root / "cells.csv"

    @property
    def splits_json(self) -> Path:
        return self.root / "splits.json"

    @property
    def annotations(self) -> Path:
        return self.root / "annotations"

    # 03-06 models
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        return self.models / name

    def seg_model_dir(self, arm: str) -> Path:
        return self.models / f"seg_{arm}"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    # 07 / 08
    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def timings_json(self) -> Path:
        return self.root / "timings.json"

    def ensure(self, *dirs: Path) -> None:
        """Create the given folders (default: the run root)."""
        for d in dirs or (self.root,):
            d.mkdir(parents=True, exist_ok=True)
