"""Fair scheduling: one requester's queued work cannot hold every worker."""

from __future__ import annotations

import threading
from functools import partial

from coordinator.scheduler import FairScheduler


def test_another_requester_runs_while_a_flooding_one_waits() -> None:
    scheduler = FairScheduler(workers=2, per_key=1)
    release = threading.Event()
    started: list[str] = []
    lock = threading.Lock()
    cheap_done = threading.Event()

    def slow(name: str) -> None:
        with lock:
            started.append(name)
        release.wait(10)

    for i in range(5):
        scheduler.submit("flood", partial(slow, f"flood-{i}"))
    scheduler.submit("other", cheap_done.set)
    # The flooding requester holds one worker (its share); the other worker serves "other".
    assert cheap_done.wait(10)
    with lock:
        assert started == ["flood-0"]
    assert scheduler.queued("flood") == 4
    release.set()
    scheduler.close()


def test_round_robin_between_waiting_requesters() -> None:
    scheduler = FairScheduler(workers=1, per_key=1)
    gate = threading.Event()
    order: list[str] = []
    done = threading.Event()

    def hold() -> None:
        gate.wait(10)

    def note(key: str) -> None:
        order.append(key)

    scheduler.submit("a", hold)
    for key in ("a", "a", "b", "b"):
        scheduler.submit(key, partial(note, key))
    scheduler.submit("c", done.set)
    gate.set()
    assert done.wait(10)
    assert order[:2] in (["a", "b"], ["b", "a"])
    assert order[2:4] in (["a", "b"], ["b", "a"])
    scheduler.close()


def test_failing_work_does_not_stop_a_worker() -> None:
    scheduler = FairScheduler(workers=1, per_key=1)
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    scheduler.submit("a", boom)
    scheduler.submit("a", done.set)
    assert done.wait(10)
    scheduler.close()
    scheduler.submit("a", done.clear)  # dropped after close
    assert done.is_set()
