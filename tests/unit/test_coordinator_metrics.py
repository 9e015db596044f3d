"""The coordinator counts verified and refused attestation evidence."""

from __future__ import annotations

import datetime as dt

from prometheus_client import REGISTRY

from coordinator.server import attestation_callbacks
from dataisland.attestation import AttestationError


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_refused_evidence_is_counted_by_node_and_check() -> None:
    _, failed = attestation_callbacks(None, clock=lambda: dt.datetime.now(dt.UTC))
    before = _count("dataisland_attestation_failures_total", node="wujiang", check="measurement")
    failed(AttestationError("wujiang", "measurement", "not the reference value"))
    after = _count("dataisland_attestation_failures_total", node="wujiang", check="measurement")
    assert after == before + 1
