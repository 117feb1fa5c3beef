"""Realism check of the digital twin: simulated RBCs held against a real RBC hologram.

The real hologram (``rbc_pydhm.jpg``, pyDHM sample, optics undocumented) is demodulated
simply (FFT, crop the sideband around its peak away from DC, inverse FFT, unwrap, remove
a fitted plane) and segmented; each cell gives a radial phase profile normalised by its
peak phase and its equivalent radius. Simulated discocyte fields go through the very same
demodulation and segmentation, so both profiles share the processing's blur. Simulated
per-class morphometrics come from the ground truth and are checked against
:data:`LITERATURE_RANGES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from rbclib.config import Optics
from rbclib.labels import CELL_CLASSES, CLASS_COLOURS, CLASS_NAMES

PROFILE_BINS = np.linspace(0.0, 1.3, 27)
"""Edges of the normalised radius r/R_eq bins of the radial profiles."""

LITERATURE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    # diameter [um], peak phase [rad] at 682.5 nm, centre/rim phase ratio
    "discocyte": {"diameter_um": (6.6, 9.0), "peak_phase_rad": (1.1, 1.9), "dip_ratio": (0.25, 0.65)},
    "spherocyte": {"diameter_um": (5.3, 7.0), "peak_phase_rad": (1.8, 3.0), "dip_ratio": (0.9, 1.0)},
    "echinocyte": {"diameter_um": (5.8, 9.0), "peak_phase_rad": (1.1, 2.8), "dip_ratio": (0.25, 1.0)},
    "stomatocyte": {"diameter_um": (6.2, 8.6), "peak_phase_rad": (1.3, 2.3), "dip_ratio": (0.2, 0.75)},
}
"""Per-class ranges. Diameters: Evans & Fung, Microvasc. Res. 4, 335 (1972) (discocytes
7.82 +/- 0.62 um); Bessis, Red Cell Shape (1973) (spherocytes 5.5-6.8 um, sphero-
echinocytes ~6-7 um, stomatocytes about discocyte size). Peak phase = 2*pi/lambda*dn*h_max
with dn = 0.058-0.07 (MCHC 30-37 g/dL times 0.19 mL/g, Barer 1952) and h_max: discocyte rim
2.4-2.6 um (Evans & Fung 1972; Park et al., PNAS 105, 13730 (2008)), spherocyte 3.3-4.3 um,
stomatocyte rim up to 3.2 um; 5-10 % margin for cell tilt. Dip ratio = centre / rim phase:
discocyte 0.8-1.4 um over 2.4-2.6 um (Evans & Fung; Park 2008) -> 0.3-0.6; spherocytes have
no dip (ratio ~1); echinocytes span disc to sphere; a stomatocyte's slit floor is as thin as
a dimple."""


def demodulate_simple(hologram: np.ndarray, *, dc_exclude: float = 0.06, crop_radius: float | None = None) -> np.ndarray:
    """Phase [rad] of an off-axis hologram by the textbook recipe, medium ~0, cells positive.

    FFT; the sideband is the spectral peak in the half-plane fx > 0 outside a DC disc of
    radius ``dc_exclude`` [cycles/px]; a disc of ``crop_radius`` (default 0.45 x the
    carrier's distance from DC) around it is centred and inverse-FFT'd; the angle is unwrapped
    (scikit-image) and a plane plus curvature fitted to the background (iteratively, cells
    excluded; no background hologram is used) is removed. The sign is chosen so that the cells (the tail of the histogram) are positive.
    Returns float32 of the hologram's shape."""
    from skimage.restoration import unwrap_phase

    h = np.asarray(hologram, dtype=np.float64)
    spec = np.fft.fft2(h - h.mean())
    fy = np.fft.fftfreq(h.shape[0])[:, None]
    fx = np.fft.fftfreq(h.shape[1])[None, :]
    search = (np.hypot(fy, fx) > dc_exclude) & (fx > 0)
    iy, ix = np.unravel_index(np.argmax(np.where(search, np.abs(spec), 0)), spec.shape)
    cy, cx = fy[iy, 0], fx[0, ix]
    radius = crop_radius if crop_radius is not None else 0.45 * float(np.hypot(cy, cx))
    crop = np.where(np.hypot(fy - cy, fx - cx) <= radius, spec, 0)
    field = np.fft.ifft2(np.roll(crop, (-iy, -ix), axis=(0, 1)))
    phase = unwrap_phase(np.angle(field))
    phase = remove_plane(phase)
    if np.percentile(phase, 99) - np.median(phase) < np.median(phase) - np.percentile(phase, 1):
        phase = -phase
    return (phase - np.median(phase)).astype(np.float32)


def remove_plane(phase: np.ndarray, *, order: int = 2, iterations: int = 4) -> np.ndarray:
    """Subtract a least-squares plane (order 1) or plane + curvature (order 2, default) fitted
    iteratively to background pixels (residual within 3 robust s.d.)."""
    yy, xx = np.mgrid[0: phase.shape[0], 0: phase.shape[1]]
    y, x = yy.ravel() / phase.shape[0] - 0.5, xx.ravel() / phase.shape[1] - 0.5
    terms = [np.ones(phase.size), y, x] + ([y * y, x * x, x * y] if order >= 2 else [])
    design = np.stack(terms, axis=1)
    keep = np.ones(phase.size, bool)
    flat = phase.ravel()
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(design[keep], flat[keep], rcond=None)
        resid = flat - design @ coef
        mad = np.median(np.abs(resid[keep] - np.median(resid[keep]))) + 1e-9
        keep = np.abs(resid - np.median(resid[keep])) < 3 * 1.4826 * mad
    return (flat - design @ coef).reshape(phase.shape)


def segment_cells(phase: np.ndarray, *, min_area_px: int = 200, max_area_px: int | None = None,
                  min_solidity: float = 0.85) -> np.ndarray:
    """Instances of isolated, roughly convex cells: Otsu threshold, holes filled, border,
    odd-shaped and merged (area > ``max_area_px``, default 1.6 x median) objects dropped. Returns int32 labels 1..N."""
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.segmentation import clear_border

    smooth = gaussian(phase, sigma=2)
    mask = ndi.binary_fill_holes(ndi.binary_opening(smooth > threshold_otsu(smooth), iterations=2))
    lab = clear_border(label(mask))
    out = np.zeros(lab.shape, np.int32)
    props = [r for r in regionprops(lab) if r.area >= min_area_px]
    if max_area_px is None and props:   # merged pairs: more than 1.6 x the median cell area
        max_area_px = 1.6 * float(np.median([r.area for r in props]))
    n = 0
    for r in props:
        if (max_area_px and r.area > max_area_px) or r.solidity < min_solidity:
            continue
        n += 1
        out[lab == r.label] = n
    return out


def radial_profiles(phase: np.ndarray, instances: np.ndarray, *, bins: np.ndarray = PROFILE_BINS) -> np.ndarray:
    """(n_cells, len(bins)-1) mean phase per r/R_eq bin, each profile divided by its maximum.

    r from the cell's phase-weighted centroid, R_eq = sqrt(area/pi)."""
    out = []
    for idx, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        pad = max(int(0.4 * max(s.stop - s.start for s in sl)), 2)
        sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, phase.shape))
        m = instances[sl] == idx
        ph = phase[sl]
        w = np.clip(ph, 0, None) * m
        yy, xx = np.mgrid[0: m.shape[0], 0: m.shape[1]]
        cy, cx = (w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()
        r = np.hypot(yy - cy, xx - cx) / np.sqrt(m.sum() / np.pi)
        which = np.digitize(r.ravel(), bins) - 1
        ok = (which >= 0) & (which < len(bins) - 1)
        sums = np.bincount(which[ok], ph.ravel()[ok], minlength=len(bins) - 1)
        counts = np.bincount(which[ok], minlength=len(bins) - 1)
        prof = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        out.append(prof / np.nanmax(prof))
    return np.array(out).reshape(-1, len(bins) - 1)


def morphometrics(phase: np.ndarray, instances: np.ndarray, cells: pd.DataFrame, *, optics: Optics) -> pd.DataFrame:
    """Per-cell diameter [um] (equivalent, from the mask), peak phase [rad] and central-dip ratio
    (mean phase within 0.15 R_eq of the centroid / peak of the radial profile), with class_name."""
    rows = []
    px_um = optics.pixel_size_m * 1e6
    profiles = radial_profiles(phase, instances, bins=np.linspace(0, 1.0, 21))
    present = [(i, sl) for i, sl in enumerate(ndi.find_objects(instances), start=1) if sl is not None]
    by_id = cells.set_index("cell_id")
    for (cid, sl), prof in zip(present, profiles):
        m = instances[sl] == cid
        rows.append({"cell_id": cid, "class_name": by_id.loc[cid, "class_name"],
                     "diameter_um": 2 * np.sqrt(m.sum() / np.pi) * px_um,
                     "peak_phase_rad": float(phase[sl][m].max()),
                     "dip_ratio": float(np.nanmean(prof[:3]) / np.nanmax(prof))})
    return pd.DataFrame(rows)


def simulated_morphometrics(seed_or_rng: int | np.random.Generator = 0, *, n_fields: int = 3,
                            optics: Optics | None = None) -> pd.DataFrame:
    """:func:`morphometrics` of the true phase of ``n_fields`` simulated 900 px fields with the
    four classes in equal shares (about 60 cells per field)."""
    from rbclib.simulate import simulate_field

    optics = optics or Optics()
    rng = np.random.default_rng(seed_or_rng)
    fields = [simulate_field(rng, optics=optics, touching_fraction=0.0, holograms=False,
                             mixture={CLASS_NAMES[c]: 0.25 for c in CELL_CLASSES}) for _ in range(n_fields)]
    return pd.concat([morphometrics(f.phase, f.instances, f.cells, optics=optics) for f in fields], ignore_index=True)


def morphometrics_summary(morpho: pd.DataFrame) -> pd.DataFrame:
    """Per-class median and 5-95 % range of simulated morphometrics, with the literature range."""
    rows = []
    for name, g in morpho.groupby("class_name"):
        for col, (lo, hi) in LITERATURE_RANGES[name].items():
            rows.append({"class_name": name, "quantity": col, "median": g[col].median(),
                         "p05": g[col].quantile(0.05), "p95": g[col].quantile(0.95), "lit_lo": lo, "lit_hi": hi})
    return pd.DataFrame(rows)


@dataclass
class RealismReport:
    """real_profiles / sim_profiles: (n, bins) normalised radial profiles of real cells and of
    simulated discocytes (same demodulation and segmentation); bin_centres: r/R_eq;
    morphometrics: simulated per-cell table (class_name, diameter_um, peak_phase_rad,
    dip_ratio); real_phase / sim_phase: the demodulated images (for display)."""

    bin_centres: np.ndarray
    real_profiles: np.ndarray
    sim_profiles: np.ndarray
    morphometrics: pd.DataFrame
    real_phase: np.ndarray
    sim_phase: np.ndarray

    def mean_profile(self, which: str) -> np.ndarray:
        return np.nanmean(self.real_profiles if which == "real" else self.sim_profiles, axis=0)

    def summary(self) -> pd.DataFrame:
        """See :func:`morphometrics_summary`."""
        return morphometrics_summary(self.morphometrics)


def realism_report(real_hologram: str | Path | np.ndarray, *, seed: int = 0, n_fields: int = 2, field_px: int = 512,
                   n_morpho_fields: int = 3, optics: Optics | None = None) -> RealismReport:
    """Compare the real hologram's cells with simulated ones (see the module docstring).

    Simulated discocyte-only fields (``n_fields`` of ``field_px``) are demodulated and segmented
    like the real one; ``n_morpho_fields`` 900 px fields of all four classes (equal shares)
    give the morphometrics (from the true phase and instance maps)."""
    from rbclib.io import read_image
    from rbclib.simulate import simulate_field

    optics = optics or Optics()
    holo = read_image(real_hologram).data if not isinstance(real_hologram, np.ndarray) else real_hologram
    real_phase = demodulate_simple(holo)
    real_inst = segment_cells(real_phase, min_area_px=400)
    bins = PROFILE_BINS
    rng = np.random.default_rng(seed)
    sims, sim_phase = [], None
    for _ in range(n_fields):
        f = simulate_field(rng, field_px=field_px, optics=optics, mixture={"discocyte": 1.0}, touching_fraction=0.0)
        ph = demodulate_simple(f.hologram)
        sim_phase = ph if sim_phase is None else sim_phase
        sims.append(radial_profiles(ph, segment_cells(ph, min_area_px=400)))
    morpho = simulated_morphometrics(rng, n_fields=n_morpho_fields, optics=optics)
    return RealismReport(bin_centres=0.5 * (bins[1:] + bins[:-1]), real_profiles=radial_profiles(real_phase, real_inst),
                         sim_profiles=np.concatenate(sims), morphometrics=morpho, real_phase=real_phase, sim_phase=sim_phase)


def plot_realism(report: RealismReport):
    """Figure: real and simulated demodulated phase, normalised radial profiles (mean +/- s.d.),
    and simulated per-class morphometrics against the literature ranges (grey bands)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 4)
    for k, (img, title) in enumerate([(report.real_phase, "real hologram (rbc_pydhm.jpg), simple demodulation"),
                                      (report.sim_phase, "simulated discocytes, same demodulation")]):
        ax = fig.add_subplot(grid[0, k])
        im = ax.imshow(img, cmap="gray", vmin=np.percentile(img, 0.5), vmax=np.percentile(img, 99.8))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, shrink=0.7, label="phase [rad]")
    ax = fig.add_subplot(grid[0, 2:])
    for prof, label, colour in [(report.real_profiles, f"real cells (n={len(report.real_profiles)})", "k"),
                                (report.sim_profiles, f"simulated discocytes (n={len(report.sim_profiles)})", "tab:red")]:
        mean, sd = np.nanmean(prof, axis=0), np.nanstd(prof, axis=0)
        ax.plot(report.bin_centres, mean, color=colour, label=label)
        ax.fill_between(report.bin_centres, mean - sd, mean + sd, color=colour, alpha=0.2)
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("r / R_eq")
    ax.set_ylabel("phase / peak phase")
    ax.set_title("normalised radial phase profiles (mean +/- s.d.)", fontsize=9)
    ax.legend(fontsize=8)
    names = [CLASS_NAMES[c] for c in CELL_CLASSES]
    for k, col in enumerate(["diameter_um", "peak_phase_rad", "dip_ratio"]):
        ax = fig.add_subplot(grid[1, k])
        data = [report.morphometrics.loc[report.morphometrics.class_name == n, col].to_numpy() for n in names]
        for j, n in enumerate(names):
            lo, hi = LITERATURE_RANGES[n][col]
            ax.fill_between([j + 0.6, j + 1.4], lo, hi, color="0.85", zorder=0)
        parts = ax.boxplot(data, patch_artist=True, widths=0.5)
        ax.set_xticks(range(1, 5), names, fontsize=8)
        for patch, c in zip(parts["boxes"], CELL_CLASSES):
            patch.set_facecolor(CLASS_COLOURS[c])
            patch.set_alpha(0.6)
        ax.set_title(f"simulated {col} vs literature (grey)", fontsize=9)
    ax = fig.add_subplot(grid[1, 3])
    counts = report.morphometrics.class_name.value_counts()
    ax.axis("off")
    ax.text(0, 0.9, "simulated cells per class:\n" + "\n".join(f"  {n}: {counts.get(n, 0)}" for n in names), va="top", fontsize=9)
    return fig
