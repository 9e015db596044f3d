"""Faults with real processes and SIGKILL: an enclave, the aggregator, the coordinator, a witness.

One federation (a copy of the session's, on its own ports) serves the whole module; each test
kills one node and restarts it before it ends. "Mid-query" is made certain, not timed: the node
is frozen with SIGSTOP, the query is submitted and seen RUNNING (its fan-out is waiting on the
frozen node), and only then is the node SIGKILLed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataisland.canonical import TypedParam
from dataisland.cli.officers import officer_key_path
from dataisland.client import Client, QueryFailedError
from dataisland.federation import load_federation
from dataisland.supervisor import FederationProcesses, RunningNode
from dataisland.v1 import audit_pb2, audit_pb2_grpc, coordinator_pb2
from ledger.entries import AttestationEntry, Entry, FailureEntry, QueryEntry
from policies.signing import load_private_key
from tests.integration.conftest import approve_everywhere, client_for, free_base_port, https_request
from tests.integration.test_audit import all_entries, wait_checkpointed
from tests.integration.test_federation import _rebase_ports
from tests.integration.test_policy_enforcement import TEMPLATE

pytestmark = pytest.mark.integration

CLAIMS = "SELECT category, count(*) AS n, sum(amount) AS total FROM claims GROUP BY category"
WATER = "SELECT station_id, avg(ph) AS ph FROM water_readings GROUP BY station_id"
FAILED = coordinator_pb2.QUERY_STATE_FAILED
PENDING = coordinator_pb2.QUERY_STATE_PENDING
SUCCEEDED = coordinator_pb2.QUERY_STATE_SUCCEEDED


@pytest.fixture(scope="module")
def fed(federation_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("faults") / "fed"
    # A copy starts with an empty log, fresh witnesses and no coordinator state.
    shutil.copytree(federation_dir, copy, ignore=shutil.ignore_patterns("logs", "audit", "state"))
    _rebase_ports(copy, free_base_port())
    return copy


@pytest.fixture(scope="module")
def nodes(fed: Path) -> Iterator[FederationProcesses]:
    with FederationProcesses(fed) as processes:
        # One query through every node first: the coordinator's channels are up and the
        # enclaves have rebuilt their state, so a test that freezes a node freezes a node the
        # coordinator already talks to (xdist may give any test of this module to a worker).
        with client_for(fed) as client:
            _answered_again(client, CLAIMS, naming="")
        yield processes


def _node(nodes: FederationProcesses, name: str) -> RunningNode:
    return [n for n in nodes.nodes if n.spec.name == name][-1]


def _kill(node: RunningNode) -> None:
    node.process.kill()  # SIGKILL
    node.process.wait()


def _restart(nodes: FederationProcesses, name: str) -> None:
    # The same command the supervisor ran, as an operator's process manager would.
    restarted = nodes._spawn(_node(nodes, name).spec)
    nodes._await_listening(restarted, time.monotonic() + 30)


def _answered_again(client: Client, sql: str, *, naming: str) -> int:
    """Query until a restarted node answers (the coordinator's channel reconnects with a short
    backoff); until then every refusal is UNAVAILABLE naming the node. Return the row count."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return len(client.query(sql, purpose="statistics").rows)
        except QueryFailedError as exc:
            refusal = exc
        assert refusal.code == "UNAVAILABLE", refusal
        assert naming in str(refusal)
        assert time.monotonic() < deadline, "the restarted node was not used again"
        time.sleep(0.2)


def _freeze_and_submit(client: Client, node: RunningNode, sql: str) -> str:
    """Freeze `node`, submit `sql`, and return its id once it is certainly in flight."""
    os.kill(node.pid, signal.SIGSTOP)
    query_id = client.submit(sql, purpose="statistics").query_id
    for _ in range(5):
        status = client._stub.GetResult(coordinator_pb2.GetResultRequest(query_id=query_id))
        assert status.status.state == coordinator_pb2.QUERY_STATE_RUNNING
        time.sleep(0.1)
    return query_id


def _entries(directory: Path) -> list[Entry]:
    return [Entry.from_bytes(data) for data in all_entries(directory)]


