"""The process supervisor, with stand-in gRPC servers in place of the real nodes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from dataisland.cli import main
from dataisland.cli.federation import free_base_port
from dataisland.errors import ConfigError, NodeUnavailableError
from dataisland.federation import load_federation
from dataisland.supervisor import FederationProcesses, NodeSpec, default_command
from dataisland.tls import secure_channel
from dataisland.v1 import coordinator_pb2, coordinator_pb2_grpc
from tests.integration.conftest import credentials_of

STAND_IN = """
import signal, sys, time
from concurrent import futures
import grpc
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
server.add_insecure_port(sys.argv[1])
server.start()
print("listening", sys.argv[1], flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    directory = tmp_path / "fed"
    base = free_base_port(18)
    result = CliRunner().invoke(
        main,
        [
            "init",
            str(directory),
            "--departments",
            "qingpu,wujiang,jiashan",
            "--base-port",
            str(base),
        ],
    )
    assert result.exit_code == 0, result.output
    return directory


def _stand_in(mode: str = "serve") -> Callable[[NodeSpec], list[str]]:
    def command(spec: NodeSpec) -> list[str]:
        return [sys.executable, "-c", STAND_IN, spec.address, mode]

    return command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_default_commands_run_the_package() -> None:
    spec = NodeSpec(
        name="qingpu", role="department", config=Path("/f/nodes/qingpu.yaml"), address="127.0.0.1:1"
    )
    assert default_command(spec)[1:] == [
        "-m",
        "dataisland",
        "enclave",
        "serve",
        "--config",
        "/f/nodes/qingpu.yaml",
    ]
    agg = NodeSpec(
        name="aggregator", role="aggregator", config=Path("a.yaml"), address="127.0.0.1:1"
    )
    assert "--role" in default_command(agg)
    coord = NodeSpec(
        name="coordinator", role="coordinator", config=Path("c.yaml"), address="127.0.0.1:1"
    )
    assert default_command(coord)[3:5] == ["coordinator", "serve"]


def test_starts_every_node_in_order_and_stops_them(fed: Path) -> None:
    nodes = FederationProcesses(fed, command=_stand_in())
    with nodes:
        names = [n.spec.name for n in nodes.nodes]
        witnesses = [f"witness-{n}" for n in ("qingpu", "wujiang", "jiashan", "committee")]
        assert names == [*witnesses, "qingpu", "wujiang", "jiashan", "aggregator", "coordinator"]
        pids = [n.pid for n in nodes.nodes]
        with grpc.insecure_channel(nodes.coordinator_address) as channel:
            grpc.channel_ready_future(channel).result(timeout=5)
        assert not nodes.exited()
        assert "listening" in (fed / "logs" / "qingpu.log").read_text(encoding="utf-8")
    time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def test_a_node_that_exits_while_starting_is_reported_with_its_log(fed: Path) -> None:
    def command(spec: NodeSpec) -> list[str]:
        if spec.name == "wujiang":
            return [sys.executable, "-c", "import sys; sys.exit('bad shard for wujiang')"]
        return [sys.executable, "-c", STAND_IN, spec.address, "serve"]

    nodes = FederationProcesses(fed, command=command)
    with pytest.raises(ConfigError, match=r"(?s)node wujiang exited.*bad shard for wujiang"):
        nodes.start()
    assert nodes.nodes == []  # the others were stopped


def test_a_node_that_never_listens_is_unavailable(fed: Path) -> None:
    def command(spec: NodeSpec) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    nodes = FederationProcesses(fed, command=command, startup_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(NodeUnavailableError, match="did not listen"):
        nodes.start()
    assert time.monotonic() - started < 10


def test_stragglers_are_killed(fed: Path) -> None:
    nodes = FederationProcesses(fed, command=_stand_in("ignore-term"), stop_timeout=0.5)
    nodes.start()
    pids = [n.pid for n in nodes.nodes]
    nodes.stop()
    assert not any(_alive(pid) for pid in pids)
    nodes.stop()  # idempotent


def test_missing_node_file_is_a_config_error(fed: Path) -> None:
    (fed / "nodes" / "aggregator.yaml").unlink()
    with pytest.raises(ConfigError, match=r"aggregator\.yaml"):
        FederationProcesses(fed)


def _mutual_tls_channel(fed: Path) -> grpc.Channel:
    """A channel to the coordinator as the analyst: the real nodes speak mutual TLS only."""
    federation = load_federation(fed / "federation.yaml")
    return secure_channel(
        federation.committee.coordinator,
        own=credentials_of(fed),
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("coordinator", federation.committee.name),
    )


def test_up_stops_everything_on_sigterm(fed: Path, tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "dataisland", "up", str(fed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            with _mutual_tls_channel(fed) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                except grpc.FutureTimeoutError:
                    continue
                # The federation `up` started answers a requester over mutual TLS.
                stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
                listed = stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=10)
                assert list(listed.queries) == []
                ready = True
                break
        assert proc.poll() is None, proc.communicate()[0]
        assert ready, "the coordinator never completed a mutual-TLS handshake"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopped every node" in output
