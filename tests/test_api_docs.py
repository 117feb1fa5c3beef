"""The API reference (pdoc, numpy docstring style) builds from the docstrings without warnings."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rbclib

pytestmark = pytest.mark.slow

REFERENCE_MODULES = ["rbclib", *sorted(f"rbclib.{m.name}" for m in pkgutil.iter_modules(rbclib.__path__))]
"""The package and its sub-packages and top-level modules: pdoc follows each into its modules."""


def test_api_reference_builds_without_warnings(tmp_path):
    done = subprocess.run([sys.executable, "-W", "always", "-m", "pdoc", *REFERENCE_MODULES, "--docformat", "numpy",
                           "-o", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr[-2000:]
    pages = {p.relative_to(tmp_path).with_suffix("").as_posix().replace("/", ".") for p in tmp_path.rglob("*.html")}
    modules = {m.name for m in pkgutil.walk_packages(rbclib.__path__, "rbclib.")}
    missing = sorted(modules - pages)
    assert not missing, f"modules without a reference page: {missing}"
    assert "load_into_resunet" in (tmp_path / "rbclib" / "seg" / "pretrained.html").read_text()
