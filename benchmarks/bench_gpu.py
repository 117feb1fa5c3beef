"""Benchmark: `rbc assess` holograms per second with the paper-sized ResUnet on a GPU (issue 17).

The issue's GPU target: at least 50 holograms of 900 x 900 per second with the paper-sized
ResUnet (``segment`` settings of the ``paper`` profile: resnet50 encoder, decoder 1024..64,
256 px tiles). Speed does not depend on the weights, so the model is built with random
weights and written as a model folder; no trained paper model is needed. Simulates ``--n``
twin holograms with background holograms, then times, warm, best of ``--repeats``:

- ``rbc assess`` end to end (``rbclib.study.assess.assess``: read, reconstruct, segment,
  clean up, measure, write) with ``--batch-images`` images per forward batch;
- the model alone (``rbclib.seg.infer.predict_images`` on the reconstructed phases), the
  ceiling for the end-to-end rate.

Without a CUDA GPU it says SKIP and exits 0 (``make bench`` runs it bare), unless asked for
``--device cpu``, which runs it slowly (a check of the script, not of the target):

    .venv/bin/python benchmarks/bench_gpu.py [--device cuda] [--n 64] [--batch-images 8]
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --n 2 --repeats 1 --batch-images 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

TARGET_PER_S = 50.0


def paper_model_folder(folder: Path, *, seed: int = 0) -> Path:
    """A model folder (``config.json`` + ``best.pt``) of the paper-sized ResUnet with random
    weights, as ``rbclib.seg.train`` writes one."""
    import torch

    from rbclib.core.files import write_json
    from rbclib.core.training import save_checkpoint
    from rbclib.profile import get_profile
    from rbclib.seg.infer import model_from_config

    seg = get_profile("paper")["segment"]
    config = {"model_name": "resunet", "encoder": seg["encoder"], "decoder_channels": list(seg["decoder_channels"]),
              "in_channels": 3, "classes": 5, "patch": int(seg["patch"]), "overlap": int(seg["overlap"]),
              "pixel_size_m": 1.441e-07}
    torch.manual_seed(seed)
    model = model_from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", config)
    save_checkpoint(folder / "best.pt", {"model": model.state_dict()})
    return folder


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--n", type=int, default=64, help="number of simulated holograms")
    parser.add_argument("--size", type=int, default=900, help="hologram side [px]")
    parser.add_argument("--batch-images", type=int, default=8, help="images per forward batch")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes (best counts)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("SKIP: no CUDA GPU here (--device cpu runs the check slowly on the CPU)")
        return {}
    warnings.simplefilter("ignore")
    from rbclib.physics.simulated_datasets import simulate_dataset
    from rbclib.seg.infer import load_model, predict_images
    from rbclib.study.assess import assess
    from rbclib.physics.phase_files import ReconstructorCache
    from rbclib.study.image import load_phase
    from rbclib.study.inputs import discover_inputs
    from rbclib.study.segmenter import Segmenter

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        tmp = Path(tmp)
        model_dir = paper_model_folder(tmp / "paper_resunet")
        data = tmp / "data"
        simulate_dataset(data, n_fields=args.n, seed=7, field_px=args.size, progress=False)
        assess(data, tmp / "warm", segmenter=Segmenter(model_dir, device=args.device), progress=False,
               on_error=None, batch_images=args.batch_images)
        best_assess = float("inf")
        for r in range(args.repeats):
            t0 = time.perf_counter()
            assess(data, tmp / f"out{r}", segmenter=Segmenter(model_dir, device=args.device), progress=False,
                   on_error=None, batch_images=args.batch_images)
            best_assess = min(best_assess, time.perf_counter() - t0)

        model, config = load_model(model_dir, device=args.device)
        recon = ReconstructorCache()
        phases = [load_phase(job, reconstructors=recon).phase for job in discover_inputs(data)]
        predict_images(model, phases[:args.batch_images], config=config, fast=None)  # warm
        best_model = float("inf")
        for _ in range(args.repeats):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, len(phases), args.batch_images):
                predict_images(model, phases[i:i + args.batch_images], config=config, fast=None)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best_model = min(best_model, time.perf_counter() - t0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    out = {"device": device_name, "n": args.n, "size": args.size, "batch_images": args.batch_images,
           "assess_holograms_per_s": args.n / best_assess, "model_holograms_per_s": args.n / best_model,
           "target_holograms_per_s": TARGET_PER_S}
    print(f"paper-sized ResUnet ({config['encoder']}, decoder {config['decoder_channels']}, {config['patch']} px tiles) "
          f"on {device_name}, {args.n} holograms of {args.size} x {args.size}, {args.batch_images} per batch, "
          f"best of {args.repeats}")
    print(f"rbc assess end to end: {out['assess_holograms_per_s']:.2f} holograms/s "
          f"({out['assess_holograms_per_s'] / TARGET_PER_S:.3f}x the target of {TARGET_PER_S:g}/s)")
    print(f"model alone:           {out['model_holograms_per_s']:.2f} holograms/s")
    if args.json:
        from rbclib.core.files import write_json

        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
