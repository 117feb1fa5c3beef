"""Run the numbered notebooks headless with papermill (``rbc run``).

Each notebook ``notebooks/NN_name.ipynb`` gets the parameters ``profile``, ``run_dir``
and ``seed`` injected; its executed copy lands in ``<run_dir>/notebooks/``. The run stops
at the first failing notebook and names it and the failing cell. Wall time per stage is
recorded in ``<run_dir>/timings.json``. A run that reaches the last notebook ends by writing
``<run_dir>/report.md`` and ``report.html`` (:func:`rbclib.report.write_run_report`) and
``summary.json`` (:func:`rbclib.summary.write_summary`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rbclib.core.files import read_json, write_json
from rbclib.core.paths import RunPaths, source_checkout

KERNEL_NAME = "rbc-holo"
NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")


class NotebookFailed(RuntimeError):
    """A notebook raised; names the notebook, the failing cell and the error.

    Parameters
    ----------
    notebook : pathlib.Path
        The committed notebook that failed.
    cell_index : int or None
        0-based index of the failing cell; None when it cannot be found.
    source : str
        The failing cell's source (its first line is quoted in the message).
    error : str
        The error, ``"<name>: <value>"``.
    executed : pathlib.Path
        The executed copy, which holds the traceback.
    """

    def __init__(self, notebook: Path, cell_index: int | None, source: str, error: str, executed: Path):
        self.notebook, self.cell_index, self.executed = notebook, cell_index, executed
        first = source.strip().splitlines()[0] if source.strip() else ""
        where = f"cell {cell_index + 1} (counting from 1)" if cell_index is not None else "an unknown cell"
        super().__init__(f"{notebook.name} failed in {where} ({first[:80]!r}): {error}\n"
                         f"executed copy with the traceback: {executed}")


@dataclass(frozen=True)
class Stage:
    """One numbered notebook of the pipeline.

    Attributes
    ----------
    number : str
        Its two-digit number (``"01"``).
    path : pathlib.Path
        The notebook ``NN_name.ipynb``.
    """

    number: str
    path: Path

    @property
    def name(self) -> str:
        """The notebook's stem (``01_reconstruct``)."""
        return self.path.stem


def default_notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder.

    Returns
    -------
    pathlib.Path
        ``notebooks/`` of the source checkout.

    Raises
    ------
    ValueError
        rbclib is an installed wheel (no checkout).
    """
    checkout = source_checkout()
    if checkout is None:
        raise ValueError("rbclib is installed without its repository: pass --notebooks DIR "
                         "(the folder of NN_*.ipynb notebooks)")
    return checkout / "notebooks"


def discover(notebooks_dir: str | Path) -> list[Stage]:
    """Notebooks named ``NN_*.ipynb`` in ``notebooks_dir``, in order.

    Parameters
    ----------
    notebooks_dir : str or pathlib.Path
        The folder of the notebooks.

    Returns
    -------
    list of Stage
        The stages, sorted by file name.

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    ValueError
        No such notebook in it, or two with the same number.
    """
    folder = Path(notebooks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: notebooks folder not found")
    stages = [Stage(m.group(1), p) for p in sorted(folder.iterdir()) if (m := NOTEBOOK_PATTERN.match(p.name))]
    if not stages:
        raise ValueError(f"{folder}: no notebooks named NN_*.ipynb (e.g. 01_reconstruct.ipynb) in this folder")
    numbers = [s.number for s in stages]
    dupes = sorted({n for n in numbers if numbers.count(n) > 1})
    if dupes:
        raise ValueError(f"{folder}: more than one notebook numbered {dupes}")
    return stages


def select(stages: list[Stage], *, only: Iterable[str] | None = None, start_from: str | None = None) -> list[Stage]:
    """Filter stages by number.

    Parameters
    ----------
    stages : list of Stage
        The stages (:func:`discover`).
    only : iterable of str, optional
        Numbers to keep (e.g. ["01", "03"]; "3" means "03").
    start_from : str, optional
        First number to keep ("03").

    Returns
    -------
    list of Stage
        The stages kept, in order.

    Raises
    ------
    ValueError
        A number that is not a number or names no notebook, or a filter that keeps none.
    """
    def number(text: str, option: str) -> str:
        if not str(text).strip().isdigit():
            raise ValueError(f"{option} {text}: expected notebook numbers such as 01 or 3")
        return f"{int(text):02d}"

    known = {s.number for s in stages}
    wanted = [number(n, "--only") for n in only] if only else None
    start_from = number(start_from, "--from") if start_from else None
    for n in (wanted or []) + ([start_from] if start_from else []):
        if n not in known:
            raise ValueError(f"no notebook numbered {n}; have {sorted(known)}")
    out = stages
    if start_from:
        out = [s for s in out if s.number >= start_from]
    if wanted is not None:
        out = [s for s in out if s.number in wanted]
    if not out:
        raise ValueError(f"--only {','.join(wanted or [])} --from {start_from}: no notebook is both")
    return out


def kernel_available(name: str = KERNEL_NAME) -> bool:
    """Whether a Jupyter kernel is registered.

    Parameters
    ----------
    name : str, optional
        The kernel's name (default :data:`KERNEL_NAME`).

    Returns
    -------
    bool
        True when Jupyter knows the kernel.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    return name in KernelSpecManager().find_kernel_specs()


