"""Curation decisions of 04: accept / reject per candidate id, kept in a JSON file that every
change rewrites, the automatic curation recorded in them, and the ``selection.json`` they end in.

The candidates and the selection rule live in :mod:`rbclib.synth.curate`; the gallery of
:mod:`rbclib.synth.curate_widget` and :func:`auto_curate` record their decisions here, so
curation can stop and resume at any time.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from rbclib.core.files import back_up, read_json, write_json
from rbclib.synth.curate import SELECTION_RULE, auto_select_balanced, check_candidate_id


class CurationDecisions:
    """Accept / reject decisions per candidate id, saved to a JSON file after every change.

    File: {"decisions": {id: {"decision", "by", "time"}}, "history": [id, ...]}; history
    is the order of decisions, used by :meth:`undo`. Opening an existing file resumes, after
    a backup copy (:func:`rbclib.core.files.back_up`). Not the annotation decisions of
    :class:`rbclib.annotate.decisions.DecisionStore`: those are a replayable log of edits.

    Parameters
    ----------
    path : str or pathlib.Path
        The JSON file; read (and backed up) when it exists.

    Raises
    ------
    ValueError
        When an existing file is not a valid decisions file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.decisions: dict[str, dict[str, str]] = {}
        self.history: list[str] = []
        if self.path.exists():
            data = read_json(self.path)
            where = str(self.path)
            if not (isinstance(data, dict) and isinstance(data.get("decisions"), dict)
                    and isinstance(data.get("history"), list)):
                raise ValueError(f"{where}: not a curation decisions file (expected {{'decisions': {{...}}, "
                                 "'history': [...]}})")
            for cid, d in data["decisions"].items():
                check_candidate_id(cid, where)
                if not (isinstance(d, dict) and d.get("decision") in ("accept", "reject")):
                    raise ValueError(f"{where}: decision for {cid!r} is {d!r}; expected accept or reject")
            if set(data["history"]) != set(data["decisions"]):
                raise ValueError(f"{where}: history and decisions name different candidates")
            back_up(self.path)
            self.decisions, self.history = dict(data["decisions"]), list(data["history"])

    def record(self, cid: str, decision: str, *, by: str = "user") -> None:
        """Record one decision and save.

        Parameters
        ----------
        cid : str
            The candidate id.
        decision : {"accept", "reject"}
            The decision.
        by : str, optional
            Who decided, default "user".
        """
        self.record_many([cid], decision, by=by)

    def record_many(self, ids: Iterable[str], decision: str, *, by: str) -> None:
        """Record one decision for several candidates (stamped with the UTC time) and save once.

        Parameters
        ----------
        ids : Iterable[str]
            The candidate ids; each moves to the end of the history.
        decision : {"accept", "reject"}
            The decision.
        by : str
            Who decided (e.g. "user", "auto: balanced").

        Raises
        ------
        ValueError
            On another decision or an id that is not a plain candidate id.
        """
        if decision not in ("accept", "reject"):
            raise ValueError(f"decision must be 'accept' or 'reject', got {decision!r}")
        ids = [check_candidate_id(cid, str(self.path)) for cid in ids]
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        for cid in ids:
            self.decisions[cid] = {"decision": decision, "by": by, "time": now}
            self.history = [h for h in self.history if h != cid] + [cid]
        self.save()

    def undo(self) -> str | None:
        """Forget the latest decision and save.

        Returns
        -------
        str or None
            Its id (None when there is none).
        """
        if not self.history:
            return None
        cid = self.history.pop()
        self.decisions.pop(cid, None)
        self.save()
        return cid

    def ids(self, decision: str) -> list[str]:
        """The ids with one decision, in the order they were decided.

        Parameters
        ----------
        decision : {"accept", "reject"}
            The decision.

        Returns
        -------
        list of str
            The ids.
        """
        return [cid for cid in self.history if self.decisions[cid]["decision"] == decision]

    def save(self) -> None:
        """Write the decisions and history to the JSON file (atomically)."""
        write_json(self.path, {"decisions": self.decisions, "history": self.history})


def auto_curate(store: "CurationDecisions", table: pd.DataFrame, n_select: int, *,
                request: dict[str, float] | None = None, min_consistency: float = 0.0) -> list[str]:
    """The automatic curation of 04, recorded in ``store``.

    Rejects every undecided candidate below ``min_consistency``, then accepts by
    :func:`auto_select_balanced` until ``n_select`` pairs are accepted in all (earlier
    decisions, by hand or not, are kept).

    Parameters
    ----------
    store : CurationDecisions
        Where the decisions are recorded.
    table : pandas.DataFrame
        All candidates (index id).
    n_select : int
        Pairs accepted in total.
    request : dict[str, float], optional
        Class name -> share of the accepted cells (default equal shares).
    min_consistency : float, optional
        Minimum consistency score, default 0.

    Returns
    -------
    list of str
        The ids accepted now.
    """
    broken = table.loc[table["consistency"] < min_consistency, "id"]
    store.record_many([c for c in broken if c not in store.decisions], "reject", by="auto: consistency")
    picked = auto_select_balanced(table, n_select, request=request, already=store.ids("accept"),
                                  exclude=store.ids("reject"), min_consistency=min_consistency)
    store.record_many(picked, "accept", by="auto: balanced")
    return picked


def write_selection(path: str | Path, store: CurationDecisions, *, mode: str, rule: str = SELECTION_RULE,
                    **extra: Any) -> dict[str, Any]:
    """Write ``selection.json``: accepted / rejected ids, who selected each, the rule, extras.

    Parameters
    ----------
    path : str or pathlib.Path
        The JSON file.
    store : CurationDecisions
        The decisions.
    mode : str
        How the selection was made (written as ``mode``).
    rule : str, optional
        The selection rule, default :data:`SELECTION_RULE`.
    **extra
        Further entries of the file.

    Returns
    -------
    dict[str, Any]
        What was written.
    """
    accepted = store.ids("accept")
    data = {"accepted": accepted, "rejected": store.ids("reject"),
            "selected_by": {cid: store.decisions[cid]["by"] for cid in accepted},
            "mode": mode, "rule": rule, **extra}
    write_json(path, data)
    return data

