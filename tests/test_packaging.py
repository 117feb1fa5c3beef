"""environment.yml mirrors pyproject.toml; notebooks are committed clean."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _norm(spec: str) -> str:
    name, rest = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", spec).groups()
    return re.sub(r"[-_.]+", "-", name.lower()) + rest.replace(" ", "")


def _pyproject_specs() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {_norm(s) for s in specs}


def _environment_specs() -> set[str]:
    lines = (REPO / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    specs = []
    for line in lines[start + 1:]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith("- "):
            break
        specs.append(stripped[2:])
    return {_norm(s) for s in specs}


def test_environment_yml_mirrors_pyproject():
    py, env = _pyproject_specs(), _environment_specs()
    assert py == env, f"only in pyproject.toml: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"


def test_notebooks_committed_without_outputs_and_with_parameters_cell():
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} holds outputs"
                assert cell.get("execution_count") is None, f"{path.name} holds execution counts"
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
        first = tagged[0]["source"] if isinstance(tagged[0]["source"], str) else "".join(tagged[0]["source"])
        assert first.lstrip().startswith("profile: str ="), f"{path.name}: parameters must start with profile"
        assert nb["metadata"]["kernelspec"]["name"] == "rbc-holo", f"{path.name}: kernel must be rbc-holo"
