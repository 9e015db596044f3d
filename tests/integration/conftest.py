"""A real federation on loopback: `dataisland init`, shards filled with DuckDB, real processes."""

from __future__ import annotations

import datetime as dt
import http.client
import os
import random
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from dataisland.canonical import QueryEnvelope, TypedParam, new_salt, params_commitment
from dataisland.cli import main
from dataisland.cli.officers import officer_key_path
from dataisland.client import Client
from dataisland.envelopes import sign
from dataisland.federation import load_federation
from dataisland.identity import credential_paths, load_private_key
from dataisland.supervisor import FederationProcesses
from dataisland.tls import KeyPair, secure_channel
from dataisland.v1 import common_pb2, coordinator_pb2_grpc, enclave_pb2, enclave_pb2_grpc
from ledger.note import Ed25519Verifier
from ledger.witness_client import WitnessClient
from policies.signing import load_private_key as load_officer_key

DEPARTMENTS = ("qingpu", "wujiang", "jiashan")


def free_base_port(count: int = 24) -> int:
    """A base port with `count` consecutive free loopback ports above it."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000)  # below the ephemeral range
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError("no free ports")


def fill_claims(shard: Path, *, seed: int, rows: int) -> None:
    """Deterministic claims rows written straight into a department's shard file."""
    con = duckdb.connect(str(shard))
    con.execute(f"SELECT setseed({seed / 1000})")
    con.execute(
        f"""
        INSERT INTO claims
        SELECT
            'c' || {seed} || '-' || i AS claim_id,
            'p' || (i % {max(rows // 3, 1)}) || '-' || {seed} AS person_id,
            (i * 7) % 96 AS age,
            CASE WHEN i % 2 = 0 THEN 'F' ELSE 'M' END AS sex,
            ['outpatient', 'inpatient', 'pharmacy', 'dental'][1 + i % 4] AS category,
            ['primary', 'secondary', 'tertiary'][1 + i % 3] AS hospital_level,
            DATE '2024-01-01' + INTERVAL (i % 366) DAY AS service_date,
            CAST(round(random() * 5000, 2) AS DECIMAL(12,2)) AS amount,
            CAST(round(random() * 3000, 2) AS DECIMAL(12,2)) AS reimbursed,
            CASE WHEN i % 5 = 0 THEN NULL ELSE i % 14 END AS length_of_stay
        FROM range({rows}) t(i)
        """
    )
    con.close()


def fill_water(shard: Path, *, prefix: str, hours: int = 720) -> None:
    """Hourly readings of three stations (not personal data: the policies allow k = 1)."""
    con = duckdb.connect(str(shard))
    con.execute(
        f"""
        INSERT INTO water_readings
        SELECT '{prefix}-' || (i % 3) AS station_id,
               TIMESTAMP '2024-06-01' + INTERVAL (i // 3) HOUR AS reading_at,
               7 + (i % 11) / 10.0 AS ph, 5 + (i % 7) AS dissolved_oxygen,
               (i % 13) * 1.5 AS turbidity, (i % 5) / 10.0 AS ammonia_nitrogen
        FROM range({hours * 3}) t(i)
        """
    )
    con.close()


@pytest.fixture(scope="session")
def federation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("federation") / "fed"
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
        fill_claims(directory / "shards" / f"{department}.duckdb", seed=seed, rows=2_000 * seed)
    for department in DEPARTMENTS[:2]:  # the upstream and downstream districts
        fill_water(directory / "shards" / f"{department}.duckdb", prefix=department)
    return directory


@pytest.fixture(scope="session")
def running(federation_dir: Path) -> Iterator[FederationProcesses]:
    with FederationProcesses(federation_dir) as nodes:
        yield nodes


