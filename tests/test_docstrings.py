"""Every public name of rbclib has a numpydoc docstring, and every long function says why.

Checked from the source (``ast``), so no import side effects:

- a public function or method with parameters has a ``Parameters`` section naming each one;
- one that returns a value has a ``Returns`` section (a generator: ``Yields``);
- a public class has a docstring; a dataclass or NamedTuple names each field under
  ``Parameters`` or ``Attributes``, and a class with its own ``__init__`` names its parameters;
- a function (public or not) of more than 80 lines or more than 8 parameters has a ``Notes``
  section that says why it is that large.
"""
from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rbclib"
MODULES = sorted(PACKAGE.rglob("*.py"))
LONG_LINES, MANY_PARAMS = 80, 8
SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}\s*$", re.MULTILINE)


def sections(doc: str) -> dict[str, str]:
    """numpydoc sections of a docstring -> {title: body}."""
    doc = textwrap.dedent(doc)
    heads = list(SECTION.finditer(doc))
    return {m.group(1).strip(): doc[m.end():heads[i + 1].start() if i + 1 < len(heads) else len(doc)]
            for i, m in enumerate(heads)}


def documented_names(body: str) -> set[str]:
    """The names a Parameters / Attributes section documents: the entries at its left margin,
    ``name : type`` or ``a, b : type`` or a bare ``name``."""
    names: set[str] = set()
    for line in body.splitlines():
        if not line.strip() or line[:1].isspace():
            continue
        for part in line.split(" : ")[0].split(","):
            names.add(part.strip().lstrip("*"))
    return names


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def _own_nodes(fn: ast.AST):
    """The nodes of a function's own body, not of functions or classes nested in it."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _returns_value(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    if fn.returns is not None and ast.unparse(fn.returns) in ("None", "NoReturn"):
        return False
    return any(isinstance(n, ast.Return) and n.value is not None
               and not (isinstance(n.value, ast.Constant) and n.value.value is None) for n in _own_nodes(fn))


def _is_generator(fn: ast.AST) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _own_nodes(fn))


def _decorators(node: ast.AST) -> set[str]:
    return {ast.unparse(d).split("(")[0].split(".")[-1] for d in getattr(node, "decorator_list", [])}


def function_problems(fn: ast.FunctionDef | ast.AsyncFunctionDef, where: str) -> list[str]:
    """What a public function's docstring lacks."""
    doc = ast.get_docstring(fn)
    if not doc:
        return [f"{where}: no docstring"]
    if "property" in _decorators(fn) or "setter" in _decorators(fn):
        return []
    found, problems = sections(doc), []
    params = _parameters(fn)
    if params:
        missing = [p for p in params if p not in documented_names(found.get("Parameters", ""))]
        if missing:
            problems.append(f"{where}: Parameters section lacks {missing}")
    if _is_generator(fn):
        if "Yields" not in found:
            problems.append(f"{where}: a generator without a Yields section")
    elif _returns_value(fn) and "Returns" not in found:
        problems.append(f"{where}: returns a value but has no Returns section")
    return problems


def _fields(cls: ast.ClassDef) -> list[str]:
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            and not ast.unparse(n.annotation).startswith(("ClassVar", "typing.ClassVar"))
            and not n.target.id.startswith("_")]


def class_problems(cls: ast.ClassDef, where: str) -> list[str]:
    """What a public class's docstring (and its public methods' docstrings) lack."""
    doc = ast.get_docstring(cls)
    if not doc:
        return [f"{where}: no docstring"]
    found, problems = sections(doc), []
    is_record = "dataclass" in _decorators(cls) or any(ast.unparse(b).endswith("NamedTuple") for b in cls.bases)
    fields = _fields(cls) if is_record else []
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        init_doc = sections(ast.get_docstring(init) or "")
        named = documented_names(found.get("Parameters", "")) | documented_names(init_doc.get("Parameters", ""))
        missing = [p for p in _parameters(init) if p not in named]
        if missing:
            problems.append(f"{where}: constructor parameters {missing} not under Parameters")
    if fields:
        named = documented_names(found.get("Parameters", "")) | documented_names(found.get("Attributes", ""))
        missing = [f for f in fields if f not in named]
        if missing:
            problems.append(f"{where}: fields {missing} not under Parameters or Attributes")
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            problems += function_problems(node, f"{where}.{node.name}")
    return problems


def size_problems(tree: ast.Module, rel: str) -> list[str]:
    """Functions over LONG_LINES lines or MANY_PARAMS parameters without a Notes section."""
    problems = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        lines, params = fn.end_lineno - fn.lineno + 1, len(_parameters(fn))
        if (lines > LONG_LINES or params > MANY_PARAMS) and "Notes" not in sections(ast.get_docstring(fn) or ""):
            problems.append(f"{rel}:{fn.lineno} {fn.name} ({lines} lines, {params} parameters): "
                            "no Notes section saying why it is this large")
    return problems


def module_problems(path: Path) -> list[str]:
    rel = str(path.relative_to(PACKAGE.parent))
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = [] if ast.get_docstring(tree) else [f"{rel}: no module docstring"]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            problems += function_problems(node, f"{rel}:{node.lineno} {node.name}")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            problems += class_problems(node, f"{rel}:{node.lineno} {node.name}")
    return problems + size_problems(tree, rel)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_public_names_have_numpydoc_docstrings(path):
    problems = module_problems(path)
    assert not problems, "\n".join(problems)


def _problems_of(source: str) -> list[str]:
    tree = ast.parse(textwrap.dedent(source))
    node = tree.body[0]
    if isinstance(node, ast.ClassDef):
        return class_problems(node, "x") + size_problems(tree, "x")
    return function_problems(node, "x") + size_problems(tree, "x")


def test_checker_finds_a_missing_parameter_and_returns():
    bad = '''
    def f(a, b):
        """Add.

        Parameters
        ----------
        a : int
            First.
        """
        return a + b
    '''
    problems = _problems_of(bad)
    assert any("lacks ['b']" in p for p in problems)
    assert any("no Returns" in p for p in problems)


def test_checker_accepts_a_full_numpydoc_docstring():
    good = '''
    def f(a, b, *, scale=1.0, **kw):
        """Add.

        Parameters
        ----------
        a, b : int
            The terms.
        scale : float
            Factor.
        **kw
            Ignored.

        Returns
        -------
        int
            The sum.
        """
        return (a + b) * scale
    '''
    assert _problems_of(good) == []


def test_checker_wants_dataclass_fields_generator_yields_and_notes_for_long_functions():
    record = '''
    @dataclass
    class R:
        """A record.

        Attributes
        ----------
        a : int
            A.
        """
        a: int
        b: float = 0.0
    '''
    assert any("['b']" in p for p in _problems_of(record))
    gen = '''
    def g():
        """Count."""
        yield 1
    '''
    assert any("Yields" in p for p in _problems_of(gen))
    long = "def h():\n    \"\"\"Long.\"\"\"\n" + "    x = 1\n" * (LONG_LINES + 1)
    assert any("no Notes" in p for p in _problems_of(long))
