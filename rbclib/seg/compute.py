"""Compute figures of Table 3: parameters, MACs per patch, time for N full images."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not).

    Parameters
    ----------
    model : torch.nn.Module
        The network.

    Returns
    -------
    int
        Total element count of all its parameters.
    """
    return int(sum(p.numel() for p in model.parameters()))


def count_macs_call(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of every torch operation ``fn()`` runs.

    Convolutions and matrix products, counted by ``torch.utils.flop_counter.FlopCounterMode``;
    MACs = FLOPs / 2. ``fn`` runs under ``torch.no_grad()``.

    Parameters
    ----------
    fn : Callable[[], object]
        Called once without arguments; its result is ignored.

    Returns
    -------
    int
        The multiply-accumulates counted.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops() // 2)


def count_macs(model: nn.Module, *, patch: int = 256, in_channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass on a (1, in_channels, patch, patch) input.

    The paper's Table 3 "MACs (G)" at patch=256; counted on a deep copy in eval mode on the CPU.

    Parameters
    ----------
    model : torch.nn.Module
        The network (left unchanged).
    patch : int, optional
        Side of the square zero input [px], default 256.
    in_channels : int, optional
        Channels of the input, default 3.

    Returns
    -------
    int
        The multiply-accumulates of one forward pass.
    """
    import copy

    net = copy.deepcopy(model).to("cpu").eval()
    x = torch.zeros(1, in_channels, patch, patch)
    return count_macs_call(lambda: net(x))


def time_images(predict: Callable[[np.ndarray], object], images: Sequence[np.ndarray], *,
                warmup: int = 1, device: str | torch.device | None = None) -> float:
    """The paper's Table 3 protocol: total seconds to predict ``images`` one after another.

    ``warmup`` untimed calls first on the first image; CUDA is synchronised before reading
    the clock.

    Parameters
    ----------
    predict : Callable[[numpy.ndarray], object]
        Called as ``predict(image)``; its result is ignored.
    images : Sequence[numpy.ndarray]
        The images to predict (10 test images in the paper).
    warmup : int, optional
        Untimed calls on the first image before timing, default 1.
    device : str or torch.device, optional
        When a CUDA device, CUDA is synchronised before each clock reading; None: no sync.

    Returns
    -------
    float
        Total wall-clock seconds for all ``images``.

    Raises
    ------
    ValueError
        When ``images`` is empty.
    """
    if not images:
        raise ValueError("time_images: no images given")
    sync = (lambda: torch.cuda.synchronize()) if (device is not None and torch.device(device).type == "cuda") else (lambda: None)
    for _ in range(warmup):
        predict(images[0])
    sync()
    start = time.perf_counter()
    for img in images:
        predict(img)
    sync()
    return time.perf_counter() - start
