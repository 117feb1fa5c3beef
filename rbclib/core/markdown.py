"""Markdown tables: the one writer behind 07's tables, ``rbc report`` and ``rbc assess``'s report."""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd


def markdown_table(frame: pd.DataFrame, *, fmt: Callable[[Any], str] = str, right_align: bool = False) -> str:
    """``frame`` as a GitHub Markdown table, each cell written by ``fmt``; pipes are escaped
    and newlines become spaces, so no cell (e.g. a file name) can break the table.
    right_align: right-align every column but the first (numbers). Ends with a newline."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\r", " ").replace("\n", " ") for c in cells) + " |"

    header = [str(c) for c in frame.columns]
    sep = "|" + "|".join("---:" if right_align and i else "---" for i in range(len(header))) + "|"
    rows = [line([fmt(v) for v in row]) for row in frame.itertuples(index=False)]
    return "\n".join([line(header), sep, *rows]) + "\n"


def one_line(text: Any) -> str:
    """``text`` made safe to put inside one Markdown line: line breaks become spaces (a file
    name holding a newline cannot start a heading or a list of its own)."""
    return " ".join(str(text).splitlines())
