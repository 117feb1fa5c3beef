"""Work ahead in a background thread: the next items are read and prepared while the caller
works on the current one (``rbc assess`` reconstructs the next holograms while it segments)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Iterable[T], *, depth: int = 2) -> Iterator[tuple[T, Future]]:
    """Run ``fn`` on ``items`` in a worker thread, ahead of the consumer.

    Leaving the loop early cancels the work not yet started.

    Parameters
    ----------
    fn : callable
        Called on each item, in the order of ``items``, in one worker thread (so stateful
        ``fn`` sees the items in order).
    items : iterable
        The items.
    depth : int, optional
        How many items ``fn`` may run ahead of the consumer, at least 1 (default 2), so memory
        stays bounded.

    Yields
    ------
    tuple of (item, concurrent.futures.Future)
        ``(item, future of fn(item))`` in the order of ``items``; ``future.result()`` returns
        the value or raises what ``fn`` raised.

    Raises
    ------
    ValueError
        ``depth`` is below 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) > depth:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for _, fut in pending:
                fut.cancel()
