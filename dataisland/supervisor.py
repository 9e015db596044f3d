"""Start every node of a federation directory as a real process on loopback, and stop them all.

`FederationProcesses` is what `dataisland up`, `dataisland demo` and the integration tests use:
the audit log's witnesses first (when the federation file has a `log:` section), then the
department enclaves, then the aggregator, then the coordinator, each started with
``python -m dataisland ...`` and awaited until its gRPC port accepts connections. Children run
in their own session so a Ctrl-C at the terminal reaches only the supervisor, which then stops
them in reverse order (SIGTERM, a grace period, SIGKILL for stragglers).

This module does not restart crashed nodes, configure TLS or read node logs beyond the tail it
quotes in an error; it knows nothing of what the nodes serve.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

import dataisland
from dataisland.errors import ConfigError, NodeUnavailableError
from dataisland.federation import Federation, load_federation, load_node_config

Role = Literal["department", "aggregator", "coordinator", "witness"]

FEDERATION_FILE = "federation.yaml"
NODES_DIR = "nodes"
LOGS_DIR = "logs"


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: its name (department name, ``aggregator`` or ``coordinator``).

    Attributes:
        name: the node's name; also its log file's stem.
        role: what the node does.
        config: absolute path of its node configuration file.
        address: HOST:PORT it listens on, as its configuration says.
    """

    name: str
    role: Role
    config: Path
    address: str


@dataclass
class RunningNode:
    """A started node: its spec, process and log file."""

    spec: NodeSpec
    process: subprocess.Popen[bytes]
    log: Path
    _log_handle: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """The node's process id."""
        return self.process.pid


def default_command(spec: NodeSpec) -> list[str]:
    """The command line that runs `spec` with this interpreter."""
    if spec.role == "witness":
        return [
            sys.executable,
            "-m",
            "dataisland",
            "witness",
            "serve",
            "--config",
            str(spec.config),
        ]
    if spec.role == "department":
        return [
            sys.executable,
            "-m",
            "dataisland",
            "enclave",
            "serve",
            "--config",
            str(spec.config),
        ]
    if spec.role == "aggregator":
        return [
            sys.executable,
            "-m",
            "dataisland",
            "enclave",
            "serve",
            "--role",
            "aggregator",
            "--config",
            str(spec.config),
        ]
    return [
        sys.executable,
        "-m",
        "dataisland",
        "coordinator",
        "serve",
        "--config",
        str(spec.config),
    ]


def node_specs(directory: Path) -> tuple[Federation, list[NodeSpec]]:
    """Read a federation directory's federation file and node configurations, in start order.

    Raises:
        ConfigError: a file is missing or invalid, or a node file disagrees with the federation
            file about its role or department.
    """
    directory = directory.resolve()
    federation = load_federation(directory / FEDERATION_FILE)
    specs: list[NodeSpec] = []
    wanted: list[tuple[str, Role]] = []
    if federation.log is not None:
        wanted += [(f"witness-{name}", "witness") for name in federation.log.witnesses]
    wanted += [(name, "department") for name in federation.departments]
    wanted += [("aggregator", "aggregator"), ("coordinator", "coordinator")]
    for name, role in wanted:
        path = directory / NODES_DIR / f"{name}.yaml"
        config = load_node_config(path)
        if config.role != role:
            raise ConfigError(
                f"node configuration {path}: role is {config.role!r}, expected {role!r}"
            )
        if role == "witness" and f"witness-{config.department}" != name:
            raise ConfigError(
                f"node configuration {path}: department is {config.department!r}, "
                f"expected {name.removeprefix('witness-')!r}"
            )
        if role == "department" and config.department != name:
            raise ConfigError(
                f"node configuration {path}: department is {config.department!r}, expected {name!r}"
            )
        specs.append(NodeSpec(name=name, role=role, config=path, address=config.listen))
    return federation, specs


def _dial_address(address: str) -> str:
    # A node listening on every interface is reached over loopback.
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104  (not binding: choosing where to dial)
        return f"127.0.0.1:{port}"
    return address


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


