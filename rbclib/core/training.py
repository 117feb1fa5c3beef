"""The training scaffold shared by every trainer (segmentation, both diffusion GANs, SSL).

One model-folder layout (docs/ARCHITECTURE.md, "Model folders"): ``config.json`` (what was
trained, how), ``last.pt`` (weights + optimiser state to resume), the weights the next
stage loads (``best.pt``, ``generator.pt`` or ``encoder_decoder.pt``) and ``log.csv`` (one
row per epoch or logged step). Checkpoints are written atomically and read with
``torch.load(..., weights_only=True)``; an unreadable one is one error naming the file.
Device choice (cuda, mps, cpu), bfloat16 autocast where the device runs it, and channels-last
memory are decided here once; data-parallel training is in :mod:`rbclib.core.distributed`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from rbclib.core.files import atomic_path, write_csv

CHECKPOINT = "last.pt"
LOG = "log.csv"
CONFIG = "config.json"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else cuda, mps or cpu, whichever is available first.

    Parameters
    ----------
    device : str or torch.device, optional
        The device asked for; None picks one.

    Returns
    -------
    torch.device
        ``device``, or the first available of cuda, mps and cpu.
    """
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.lru_cache(maxsize=8)
def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs in hardware on ``device``.

    Parameters
    ----------
    device : torch.device
        The device the model runs on.

    Returns
    -------
    bool
        True on a CUDA GPU with bf16, or a CPU with AVX-512-bf16 / AMX (oneDNN); elsewhere
        bfloat16 is emulated and slower than fp32.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast of a forward pass on ``device`` when ``enabled`` and the hardware runs it.

    Weights stay float32; losses should be computed on ``.float()`` outputs.

    Parameters
    ----------
    device : torch.device
        The device the pass runs on.
    enabled : bool
        Whether bfloat16 is wanted (the config's ``autocast_bf16``).

    Returns
    -------
    contextlib.AbstractContextManager
        ``torch.autocast`` in bfloat16 when ``enabled`` and :func:`bf16_is_fast`, else a
        null context: the pass runs in float32. Emulated bfloat16 made a quick ResUnet
        training step about 100x slower on a CPU without AVX-512 (24 s instead of 0.2 s).
    """
    if not enabled or not bf16_is_fast(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def fused_optimiser(device: torch.device) -> bool:
    """Whether torch's Adam/AdamW should run fused on ``device``.

    Fused is one kernel over all parameters instead of a loop of small ones. The quick
    ResUnet's 14.3 M parameters: 7-9 ms instead of 34-52 ms a step on the 2-core CPU.

    Parameters
    ----------
    device : torch.device
        The device the optimiser's parameters are on.

    Returns
    -------
    bool
        True on CPU and CUDA.
    """
    return device.type in ("cpu", "cuda")


def channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels-last memory (faster convolutions on CPU and GPU).

    Parameters
    ----------
    model : torch.nn.Module
        The model, moved in place.
    device : torch.device
        Where it goes.

    Returns
    -------
    torch.nn.Module
        ``model``, on ``device`` and channels-last.
    """
    return model.to(device).to(memory_format=torch.channels_last)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` atomically.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint file.
    state : dict
        What to save; its tensors are moved to the CPU by the caller.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict read with ``weights_only=True``.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint file.
    map_location : str or torch.device, optional
        Where the tensors are loaded (default "cpu").

    Returns
    -------
    dict
        The checkpoint's state.

    Raises
    ------
    FileNotFoundError
        There is no such file.
    ValueError
        The file cannot be read or is not a dict; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with warnings.catch_warnings(record=True) as caught:  # torch's warnings about a file it then cannot read
        warnings.simplefilter("always")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
            raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}); "
                             "was it written by rbclib and copied completely?") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an rbclib checkpoint (expected a dict, found {type(state).__name__})")
    return state


def compress_weights(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A state dict for shipping, about a quarter of the float32 size.

    :func:`expand_weights` undoes it. The answers it changes are measured where it is used
    (the shipped default model's card is measured on the expanded weights).

    Parameters
    ----------
    state : dict of str to torch.Tensor
        A model's state dict.

    Returns
    -------
    dict
        ``{"int8": ..., "int8_scales": ..., "other": ...}``: weights of two or more
        dimensions (convolutions, linear layers) as int8 with one float32 scale per output
        channel (symmetric, max |w| -> 127), the rest (biases, norm statistics) as float16.
    """
    int8, scales, other = {}, {}, {}
    for name, value in state.items():
        if torch.is_floating_point(value) and value.ndim >= 2:
            flat = value.float().reshape(value.shape[0], -1)
            scale = (flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0).reshape(-1, *[1] * (value.ndim - 1))
            int8[name] = torch.round(value.float() / scale).clamp(-127, 127).to(torch.int8)
            scales[name] = scale
        else:
            other[name] = value.half() if torch.is_floating_point(value) else value
    return {"int8": int8, "int8_scales": scales, "other": other}


def expand_weights(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The float32 state dict of :func:`compress_weights`'s output.

    Parameters
    ----------
    packed : dict
        What :func:`compress_weights` returned.

    Returns
    -------
    dict of str to torch.Tensor
        The state dict, floating-point entries as float32.
    """
    state = {name: q.float() * packed["int8_scales"][name] for name, q in packed["int8"].items()}
    state.update({name: v.float() if torch.is_floating_point(v) else v for name, v in packed["other"].items()})
    return state


def resume_state(folder: str | Path, identity: dict[str, Any], *,
                 stored: Callable[[dict[str, Any]], dict[str, Any]] = lambda state: state["identity"],
                 map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The ``last.pt`` a trainer resumes from: the one resume path of every trainer.

    Parameters
    ----------
    folder : str or pathlib.Path
        The model folder.
    identity : dict
        What must be equal for the checkpoint to belong to this run (config, seed, corpus),
        compared after a JSON round trip (tuples and lists are the same).
    stored : callable, optional
        Reads the identity a checkpoint recorded from its state dict (default:
        ``state["identity"]``); trainers that store it otherwise pass their reader.
    map_location : str or torch.device, optional
        Where the tensors are loaded.

    Returns
    -------
    dict or None
        The checkpoint's state, or None when the folder holds none.

    Raises
    ------
    ValueError
        The checkpoint belongs to another run; the message names the file and the keys that differ.
    """
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        return None
    state = load_checkpoint(path, map_location=map_location)
    saved, wanted = _as_json(stored(state)), _as_json(identity)
    if saved != wanted:
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise ValueError(f"{path}: written by a different run (it differs in {differ}); "
                         "use another folder or start afresh (resume=False)")
    return state


def restore(state: dict[str, Any], parts: dict[str, Any]) -> None:
    """Load each part's state dict from a resumed checkpoint.

    Parameters
    ----------
    state : dict
        A checkpoint returned by :func:`resume_state`.
    parts : dict
        ``{key in state: object with load_state_dict}`` (models, optimisers, schedulers).
    """
    for key, part in parts.items():
        part.load_state_dict(state[key])


def _as_json(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples become lists), for comparing identities."""
    return json.loads(json.dumps(value))


def read_log_rows(folder: str | Path, *, upto: str, last: float) -> list[dict[str, Any]]:
    """The rows of ``folder/log.csv`` that a resumed run keeps.

    Parameters
    ----------
    folder : str or pathlib.Path
        The model folder.
    upto : str
        The log column that counts progress (epoch or step).
    last : float
        The last value of ``upto`` to keep.

    Returns
    -------
    list of dict
        The rows whose column ``upto`` is at most ``last``; [] when there is no log.
    """
    path = Path(folder) / LOG
    if not path.is_file():
        return []
    frame = pd.read_csv(path)
    return frame[frame[upto] <= last].to_dict("records")


def write_log(folder: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """Rewrite ``folder/log.csv`` from ``rows`` atomically.

    Parameters
    ----------
    folder : str or pathlib.Path
        The model folder.
    rows : sequence of dict
        One dict per log row.
    columns : sequence of str, optional
        The column order; None takes the rows' keys.
    """
    write_csv(Path(folder) / LOG, pd.DataFrame(list(rows), columns=list(columns) if columns else None))


def progress(total: int, *, initial: int = 0, desc: str, enabled: bool = True) -> Any:
    """A tqdm progress bar over optimiser steps (the caller closes it).

    Parameters
    ----------
    total : int
        Steps in all.
    initial : int, optional
        Steps already done (a resumed run).
    desc : str
        The bar's label.
    enabled : bool, optional
        False gives a disabled bar.

    Returns
    -------
    tqdm.auto.tqdm
        The bar.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled)
