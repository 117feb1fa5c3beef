"""Train one model of a run folder from the command line, in one process or data-parallel
under ``torchrun`` (the notebooks call the same trainers in-process).

    [torchrun --nproc_per_node N] python -m rbclib.launch seg RUN_DIR OUT_DIR --model resunet \
        [--profile quick] [--config '{"epochs": 3}'] [--init-from SSL_DIR] [--extra-pairs-dir DIR]
    [torchrun --nproc_per_node N] python -m rbclib.launch ddgan RUN_DIR OUT_DIR --kind phase|mask [--profile quick]
    [torchrun --nproc_per_node N] python -m rbclib.launch ssl OUT_DIR [--corpus simulated] [--profile quick]

Sizes come from the profile (:mod:`rbclib.profile`); how the ranks share the work is in
:mod:`rbclib.core.distributed`. Rank 0 writes the model folder, and ``ddp_sync.json`` records
that the ranks ended with the same weights.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from rbclib.profile import PROFILE_NAMES, get_profile


def _seg(args: argparse.Namespace, profile: dict[str, Any]) -> None:
    from rbclib.seg.config import make_config
    from rbclib.seg.train import config_from_profile, train_from_run

    table = profile["segment"]
    cfg = make_config(config_from_profile(table, args.model), **json.loads(args.config))
    train_from_run(args.run_dir, model_name=args.model, out_dir=args.out_dir, config=cfg, seed=args.seed,
                   val_fraction=float(table["val_fraction"]), init_from=args.init_from,
                   extra_pairs_dir=args.extra_pairs_dir)


def _ddgan(args: argparse.Namespace, profile: dict[str, Any]) -> None:
    import dataclasses

    from rbclib.synth import ddgan
    from rbclib.synth.ddgan_data import load_instances, load_split_fields

    config = ddgan.config_from_profile(profile["diffusion"], args.kind)
    config = dataclasses.replace(config, **json.loads(args.config))
    phases, labels, stems = load_split_fields(args.run_dir, "train")
    ddgan.train_ddgan(phases, labels, config=config, out_dir=args.out_dir, seed=args.seed,
                      instances=load_instances(args.run_dir, stems))


def _ssl(args: argparse.Namespace, profile: dict[str, Any]) -> None:
    from rbclib.ssl.corpus import prepare_ssl_data
    from rbclib.ssl.pretrain import SSLConfig, pretrain_ssl, queue_size_for

    P, seg = profile["ssl"], profile["segment"]
    data = prepare_ssl_data(args.corpus, image_px=P["image_px"], seed=args.seed, default_pbc=args.pbc_folder,
                            max_images=P["max_images"], probe_fraction=P["probe_fraction"],
                            sim_fields=P["sim_fields"], sim_field_px=P["sim_field_px"],
                            probe_fields=P["probe_fields"], probe_crop_px=P["probe_crop_px"])
    # The encoder and decoder 06 builds, or its ResUnet cannot take the weights (as 05 does).
    settings = dict(P["ssl"], encoder=seg["encoder"], decoder_channels=seg["decoder_channels"], **json.loads(args.config))
    settings["queue_size"] = queue_size_for(len(data.pretrain), queue_size=settings["queue_size"],
                                            batch_size=settings["batch_size"])
    pretrain_ssl(data.pretrain, out_dir=args.out_dir, config=SSLConfig.from_dict(settings), seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and train the model it names (``seg``, ``ddgan`` or ``ssl``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; None reads ``sys.argv``.

    Returns
    -------
    int
        The exit status, 0; errors propagate as exceptions. Under ``torchrun`` the process
        group is destroyed before it returns.
    """
    import torch

    p = argparse.ArgumentParser(prog="python -m rbclib.launch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    seg = sub.add_parser("seg", help="a segmentation model (06_finetune's trainer)")
    ddg = sub.add_parser("ddgan", help="a diffusion GAN, G_p or G_M (03_train_diffusion's trainer)")
    ssl = sub.add_parser("ssl", help="the SSL-pretrained ResUnet (05_ssl_pretrain's trainer)")
    for q in (seg, ddg):
        q.add_argument("run_dir", type=Path, help="run folder with splits.json, phase/ and labels/")
    for q in (seg, ddg, ssl):
        q.add_argument("out_dir", type=Path, help="model folder to write (resumed when it holds last.pt)")
        q.add_argument("--profile", default="quick", choices=list(PROFILE_NAMES))
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--config", default="{}", help="JSON object of training config overrides")
    seg.add_argument("--model", default="resunet", help="resunet or a baseline (unet, deeplabv3plus, fcn, pspnet, gan_watershed)")
    seg.add_argument("--init-from", type=Path, help="SSL model folder whose weights start the ResUnet")
    seg.add_argument("--extra-pairs-dir", type=Path, help="folder of synthetic pairs added to the patches (04)")
    ddg.add_argument("--kind", choices=["phase", "mask"], required=True, help="G_p (phase) or G_M (mask)")
    ssl.add_argument("--corpus", default="simulated", help="simulated, bloodmnist, pbc or a PBC-layout folder")
    ssl.add_argument("--pbc-folder", type=Path, help="the folder the corpus 'pbc' names")
    args = p.parse_args(argv)
    {"seg": _seg, "ddgan": _ddgan, "ssl": _ssl}[args.what](args, get_profile(args.profile))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
