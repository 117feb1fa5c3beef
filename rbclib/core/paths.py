"""The layout of a run folder, defined once (docs/ARCHITECTURE.md, section 2).

A stage reads the artefacts of earlier stages and writes its own; all live below one
run folder, ``runs/<profile>/`` by default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SEG_ARMS = ("backbone", "da", "ssl", "da_ssl")
RUNS_ENV = "RBC_RUNS"
"""Environment variable naming an extra folder of run folders (model discovery of ``rbc
assess`` when rbclib is installed as a wheel, away from the repository's ``runs/``)."""


def source_checkout() -> Path | None:
    """The repository folder when rbclib is imported from a source checkout.

    Returns
    -------
    pathlib.Path or None
        The folder holding ``pyproject.toml`` and ``notebooks/`` beside ``rbclib/``; None for
        an installed wheel.
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def runs_roots() -> list[Path]:
    """Folders holding run folders.

    Returns
    -------
    list of pathlib.Path
        In search order: ``$RBC_RUNS`` (when set), ``./runs`` of the working directory, and the
        source checkout's ``runs/`` (when there is one).
    """
    roots = [Path(os.environ[RUNS_ENV]).expanduser()] if os.environ.get(RUNS_ENV) else []
    roots.append(Path("runs"))
    checkout = source_checkout()
    if checkout is not None:
        roots.append(checkout / "runs")
    return roots


@dataclass(frozen=True)
class RunPaths:
    """Paths of every artefact in a run folder ``root``.

    Parameters
    ----------
    root : str or pathlib.Path
        The run folder; stored expanded (``~``) and resolved, as a Path.
    """

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root).expanduser().resolve())

    @classmethod
    def of_model(cls, model_dir: str | Path) -> "RunPaths":
        """The run a model folder ``<run>/models/<name>/`` belongs to.

        Parameters
        ----------
        model_dir : str or pathlib.Path
            The model folder.

        Returns
        -------
        RunPaths
            The run two levels above it.
        """
        return cls(Path(model_dir).expanduser().resolve().parent.parent)

    # 01_reconstruct
    @property
    def simulated(self) -> Path:
        """The digital twin's dataset written by 01 (``simulation.json`` records its settings)."""
        return self.root / "simulated"

    @property
    def phase(self) -> Path:
        """Phase images written by 01: ``<stem>.tif`` (float32 rad, optics in the TIFF description)."""
        return self.root / "phase"

    @property
    def optics_json(self) -> Path:
        """The run's optics (:class:`rbclib.core.config.Optics`), a copy of ``phase/optics.json``."""
        return self.root / "optics.json"

    @property
    def truth(self) -> Path:
        """Simulator ground truth carried forward by 01 (labels/, instances/, phase/, cells.csv)."""
        return self.root / "truth"

    # 02_annotate
    @property
    def labels(self) -> Path:
        """Class maps written by 02: ``<stem>.png`` (uint8 0..4)."""
        return self.root / "labels"

    @property
    def instances(self) -> Path:
        """Instance maps written by 02: ``<stem>.png`` (uint16)."""
        return self.root / "instances"

    @property
    def cells_csv(self) -> Path:
        """Per-cell table written by 02 (image, cell id, class, measurements)."""
        return self.root / "cells.csv"

    @property
    def splits_json(self) -> Path:
        """Train / test split of the annotated images, written by 02."""
        return self.root / "splits.json"

    @property
    def annotations(self) -> Path:
        """The annotation decisions (``decisions.json``) and backups of 02."""
        return self.root / "annotations"

    # 03-06 models
    @property
    def models(self) -> Path:
        """Folder of the model folders (03-06)."""
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        """The folder of one model.

        Parameters
        ----------
        name : str
            The model's name (e.g. ``ddgan_phase``, ``ssl``).

        Returns
        -------
        pathlib.Path
            ``models/<name>``.
        """
        return self.models / name

    def seg_model_dir(self, arm: str) -> Path:
        """The folder of one segmentation arm's model.

        Parameters
        ----------
        arm : str
            One of :data:`SEG_ARMS`.

        Returns
        -------
        pathlib.Path
            ``models/seg_<arm>``.
        """
        return self.models / f"seg_{arm}"

    @property
    def synthetic(self) -> Path:
        """Synthetic training pairs and their curation, written by 04."""
        return self.root / "synthetic"

    # 07 / 08
    @property
    def tables(self) -> Path:
        """Result tables (CSV, with Markdown twins for 07's)."""
        return self.root / "tables"

    @property
    def storage(self) -> Path:
        """The storage study's outputs, written by 08."""
        return self.root / "storage"

    @property
    def figures(self) -> Path:
        """Figures of every stage, ``NN_*.png``."""
        return self.root / "figures"

    @property
    def timings_json(self) -> Path:
        """Seconds per stage, merged by ``rbc run``."""
        return self.root / "timings.json"

    def ensure(self, *dirs: Path) -> None:
        """Create the given folders (default: the run root).

        Parameters
        ----------
        *dirs : pathlib.Path
            The folders, created with their parents; none given: the run root.
        """
        for d in dirs or (self.root,):
            d.mkdir(parents=True, exist_ok=True)
