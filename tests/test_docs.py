"""The documentation: a short README, the licence and citation files, links that resolve, and no
lab-log wording (session numbers, /tmp paths) in the README, docs/ and the notebooks' text."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

README_MAX_CHARS = 12_000
README_SECTIONS = [
    "What it does", "Install", "Quickstart A: assess your holograms", "Adapt to your microscope",
    "Quickstart B: reproduce the paper",
    "The pipeline", "Measured", "What happens when things go wrong", "Documentation", "Testing",
    "How to cite", "Licence",
]
LAB_LOG = re.compile(r"\b(\w+th|first|second|third|twenty-\w+) session\b|this session|earlier sessions?",
                     re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+(?:\([^()\s]*\))?)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _headings(text: str) -> list[str]:
    return HEADING.findall(FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lowercase, punctuation but - and _ dropped,
    spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link's text only
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every anchor of a Markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _headings(path.read_text(encoding="utf-8")):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        anchors.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return anchors


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_github_slug_rules():
    assert github_slug("What happens when things go wrong") == "what-happens-when-things-go-wrong"
    assert github_slug("Throughput: where the time of `rbc assess` goes") == "throughput-where-the-time-of-rbc-assess-goes"
    assert github_slug("The quick run's models on real holograms") == "the-quick-runs-models-on-real-holograms"
    assert github_slug("Label efficiency: do DA and SSL pay?") == "label-efficiency-do-da-and-ssl-pay"
    assert github_slug("snake_case and 0.1.0") == "snake_case-and-010"


def test_link_finder_sees_links_and_images_but_not_code():
    text = ("See [a](docs/a.md#x) and ![fig](img/f.png \"title\"), [b](https://x.org/(y)), "
            "`[not](code.md)`.\n\n```\n[nor](this.md)\n```\n")
    assert LINK.findall(_prose(text)) == ["docs/a.md#x", "img/f.png", "https://x.org/(y)"]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8"))
    assert n <= README_MAX_CHARS, (
        f"README.md has {n} characters, more than {README_MAX_CHARS}: move detail to a page under docs/")


def test_readme_sections_in_order():
    headings = [h for h in _headings(README.read_text(encoding="utf-8"))]
    missing = [s for s in README_SECTIONS if s not in headings]
    assert not missing, f"README.md lacks the sections {missing}"
    positions = [headings.index(s) for s in README_SECTIONS]
    assert positions == sorted(positions), f"README.md sections out of order: {headings}"


def test_licence_changelog_and_citation():
    assert "MIT License" in (REPO / "LICENSE").read_text(encoding="utf-8")
    assert (REPO / "CHANGELOG.md").read_text(encoding="utf-8").startswith("# Changelog")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] and cff["title"]
    cited = [cff.get("preferred-citation") or {}, *(cff.get("references") or [])]
    assert any(ref.get("doi") == "10.1002/adsr.202500073" for ref in cited), (
        "CITATION.cff names the paper (doi 10.1002/adsr.202500073) in preferred-citation or references")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_page_starts_with_a_title_and_a_sentence(page):
    lines = [line for line in page.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# "), f"{_rel(page)} does not start with a '# Title'"
    if page != README:   # the README's title is followed by its first section
        assert not lines[1].startswith(("#", "|", "```", "-", "!")), (
            f"{_rel(page)}: the title is not followed by a sentence saying what the page covers")


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"^(https?:|mailto:)", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{_rel(page)}: broken links: {broken}"


def _notebook_markdown(nb_path: Path) -> str:
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


@pytest.mark.parametrize("source", [*PAGES, *NOTEBOOKS], ids=_rel)
def test_no_lab_log_wording(source):
    text = _notebook_markdown(source) if source.suffix == ".ipynb" else source.read_text(encoding="utf-8")
    found = sorted({m.group(0) for m in LAB_LOG.finditer(text)})
    assert not found, f"{_rel(source)}: lab-log wording {found}; say what holds now, the history is in git log"
    assert "/tmp/" not in text, f"{_rel(source)}: a /tmp/ path (a file nobody else has)"


LIBRARY_SOURCES = sorted(p for p in (REPO / "rbclib").rglob("*") if p.suffix in (".py", ".toml", ".md")
                         and "models/default" not in p.as_posix())
DATED = re.compile(r"\b20\d\d-\d\d-\d\d\b")


@pytest.mark.parametrize("source", LIBRARY_SOURCES, ids=_rel)
def test_library_code_carries_no_lab_log(source):
    """Comments and docstrings explain the code as it is: no dated notes, session history or
    /tmp/ paths (the shipped model's card, which records when it was measured, is exempt)."""
    text = source.read_text(encoding="utf-8")
    found = sorted({m.group(0) for m in LAB_LOG.finditer(text)} | {m.group(0) for m in DATED.finditer(text)})
    assert not found, f"{_rel(source)}: dated or lab-log notes {found}; the history belongs in CHANGELOG.md / git log"
    assert "/tmp/" not in text, f"{_rel(source)}: a /tmp/ path"


MAX_MODULE_LINES = 600


def test_no_library_module_is_over_600_lines():
    long = {_rel(p): n for p in (REPO / "rbclib").rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them along their seams): {long}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=_rel)
def test_notebook_code_reads_without_wrapping(notebook):
    """JupyterLab does not wrap code: every code line is at most 100 characters."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    long = [line for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
            if len(line) > 100]
    assert not long, f"{_rel(notebook)}: {len(long)} code line(s) over 100 characters, e.g. {long[0]!r}"
