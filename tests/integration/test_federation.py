"""Whole federations on loopback: real enclave, aggregator and coordinator processes over gRPC."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from dataisland.client import QueryFailedError
from dataisland.supervisor import FederationProcesses
from dataisland.v1 import common_pb2, coordinator_pb2
from tests.integration.conftest import (
    client_for,
    coordinator_stub,
    fill_claims,
    free_base_port,
    signed_envelope,
    union_connection,
)

pytestmark = pytest.mark.integration


def test_grouped_query_equals_duckdb_over_the_union(
    running: FederationProcesses, federation_dir: Path
) -> None:
    sql = (
        "SELECT date_trunc('month', service_date) AS month, category, count(*) AS claims, "
        "sum(amount) AS total, avg(amount) AS mean, sum(reimbursed) AS top "
        "FROM claims WHERE age BETWEEN 18 AND 80 GROUP BY 1, 2 ORDER BY month, category"
    )
    with client_for(federation_dir) as client:
        result = client.query(sql, purpose="statistics")
    expected = union_connection(federation_dir).execute(sql).fetchall()
    assert [c[0] for c in result.columns] == ["month", "category", "claims", "total", "mean", "top"]
    assert len(result.rows) == len(expected) > 40
    for got, want in zip(result.rows, expected, strict=True):
        assert got[0] is not None
        assert got[0].startswith(str(want[0].date() if hasattr(want[0], "date") else want[0]))
        assert got[1] == want[1]
        assert int(got[2] or 0) == want[2]
        assert Decimal(got[3] or "0") == want[3]
        assert abs(float(got[4] or "nan") - want[4]) <= 1e-9 * abs(float(want[3])) + 1e-9
        assert Decimal(got[5] or "0") == want[5]


def test_global_aggregate_and_status_fields(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        result = client.query(
            "SELECT count(*) AS n, stddev_samp(amount) AS spread FROM claims", purpose="statistics"
        )
    assert result.rows[0][0] == str(2_000 + 4_000 + 6_000)
    assert result.status.state == coordinator_pb2.QUERY_STATE_SUCCEEDED
    assert len(result.status.query_hash) == 64
    assert "count" in result.status.canonical_sql.lower()


def test_submit_is_idempotent_on_request_id(
    running: FederationProcesses, federation_dir: Path
) -> None:
    stub = coordinator_stub(federation_dir)
    request_id = f"idem-{uuid.uuid4().hex}"
    envelope = signed_envelope(federation_dir, "SELECT count(*) AS n FROM claims", request_id)
    first = stub.SubmitQuery(coordinator_pb2.SubmitQueryRequest(envelope=envelope)).status
    second = stub.SubmitQuery(coordinator_pb2.SubmitQueryRequest(envelope=envelope)).status
    assert first.query_id == second.query_id
    assert first.request_id == request_id
    listed = [q.query_id for q in stub.ListQueries(coordinator_pb2.ListQueriesRequest()).queries]
    assert listed.count(first.query_id) == 1
    other = signed_envelope(federation_dir, "SELECT sum(amount) AS s FROM claims", request_id)
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitQuery(coordinator_pb2.SubmitQueryRequest(envelope=other))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert request_id in (info.value.details() or "")


def test_result_larger_than_a_page_is_paged_intact(
    running: FederationProcesses, federation_dir: Path
) -> None:
    # Water readings are not personal (k = 1): thousands of hourly groups are all released.
    sql = (
        "SELECT station_id, date_trunc('hour', reading_at) AS hour, count(*) AS n, "
        "avg(ph) AS ph FROM water_readings GROUP BY station_id, date_trunc('hour', reading_at) "
        "ORDER BY station_id, hour"
    )
    with client_for(federation_dir) as client:
        status = client.submit(sql, purpose="statistics")
        client.wait(status.query_id)
        result = client.result(status.query_id, page_size=250)
        first_page = client._stub.GetResult(  # the raw page shows the paging really happened
            coordinator_pb2.GetResultRequest(query_id=status.query_id, page_size=250)
        ).page
    expected = union_connection(federation_dir).execute(sql).fetchall()
    assert len(first_page.rows) == 250
    assert first_page.next_page_token == "250"
    assert len(result.rows) == len(expected) > 1_000
    got = [(r[0], r[1], int(r[2] or 0), float(r[3] or "nan")) for r in result.rows]
    want = [(s, h.isoformat(timespec="microseconds"), n, ph) for s, h, n, ph in expected]
    assert [g[:3] for g in got] == [w[:3] for w in want]
    assert all(abs(g[3] - w[3]) < 1e-9 for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("SELEC count(*) FROM claims", "parse"),
        ("SELECT sum(amount) OVER () AS w FROM claims", "window"),
        ("SELECT count(*) AS n FROM claims UNION SELECT count(*) FROM claims", "union"),
        ("SELECT * FROM claims", "*"),
        ("SELECT count(*) AS n FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT count(*) AS n FROM nowhere", "nowhere"),
        ("SELECT person_id, amount FROM claims", "person_id"),
    ],
)
def test_refused_sql_names_the_construct(
    running: FederationProcesses, federation_dir: Path, sql: str, named: str
) -> None:
    with client_for(federation_dir) as client, pytest.raises(QueryFailedError) as info:
        client.query(sql, purpose="statistics")
    assert info.value.code in {"INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"}
    assert named.lower() in str(info.value).lower()


def test_bad_envelopes_and_tokens_get_clear_codes_not_internal(
    running: FederationProcesses, federation_dir: Path
) -> None:
    stub = coordinator_stub(federation_dir)
    good = signed_envelope(federation_dir, "SELECT count(*) AS n FROM claims", uuid.uuid4().hex)
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitQuery(coordinator_pb2.SubmitQueryRequest(envelope=common_pb2.SignedEnvelope()))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for envelope in (b"not json", b'{"sql": 1}'):
        forged = common_pb2.SignedEnvelope(envelope=envelope, signature=good.signature)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitQuery(coordinator_pb2.SubmitQueryRequest(envelope=forged))
        # The signature is over other bytes: the caller cannot prove it wrote these.
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        stub.GetResult(coordinator_pb2.GetResultRequest(query_id="no-such-query"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    status = stub.SubmitQuery(coordinator_pb2.SubmitQueryRequest(envelope=good)).status
    stub.WaitResult(coordinator_pb2.WaitResultRequest(query_id=status.query_id, timeout_ms=10_000))
    with pytest.raises(grpc.RpcError) as info:
        stub.GetResult(
            coordinator_pb2.GetResultRequest(query_id=status.query_id, page_token="garbage")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_and_list(running: FederationProcesses, federation_dir: Path) -> None:
    with client_for(federation_dir) as client:
        status = client.submit("SELECT count(*) AS n FROM claims", purpose="statistics")
        cancelled = client.cancel(status.query_id)
        assert cancelled.state in {
            coordinator_pb2.QUERY_STATE_CANCELLED,
            coordinator_pb2.QUERY_STATE_SUCCEEDED,
        }
        assert status.query_id in [q.query_id for q in client.list_queries()]


def test_node_down_is_unavailable_naming_the_department(
    federation_dir: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "fed"
    # A copy starts with an empty audit log and fresh witnesses (the original may be running).
    shutil.copytree(federation_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    with FederationProcesses(copy) as nodes:
        victim = next(n for n in nodes.nodes if n.spec.name == "wujiang")
        victim.process.kill()
        victim.process.wait()
        started = time.monotonic()
        with client_for(copy) as client, pytest.raises(QueryFailedError) as info:
            client.query("SELECT count(*) AS n FROM claims", purpose="statistics")
        assert time.monotonic() - started < 30
    assert info.value.code == "UNAVAILABLE"
    assert "wujiang" in str(info.value)


def _rebase_ports(directory: Path, base: int) -> None:
    """Move a copied federation to new ports so it can run beside the original."""
    import re

    files = [directory / "federation.yaml", *sorted((directory / "nodes").glob("*.yaml"))]
    ports = sorted(
        {int(p) for f in files for p in re.findall(r"127\.0\.0\.1:(\d+)", f.read_text())}
    )
    mapping = {old: base + i for i, old in enumerate(ports)}
    for f in files:
        f.write_text(
            re.sub(
                r"127\.0\.0\.1:(\d+)",
                lambda m: f"127.0.0.1:{mapping[int(m.group(1))]}",
                f.read_text(),
            )
        )


def test_runaway_query_is_interrupted_at_its_deadline(federation_dir: Path, tmp_path: Path) -> None:
    import re
    import shutil

    copy = tmp_path / "fed"
    # A copy starts with an empty audit log and fresh witnesses (the original may be running).
    shutil.copytree(federation_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    node = copy / "nodes" / "qingpu.yaml"
    node.write_text(
        re.sub(r"query_timeout_seconds: .*", "query_timeout_seconds: 0.5", node.read_text())
    )
    fill_claims(copy / "shards" / "qingpu.duckdb", seed=99, rows=6_000_000)
    runaway = (
        "SELECT age, sex, category, hospital_level, service_date, count(*) AS n, "
        "var_samp(amount) AS v FROM claims "
        "GROUP BY age, sex, category, hospital_level, service_date"
    )
    with FederationProcesses(copy), client_for(copy) as client:
        started = time.monotonic()
        with pytest.raises(QueryFailedError) as info:
            client.query(runaway, purpose="statistics")
        elapsed = time.monotonic() - started
        # The shard is free again: the watchdog interrupted the runaway rather than waiting it out.
        cheap = "SELECT count(*) AS n FROM claims WHERE age > 1000"
        answer = client.query(cheap, purpose="statistics")  # no one matches: withheld, not zero
        assert answer.rows == []
        assert answer.status.suppressed
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert "deadline" in str(info.value)
    assert elapsed < 20
