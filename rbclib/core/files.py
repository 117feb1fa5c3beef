"""Atomic writing of text, JSON and CSV files, output-folder checks, and the error raised
for an unusable input file (it names the file and the problem).

Every writer writes to a hidden temporary file beside the target and renames it, so an
interrupted run never leaves a half-written file under the real name. Imports nothing else
of rbclib, so every module (``config`` included) can write through it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


class ImageFileError(ValueError):
    """A file could not be used; the message names the file and the problem.

    Parameters
    ----------
    path : str or pathlib.Path
        The file (kept as ``self.path``, a Path).
    problem : str
        What is wrong with it (kept as ``self.problem``).
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, renamed onto ``path`` on success.

    On success the temporary file is flushed to disk (fsync) and renamed onto ``path``, then
    the folder entry is flushed, so a crash leaves either the old file or the new one, never a
    partial one under the real name. The parent folder is created when missing.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to write.

    Yields
    ------
    pathlib.Path
        The temporary file to write (hidden: ``.<name>.*``); removed if the block fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_dir(path: str | Path) -> Path:
    """Check, before any work is done and without creating anything, that ``path`` is or can
    become a writable folder.

    Parameters
    ----------
    path : str or pathlib.Path
        The output folder.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``path`` is a file, lies under a file, or its nearest existing folder is not writable
        (the message names it).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: output path exists and is not a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{path}: cannot create the output folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: output folder is not writable ({existing} does not allow writing)")
    return path


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`).

    Parameters
    ----------
    path : str or pathlib.Path
        The file to write.
    text : str
        Its content.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically; numpy scalars and arrays and Paths are converted.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to write.
    obj : Any
        A JSON-serialisable object (numpy integers, floats, arrays and Paths allowed).

    Raises
    ------
    TypeError
        Something in ``obj`` that cannot be serialised.
    """
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to read.

    Returns
    -------
    Any
        The parsed content.

    Raises
    ------
    ImageFileError
        The file is missing or not valid JSON (the message names it).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ImageFileError(path, "file not found") from None
    except json.JSONDecodeError as exc:
        raise ImageFileError(path, f"not valid JSON ({exc})") from exc


FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a CSV cell as a formula (OWASP, CSV injection)."""


def neutralise_formula(text: str) -> str:
    """``text`` with a leading ``'`` when it starts like a spreadsheet formula.

    OWASP's advice against CSV injection: the quote makes Excel and LibreOffice show the text
    as text.

    Parameters
    ----------
    text : str
        A cell's text.

    Returns
    -------
    str
        ``text``, prefixed with ``'`` when it starts with one of :data:`FORMULA_TRIGGERS`.
    """
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def write_csv(path: str | Path, frame: "Any", **kwargs: Any) -> None:
    """Write a pandas DataFrame atomically (index off unless asked).

    Text cells, and a text index, that a spreadsheet would run as a formula are neutralised
    (:func:`neutralise_formula`); numbers, negative ones included, are written as they are.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file to write.
    frame : pandas.DataFrame
        The table; it is copied, not changed.
    **kwargs
        Passed to ``DataFrame.to_csv``; ``index`` defaults to False.
    """
    kwargs.setdefault("index", False)
    import pandas as pd

    def text(values: Any) -> bool:
        return values.dtype == object or pd.api.types.is_string_dtype(values.dtype)

    def safe(v: Any) -> Any:
        return neutralise_formula(v) if isinstance(v, str) else v

    frame = frame.copy()
    for column in frame.columns:
        if text(frame[column]):
            frame[column] = frame[column].map(safe)
    if text(frame.index):
        frame.index = frame.index.map(safe)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


KEEP_BACKUPS = 10
"""Backups of a decisions file kept beside it (the newest ones)."""


def back_up(path: str | Path, *, keep: int = KEEP_BACKUPS) -> Path:
    """Copy ``path`` to ``<stem>.<UTC time>.bak<suffix>`` beside it, unless the newest backup
    already holds the same bytes (used before a file of human decisions is changed).

    Parameters
    ----------
    path : str or pathlib.Path
        The file to back up.
    keep : int, optional
        How many of the newest backups to keep (default :data:`KEEP_BACKUPS`); older ones are
        deleted.

    Returns
    -------
    pathlib.Path
        The backup that holds the current content.
    """
    path = Path(path)
    backups = sorted(path.parent.glob(f"{path.stem}.*.bak{path.suffix}"))
    if backups and backups[-1].read_bytes() == path.read_bytes():
        return backups[-1]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path.with_name(f"{path.stem}.{stamp}.bak{path.suffix}")
    shutil.copy2(path, backup)
    for old in [*backups, backup][:-keep]:
        old.unlink(missing_ok=True)
    return backup


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes.

    Parameters
    ----------
    path : str or pathlib.Path
        The file, read in 1 MiB blocks.

    Returns
    -------
    str
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOCK_NAME = ".rbc.lock"
"""The lock file a tool holds in its output folder while it writes there (:func:`output_lock`)."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(folder: str | Path, tool: str) -> Iterator[Path]:
    """Hold ``folder/.rbc.lock`` while ``tool`` writes into ``folder``.

    A lock left by a process that is gone (same host, pid not running) is stale and taken over.

    Parameters
    ----------
    folder : str or pathlib.Path
        The output folder; created when missing.
    tool : str
        Who holds the lock, written into it (with pid, host and start time).

    Yields
    ------
    pathlib.Path
        The lock file; removed when the block ends.

    Raises
    ------
    ValueError
        Another live process holds the lock (the message names the folder and the holder).
    """
    import socket

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "tool": tool,
          "since": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                holder, pid, host = {}, -1, ""
            if host == me["host"] and not _process_alive(pid):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise ValueError(f"{folder}: in use by {holder.get('tool', 'another run')} (pid {pid} on "
                             f"{host or 'an unknown host'} since {holder.get('since', '?')}); wait for it to "
                             f"finish, or delete {lock} if that run is gone") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise ValueError(f"{folder}: cannot take {lock} (another run keeps taking it)")
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
