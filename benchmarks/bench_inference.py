"""Full-image inference speed: rbclib.seg.infer against a naive fp32 patch-by-patch loop.

Same model, same images, same run. Three ways to segment whole phase images:
- naive: one tile at a time, fp32, NCHW, ``torch.no_grad`` (the reference);
- exact: ``predict_image`` (tiles batched, channels-last, ``torch.inference_mode``, fp32):
  its probabilities must equal the naive loop's within float tolerance;
- fast: ``predict_image(fast=True)`` (adds bfloat16 autocast): its Dice against the
  ground truth (or, without one, against the fp32 labels) is compared with fp32's.
Prints images/s, the speed-ups, the differences, and parameters/MACs of every model.

    python benchmarks/bench_inference.py [--model-dir RUN/models/seg_backbone --run-dir RUN]
                                         [--encoder resnet50 --size 900 --images 3]
Without --model-dir a randomly initialised ResUnet is timed on simulated fields.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch


def naive_predict(model, phase, *, config, tile, overlap):
    """Reference: every tile alone, fp32, NCHW, no_grad; blended like predict_image."""
    from rbclib.seg.datasets import phase_to_input
    from rbclib.seg.tiles import blend_window, pad_to_min, tile_positions

    h, w = phase.shape
    padded = pad_to_min(phase, tile)
    win = blend_window(tile, overlap)
    acc = np.zeros((config["classes"],) + padded.shape, np.float32)
    norm = np.zeros(padded.shape, np.float32)
    with torch.no_grad():
        for y, x in tile_positions(padded.shape, tile, overlap):
            inp = torch.from_numpy(phase_to_input(padded[y:y + tile, x:x + tile], in_channels=config["in_channels"]))
            p = torch.softmax(model(inp[None]), 1)[0].numpy()
            acc[:, y:y + tile, x:x + tile] += p * win
            norm[y:y + tile, x:x + tile] += win
    probs = (acc / norm)[:, :h, :w]
    return probs.argmax(0).astype(np.uint8), probs


def main() -> None:
    from rbclib.seg.compute import count_macs, count_parameters
    from rbclib.seg.infer import load_model, predict_image
    from rbclib.seg.metrics import dice_per_class, mean_scores
    from rbclib.seg.models import BASELINES, build_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="trained model folder (default: random ResUnet)")
    ap.add_argument("--run-dir", help="run folder whose test split is used (with --model-dir)")
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--size", type=int, default=900, help="side of the simulated fields [px]")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-macs", action="store_true", help="skip the parameter/MAC listing")
    args = ap.parse_args()
    torch.manual_seed(0)

    if args.model_dir:
        model, config = load_model(args.model_dir, device="cpu")
    else:
        config = {"model_name": "resunet", "encoder": args.encoder, "in_channels": 3, "classes": 5}
        model = build_model("resunet", encoder=args.encoder).eval().to(memory_format=torch.channels_last)
    config = {**config, "patch": args.tile, "overlap": args.overlap}
    naive_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()

    if args.run_dir:
        from rbclib.seg.datasets import load_pairs

        pairs = load_pairs(args.run_dir, "test")[: args.images]
        images, truths = [p.phase for p in pairs], [p.labels for p in pairs]
    else:
        from rbclib.physics.simulate import simulate_field

        fields = [simulate_field(i, field_px=args.size) for i in range(args.images)]
        images, truths = [f.phase for f in fields], [f.labels for f in fields]
    print(f"model {config['model_name']}/{config['encoder']}, {len(images)} images of {images[0].shape}, "
          f"tile {args.tile} overlap {args.overlap}, batch {args.batch}, torch threads {torch.get_num_threads()}, "
          f"device cpu")

    def timed(fn):
        fn(images[0])  # warm-up
        t0 = time.perf_counter()
        out = [fn(img) for img in images]
        return out, time.perf_counter() - t0

    naive, t_naive = timed(lambda im: naive_predict(naive_model, im, config=config, tile=args.tile, overlap=args.overlap))
    exact, t_exact = timed(lambda im: predict_image(model, im, config=config, batch_size=args.batch))
    fast, t_fast = timed(lambda im: predict_image(model, im, config=config, batch_size=args.batch, fast=True))

    n = len(images)
    max_diff = max(float(np.abs(e.probs - p).max()) for e, (_, p) in zip(exact, naive))
    same = np.mean([np.mean(e.labels == l) for e, (l, _) in zip(exact, naive)])
    d32 = mean_scores(dice_per_class(e.labels, t) for e, t in zip(exact, truths))["overall"]
    d16 = mean_scores(dice_per_class(f.labels, t) for f, t in zip(fast, truths))["overall"]
    agree = mean_scores(dice_per_class(f.labels, e.labels) for f, e in zip(fast, exact))["overall"]
    print(f"naive fp32 patch by patch: {n / t_naive:.3f} images/s ({t_naive / n:.2f} s/image)")
    print(f"exact (fp32, batched, channels-last): {n / t_exact:.3f} images/s, speed-up x{t_naive / t_exact:.2f}; "
          f"max |prob diff| vs naive {max_diff:.2e}, label agreement {same:.6f}")
    print(f"fast (bf16 autocast, channels-last): {n / t_fast:.3f} images/s, speed-up x{t_naive / t_fast:.2f}; "
          f"Dice overall vs truth fp32 {d32:.4f} bf16 {d16:.4f} (difference {d16 - d32:+.4f}); "
          f"Dice of bf16 labels against fp32 labels {agree:.4f}")

    if not args.no_macs:
        print("\nmodel, encoder, parameters, MACs (G) per 256x256 patch")
        for name in ("resunet", *BASELINES):
            m = build_model(name, encoder=args.encoder)
            print(f"{name:14s} {args.encoder:9s} {count_parameters(m):>12,d} {count_macs(m, patch=256) / 1e9:8.2f}")


if __name__ == "__main__":
    main()
