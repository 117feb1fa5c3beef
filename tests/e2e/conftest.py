"""End-to-end harness: a real JupyterLab on localhost driven by headless Chromium.

Every test in this folder is marked ``e2e`` (run them with ``make test-e2e``). They need
Debian's ``chromium`` (``/usr/bin/chromium``) and the Python ``playwright`` package; the
Playwright browser download is never used. Without either, the tests skip with the reason.

Fixtures:
- ``lab``: a JupyterLab server (free port, random token, its own settings, workspaces and
  runtime folders, root folder ``tmp_path/lab``) stopped in a ``finally``.
- ``page``: a Chromium page (fresh user-data-dir) in which ``LabDriver`` opens notebooks,
  runs all cells through the Run menu and takes screenshots.
- ``shots``: where screenshots go (``tmp_path/screenshots``, copied to
  ``runs/e2e-screenshots/<test name>/`` at teardown for people to look at).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("RBC_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS_FOR_PEOPLE = REPO / "runs" / "e2e-screenshots"

# JupyterLab user settings for a quiet, deterministic page: no news/update pop-ups, every
# notebook cell kept in the DOM (no windowing), no autosave racing the test.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"windowingMode": "none", "autoStartDefaultKernel": True},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def _require_browser_tools() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `make test-e2e` installs Debian's chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the Python package playwright is not installed: `make test-e2e` installs it")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: ``url`` (no trailing slash), ``token``, ``root`` folder, ``log``."""

    url: str
    token: str
    root: Path
    log: Path

    def tree_url(self, relpath: str) -> str:
        return f"{self.url}/lab/tree/{relpath}?token={self.token}"


def _wait_ready(proc: subprocess.Popen, url: str, token: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer on {url} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its kernels down), then SIGKILL its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # kernels left behind by a server that hung
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path: Path):
    _require_browser_tools()
    root = tmp_path / "lab"
    root.mkdir()
    home = tmp_path / "jupyter"
    settings = home / "settings"
    for name, value in LAB_SETTINGS.items():
        target = settings / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_CONFIG_DIR=str(home / "config"),
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               PYTHONUNBUFFERED="1")
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(proc, url, token, log, timeout_s=120)
        yield Lab(url=url, token=token, root=root, log=log)
    finally:
        _stop(proc)


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest):
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    if any(folder.iterdir()):
        keep = SCREENSHOTS_FOR_PEOPLE / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(folder, keep)


@pytest.fixture
def page(tmp_path: Path):
    _require_browser_tools()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright adds --headless itself; the rest are the flags this machine needs.
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=[f for f in CHROMIUM_FLAGS if f != "--headless"],
            viewport={"width": 1400, "height": 1000})
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(60_000)
            yield pg
        finally:
            context.close()


# Done when no cell waits or runs ("[*]") and either the last code cell ran after the
# command (execution count above ``before``) or a cell run after it shows a traceback.
_CELLS_DONE_JS = """(before) => {
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
    const cells = [...panel.querySelectorAll('.jp-CodeCell')];
    const count = c => { const m = c.querySelector('.jp-InputPrompt').textContent.match(/\\[(\\d+)\\]/); return m ? +m[1] : 0; };
    if (cells.some(c => c.querySelector('.jp-InputPrompt').textContent.includes('*'))) return false;
    const failed = cells.some(c => count(c) > before && [...c.querySelectorAll(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')].some(o => o.textContent.includes('Traceback')));
    return failed || (cells.length > 0 && count(cells[cells.length - 1]) > before);
}"""

# Tracebacks shown by cells that ran after the command.
_NEW_ERRORS_JS = """(before) => {
    const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
    const out = [];
    for (const c of panel.querySelectorAll('.jp-CodeCell')) {
        const m = c.querySelector('.jp-InputPrompt').textContent.match(/\\[(\\d+)\\]/);
        if (!m || +m[1] <= before) continue;
        for (const o of c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
            if (o.textContent.includes('Traceback')) out.push(o.textContent);
    }
    return out;
}"""


class NotebookError(AssertionError):
    """A cell raised while JupyterLab ran the notebook; carries the error text."""