class FederationProcesses:
    """Context manager running every node of a federation directory as a local process.

    Usage::

        with FederationProcesses(Path("fed")) as nodes:
            client = Client(nodes.coordinator_address)

    Args:
        directory: the federation directory (``federation.yaml``, ``nodes/``).
        startup_timeout: seconds each group of nodes has to start listening.
        stop_timeout: seconds to wait after SIGTERM before SIGKILL.
        command: builds a node's command line (tests substitute a stand-in server).
        env: extra environment variables for the children.
    """

    def __init__(
        self,
        directory: Path,
        *,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        command: Callable[[NodeSpec], Sequence[str]] = default_command,
        env: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._command = command
        self._extra_env = dict(env or {})
        self.federation, self.specs = node_specs(self.directory)
        self.nodes: list[RunningNode] = []

    @property
    def coordinator_address(self) -> str:
        """Where clients reach the coordinator."""
        return _dial_address(self.specs[-1].address)

    def __enter__(self) -> FederationProcesses:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the witnesses, then the departments, then the aggregator, then the coordinator.

        Does nothing if the nodes are already running (so ``with`` after ``start()`` is safe).

        Raises:
            ConfigError: a node exited while starting (its log's tail is in the message).
            NodeUnavailableError: a node did not listen within the startup timeout.
        """
        if self.nodes:
            return
        (self.directory / LOGS_DIR).mkdir(exist_ok=True)
        groups = [
            [s for s in self.specs if s.role == "witness"],
            [s for s in self.specs if s.role == "department"],
            [s for s in self.specs if s.role == "aggregator"],
            [s for s in self.specs if s.role == "coordinator"],
        ]
        try:
            for group in groups:
                started = [self._spawn(spec) for spec in group]
                deadline = time.monotonic() + self.startup_timeout
                for node in started:
                    self._await_listening(node, deadline)
        except BaseException:
            self.stop()
            raise

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Children must import this same dataisland, wherever the caller's working directory is.
        source_root = str(Path(dataisland.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (source_root, env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self._extra_env)
        return env

    def _spawn(self, spec: NodeSpec) -> RunningNode:
        log = self.directory / LOGS_DIR / f"{spec.name}.log"
        handle = log.open("ab")
        try:
            process = subprocess.Popen(  # noqa: S603  (our own interpreter and arguments)
                list(self._command(spec)),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
        except OSError as exc:
            handle.close()
            raise ConfigError(f"cannot start node {spec.name}: {exc.strerror}") from None
        node = RunningNode(spec=spec, process=process, log=log, _log_handle=handle)
        self.nodes.append(node)
        return node

    def _await_listening(self, node: RunningNode, deadline: float) -> None:
        # A TCP connect is enough: a node binds its port only once its servicer is ready, and
        # it works the same for the mutual-TLS servers without holding client credentials.
        address = _dial_address(node.spec.address)
        host, _, port = address.rpartition(":")
        while True:
            code = node.process.poll()
            if code is not None:
                raise ConfigError(
                    f"node {node.spec.name} exited with status {code} while starting; "
                    f"last lines of {node.log}:\n{_tail(node.log)}"
                )
            if time.monotonic() >= deadline:
                raise NodeUnavailableError(
                    f"node {node.spec.name} did not listen on {address} within "
                    f"{self.startup_timeout:g}s; last lines of {node.log}:\n{_tail(node.log)}"
                )
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)

    def node(self, name: str) -> RunningNode:
        """The running node called `name` (a department, ``witness-<name>``, ``aggregator``,
        ``coordinator``).

        Raises:
            ConfigError: no such node is running.
        """
        for node in self.nodes:
            if node.spec.name == name:
                return node
        raise ConfigError(f"no node {name!r} is running")

    def stop_node(self, name: str, *, kill: bool = False) -> None:
        """Stop one node (SIGTERM, or SIGKILL with `kill`) and wait for it to exit."""
        node = self.node(name)
        self._signal(node, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            node.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._signal(node, signal.SIGKILL)
            node.process.wait()
        node._log_handle.close()
        self.nodes.remove(node)

    def start_node(self, name: str) -> RunningNode:
        """Start one node of the federation again and wait until it listens.

        Raises:
            ConfigError: no such node, or it exited while starting.
            NodeUnavailableError: it did not listen within the startup timeout.
        """
        spec = next((s for s in self.specs if s.name == name), None)
        if spec is None:
            raise ConfigError(f"the federation has no node {name!r}")
        node = self._spawn(spec)
        self._await_listening(node, time.monotonic() + self.startup_timeout)
        return node

    def exited(self) -> list[RunningNode]:
        """The nodes whose process has exited."""
        return [node for node in self.nodes if node.process.poll() is not None]

    def stop(self) -> None:
        """SIGTERM every node (coordinator first), wait, then SIGKILL stragglers. Idempotent."""
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for node in reversed(self.nodes):
            try:
                node.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(node, signal.SIGKILL)
                node.process.wait()
        for node in self.nodes:
            node._log_handle.close()
        self.nodes = []

    @staticmethod
    def _signal(node: RunningNode, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(sig)
