"""SIGKILL the coordinator during a stream of concurrent queries: nothing acknowledged is lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dataisland.cli import main
from dataisland.client import QueryFailedError
from dataisland.supervisor import FederationProcesses
from ledger.entries import Entry, QueryEntry
from tests.integration.conftest import DEPARTMENTS, client_for, fill_claims, free_base_port
from tests.integration.test_audit import all_entries, wait_checkpointed

pytestmark = pytest.mark.integration

THREADS = 6


def test_kill_9_loses_no_acknowledged_query(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    result = CliRunner().invoke(
        main,
        [
            "init",
            str(directory),
            "--departments",
            ",".join(DEPARTMENTS),
            "--base-port",
            str(free_base_port()),
        ],
    )
    assert result.exit_code == 0, result.output
    for seed, department in enumerate(DEPARTMENTS, start=1):
        fill_claims(directory / "shards" / f"{department}.duckdb", seed=seed, rows=300)

    acknowledged: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream() -> None:
        with client_for(directory) as client:
            while not stop.is_set():
                try:
                    status = client.submit("SELECT count(*) AS n FROM claims", purpose="statistics")
                except QueryFailedError:
                    time.sleep(0.05)  # the coordinator is down: keep trying until told to stop
                    continue
                assert status.HasField("log_index")
                with lock:
                    acknowledged.append((status.query_id, status.log_index))

    with FederationProcesses(directory) as nodes:
        threads = [threading.Thread(target=stream) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        while True:
            with lock:
                if len(acknowledged) >= 40:
                    break
            time.sleep(0.01)
        coordinator = next(n for n in nodes.nodes if n.spec.role == "coordinator")
        coordinator.process.kill()  # SIGKILL, mid-stream
        coordinator.process.wait()
        with lock:
            before_kill = list(acknowledged)
        time.sleep(0.5)

        # Restart it with the same command, as the supervisor would.
        restarted = nodes._spawn(coordinator.spec)
        nodes._await_listening(restarted, time.monotonic() + 30)
        while True:
            with lock:
                if len(acknowledged) >= len(before_kill) + 20:
                    break
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

        entries = all_entries(directory)
        for query_id, index in before_kill:
            entry = Entry.from_bytes(entries[index])
            assert isinstance(entry, QueryEntry), index
            assert entry.query_id == query_id
        # Entries after the restart continue the same log.
        with lock:
            after = acknowledged[len(before_kill) :]
        assert all(index >= len(before_kill) for _, index in after)
        wait_checkpointed(directory, timeout=30)
        out = tmp_path / "export"
        exported = CliRunner().invoke(
            main, ["audit", "export", "--federation", str(directory), str(out)]
        )
        assert exported.exit_code == 0, exported.output
    verified = CliRunner().invoke(
        main, ["audit", "verify", str(out), "--federation", str(directory)]
    )
    assert verified.exit_code == 0, verified.output
    # Stopped, the log is read from its files and still verifies.
    stopped = tmp_path / "export-stopped"
    exported = CliRunner().invoke(
        main, ["audit", "export", "--federation", str(directory), str(stopped)]
    )
    assert exported.exit_code == 0, exported.output
    assert "files in" in exported.output
    verified = CliRunner().invoke(main, ["audit", "verify", str(stopped)])
    assert verified.exit_code == 0, verified.output
