"""The curation gallery of 04 (``interactive=True``): candidate pairs with accept / reject,
filters, the class-balance summary and the automatic rule, best cells first.

The candidates and the selection rule are in :mod:`rbclib.synth.curate`, the decisions store in
:mod:`rbclib.synth.curation_decisions`.
"""
from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rbclib.core.labels import CELL_CLASS_NAMES, overlay_rgb
from rbclib.seg.datasets import PHASE_RANGE_RAD
from rbclib.synth.curate import (SELECTION_RULE, auto_select_balanced, class_balance, filter_candidates,
                                 load_candidate, read_candidates)
from rbclib.synth.curation_decisions import CurationDecisions


def _png(rgb: np.ndarray, size: int) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(rgb).resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


class CurationWidget:
    """Paged gallery of candidate pairs with accept / reject, filters and a balance summary.

    Buttons carry CSS classes for browser tests: ``rbc-curate-accept-<id>``,
    ``rbc-curate-reject-<id>``, ``rbc-curate-undo``, ``rbc-curate-prev``,
    ``rbc-curate-next``, ``rbc-curate-auto``. Each click is persisted at once to
    ``decisions_path``; re-opening the same file resumes. Display with ``display(w)``.

    Parameters
    ----------
    candidates : str or pathlib.Path
        The candidate folder (:func:`rbclib.synth.curate.read_candidates`).
    decisions_path : str or pathlib.Path
        The decisions file (:class:`rbclib.synth.curation_decisions.CurationDecisions`).
    n_target : int, optional
        Pairs to accept in total (the auto-select target), default 500.
    request : dict[str, float], optional
        Class name -> share of the accepted cells (default equal shares).
    min_consistency : float, optional
        Start value of the consistency filter, default 0.
    page_size : int, optional
        Candidates per page, default 12.
    thumb_px : int, optional
        Thumbnail side [px], default 128.
    """

    def __init__(self, candidates: str | Path, decisions_path: str | Path, *, n_target: int = 500,
                 request: dict[str, float] | None = None, min_consistency: float = 0.0,
                 page_size: int = 12, thumb_px: int = 128):
        import ipywidgets as w

        self.candidates = Path(candidates)
        self.table = read_candidates(self.candidates)
        self.store = CurationDecisions(decisions_path)
        self.request = request
        self.page_size, self.thumb_px, self.page = page_size, thumb_px, 0
        self.f_classes = w.SelectMultiple(options=CELL_CLASS_NAMES, description="must hold")
        self.f_count_class = w.Dropdown(options=CELL_CLASS_NAMES, value=CELL_CLASS_NAMES[-1], description="min count of")
        self.f_min_count = w.BoundedIntText(value=0, min=0, max=1000, description="cells >=")
        self.f_consistency = w.FloatSlider(value=min_consistency, min=0.0, max=1.0, step=0.05,
                                           description="consistency >=")
        self.f_hide_decided = w.Checkbox(value=False, description="hide decided")
        self.n_target = w.BoundedIntText(value=n_target, min=1, max=10**6, description="target")
        self.btn_prev = self._button("< prev", "rbc-curate-prev", self.prev_page)
        self.btn_next = self._button("next >", "rbc-curate-next", self.next_page)
        self.btn_undo = self._button("undo", "rbc-curate-undo", lambda: self.undo())
        self.btn_auto = self._button("auto-select: balance, best cells", "rbc-curate-auto", lambda: self.auto_select())
        self.btn_auto.tooltip = SELECTION_RULE
        self.page_label, self.summary = w.HTML(), w.HTML()
        self.gallery = w.GridBox(layout=w.Layout(grid_template_columns=f"repeat(4, {thumb_px + 24}px)"))
        self.accept_buttons: dict[str, Any] = {}
        self.reject_buttons: dict[str, Any] = {}
        for f in (self.f_classes, self.f_count_class, self.f_min_count, self.f_consistency, self.f_hide_decided):
            f.observe(lambda _change: self._refilter(), names="value")
        self.widget = w.VBox([
            w.HBox([self.f_classes, w.VBox([w.HBox([self.f_count_class, self.f_min_count]), self.f_consistency,
                                            self.f_hide_decided])]),
            w.HBox([self.btn_prev, self.page_label, self.btn_next, self.btn_undo, self.n_target, self.btn_auto]),
            self.summary, self.gallery])
        self.refresh()

    def _button(self, description: str, css: str, action):
        import ipywidgets as w

        b = w.Button(description=description)
        b.add_class(css)
        b.on_click(lambda _b: action())
        return b

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- state
    def visible(self) -> pd.DataFrame:
        """Candidates passing the current filters, best cell quality first (then id).

        Returns
        -------
        pandas.DataFrame
            The rows of the candidates table shown, in gallery order.
        """
        sub = filter_candidates(self.table, classes_present=self.f_classes.value, count_class=self.f_count_class.value,
                                min_count=self.f_min_count.value, min_consistency=self.f_consistency.value)
        if self.f_hide_decided.value:
            sub = sub[~sub["id"].isin(self.store.decisions)]
        if "cell_quality" in sub:
            order = np.lexsort((sub["id"].to_numpy(), -sub["cell_quality"].fillna(0.0).to_numpy(float)))
            sub = sub.iloc[order]
        return sub

    def decide(self, cid: str, decision: str) -> None:
        """Record a decision by the user and redraw.

        Parameters
        ----------
        cid : str
            The candidate id.
        decision : {"accept", "reject"}
            The decision.
        """
        self.store.record(cid, decision, by="user")
        self.refresh()

    def undo(self) -> str | None:
        """Forget the latest decision and redraw.

        Returns
        -------
        str or None
            Its id (None when there was none).
        """
        cid = self.store.undo()
        self.refresh()
        return cid

    def auto_select(self) -> list[str]:
        """Accept pairs by SELECTION_RULE among the filtered, undecided candidates up to the target.

        Returns
        -------
        list of str
            The ids accepted now.
        """
        ids = auto_select_balanced(self.table, self.n_target.value, request=self.request,
                                   already=[c for c in self.store.ids("accept") if c in self.table.index],
                                   exclude=self.store.ids("reject"), pool=self.visible()["id"],
                                   min_consistency=self.f_consistency.value)
        self.store.record_many(ids, "accept", by="auto")
        self.refresh()
        return ids

    def next_page(self) -> None:
        """Show the next page (stays on the last one)."""
        n_pages = max(1, -(-len(self.visible()) // self.page_size))
        self.page = min(self.page + 1, n_pages - 1)
        self.refresh()

    def prev_page(self) -> None:
        """Show the previous page (stays on the first one)."""
        self.page = max(0, self.page - 1)
        self.refresh()

    def _refilter(self) -> None:
        self.page = 0
        self.refresh()

    # -- drawing
    def summary_html(self) -> str:
        """The summary line and class-balance table.

        Returns
        -------
        str
            HTML: accepted / target, rejected, shown counts, and cells per class of all
            candidates against the accepted ones.
        """
        acc = self.store.ids("accept")
        before, after = class_balance(self.table), class_balance(self.table, [c for c in acc if c in self.table.index])
        cells = "".join(f"<tr><td>{r['class']}</td><td>{b['cells']} ({b['share']:.0%})</td>"
                        f"<td>{r['cells']} ({r['share']:.0%})</td></tr>"
                        for (_, b), (_, r) in zip(before.iterrows(), after.iterrows()))
        return (f"<b>accepted {len(acc)} / target {self.n_target.value}</b>, rejected {len(self.store.ids('reject'))}, "
                f"shown {len(self.visible())} of {len(self.table)}"
                f"<table><tr><th>class</th><th>all candidates</th><th>accepted</th></tr>{cells}</table>")

    def _card(self, cid: str):
        import ipywidgets as w

        phase, labels = load_candidate(self.candidates, cid)
        row = self.table.loc[cid]
        state = self.store.decisions.get(cid, {}).get("decision", "undecided")
        colour = {"accept": "#2a2", "reject": "#c22"}.get(state, "#999")
        counts = " ".join(f"{n[0].upper()}{int(row[f'n_{n}'])}" for n in CELL_CLASS_NAMES)
        rgb = overlay_rgb(phase, labels, phase_range=PHASE_RANGE_RAD)
        img = w.Image(value=_png(rgb, self.thumb_px), format="png",
                      width=self.thumb_px, height=self.thumb_px)
        acc = self._button("accept", f"rbc-curate-accept-{cid}", lambda: self.decide(cid, "accept"))
        rej = self._button("reject", f"rbc-curate-reject-{cid}", lambda: self.decide(cid, "reject"))
        acc.layout = rej.layout = w.Layout(width=f"{self.thumb_px // 2 + 8}px")
        self.accept_buttons[cid], self.reject_buttons[cid] = acc, rej
        quality = f" · q={row['cell_quality']:.2f}" if "cell_quality" in row else ""
        text = w.HTML(f"<small>{cid} · {state}<br>{counts} · c={row['consistency']:.2f}{quality}</small>")
        box = w.VBox([img, text, w.HBox([acc, rej])],
                     layout=w.Layout(border=f"3px solid {colour}", padding="2px"))
        box.add_class(f"rbc-curate-card-{state}")
        return box

    def refresh(self) -> None:
        """Redraw the gallery page, the page label and the summary."""
        vis = self.visible()
        n_pages = max(1, -(-len(vis) // self.page_size))
        self.page = min(self.page, n_pages - 1)
        ids = vis["id"].iloc[self.page * self.page_size:(self.page + 1) * self.page_size].tolist()
        self.accept_buttons, self.reject_buttons = {}, {}
        self.gallery.children = [self._card(cid) for cid in ids]
        self.page_label.value = f"page {self.page + 1} / {n_pages}"
        self.summary.value = self.summary_html()
