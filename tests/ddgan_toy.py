"""A tiny run folder of synthetic disks (phase + labels + splits) for the DDGAN / curation tests.

Cells: discocyte (biconcave ring), spherocyte (small high dome), echinocyte (dome with a
spiky rim), stomatocyte (cup with an off-centre dip); medium 0 rad plus faint noise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skimage.measure import label as connected_components

from rbclib.core.io import write_instances, write_labels, write_phase
from rbclib.core.files import write_json
from rbclib.core.paths import RunPaths


def toy_field(rng: np.random.Generator, size: int, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    phase = rng.normal(0, 0.02, (size, size)).astype(np.float32)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(n_cells):
        cls = int(rng.choice([1, 2, 3, 4], p=[0.55, 0.15, 0.15, 0.15]))
        r = {1: 11.0, 2: 8.0, 3: 10.0, 4: 10.0}[cls] * rng.uniform(0.9, 1.1)
        cy, cx = rng.uniform(r, size - r, 2)
        dy, dx = yy - cy, xx - cx
        rho = np.hypot(dy, dx) / r
        if cls == 3:
            rho = rho * (1 + 0.12 * np.cos(8 * np.arctan2(dy, dx)))
        inside = (rho < 1) & (labels == 0)
        dome = np.sqrt(np.clip(1 - rho**2, 0, 1))
        profile = {1: 1.6 * dome * (0.55 + 0.8 * rho**2), 2: 2.4 * dome, 3: 1.8 * dome,
                   4: 1.7 * dome * (1 - 0.6 * np.exp(-((dy - 0.3 * r) ** 2 + dx**2) / (0.3 * r) ** 2))}[cls]
        phase[inside] += profile[inside]
        labels[inside] = cls
    return phase, labels


def make_toy_run(run_dir: Path, *, n_fields: int = 4, size: int = 96, n_cells: int = 6, seed: int = 0) -> RunPaths:
    paths = RunPaths(run_dir)
    rng = np.random.default_rng(seed)
    stems = [f"field_{i:04d}" for i in range(n_fields)]
    for stem in stems:
        phase, labels = toy_field(rng, size, n_cells)
        write_phase(paths.phase / f"{stem}.tif", phase)
        write_labels(paths.labels / f"{stem}.png", labels)
        write_instances(paths.instances / f"{stem}.png", connected_components(labels, connectivity=1).astype(np.int32))
    n_test = max(1, n_fields // 4)
    write_json(paths.splits_json, {"train": stems[n_test:], "test": stems[:n_test], "seed": seed, "method": "toy"})
    return paths