class LabDriver:
    """What a person does in JupyterLab: open a notebook, Run > Run All Cells, click, look."""

    def __init__(self, page, lab: Lab, shots: Path):
        self.page, self.lab, self.shots = page, lab, shots

    def open(self, relpath: str) -> None:
        """Open ``relpath`` (relative to the lab root) and wait until its kernel is idle."""
        self.page.goto(self.lab.tree_url(relpath))
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=120_000)
        self.wait_kernel_idle(relpath, timeout_s=120)
        if self.page.locator("#jp-left-stack").is_visible():  # more room for the widgets
            self.page.locator(".jp-NotebookPanel .jp-Notebook").first.click(position={"x": 5, "y": 5})
            self.page.keyboard.press("Control+b")

    def kernel_state(self, relpath: str) -> str | None:
        """Execution state of the kernel of the notebook ``relpath`` (REST API), None if none."""
        with urllib.request.urlopen(f"{self.lab.url}/api/sessions?token={self.lab.token}", timeout=10) as resp:
            sessions = json.load(resp)
        for session in sessions:
            if session.get("path") == relpath and session.get("kernel"):
                return session["kernel"].get("execution_state")
        return None

    def wait_kernel_idle(self, relpath: str, *, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (state := self.kernel_state(relpath)) != "idle":
            if time.monotonic() > deadline:
                self.screenshot("kernel-not-idle")
                raise AssertionError(f"{relpath}: kernel state {state!r} after {timeout_s:.0f} s "
                                     f"(server log {self.lab.log})")
            time.sleep(0.5)

    def run_all(self, *, timeout_s: float = 300, expect_error: str | None = None) -> None:
        """Run > Run All Cells; wait until the cells ran (see :meth:`_run`)."""
        self._run("runmenu:run-all", timeout_s=timeout_s, expect_error=expect_error)

    def run_from(self, cell_text: str, *, timeout_s: float = 300, expect_error: str | None = None) -> None:
        """Select the code cell containing ``cell_text``, then Run > Run Selected Cell and All Below."""
        cell = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell", has_text=cell_text)
        cell.first.locator(".jp-InputPrompt").click()
        self._run("notebook:run-all-below", timeout_s=timeout_s, expect_error=expect_error)

    def _run(self, command: str, *, timeout_s: float, expect_error: str | None) -> None:
        """Run a Run-menu command, wait until the last code cell ran or a cell raised.

        A cell that raises makes :class:`NotebookError` unless its traceback contains
        ``expect_error`` (a person's expected stop, e.g. "label the cells first").
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        before = max([n for n in self._counts() if n] or [0])
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        self.page.locator(f'.lm-Menu-item[data-command="{command}"]').click()
        try:
            self.page.wait_for_function(_CELLS_DONE_JS, arg=before, timeout=timeout_s * 1000, polling=500)
        except PlaywrightTimeout:
            self.screenshot("run-timeout")
            raise AssertionError(f"cells still running after {timeout_s:.0f} s; prompts "
                                 f"{self.page.locator('.jp-CodeCell .jp-InputPrompt').all_inner_texts()}") from None
        errors = self.page.evaluate(_NEW_ERRORS_JS, before)
        if expect_error is not None:
            if not any(expect_error in e for e in errors):
                self.screenshot("expected-error-missing")
                raise AssertionError(f"expected a cell to stop with {expect_error!r}; errors: {errors}")
        elif errors:
            self.screenshot("error")
            raise NotebookError("a cell failed in JupyterLab:\n" + "\n".join(errors)[-4000:])

    def _counts(self) -> list[int | None]:
        texts = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt").all_inner_texts()
        return [int(m.group(1)) if (m := re.search(r"\[(\d+)\]", t)) else None for t in texts]

    def click(self, css_class: str, *, nth: int = 0) -> None:
        """Click the ipywidgets button carrying ``css_class`` (a class set with add_class)."""
        button = self.page.locator(f"button.{css_class}").nth(nth)
        button.scroll_into_view_if_needed()
        button.click()

    def wait_for_file(self, path: Path, predicate=lambda p: p.exists(), *, timeout_s: float = 30) -> Path:
        """Wait until the kernel (a button handler) wrote ``path`` such that ``predicate`` holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate(path):
                    return path
            except (OSError, ValueError, KeyError, IndexError):  # not (fully) written yet
                pass
            time.sleep(0.25)
        raise AssertionError(f"{path}: not written as expected within {timeout_s:.0f} s")

    def screenshot(self, name: str, *, show: str | None = None) -> Path:
        """Save the page as ``<shots>/<name>.png`` once the kernel is idle in the page (every
        widget update of the last click has arrived), first scrolling ``show`` into view."""
        self.page.wait_for_function(
            "() => (document.querySelector('#jp-main-statusbar') || {textContent: ''}).textContent.includes('| Idle')",
            timeout=60_000)
        if show is not None:
            self.page.locator(show).first.scroll_into_view_if_needed()
        target = self.shots / f"{name}.png"
        self.page.screenshot(path=str(target))
        return target


@pytest.fixture
def driver(page, lab: Lab, shots: Path) -> LabDriver:
    return LabDriver(page, lab, shots)


def _prepare_notebook(name: str, target_dir: Path, **parameters) -> Path:
    """Copy ``notebooks/<name>.ipynb`` into ``target_dir`` with ``parameters`` injected the way
    papermill injects them (a tagged cell after the parameters cell); returns the copy."""
    import papermill as pm

    source = REPO / "notebooks" / f"{name}.ipynb"
    if not source.exists():
        pytest.skip(f"{source} does not exist yet")
    target = target_dir / source.name
    pm.execute_notebook(str(source), str(target), parameters=parameters, prepare_only=True, kernel_name="rbc-holo",
                        progress_bar=False)
    return target


@pytest.fixture
def prepare_notebook():
    """``prepare_notebook(name, target_dir, **parameters) -> Path`` (see ``_prepare_notebook``)."""
    return _prepare_notebook


@pytest.fixture(scope="session")
def ddgan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run folder with a simulated data set (phase, labels, splits) and the two DDGAN
    models of ``03_train_diffusion`` (smoke profile, about a minute): the input of 04."""
    _require_browser_tools()
    from rbclib.pipeline import run_notebooks
    from rbclib.physics.simulated_datasets import simulate_dataset

    if not (REPO / "notebooks" / "03_train_diffusion.ipynb").exists():
        pytest.skip("notebooks/03_train_diffusion.ipynb does not exist yet")
    run = tmp_path_factory.mktemp("ddgan") / "run"
    simulate_dataset(run, n_fields=4, seed=0, field_px=256, cells_per_field=(6, 10), progress=False)
    run_notebooks(profile="smoke", run_dir=run, only=["03"], progress=False)
    return run
