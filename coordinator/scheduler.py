"""Fair scheduling of fan-outs: one requester's expensive queries cannot take every worker.

The coordinator runs at most `workers` fan-outs at once, and at most `per_key` of one requester;
the rest wait in a queue per requester, and a free worker takes the oldest waiting query of the
next requester in turn (round robin), skipping requesters already at their share. So a requester
that floods the coordinator with slow queries delays only its own; another requester's query
starts as soon as a worker is free. (Per-requester caps on unfinished queries and on call rate
bound how much can queue: coordinator/book.py, dataisland/limits.py.)

This module knows nothing about queries: it runs callables under keys.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable

log = logging.getLogger("dataisland.coordinator.scheduler")


class FairScheduler:
    """Runs submitted work on `workers` threads, at most `per_key` at once per key, fairly."""

    def __init__(self, *, workers: int, per_key: int, name: str = "query") -> None:
        if workers < 1 or per_key < 1:
            raise ValueError("workers and per_key must be at least 1")
        self.per_key = per_key
        self._lock = threading.Condition()
        self._queues: OrderedDict[str, deque[Callable[[], None]]] = OrderedDict()
        self._running: dict[str, int] = {}
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: str, work: Callable[[], None]) -> None:
        """Queue `work` under `key`; it runs when a worker is free and `key` is under its share.

        Work submitted after `close` is dropped.
        """
        with self._lock:
            if self._closed:
                return
            self._queues.setdefault(key, deque()).append(work)
            self._lock.notify()

    def queued(self, key: str) -> int:
        """How much of `key`'s work waits for a worker."""
        with self._lock:
            return len(self._queues.get(key, ()))

    def _next(self) -> tuple[str, Callable[[], None]] | None:
        # Round robin: the first key in order that may run, which then goes to the back.
        for key, queue in self._queues.items():
            if self._running.get(key, 0) < self.per_key:
                work = queue.popleft()
                if queue:
                    self._queues.move_to_end(key)
                else:
                    del self._queues[key]
                self._running[key] = self._running.get(key, 0) + 1
                return key, work
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                picked = None
                while not self._closed and (picked := self._next()) is None:
                    self._lock.wait()
                if picked is None:
                    return
            key, work = picked
            try:
                work()
            except Exception:
                log.exception("scheduled work of %s failed", key)
            finally:
                with self._lock:
                    self._running[key] -= 1
                    if not self._running[key]:
                        del self._running[key]
                    # A key that was at its share may run again: wake every worker to look.
                    self._lock.notify_all()

    def close(self) -> None:
        """Drop the queued work and stop the workers once their current work ends."""
        with self._lock:
            self._closed = True
            self._queues.clear()
            self._lock.notify_all()
