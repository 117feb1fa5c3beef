"""Realism benchmark: the digital twin against the real RBC holograms, same statistics.

Twin fields (rbclib.physics.simulate, the four classes in equal shares) are reconstructed with their
background holograms as notebook 01 does; the real holograms of ../shared/data/holograms
(skipped when absent) without background. rbclib.physics.realism measures the same statistics on
both: background noise, its spectrum and correlation length, edge width, central dip, outline
roughness, peak phase, dry mass, cells per 1000 um^2. Prints the side-by-side table, the
twin's per-class summary and PASS / FAIL per realism target; writes the figure to --out.
Exits 1 when a target fails. Run:

    .venv/bin/python benchmarks/bench_realism.py [--fields 24] [--field-px 512] [--sim defocus_m=0]
"""
from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")

from rbclib.physics import realism  # noqa: E402


def _keyword(text: str) -> tuple[str, object]:
    """``key=value`` (value a Python literal, else a string) -> (key, value)."""
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=24, help="twin fields")
    parser.add_argument("--field-px", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=realism.shared_data_dir(), help="folder holding holograms/ (real data)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rbc_realism" / "realism.png",
                        help="figure path")
    parser.add_argument("--sim", type=_keyword, action="append", default=[], metavar="KEY=VALUE",
                        help="extra simulate_field keyword (repeatable), e.g. defocus_m=0")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    twin = realism.twin_statistics(args.fields, seed=args.seed, field_px=args.field_px, **dict(args.sim))
    t_twin = time.perf_counter() - t0
    paths = realism.real_hologram_paths(args.data)
    t0 = time.perf_counter()
    reals = [realism.real_statistics(p) for p in paths]
    t_real = time.perf_counter() - t0
    print(f"twin: {args.fields} fields of {args.field_px} px, {len(twin.cells)} cells ({len(twin.clean)} isolated, "
          f"inside), {t_twin:.1f} s; real: {len(reals)} holograms, {t_real:.1f} s"
          + ("" if reals else f" (none in {args.data / 'holograms'}: real targets skipped)"))
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.3g}".format):
        table = realism.comparison_table(twin, reals)
        table.columns = [c.split(".")[0].replace("rbc_", "") for c in table.columns]
        print("\n" + table.to_string())
        print("\ntwin per class (isolated cells inside the field):")
        print(realism.class_summary(twin).to_string())
    targets = realism.check_targets(twin, reals)
    print("\ntargets:")
    for row in targets.itertuples():
        verdict = "SKIP" if row.passed is None else ("PASS" if row.passed else "FAIL")
        print(f"  {verdict}  {row.target}: {row.value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    realism.plot_realism(twin, reals).savefig(args.out, dpi=100)
    print(f"\nfigure: {args.out}")
    n_fail = int((targets.passed == False).sum())  # noqa: E712  (None: skipped)
    print(f"{len(targets) - n_fail - int(targets.passed.isna().sum())} passed, {n_fail} failed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
