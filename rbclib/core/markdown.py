"""Markdown tables: the one writer behind 07's tables, ``rbc report`` and ``rbc assess``'s report."""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd


def markdown_table(frame: pd.DataFrame, *, fmt: Callable[[Any], str] = str, right_align: bool = False) -> str:
    """``frame`` as a GitHub Markdown table.

    Pipes are escaped and newlines become spaces, so no cell (e.g. a file name) can break the
    table.

    Parameters
    ----------
    frame : pandas.DataFrame
        The table; the index is not written.
    fmt : callable, optional
        Writes each cell's value as text (default ``str``).
    right_align : bool, optional
        Right-align every column but the first (numbers); default False.

    Returns
    -------
    str
        The Markdown table; ends with a newline.
    """
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\r", " ").replace("\n", " ") for c in cells) + " |"

    header = [str(c) for c in frame.columns]
    sep = "|" + "|".join("---:" if right_align and i else "---" for i in range(len(header))) + "|"
    rows = [line([fmt(v) for v in row]) for row in frame.itertuples(index=False)]
    return "\n".join([line(header), sep, *rows]) + "\n"


def one_line(text: Any) -> str:
    """``text`` made safe to put inside one Markdown line.

    Parameters
    ----------
    text : Any
        The value, written with ``str``.

    Returns
    -------
    str
        The text with line breaks as spaces (a file name holding a newline cannot start a
        heading or a list of its own).
    """
    return " ".join(str(text).splitlines())


_MARKUP = set("\\`*[]<>!&~")


def md_text(text: Any) -> str:
    """``text`` (e.g. a file name) as plain text in one Markdown line.

    Parameters
    ----------
    text : Any
        The value, written with ``str``.

    Returns
    -------
    str
        :func:`one_line` of it, with the characters that start links, images, code, emphasis
        or raw HTML escaped with a backslash, so a name like ``<img onerror=...>.png`` is
        shown, never rendered.
    """
    return "".join("\\" + c if c in _MARKUP else c for c in one_line(text))


def md_code(text: Any) -> str:
    """``text`` as one Markdown code span.

    Parameters
    ----------
    text : Any
        The value, written with ``str`` on one line (:func:`one_line`).

    Returns
    -------
    str
        The code span, fenced with more backticks than it holds in a row (CommonMark), so no
        character of it can end the span early.
    """
    import re

    body = one_line(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"
