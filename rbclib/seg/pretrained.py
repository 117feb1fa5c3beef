"""Pretrained encoder and decoder weights into a ResUnet: the file that self-supervised
pretraining (:mod:`rbclib.ssl.pretrain`) writes, read here so that segmentation training
can start from it without depending on the pretraining code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from rbclib.core.files import ImageFileError
from rbclib.core.training import load_checkpoint

WEIGHTS_FILE = "encoder_decoder.pt"
"""The pretrained weights in an SSL folder: config, encoder, decoder, rec_head, step."""


def load_pretrained_weights(ssl_dir: str | Path) -> dict[str, Any]:
    """The pretrained weights that SSL pretraining wrote into ``ssl_dir``.

    Parameters
    ----------
    ssl_dir : str or pathlib.Path
        The SSL folder holding encoder_decoder.pt (:data:`WEIGHTS_FILE`).

    Returns
    -------
    dict[str, Any]
        {"config", "encoder", "decoder", "rec_head", "step"} from ``ssl_dir``/encoder_decoder.pt.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When the weights file does not exist (run pretrain_ssl into this folder first).
    """
    path = Path(ssl_dir) / WEIGHTS_FILE
    if not path.exists():
        raise ImageFileError(path, "SSL weights not found (run pretrain_ssl into this folder first)")
    return load_checkpoint(path)


def load_into_resunet(model: nn.Module, ssl_dir: str | Path) -> nn.Module:
    """Copy pretrained encoder and decoder weights of ``ssl_dir`` into a ResUnet ``model``.

    The segmentation head stays as it was.

    Parameters
    ----------
    model : torch.nn.Module
        A ResUnet built by :func:`rbclib.seg.models.build_resunet` with the same encoder and
        in_channels as the pretraining; changed in place.
    ssl_dir : str or pathlib.Path
        The SSL folder (see :func:`load_pretrained_weights`).

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    ValueError
        When ``model`` has no ``.encoder`` / ``.decoder``, or the architectures differ (the
        message names the SSL encoder and the mismatching tensors).
    """
    saved = load_pretrained_weights(ssl_dir)
    ssl_encoder = saved["config"].get("encoder")
    for part in ("encoder", "decoder"):
        target = getattr(model, part, None)
        if target is None:
            raise ValueError(f"{type(model).__name__} has no .{part}; load_into_resunet needs a ResUnet")
        have = target.state_dict()
        weights = saved[part]
        missing = sorted(set(have) - set(weights))
        extra = sorted(set(weights) - set(have))
        shapes = sorted(k for k in set(have) & set(weights) if have[k].shape != weights[k].shape)
        if missing or extra or shapes:
            detail = "; ".join(f"{name}: {keys[:3]}{'...' if len(keys) > 3 else ''}" for name, keys in
                               (("missing", missing), ("unexpected", extra), ("shape differs", shapes)) if keys)
            raise ValueError(f"{Path(ssl_dir)}: SSL weights (encoder {ssl_encoder!r}, in_channels "
                             f"{saved['config'].get('in_channels')}) do not fit the model's {part} ({detail})")
        target.load_state_dict(weights)
    return model
