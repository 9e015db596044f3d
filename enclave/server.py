"""Wiring of the enclave roles into mutual-TLS gRPC servers from a node configuration file.

This module only builds and starts: what a department or the aggregator does lives in
enclave/department.py and enclave/aggregator.py, who may call in enclave/admission.py.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from importlib.metadata import version

import grpc

from dataisland.attestation import Role, TrustAnchors
from dataisland.errors import ConfigError
from dataisland.federation import Federation, NodeConfig, load_federation
from dataisland.rpc import serve_until_signalled
from dataisland.tls import Authenticator, KeyPair, metrics_server, server_credentials
from dataisland.v1 import enclave_pb2_grpc
from enclave.admission import Admission
from enclave.aggregator import Aggregator
from enclave.attestation import Attester, EnclaveKeys, SimulatedEvidenceProvider, measure
from enclave.department import DepartmentEnclave
from enclave.engine import Lockdown
from enclave.history import WitnessLog
from enclave.shard import Shard
from ledger.errors import LedgerError
from ledger.note import Ed25519Verifier
from ledger.witness_client import WitnessClient
from policies.keeper import PolicyKeeper

VERSIONS = {name: version(name) for name in ("duckdb", "sqlglot")}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _security(
    federation: Federation, config: NodeConfig
) -> tuple[Admission, grpc.ServerCredentials]:
    authenticator = Authenticator(federation, clock=_utc_now)
    # Only the committee's nodes call enclaves: the TLS layer accepts only the committee's CA.
    credentials = server_credentials(
        KeyPair.of_node(config),
        client_roots_pem=authenticator.roots_pem([federation.committee.name]),
    )
    admission = Admission(authenticator, clock=_utc_now, max_sql_bytes=config.max_sql_bytes)
    return admission, credentials


def _attester(federation: Federation, config: NodeConfig, *, node: str, role: Role) -> Attester:
    """Measure this enclave, generate its keys (they never leave this process), load its
    evidence provider."""
    measured = measure(config, federation)
    provider = SimulatedEvidenceProvider.load(
        config, node=node, role=role, measured=measured, clock=_utc_now
    )
    kem = federation.attestation.hpke_kem if federation.attestation else "x25519"
    return Attester(keys=EnclaveKeys.generate(kem), provider=provider)


def witness_log(federation: Federation, config: NodeConfig, department: str) -> WitnessLog:
    """The log as this department's enclave sees it: through its own node's witness, as
    itself, trusting only checkpoints a quorum of the federation's witnesses cosigned.

    Raises:
        ConfigError: no log section, no witness for the department, or unusable keys.
    """
    section = federation.log
    if section is None or department not in section.witnesses:
        raise ConfigError(
            f"a department enclave needs the federation's log and a witness for {department}: "
            "it reports every execution to its witness and rebuilds its state from the log"
        )
    entry = section.witnesses[department]
    try:
        log_verifier = Ed25519Verifier.from_vkey(section.verifier_key)
        witnesses = [Ed25519Verifier.from_vkey(w.verifier_key) for w in section.witnesses.values()]
    except LedgerError as exc:
        raise ConfigError(f"federation file log keys: {exc}") from None
    client = WitnessClient(
        name=department,
        address=entry.address,
        server_name=federation.dns_name("witness", department),
        ca=entry.ca,
        certificate=config.tls.certificate,
        key=config.tls.key,
        verifier=witnesses[list(section.witnesses).index(department)],
        pool=16,
    )
    return WitnessLog(
        witness=client, log_verifier=log_verifier, witnesses=witnesses, quorum=section.quorum
    )


def serve_department(config: NodeConfig) -> None:
    """Open the department's shard locked down and serve EnclaveService until signalled.

    Raises:
        ConfigError: the configuration, federation file, TLS files or shard are unusable.
    """
    if config.department is None or config.shard is None:
        raise ConfigError("a department node needs 'department' and 'shard'")
    federation = load_federation(config.federation)
    if config.department not in federation.departments:
        raise ConfigError(f"department {config.department!r} is not in the federation file")
    admission, credentials = _security(federation, config)
    department = config.department
    started_at = time.time()
    log = witness_log(federation, config, department)
    shard = Shard(config.shard, Lockdown(threads=config.threads, memory_limit=config.memory_limit))
    servicer = DepartmentEnclave(
        department=config.department,
        catalog=federation.catalog(),
        shard=shard,
        query_timeout=config.query_timeout_seconds,
        versions=VERSIONS,
        admission=admission,
        keeper=PolicyKeeper(
            department=config.department,
            officers=federation.officer_keys(config.department),
            required=federation.departments[config.department].signatures_required,
        ),
        read_policy=lambda: federation.read_policy(department),
        attester=_attester(federation, config, node=department, role="department"),
        anchors=TrustAnchors.from_federation(federation),
        committee=federation.committee.name,
        log=log,
        started_at=started_at,
    )
    stopping = threading.Event()
    # Queries wait until the state is rebuilt from the log; Attest and DescribeShard do not.
    threading.Thread(
        target=servicer.restore, kwargs={"stop": stopping.is_set}, name="restore", daemon=True
    ).start()

    def register(server: grpc.Server) -> None:
        enclave_pb2_grpc.add_EnclaveServiceServicer_to_server(servicer, server)

    def stop() -> None:
        stopping.set()
        shard.close()
        log.witness.close()

    serve_until_signalled(
        register,
        config.listen,
        credentials=credentials,
        name=f"enclave {config.department}",
        on_stop=stop,
        max_request_bytes=config.request_limit,
        metrics_server=metrics_server(
            config, admission.authenticator, department=config.department
        ),
    )


def serve_aggregator(config: NodeConfig) -> None:
    """Serve AggregatorService until signalled.

    Raises:
        ConfigError: the configuration, federation file or TLS files are unusable.
    """
    federation = load_federation(config.federation)
    admission, credentials = _security(federation, config)
    servicer = Aggregator(
        catalog=federation.catalog(),
        max_result_rows=config.max_result_rows,
        max_result_bytes=config.max_result_bytes,
        admission=admission,
        lockdown=Lockdown(threads=config.threads, memory_limit=config.memory_limit),
        attester=_attester(federation, config, node=federation.committee.name, role="aggregator"),
        anchors=TrustAnchors.from_federation(federation),
    )

    def register(server: grpc.Server) -> None:
        enclave_pb2_grpc.add_AggregatorServiceServicer_to_server(servicer, server)

    serve_until_signalled(
        register,
        config.listen,
        credentials=credentials,
        name="aggregator",
        max_request_bytes=config.request_limit,
        metrics_server=metrics_server(
            config, admission.authenticator, department=federation.committee.name
        ),
    )
