"""Operators read each node's Prometheus metrics over mutual TLS; every line of a log is JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataisland.federation import load_federation, load_node_config
from dataisland.supervisor import FederationProcesses
from tests.integration.conftest import client_for, https_request

pytestmark = pytest.mark.integration


def _scrape(
    directory: Path, node: str, identity: str
) -> dict[str, list[tuple[dict[str, str], float]]]:
    federation = load_federation(directory / "federation.yaml")
    config = load_node_config(directory / "nodes" / f"{node}.yaml")
    assert config.metrics_listen is not None
    department = config.department or federation.committee.name
    ca = (
        federation.departments[department].ca
        if department in federation.departments
        else federation.committee.ca
    )
    role = {"coordinator": "coordinator", "aggregator": "aggregator"}.get(node, "enclave")
    status, body = https_request(
        directory,
        identity,
        config.metrics_listen,
        ca=ca.read_bytes(),
        server_name=federation.dns_name(role, department),
        path="/metrics",
    )
    assert status == 200, body
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def test_the_coordinator_counts_decisions_calls_latency_log_and_witnesses(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        client.query("SELECT category, count(*) AS n FROM claims GROUP BY 1", purpose="statistics")
    samples = _scrape(federation_dir, "coordinator", "committee/operator/operator")
    assert _value(samples, "dataisland_queries_total", decision="allow") >= 1
    assert _value(samples, "dataisland_query_outcomes_total", state="succeeded") >= 1
    assert _value(samples, "dataisland_query_duration_seconds_count", state="succeeded") >= 1
    assert _value(samples, "dataisland_rpc_duration_seconds_count", method="SubmitQuery") >= 1
    for node in ("qingpu", "wujiang", "jiashan"):
        assert (
            _value(
                samples,
                "dataisland_enclave_calls_total",
                node=node,
                method="ExecutePartial",
                code="OK",
            )
            >= 1
        )
        assert _value(samples, "dataisland_attestations_total", node=node) >= 1
    assert (
        _value(samples, "dataisland_enclave_calls_total", node="aggregator", method="MergePartials")
        >= 1
    )
    assert _value(samples, "dataisland_log_entries") > 0
    witnesses = {labels["witness"] for labels, _ in samples["dataisland_witness_lag_entries"]}
    assert witnesses == {"qingpu", "wujiang", "jiashan", "committee"}
    assert _value(samples, "process_resident_memory_bytes") > 0


def test_an_enclave_counts_its_rpcs_for_its_own_operator(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        client.query("SELECT count(*) AS n FROM claims", purpose="statistics")
    samples = _scrape(federation_dir, "qingpu", "qingpu/operator/operator")
    assert (
        _value(
            samples,
            "dataisland_rpc_total",
            service="EnclaveService",
            method="ExecutePartial",
            code="OK",
        )
        >= 1
    )


def test_every_log_line_is_json_and_rpc_lines_carry_the_query_id(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        query_id = client.query(
            "SELECT count(*) AS n FROM claims", purpose="statistics"
        ).status.query_id
    for node in ("coordinator", "qingpu", "aggregator"):
        lines = (federation_dir / "logs" / f"{node}.log").read_text().splitlines()
        parsed = [json.loads(line) for line in lines if line.startswith("{")]
        assert parsed, node
        assert any(p.get("query_id") == query_id and "rpc" in p for p in parsed), node
        assert all({"time", "level", "logger", "node", "message"} <= p.keys() for p in parsed)
