"""Realism of the digital twin: simulated RBCs against literature ranges and a real hologram.

Tolerances (stated honestly): the real hologram (pyDHM sample, optics unknown) shows cells
with a flat top, a bright rim and a *shallow* central dip (centre ~0.85-0.9 of the rim
peak), while simulated Evans-Fung discocytes, after the same simple demodulation, dip to
~0.45-0.5. The test therefore only requires that both show a dip (centre below the rim
peak), a rim peak in the outer half, the edge fall-off at the same place (beyond r/R_eq 1),
and an RMS profile difference over the rim and edge (r/R_eq 0.5-1.3) below 0.2.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from rbclib.realism import (LITERATURE_RANGES, morphometrics_summary, plot_realism, realism_report,  # noqa: E402
                            simulated_morphometrics)


@pytest.fixture(scope="module")
def report(shared_data: Path):
    real = shared_data / "holograms" / "rbc_pydhm.jpg"
    if not real.exists():
        pytest.skip(f"real hologram {real} absent")
    return realism_report(real, seed=0, n_fields=2, field_px=512)


def test_simulated_morphometrics_in_literature_ranges():
    summary = morphometrics_summary(simulated_morphometrics(0, n_fields=3))
    assert set(summary.class_name) == set(LITERATURE_RANGES)
    for row in summary.itertuples():
        assert row.lit_lo <= row.p05 and row.p95 <= row.lit_hi, row
    med = summary.pivot(index="class_name", columns="quantity", values="median")
    assert med.loc["spherocyte", "peak_phase_rad"] > med.drop("spherocyte").peak_phase_rad.max()
    assert med.loc["discocyte", "dip_ratio"] < 0.65 and med.loc["spherocyte", "dip_ratio"] > 0.9


@pytest.mark.realdata
def test_real_and_simulated_profiles_agree(report):
    assert len(report.real_profiles) >= 3 and len(report.sim_profiles) >= 10
    r = report.bin_centres
    for which in ("real", "sim"):
        prof = report.mean_profile(which)
        peak_at = r[np.nanargmax(prof)]
        assert 0.5 <= peak_at <= 1.0, (which, peak_at)                  # rim peak in the outer half
        assert np.nanmean(prof[r < 0.15]) < 0.95 * np.nanmax(prof), which  # central dip
        assert prof[np.argmin(abs(r - 1.2))] < 0.5, which                   # edge just past R_eq
    real, sim = report.mean_profile("real"), report.mean_profile("sim")
    outer = (r >= 0.5) & (r <= 1.3)
    assert np.sqrt(np.nanmean((real[outer] - sim[outer]) ** 2)) < 0.2


@pytest.mark.realdata
def test_plot(report):
    fig = plot_realism(report)
    assert len(fig.axes) >= 6
