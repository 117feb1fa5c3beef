"""``AnnotationWidget``: label the cell proposals of phase images in JupyterLab (ipywidgets).

One cell at a time: a crop of the phase image with the cell outlined and a thumbnail of
the whole field for context. Class by button or by typing a digit into the key box
(1 discocyte, 2 spherocyte, 3 echinocyte, 4 stomatocyte, 0 not a cell; ``n``/``p`` next /
previous, ``u`` undo, ``s`` split). With a model's suggestions (the session's ``suggest``) each
cell shows the model's class and confidence, cells come least confident first, ``a`` (or
"Accept suggestion") takes the model's class, and "Accept N confident" labels a page of the
image's confident cells in one decision (one undo takes it back). Every decision is saved to the decisions file before
the click returns (:class:`rbclib.annotate.session.AnnotationSession`); re-creating the widget on
the same file resumes where the person stopped. Buttons carry stable descriptions and
CSS classes ``rbc-annotate-<name>`` for browser tests.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from rbclib.annotate.session import AnnotationSession
from rbclib.core.labels import CELL_CLASSES, CLASS_COLOURS, CLASS_NAMES

CLASS_KEYS: dict[str, int] = {"1": 1, "2": 2, "3": 3, "4": 4, "0": 0}
PAGE = 12
"""Most cells one "Accept N confident" click labels."""
BUTTON_CLASSES: dict[int, tuple[str, str]] = {  # class id -> (description, css name)
    1: ("1 Discocyte", "discocyte"), 2: ("2 Spherocyte", "spherocyte"), 3: ("3 Echinocyte", "echinocyte"),
    4: ("4 Stomatocyte", "stomatocyte"), 0: ("0 Not a cell", "not-a-cell"),
}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


class AnnotationWidget(widgets.VBox):
    """Label the cells of a set of phase images; see the module docstring.

    Parameters
    ----------
    session : AnnotationSession
        The phase files + decisions file; the widget opens where it resumes.
    run_paths : rbclib.core.paths.RunPaths, optional
        The run folder; enables the "Save masks" button.
    crop_um : float, optional
        Side of the cell crop [um] (default 16.0).
    accept_confidence : float, optional
        Lowest suggestion confidence "Accept N confident" takes (default 0.9).

    Attributes
    ----------
    buttons : dict of str to ipywidgets.Button
        CSS name -> Button: discocyte, spherocyte, echinocyte, stomatocyte, not-a-cell, prev,
        next, undo, merge, split, export, accept, accept-page.
    key_box : ipywidgets.Text
        Typed keys (0-4, n, p, u, s).
    merge_with : ipywidgets.Dropdown
        Neighbouring cells to merge with.
    position : tuple of (str, int) or None
        (stem, cell) shown; None when no cell is proposed.
    """

    def __init__(self, session: AnnotationSession, *, run_paths: Any = None, crop_um: float = 16.0,
                 accept_confidence: float = 0.9):
        self.session = session
        self.accept_confidence = float(accept_confidence)
        self.run_paths = run_paths
        self.crop_um = crop_um
        self.position: tuple[str, int] | None = session.resume_position()
        self.buttons: dict[str, widgets.Button] = {}
        for cls, (desc, css) in BUTTON_CLASSES.items():
            colour = "#%02x%02x%02x" % tuple(int(255 * v) for v in CLASS_COLOURS[cls]) if cls else "#888888"
            self.buttons[css] = self._button(desc, css, lambda _b, c=cls: self.assign(c),
                                             style={"button_color": colour, "text_color": "black" if cls in (0, 4) else "white"})
        for name, desc in (("prev", "< Prev"), ("next", "Next >"), ("undo", "Undo"), ("merge", "Merge"),
                           ("split", "Split"), ("export", "Save masks"), ("accept", "Accept suggestion"),
                           ("accept_page", "Accept confident")):
            self.buttons[name.replace("_", "-")] = self._button(desc, name.replace("_", "-"), getattr(self, f"_on_{name}"))
        self.buttons["export"].disabled = run_paths is None
        self.merge_with = widgets.Dropdown(description="with cell", options=[], layout={"width": "180px"})
        self.merge_with.add_class("rbc-annotate-merge-with")
        self.key_box = widgets.Text(placeholder="type 0-4, n, p, u, s, a", description="key",
                                    continuous_update=True, layout={"width": "220px"})
        self.key_box.add_class("rbc-annotate-key")
        self.key_box.observe(self._on_key, names="value")
        self.image = widgets.Image(format="png", layout={"max_width": "900px"})
        self.status = widgets.HTML()
        self.status.add_class("rbc-annotate-status")
        self.message = widgets.HTML()
        self.message.add_class("rbc-annotate-message")
        row_classes = widgets.HBox([self.buttons[BUTTON_CLASSES[c][1]] for c in (1, 2, 3, 4, 0)])
        row_edit = widgets.HBox([self.buttons["prev"], self.buttons["next"], self.buttons["undo"],
                                 self.buttons["merge"], self.merge_with, self.buttons["split"], self.buttons["export"]])
        rows = [self.status, self.image, row_classes, row_edit, self.key_box, self.message]
        if session.suggest is not None:
            rows.insert(2, widgets.HBox([self.buttons["accept"], self.buttons["accept-page"]]))
        super().__init__(rows)
        self.add_class("rbc-annotate")
        self.refresh()

    @staticmethod
    def _button(description: str, css: str, handler: Any, style: dict | None = None) -> widgets.Button:
        b = widgets.Button(description=description, tooltip=description, style=style or {})
        b.add_class(f"rbc-annotate-{css}")
        b.on_click(handler)
        return b

    # ----------------------------------------------------------------------- actions
    def assign(self, cls: int) -> None:
        """Give the current cell class ``cls`` and move to the next undecided cell.

        Parameters
        ----------
        cls : int
            0 not a cell, 1..4 the cell classes.
        """
        if self.position is None:
            return self._say("Nothing to label.")
        stem, cell = self.position
        self.session.label(stem, cell, cls)
        nxt = self.session.next_unlabelled(self.position)
        self._go(nxt or self.position, note=None if nxt else "Every cell is decided. Press 'Save masks'.")

    def _on_accept(self, _b: Any = None) -> None:
        if self.position is None:
            return self._say("Nothing to label.")
        hint = self.session.suggestions(self.position[0]).get(self.position[1])
        if hint is None:
            return self._say("No model suggestion for this cell.")
        self.assign(hint[0])

    def _on_accept_page(self, _b: Any = None) -> None:
        if self.position is None:
            return self._say("Nothing to label.")
        stem = self.position[0]
        cells = self.session.confident_cells(stem, confidence=self.accept_confidence, limit=PAGE)
        if not cells:
            return self._say(f"No undecided cell of {stem} has a suggestion of at least {self.accept_confidence:.2f}.")
        self.session.accept(stem, cells)
        nxt = self.session.next_unlabelled(self.position)
        self._go(nxt or self.position, note=f"Accepted the model's class of {len(cells)} confident cell(s) of {stem}."
                 + ("" if nxt else " Every cell is decided. Press 'Save masks'."))

    def _on_prev(self, _b: Any = None) -> None:
        self._step(-1)

    def _on_next(self, _b: Any = None) -> None:
        self._step(+1)

    def _step(self, delta: int) -> None:
        if self.position is None:
            return
        order = [(s, c) for s in self._stems_around() for c in self.session.cells(s)]
        k = order.index(self.position) if self.position in order else 0
        self._go(order[(k + delta) % len(order)])

    def _stems_around(self) -> list[str]:
        """The current image and its neighbours (proposals of far images stay uncomputed)."""
        stems = self.session.stems
        i = stems.index(self.position[0])
        return [stems[(i - 1) % len(stems)], stems[i], stems[(i + 1) % len(stems)]] if len(stems) > 2 else stems

    def _on_undo(self, _b: Any = None) -> None:
        act = self.session.undo()
        if act is None:
            return self._say("Nothing to undo.")
        stem = act["image"]
        cell = act.get("cell") or min(act.get("cells", [0]))
        cells = self.session.cells(stem)
        self._go((stem, cell) if cell in cells else (stem, cells[0]) if cells else self.position,
                 note=f"Undid {act['op']} of {stem}.")

    def _on_merge(self, _b: Any = None) -> None:
        if self.position is None or self.merge_with.value is None:
            return self._say("Choose the cell to merge with.")
        stem, cell = self.position
        try:
            kept = self.session.merge(stem, cell, int(self.merge_with.value))
        except ValueError as exc:
            return self._say(str(exc))
        self._go((stem, kept), note=f"Merged cells {cell} and {self.merge_with.value} into {kept}.")

    def _on_split(self, _b: Any = None) -> None:
        if self.position is None:
            return
        stem, cell = self.position
        try:
            a, b = self.session.split(stem, cell)
        except ValueError as exc:
            return self._say(str(exc))
        self._go((stem, a), note=f"Split cell {cell} into {a} and {b}.")

    def _on_export(self, _b: Any = None) -> None:
        table, skipped = self.session.export(self.run_paths)
        self._say(f"Saved {table['image'].nunique() if len(table) else 0} image(s), {len(table)} cells"
                  + (f"; skipped (undecided cells left): {', '.join(skipped)}" if skipped else "") + ".")

    def _on_key(self, change: dict) -> None:
        text = change["new"]
        if not text:
            return
        key = text[-1].lower()
        self.key_box.value = ""
        if key in CLASS_KEYS:
            self.assign(CLASS_KEYS[key])
        elif key in "npusa":
            {"n": self._on_next, "p": self._on_prev, "u": self._on_undo, "s": self._on_split, "a": self._on_accept}[key]()

    def _go(self, position: tuple[str, int] | None, *, note: str | None = None) -> None:
        self.position = position
        if position is not None:
            self.session.store.set_cursor(*position)
        self.refresh(note=note)

    def _say(self, text: str) -> None:
        self.message.value = f"<b>{text}</b>"

    # ----------------------------------------------------------------------- display
    def refresh(self, *, note: str | None = None) -> None:
        """Redraw the crop, thumbnail, status line and merge choices.

        Parameters
        ----------
        note : str, optional
            Message shown under the buttons (default: none, clears the last one).
        """
        self.message.value = f"<b>{note}</b>" if note else ""
        if self.position is None:
            self.status.value = "No cells proposed in these images."
            self.merge_with.options = []
            return
        stem, cell = self.position
        inst, labels = self.session.state(stem)
        cells = self.session.cells(stem)
        decided = sum(c in labels for c in cells)
        counts = self.session.class_counts()
        flags = self.session.proposals(stem).flags.set_index("cell_id")
        flag_txt = ", ".join(n for n in ("touches_edge", "tiny") if cell in flags.index and flags.loc[cell, n])
        current = labels.get(cell)
        hints = self.session.suggestions(stem)
        hint = hints.get(cell)
        confident = self.session.confident_cells(stem, confidence=self.accept_confidence, limit=PAGE) if hints else []
        self.buttons["accept"].disabled = hint is None
        self.buttons["accept-page"].disabled = not confident
        self.buttons["accept-page"].description = f"Accept {len(confident)} confident"
        self.status.value = (
            f"<b>{stem}</b> (image {self.session.stems.index(stem) + 1}/{len(self.session.stems)}) · "
            f"cell {cell} ({cells.index(cell) + 1}/{len(cells)}) · decided here {decided}/{len(cells)}"
            + (f" · <i>{flag_txt}</i>" if flag_txt else "")
            + (f" · now: {CLASS_NAMES[current] if current else 'not a cell'}" if current is not None else "")
            + (f" · model: {CLASS_NAMES[hint[0]] if hint[0] else 'not a cell'} ({hint[1]:.2f})" if hint else "")
            + "<br>" + " · ".join(f"{k}: {v}" for k, v in counts.items()))
        self.merge_with.options = [(str(c), c) for c in self._neighbours(inst, cell)]
        self.image.value = _png(self._figure(stem, cell, inst, labels))

    @staticmethod
    def _neighbours(inst: np.ndarray, cell: int, k: int = 6) -> list[int]:
        """The ``k`` cells whose centroids lie closest to that of ``cell``."""
        others = [int(c) for c in np.unique(inst) if c > 0 and c != cell]
        if not others:
            return []
        centres = np.array(ndi.center_of_mass(inst > 0, inst, [cell] + others))
        dist = ((centres[1:] - centres[0]) ** 2).sum(1)
        return [others[i] for i in np.argsort(dist, kind="stable")[:k]]

    def _figure(self, stem: str, cell: int, inst: np.ndarray, labels: dict[int, int]) -> Figure:
        phase = self.session.phase(stem)
        half = int(round(self.crop_um * 1e-6 / self.session.optics[stem].pixel_size_m / 2))
        ys, xs = np.nonzero(inst == cell)
        cy, cx = int(ys.mean()), int(xs.mean())
        y0, y1 = max(0, cy - half), min(phase.shape[0], cy + half)
        x0, x1 = max(0, cx - half), min(phase.shape[1], cx + half)
        fig = Figure(figsize=(8.0, 4.0), dpi=80)
        ax_crop, ax_ctx = fig.subplots(1, 2)
        lim = (float(np.percentile(phase, 1)), float(max(np.percentile(phase, 99.9), 1e-3)))
        crop_inst = inst[y0:y1, x0:x1]
        ax_crop.imshow(phase[y0:y1, x0:x1], cmap="gray", vmin=lim[0], vmax=lim[1])
        self._outlines(ax_crop, crop_inst, labels, cell)
        ax_crop.set_title(f"cell {cell}  ({self.crop_um:.0f} um crop)")
        ax_ctx.imshow(phase, cmap="gray", vmin=lim[0], vmax=lim[1])
        self._outlines(ax_ctx, inst, labels, cell)
        ax_ctx.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", lw=1))
        ax_ctx.set_title("field (colour = decided class)")
        for ax in (ax_crop, ax_ctx):
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return fig

    @staticmethod
    def _outlines(ax: Any, inst: np.ndarray, labels: dict[int, int], cell: int) -> None:
        rgba = np.zeros(inst.shape + (4,), np.float32)
        edges = find_boundaries(inst, mode="inner")
        for c in np.unique(inst[edges]):
            sel = edges & (inst == c)
            cls = labels.get(int(c))
            colour = (1.0, 0.0, 1.0) if c == cell else CLASS_COLOURS[cls] if cls in CELL_CLASSES else \
                (0.5, 0.5, 0.5) if cls is None else (0.2, 0.2, 0.2)
            rgba[sel] = (*colour, 1.0)
        ax.imshow(rgba, interpolation="nearest")


def annotation_widget(phase_paths: list[Path], decisions_path: str | Path, *, run_paths: Any = None,
                      **proposal_options: Any) -> AnnotationWidget:
    """Open (or resume) a session on ``phase_paths`` and return its widget.

    Parameters
    ----------
    phase_paths : list of pathlib.Path
        Phase images (``<run>/phase/*.tif``).
    decisions_path : str or pathlib.Path
        The JSON decisions file, created or resumed.
    run_paths : rbclib.core.paths.RunPaths, optional
        The run folder; enables the "Save masks" button.
    **proposal_options
        Passed to :class:`AnnotationSession` (``threshold_rad``, ``smooth_sigma_px``,
        ``edge_fraction``, ``min_separation_um``, ``min_area_um2``, and ``suggest`` for a
        model's pre-filled classes).

    Returns
    -------
    AnnotationWidget
        The widget, at the resume position.
    """
    return AnnotationWidget(AnnotationSession(phase_paths, decisions_path, **proposal_options), run_paths=run_paths)