def _log_lines(directory: Path, node: str) -> list[dict[str, object]]:
    text = (directory / "logs" / f"{node}.log").read_text(encoding="utf-8", errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _assert_failed_unreleased(
    directory: Path, client: Client, query_id: str, *, naming: str
) -> int:
    """The query failed UNAVAILABLE naming the node, nothing was released, the failure is in the
    coordinator's log and the audit log; return the failure entry's index."""
    final = client.wait(query_id)
    assert final.state == FAILED
    assert final.error.code == "UNAVAILABLE"
    assert naming in final.error.message
    answer = client._stub.GetResult(coordinator_pb2.GetResultRequest(query_id=query_id))
    assert not answer.HasField("page")
    entries = _entries(directory)
    about = [(i, e) for i, e in enumerate(entries) if getattr(e, "query_id", None) == query_id]
    assert not any(isinstance(e, QueryEntry) and e.decision == "released" for _, e in about)
    failures = [i for i, e in about if isinstance(e, FailureEntry) and e.code == "UNAVAILABLE"]
    assert len(failures) == 1
    assert any(
        line.get("query_id") == query_id
        and line["level"] == "WARNING"
        and naming in str(line["message"])
        for line in _log_lines(directory, "coordinator")
    )
    return failures[0]


def _attested_after(directory: Path, index: int, *, subject: str, role: str) -> bool:
    return any(
        isinstance(e, AttestationEntry) and e.subject == subject and e.role == role
        for e in _entries(directory)[index:]
    )


def test_a_department_killed_mid_query(fed: Path, nodes: FederationProcesses) -> None:
    with client_for(fed) as client:
        client.query(CLAIMS, purpose="statistics")  # every node attested
        victim = _node(nodes, "jiashan")
        query_id = _freeze_and_submit(client, victim, CLAIMS)
        _kill(victim)
        failure = _assert_failed_unreleased(fed, client, query_id, naming="jiashan")
        # The coordinator keeps serving: a question jiashan holds no data for is answered...
        assert client.query(WATER, purpose="statistics").rows
        # ...and one it does is refused at once, naming it.
        with pytest.raises(QueryFailedError) as info:
            client.query(CLAIMS, purpose="statistics")
        assert info.value.code == "UNAVAILABLE"
        assert "jiashan" in str(info.value)
        _restart(nodes, "jiashan")
        assert _answered_again(client, CLAIMS, naming="jiashan") == 4
    # The restarted enclave has new keys: it was attested again before it got a query.
    assert _attested_after(fed, failure, subject="jiashan", role="department")


def test_the_aggregator_killed_mid_query(fed: Path, nodes: FederationProcesses) -> None:
    committee = load_federation(fed / "federation.yaml").committee.name
    with client_for(fed) as client:
        client.query(CLAIMS, purpose="statistics")
        victim = _node(nodes, "aggregator")
        query_id = _freeze_and_submit(client, victim, CLAIMS)
        _kill(victim)
        failure = _assert_failed_unreleased(fed, client, query_id, naming="aggregator")
        # Still serving: the requester lists its queries, and a new query fails fast, named.
        assert query_id in [q.query_id for q in client.list_queries()]
        with pytest.raises(QueryFailedError) as info:
            client.query(CLAIMS, purpose="statistics")
        assert info.value.code == "UNAVAILABLE"
        assert "aggregator" in str(info.value)
        _restart(nodes, "aggregator")
        assert _answered_again(client, CLAIMS, naming="aggregator") == 4
    assert _attested_after(fed, failure, subject=committee, role="aggregator")


def test_the_coordinator_killed_keeps_pending_approvals_and_every_entry(
    fed: Path, nodes: FederationProcesses
) -> None:
    params = [
        TypedParam.of("person_id", "VARCHAR", "p1-1"),
        TypedParam.of("since", "DATE", dt.date(2024, 1, 1)),
    ]
    with client_for(fed, "wujiang/requester/analyst") as client:
        pending = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert pending.state == PENDING
        with client_for(fed, "qingpu/officer/officer") as officer:
            key = load_private_key(officer_key_path(fed, "qingpu").read_bytes())
            listed = {p.query_id: p for p in officer.pending_approvals()}
            officer.approve(listed[pending.query_id], signing_key=key)
        # And one query running when the coordinator dies (its fan-out waits on frozen jiashan).
        with client_for(fed) as analyst:
            jiashan = _node(nodes, "jiashan")
            running = _freeze_and_submit(analyst, jiashan, CLAIMS)
            before = all_entries(fed)
            _kill(_node(nodes, "coordinator"))
            os.kill(jiashan.pid, signal.SIGCONT)
            _restart(nodes, "coordinator")
            # The running query is not resumed: it failed, said so, and released nothing.
            interrupted = analyst.wait(running)
            assert interrupted.state == FAILED
            assert interrupted.error.code == "UNAVAILABLE"
            assert "restarted" in interrupted.error.message
        # Every acknowledged entry is still there, in place, and the interrupted query's end.
        after = _entries(fed)
        assert all_entries(fed)[: len(before)] == before
        assert any(isinstance(e, FailureEntry) and e.query_id == running for e in after)
        kept = client._stub.GetResult(coordinator_pb2.GetResultRequest(query_id=pending.query_id))
        assert kept.status.state == PENDING
        for department in ("wujiang", "jiashan"):
            with client_for(fed, f"{department}/officer/officer") as officer:
                key = load_private_key(officer_key_path(fed, department).read_bytes())
                listed = {p.query_id: p for p in officer.pending_approvals()}
                assert "qingpu" in listed[pending.query_id].approved_by
                officer.approve(listed[pending.query_id], signing_key=key)
        assert client.wait(pending.query_id).state == SUCCEEDED
    # The template's parameters stayed out of the log (the pending file held them).
    assert not any(b"p1-1" in data for data in all_entries(fed))


def test_a_restarted_coordinator_keeps_the_officers_template_approvals(
    fed: Path, nodes: FederationProcesses
) -> None:
    params = [
        TypedParam.of("person_id", "VARCHAR", "p2-1"),
        TypedParam.of("since", "DATE", dt.date(2024, 1, 1)),
    ]
    # jiashan's analyst: no other test of this module uses its template approvals.
    with client_for(fed, "jiashan/requester/analyst") as client:
        first = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        approve_everywhere(fed, first.query_id, runs=2)
        assert client.wait(first.query_id).state == SUCCEEDED
        with client_for(fed) as analyst:
            released = analyst.query(CLAIMS, purpose="statistics")
        _kill(_node(nodes, "coordinator"))
        _restart(nodes, "coordinator")
        # The requester's receipt still opens its result's commitment after the restart.
        with client_for(fed) as analyst:
            receipt = audit_pb2_grpc.AuditServiceStub(analyst._channel).GetReceipt(
                audit_pb2.GetReceiptRequest(query_id=released.status.query_id, timeout_ms=10_000),
                timeout=20,
            )
        assert len(receipt.result_salt) == 32
        assert json.loads(receipt.result_opening)["result_digest"] == released.digest
        # The second run needs no officer, after the restart as before it; the third waits.
        second = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert client.wait(second.query_id).state == SUCCEEDED
        third = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert third.state == PENDING


def _witness_size(fed: Path, witness: str) -> int:
    federation = load_federation(fed / "federation.yaml")
    assert federation.log is not None
    entry = federation.log.witnesses[witness]
    status, body = https_request(
        fed,
        "qingpu/auditor/auditor",
        entry.address,
        ca=entry.ca.read_bytes(),
        server_name=federation.dns_name("witness", witness),
        path="/healthz",
    )
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "SERVING"
    return int(health["size"])


def test_one_witness_down_then_back(fed: Path, nodes: FederationProcesses) -> None:
    with client_for(fed) as client:
        client.query(CLAIMS, purpose="statistics")
        covered = wait_checkpointed(fed, timeout=30)
        assert _witness_size(fed, "committee") == covered
        _kill(_node(nodes, "witness-committee"))
        for _ in range(3):
            client.query(CLAIMS, purpose="statistics")
        # Three of four witnesses are a quorum: the log keeps sequencing and checkpointing.
        covered_without = wait_checkpointed(fed, timeout=30)
        assert covered_without > covered
        _restart(nodes, "witness-committee")
        assert _witness_size(fed, "committee") == covered
        # It is sent the next checkpoint (an idle log is re-cosigned every few seconds) with
        # the entries it missed and a consistency proof from where it stopped.
        deadline = time.monotonic() + 30
        while _witness_size(fed, "committee") < covered_without:
            assert time.monotonic() < deadline, "the witness did not catch up"
            time.sleep(0.2)


def test_a_departments_witness_down_stops_only_that_departments_queries(
    fed: Path, nodes: FederationProcesses
) -> None:
    # jiashan's enclave reports every execution to jiashan's witness before its partial
    # leaves: with that witness down it releases nothing, and says why.
    with client_for(fed) as client:
        client.query(CLAIMS, purpose="statistics")
        _kill(_node(nodes, "witness-jiashan"))
        with pytest.raises(QueryFailedError) as info:
            client.query(CLAIMS, purpose="statistics")
        assert info.value.code == "UNAVAILABLE"
        assert "witness jiashan" in str(info.value)
        # A question jiashan holds no shard of is answered meanwhile.
        assert client.query(WATER, purpose="statistics").rows
        _restart(nodes, "witness-jiashan")
        assert _answered_again(client, CLAIMS, naming="jiashan") > 0
        latest = wait_checkpointed(fed, timeout=30)
        deadline = time.monotonic() + 30
        while _witness_size(fed, "jiashan") < latest:
            assert time.monotonic() < deadline, "the witness did not catch up"
            time.sleep(0.2)


def test_one_requesters_stuck_queries_do_not_starve_another(
    fed: Path, nodes: FederationProcesses
) -> None:
    # jiashan frozen: every claims query hangs in its fan-out, as an expensive one would. The
    # flooding requester queues more than all the coordinator's workers; another requester's
    # question that jiashan is not part of is still answered.
    with client_for(fed) as flooding, client_for(fed, "wujiang/requester/analyst") as other:
        flooding.query(CLAIMS, purpose="statistics")
        victim = _node(nodes, "jiashan")
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            stuck = [flooding.submit(CLAIMS, purpose="statistics").query_id for _ in range(12)]
            assert other.query(WATER, purpose="statistics").rows
            states = [
                flooding._stub.GetResult(coordinator_pb2.GetResultRequest(query_id=q)).status.state
                for q in stuck
            ]
            assert set(states) == {coordinator_pb2.QUERY_STATE_RUNNING}
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        assert {flooding.wait(q).state for q in stuck} == {SUCCEEDED}
