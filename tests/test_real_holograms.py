"""The real-data path: the shipped default model through ``rbc assess`` on every real RBC
hologram of ../shared/data, beside an independent count of the same reconstruction.

The targets themselves (count within 15 %, at least 80 % discocytes) are the benchmark's
(``benchmarks/bench_real.py``) and the model card's. Here: outputs well formed, the count
within 20 % of the independent one (the card: 0.00-0.12 off; the margin covers another CPU's
rounding), and discocytes the largest class of these fresh cells (the card: 77-100 %)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from rbclib.physics import realism
from rbclib.study.default_model import SHIPPED_MODEL_DIR
from rbclib.study.transfer import real_hologram_check

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_assess_on_every_real_rbc_hologram(shared_data, tmp_path):
    paths = realism.real_hologram_paths(shared_data)
    if not paths:
        pytest.skip(f"no real RBC hologram in {shared_data / 'holograms'}")
    for path in paths:
        row = real_hologram_check(path, SHIPPED_MODEL_DIR, tmp_path / path.stem)
        shares = {c: row[f"share_{c}"] for c in ("discocyte", "spherocyte", "echinocyte", "stomatocyte")}
        assert row["independent"] >= 5, row                                 # the finder sees the cells
        assert row["cells"] > 0 and math.isclose(sum(shares.values()), 1.0, abs_tol=1e-9), row
        assert abs(row["count_ratio"] - 1) <= 0.20, row
        assert max(shares, key=shares.get) == "discocyte", row
        assert row["fragments_dropped"] >= 0 and Path(row["overlay"]).is_file(), row
        report = (tmp_path / path.stem / "report.md").read_text()
        assert "Fragments:" in report and "smaller than a plausible cell" in report
