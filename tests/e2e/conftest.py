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
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.disable_check_xsrf=False", "--LabApp.news_url=None"]
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

    def run_all(self, *, timeout_s: float = 300) -> None:
        """Run > Run All Cells, then wait until every code cell ran (or one failed)."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        self.page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self._wait_cells_ran(timeout_s)
        except PlaywrightTimeout:
            self.screenshot("run-all-timeout")
            prompts = self.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            raise AssertionError(f"cells still running after {timeout_s:.0f} s; prompts {prompts}") from None
        errors = self.page.locator('[data-mime-type="application/vnd.jupyter.error"]')
        if errors.count():
            self.screenshot("error")
            raise NotebookError("a cell failed in JupyterLab:\n" + "\n".join(errors.all_inner_texts())[-4000:])

    def _wait_cells_ran(self, timeout_s: float) -> None:
        self.page.wait_for_function(
            """() => {
                const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
                const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());
                const running = prompts.some(t => t.includes('*'));
                const done = prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t));
                return !running && (done || panel.querySelector('[data-mime-type="application/vnd.jupyter.error"]') !== null);
            }""", timeout=timeout_s * 1000, polling=500)

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
            except (OSError, ValueError):  # half-visible file on a non-atomic writer, retry
                pass
            time.sleep(0.25)
        raise AssertionError(f"{path}: not written as expected within {timeout_s:.0f} s")

    def screenshot(self, name: str) -> Path:
        target = self.shots / f"{name}.png"
        self.page.screenshot(path=str(target), full_page=True)
        return target


@pytest.fixture
def driver(page, lab: Lab, shots: Path) -> LabDriver:
    return LabDriver(page, lab, shots)