def union_connection(federation_dir: Path) -> duckdb.DuckDBPyConnection:
    """Plain DuckDB over the union of every department's shards: the reference answer."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for department in DEPARTMENTS:
        path = federation_dir / "shards" / f"{department}.duckdb"
        con.execute(f"ATTACH '{path}' AS {department} (READ_ONLY)")
    for table, holders in (("claims", DEPARTMENTS), ("water_readings", DEPARTMENTS[:2])):
        parts = [f"SELECT * FROM {department}.{table}" for department in holders]
        con.execute(f"CREATE VIEW {table} AS " + " UNION ALL ".join(parts))
    return con


ANALYST = "qingpu/requester/analyst"


def client_for(directory: Path, identity: str = ANALYST) -> Client:
    """The Python client as `identity` (DEPARTMENT/ROLE/NAME) of a federation directory."""
    return Client.from_federation(directory, identity=identity, timeout=30)


def credentials_of(directory: Path, identity: str = ANALYST) -> KeyPair:
    department, role, name = identity.split("/")
    certificate, key = credential_paths(directory, department=department, role=role, name=name)
    return KeyPair.load(certificate, key)


def coordinator_stub(
    directory: Path, identity: str = ANALYST
) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    """A raw CoordinatorService stub over mutual TLS as `identity`."""
    federation = load_federation(directory / "federation.yaml")
    channel = secure_channel(
        federation.committee.coordinator,
        own=credentials_of(directory, identity),
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("coordinator", federation.committee.name),
    )
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def signed_envelope(
    directory: Path,
    sql: str,
    request_id: str,
    *,
    identity: str = ANALYST,
    purpose: str = "statistics",
    issued_at: dt.datetime | None = None,
    params: Sequence[TypedParam] = (),
) -> common_pb2.SignedEnvelope:
    """A requester's envelope, signed with its certificate's key as the client would."""
    salt = new_salt()
    envelope = QueryEnvelope(
        sql=sql,
        params_commitment=params_commitment(list(params), salt=salt),
        purpose=purpose,
        request_id=request_id,
        issued_at=issued_at or dt.datetime.now(dt.UTC),
    )
    key = load_private_key(credentials_of(directory, identity).key_pem)
    return sign(envelope, key=key, params=params, salt=salt)


def coordinator_credentials(directory: Path) -> KeyPair:
    """The committee coordinator's own node credentials (tests acting as the coordinator)."""
    certificate, key = credential_paths(
        directory, department="committee", role="coordinator", name="node"
    )
    return KeyPair.load(certificate, key)


def aggregator_stub(directory: Path) -> enclave_pb2_grpc.AggregatorServiceStub:
    """The aggregator, dialled with the coordinator's own certificate."""
    federation = load_federation(directory / "federation.yaml")
    channel = secure_channel(
        federation.committee.aggregator,
        own=coordinator_credentials(directory),
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("aggregator", federation.committee.name),
    )
    return enclave_pb2_grpc.AggregatorServiceStub(channel)


def enclave_stub(directory: Path, department: str) -> enclave_pb2_grpc.EnclaveServiceStub:
    """A department's enclave, dialled with the coordinator's own certificate."""
    federation = load_federation(directory / "federation.yaml")
    channel = secure_channel(
        federation.departments[department].enclave,
        own=coordinator_credentials(directory),
        server_ca_pem=federation.departments[department].ca.read_bytes(),
        server_name=federation.dns_name("enclave", department),
    )
    return enclave_pb2_grpc.EnclaveServiceStub(channel)


def aggregator_evidence(directory: Path) -> bytes:
    """The running aggregator's evidence, as a coordinator relays it to the departments."""
    response = aggregator_stub(directory).Attest(
        enclave_pb2.AggregatorServiceAttestRequest(nonce=os.urandom(32)), timeout=20
    )
    return bytes(response.evidence)


def department_evidence(directory: Path, department: str) -> bytes:
    """A running department enclave's evidence, as a coordinator relays it to the aggregator."""
    response = enclave_stub(directory, department).Attest(
        enclave_pb2.AttestRequest(nonce=os.urandom(32)), timeout=20
    )
    return bytes(response.evidence)


def witness_client(
    directory: Path, name: str, identity: str = "committee/coordinator/node"
) -> WitnessClient:
    """An HTTPS client of witness `name`, as `identity` (by default the coordinator)."""
    federation = load_federation(directory / "federation.yaml")
    assert federation.log is not None
    entry = federation.log.witnesses[name]
    department, role, node = identity.split("/")
    certificate, key = credential_paths(directory, department=department, role=role, name=node)
    return WitnessClient(
        name=name,
        address=entry.address,
        server_name=federation.dns_name("witness", name),
        ca=entry.ca,
        certificate=certificate,
        key=key,
        verifier=Ed25519Verifier.from_vkey(entry.verifier_key),
    )


def https_request(
    directory: Path,
    identity: str,
    address: str,
    *,
    ca: bytes,
    server_name: str,
    method: str = "GET",
    path: str = "/",
) -> tuple[int, bytes]:
    """One HTTPS request with mutual TLS as `identity` (a witness's or a metrics endpoint)."""
    department, role, name = identity.split("/")
    certificate, key = credential_paths(directory, department=department, role=role, name=name)
    context = ssl.create_default_context(cadata=ca.decode("ascii"))
    context.load_cert_chain(certificate, key)
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    # The certificate names the node's DNS SAN, not the loopback address dialled.
    raw = socket.create_connection((host, int(port)), timeout=10)
    connection.sock = context.wrap_socket(raw, server_hostname=server_name)
    connection.request(method, path, body=b"" if method == "POST" else None)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def approve_everywhere(directory: Path, query_id: str, *, runs: int | None = None) -> None:
    """Every department's officer approves a pending query (a template for `runs` runs)."""
    for department in DEPARTMENTS:
        with client_for(directory, f"{department}/officer/officer") as officer:
            key = load_officer_key(officer_key_path(directory, department).read_bytes())
            pending = {p.query_id: p for p in officer.pending_approvals()}
            officer.approve(pending[query_id], signing_key=key, runs=runs)
