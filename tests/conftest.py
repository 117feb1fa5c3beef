"""Shared fixtures: where the real data of ../shared/data lives (skipped when absent), and the
seed, thread count and bound checks of the learning tests.

A learning test (``@pytest.mark.learning``) asserts a training result. It takes its seed from
``RBC_TEST_SEED`` (default 0) and runs torch on ``RBC_TEST_THREADS`` threads (default: one for
the tiny-network modules, torch's own count elsewhere), so ``tests/learning_sweep.py`` can run
it over seeds x threads. Its bounds go through :class:`LearningChecks`, which appends every
measured value, its bound and the relative margin to the JSON-lines file ``RBC_MARGIN_LOG``
when that is set.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LEARNING_SEED = int(os.environ.get("RBC_TEST_SEED", "0"))
TORCH_THREADS = int(os.environ.get("RBC_TEST_THREADS", "0"))   # 0: the test's own choice


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available ({SHARED_DATA} missing)")
    return SHARED_DATA


@contextmanager
def _torch_threads(n: int):
    """Run the block on ``n`` torch threads (as they are when ``n`` is 0)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread (``RBC_TEST_THREADS`` when set) for modules of tiny networks: on a shared
    2-core machine they run several times faster than with two threads fighting other
    processes for the cores."""
    with _torch_threads(TORCH_THREADS or 1):
        yield


@pytest.fixture(scope="module")
def learning_threads():
    """``RBC_TEST_THREADS`` torch threads, when set, for a module's training fixture."""
    with _torch_threads(TORCH_THREADS):
        yield


@pytest.fixture(scope="session")
def learning_seed() -> int:
    """The training seed of the learning tests: ``RBC_TEST_SEED``, default 0."""
    return LEARNING_SEED


class LearningChecks:
    """Asserts a learning test's bounds and logs each value with its relative margin.

    The margin is the distance to the bound as a fraction of the bound's size: 0.25 means the
    value could move 25 % of the bound before the check fails; a negative margin is a failure.
    """

    def __init__(self, test_id: str, seed: int, threads: int, log: Path | None):
        self.test_id, self.seed, self.threads, self.log = test_id, seed, threads, log

    def _record(self, check: str, value: float, bound: float, margin: float) -> None:
        if self.log is None:
            return
        row = {"test": self.test_id, "check": check, "seed": self.seed, "threads": self.threads,
               "value": float(value), "bound": float(bound), "margin": float(margin)}
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def below(self, check: str, value: float, bound: float, detail: object = "") -> None:
        """Assert ``value < bound``."""
        self._record(check, value, bound, (bound - value) / max(abs(bound), 1e-12))
        assert value < bound, f"{check}: {value:.4g} is not below {bound:.4g} {detail}"

    def above(self, check: str, value: float, bound: float, detail: object = "") -> None:
        """Assert ``value >= bound``."""
        self._record(check, value, bound, (value - bound) / max(abs(bound), 1e-12))
        assert value >= bound, f"{check}: {value:.4g} is below {bound:.4g} {detail}"


@pytest.fixture
def learning(request, learning_seed):
    """A :class:`LearningChecks` for this test; seeds torch with the learning seed and, when
    ``RBC_TEST_THREADS`` is set, runs the test on that many torch threads."""
    import torch

    log = os.environ.get("RBC_MARGIN_LOG")
    with _torch_threads(TORCH_THREADS):
        torch.manual_seed(learning_seed)
        yield LearningChecks(request.node.nodeid, learning_seed, torch.get_num_threads(), Path(log) if log else None)
