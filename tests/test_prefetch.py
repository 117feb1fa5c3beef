"""rbclib.core.prefetch: ordered work ahead in one thread, bounded, errors delivered in place."""
from __future__ import annotations

import threading
import time

import pytest

from rbclib.core.prefetch import prefetched


def test_results_come_in_order_and_work_runs_ahead_but_bounded():
    started: list[int] = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        time.sleep(0.01 * (i % 3))  # uneven durations must not reorder
        return i * i

    seen, leads = [], []
    for item, fut in prefetched(work, range(10), depth=2):
        time.sleep(0.02)  # the consumer is slow: the worker gets ahead
        with lock:
            leads.append(len(started) - item - 1)
        seen.append((item, fut.result()))
    assert seen == [(i, i * i) for i in range(10)]
    assert max(leads) == 2 and min(leads[:-2]) == 2  # at most, and in steady state exactly, 2 ahead
    assert started == list(range(10))  # one worker: fn sees the items in order


def test_an_error_is_raised_by_its_own_future_only():
    def work(i):
        if i == 1:
            raise ValueError("bad item 1")
        return i

    out = []
    for item, fut in prefetched(work, range(3)):
        try:
            out.append(fut.result())
        except ValueError as exc:
            out.append(str(exc))
    assert out == [0, "bad item 1", 2]


def test_leaving_early_cancels_what_has_not_started():
    started = []
    gate = threading.Event()

    def work(i):
        started.append(i)
        gate.wait(1)
        return i

    for item, fut in prefetched(work, range(100), depth=3):
        gate.set()
        assert fut.result() == 0
        break
    assert len(started) <= 4
    with pytest.raises(ValueError, match="depth"):
        next(prefetched(work, range(3), depth=0))
