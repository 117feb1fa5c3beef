"""Probes of a pretrained encoder (stage 05): k-NN and linear accuracy on held-out labelled
images, pretrained against a random encoder of the same architecture."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rbclib.core.training import pick_device
from rbclib.ssl.corpus import holdout_split
from rbclib.seg.pretrained import load_into_resunet, load_pretrained_weights
from rbclib.ssl.pretrain import SSLConfig


# --------------------------------------------------------------------------- probe
@torch.no_grad()
def encoder_features(encoder: nn.Module, images: torch.Tensor, *, in_channels: int = 3, batch_size: int = 64) -> torch.Tensor:
    """Global-average-pooled deepest encoder features of images, in eval mode.

    Parameters
    ----------
    encoder : torch.nn.Module
        An smp encoder (returns a list of feature maps); its training mode is restored after.
    images : torch.Tensor
        (N, 1, H, W) images in [-1, 1].
    in_channels : int, optional
        Channels the single channel is expanded to, default 3.
    batch_size : int, optional
        Images per forward pass, default 64.

    Returns
    -------
    torch.Tensor
        (N, C) features on the CPU.
    """
    was_training = encoder.training
    encoder.eval()
    dev = next(encoder.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev).expand(-1, in_channels, -1, -1)
        out.append(encoder(x)[-1].mean(dim=(2, 3)).cpu())
    encoder.train(was_training)
    return torch.cat(out)


def _knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int) -> float:
    a, b = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    sim = b @ a.t()
    k = min(k, len(train_x))
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(test_x), int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[top_idx], top_sim.exp())
    return float((votes.argmax(dim=1) == test_y).float().mean())


def _linear_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     weight_decay: float = 1e-3) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xa, xb = (train_x - mean) / std, (test_x - mean) / std
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    lin = nn.Linear(xa.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(xa), train_y) + weight_decay * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float((lin(xb).argmax(dim=1) == test_y).float().mean())


def probe_encoder(encoder: nn.Module, images: torch.Tensor, labels: Sequence[int], *, test_fraction: float = 0.3,
                  k: int = 10, seed: int = 0, in_channels: int = 3) -> dict[str, float]:
    """How well frozen encoder features separate labelled images.

    Stratified split of the images into probe-train and probe-test parts; features from
    :func:`encoder_features`.

    Parameters
    ----------
    encoder : torch.nn.Module
        The frozen encoder.
    images : torch.Tensor
        (N, 1, H, W) images in [-1, 1].
    labels : Sequence[int]
        (N,) class ids.
    test_fraction : float, optional
        Share of each class in the probe-test part, default 0.3.
    k : int, optional
        Neighbours of the k-NN, default 10.
    seed : int, optional
        Seed of the split and the torch seed, default 0.
    in_channels : int, optional
        Input channels of the encoder, default 3.

    Returns
    -------
    dict[str, float]
        {"knn_accuracy" (cosine k-NN, similarity-weighted votes), "linear_accuracy"
        (logistic regression on standardised features), "chance" (majority class of the
        test part), "n_train", "n_test"}.

    Raises
    ------
    ValueError
        When the labelled images are too few to split with ``test_fraction``.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train_idx, test_idx = holdout_split(y.numpy(), fraction=test_fraction, seed=seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"{len(y)} labelled images are too few to split with test_fraction={test_fraction}")
    torch.manual_seed(seed)
    feats = encoder_features(encoder, images, in_channels=in_channels)
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    counts = torch.bincount(y[te])
    return {"knn_accuracy": _knn_accuracy(feats[tr], y[tr], feats[te], y[te], k),
            "linear_accuracy": _linear_accuracy(feats[tr], y[tr], feats[te], y[te]),
            "chance": float(counts.max()) / len(te), "n_train": int(len(tr)), "n_test": int(len(te))}


def probe_pretrained_vs_random(ssl_dir: str | Path, images: torch.Tensor, labels: Sequence[int], *, seed: int = 0,
                               test_fraction: float = 0.3, k: int = 10, device: str | None = None) -> pd.DataFrame:
    """:func:`probe_encoder` for the pretrained encoder and a random one of the same architecture.

    Parameters
    ----------
    ssl_dir : str or pathlib.Path
        The SSL folder of the pretrained weights.
    images : torch.Tensor
        (N, 1, H, W) probe images in [-1, 1].
    labels : Sequence[int]
        (N,) class ids.
    seed : int, optional
        Torch seed of the random initialisation (and the probe split), default 0.
    test_fraction : float, optional
        Share of each class in the probe-test part, default 0.3.
    k : int, optional
        Neighbours of the k-NN, default 10.
    device : str, optional
        Where features are computed; default :func:`rbclib.core.training.pick_device`.

    Returns
    -------
    pandas.DataFrame
        One row each for "pretrained" and "random": encoder, architecture and the scores of
        :func:`probe_encoder`.
    """
    from rbclib.seg.models import build_resunet

    cfg = SSLConfig.from_dict(load_pretrained_weights(ssl_dir)["config"])
    rows = []
    for name in ("pretrained", "random"):
        torch.manual_seed(seed)
        model = build_resunet(cfg.encoder, in_channels=cfg.in_channels, decoder_channels=cfg.decoder_channels)
        if name == "pretrained":
            load_into_resunet(model, ssl_dir)
        model.to(pick_device(device))
        res = probe_encoder(model.encoder, images, labels, test_fraction=test_fraction, k=k, seed=seed,
                            in_channels=cfg.in_channels)
        rows.append({"encoder": name, "architecture": cfg.encoder, **res})
    return pd.DataFrame(rows)
