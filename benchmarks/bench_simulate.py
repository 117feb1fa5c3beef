"""Speed of the digital twin: simulated 900 x 900 fields per second, holograms and backgrounds included.

Baselines measured in the same run: (a) the bare cost of one forward + one inverse complex64
FFT of a 900 x 900 field (the imaging step's floor), (b) the same field without hologram
formation (cell drawing, placement and rendering only). Also times writing a dataset.

    .venv/bin/python benchmarks/bench_simulate.py [--fields 6] [--field-px 900]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from scipy import fft as sfft

from rbclib.physics.simulate import simulate_field
from rbclib.physics.simulated_datasets import simulate_dataset


def best_of(fn, repeat: int) -> float:
    """Median wall time [s] of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", type=int, default=6, help="fields timed per measurement")
    parser.add_argument("--field-px", type=int, default=900)
    args = parser.parse_args()
    px = args.field_px
    field = (np.random.default_rng(0).standard_normal((px, px)) * 1j).astype(np.complex64)
    t_fft = best_of(lambda: sfft.ifft2(sfft.fft2(field)), 10)
    seeds = iter(range(10**6))
    t_render = best_of(lambda: simulate_field(next(seeds), field_px=px, holograms=False), args.fields)
    t_full = best_of(lambda: simulate_field(next(seeds), field_px=px), args.fields)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate_dataset(tmp, n_fields=args.fields, seed=0, field_px=px, progress=False)
        t_write = (time.perf_counter() - t0) / args.fields
    print(f"field {px}x{px} px, 40-85 cells (scaled to the area), 8-bit hologram + background")
    print(f"baseline FFT pair (fft2+ifft2, complex64): {t_fft * 1e3:8.1f} ms")
    print(f"field without holograms (render only):     {t_render * 1e3:8.1f} ms  = {t_render / t_fft:5.1f} x FFT pair")
    print(f"field with hologram + background:          {t_full * 1e3:8.1f} ms  = {t_full / t_fft:5.1f} x FFT pair, "
          f"{t_full / t_render:4.1f} x render only")
    print(f"  -> {1 / t_full:.2f} fields/s in memory")
    print(f"simulate_dataset incl. writing all files:  {t_write * 1e3:8.1f} ms/field -> {1 / t_write:.2f} fields/s")


if __name__ == "__main__":
    main()