def run_notebooks(
    *,
    profile: str,
    run_dir: str | Path,
    seed: int = 0,
    only: Iterable[str] | None = None,
    start_from: str | None = None,
    notebooks_dir: str | Path | None = None,
    kernel_name: str = KERNEL_NAME,
    extra_parameters: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Execute the selected notebooks in order.

    Parameters
    ----------
    profile : str
        The profile (:func:`rbclib.profile.get_profile`), injected into each notebook.
    run_dir : str or pathlib.Path
        The run folder, injected into each notebook.
    seed : int, optional
        The seed, injected into each notebook (default 0).
    only : iterable of str, optional
        Notebook numbers to run (:func:`select`); without it the run ends with the report and
        ``summary.json``.
    start_from : str, optional
        First notebook number to run (:func:`select`).
    notebooks_dir : str or pathlib.Path, optional
        The folder of the notebooks (default :func:`default_notebooks_dir`).
    kernel_name : str, optional
        The Jupyter kernel (default :data:`KERNEL_NAME`).
    extra_parameters : dict, optional
        More parameters injected into each notebook.
    progress : bool, optional
        Show papermill's progress bar (default True).

    Returns
    -------
    list of pathlib.Path
        The executed copies, under ``<run_dir>/notebooks/``.

    Raises
    ------
    NotebookFailed
        At the first failing notebook.
    RunInterrupted
        Ctrl-C while a notebook ran.
    RuntimeError
        The Jupyter kernel is not registered.
    ValueError
        An unknown profile, a profile off its schema, or a bad notebook selection.

    Notes
    -----
    The parameters are the options of ``rbc run`` (the CLI passes six of them one to one),
    plus ``extra_parameters`` and ``progress``, with which the tests run fixture notebooks
    quietly, and ``kernel_name``, which picks another registered kernel.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from rbclib.profile import get_profile

    get_profile(profile)  # fail early on an unknown profile or a profile file off its schema
    if not kernel_available(kernel_name):
        raise RuntimeError(f"Jupyter kernel {kernel_name!r} is not registered; run `make setup` "
                           f"(python -m ipykernel install --sys-prefix --name {kernel_name})")
    paths = RunPaths(run_dir)
    stages = select(discover(notebooks_dir or default_notebooks_dir()), only=only, start_from=start_from)
    out_dir = paths.root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = read_json(paths.timings_json) if paths.timings_json.exists() else {}
    executed: list[Path] = []
    for stage in stages:
        target = out_dir / stage.path.name
        params = {"profile": profile, "run_dir": str(paths.root), "seed": int(seed), **(extra_parameters or {})}
        print(f"[rbc run] {stage.name} (profile={profile}) -> {target}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(stage.path), str(target), parameters=params, kernel_name=kernel_name,
                cwd=str(stage.path.parent), progress_bar=progress, log_output=False,
            )
        except PapermillExecutionError as exc:
            raise NotebookFailed(stage.path, _cell_index(stage.path, exc.source), exc.source,
                                 f"{exc.ename}: {exc.evalue}", target) from None
        except KeyboardInterrupt:
            _mark_interrupted(target)
            raise RunInterrupted(f"interrupted during {stage.name}; its partial copy {target} says so, "
                                 f"and `rbc run --from {stage.number}` starts again there") from None
        seconds = time.perf_counter() - start
        timings[stage.name] = {"seconds": round(seconds, 2), "profile": profile,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(paths.timings_json, timings)
        print(f"[rbc run] {stage.name} done in {seconds:.1f} s", flush=True)
        executed.append(target)
    if only is None:  # the pipeline ran to its last notebook: gather every stage in one report
        from rbclib.report import write_run_report
        from rbclib.summary import write_summary

        report_md, _ = write_run_report(paths.root, profile=profile)
        write_summary(paths.root)
        print(f"[rbc run] report: {report_md} (and report.html, summary.json)", flush=True)
    return executed


class RunInterrupted(RuntimeError):
    """``rbc run`` stopped by Ctrl-C; names the notebook it stopped in."""


def _mark_interrupted(executed: Path) -> None:
    """Put a first cell into the executed copy saying the run was interrupted (papermill's
    copy would otherwise show the cells it never finished as if they had run)."""
    import nbformat

    from rbclib.core.files import atomic_path

    if not executed.is_file():
        return
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # noqa: BLE001 - a half-written copy: leave it as it is
        return
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(
        "**Interrupted (Ctrl-C) while this notebook ran: cells after the last one with output did not run, "
        "and outputs may be partial.**"))
    nb.metadata.setdefault("rbc", {})["interrupted"] = True
    with atomic_path(executed) as tmp:
        nbformat.write(nb, tmp)


def _cell_index(notebook: Path, source: str) -> int | None:
    """0-based index of the cell holding ``source`` in the committed ``notebook``."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code" and cell.get("source", "").strip() == source.strip():
            return i
    return None
