"""Shared pieces of the federation benchmarks (bench/scale.py, bench/small.py).

A benchmark federation is what `dataisland init` writes (three districts, mutual TLS, signed
demo policies, the audit log with its four witnesses), with every node's DuckDB threads, memory
limit and deadline set for the benchmark, and claims generated straight into the shard files by
`dataisland.synthetic.populate_shard` (vectorised DuckDB SQL). The nodes then run as real
processes under `FederationProcesses`, and queries go through the Python client: signed
envelope, coordinator (parse, policy check, durable log append), department enclaves (admission,
policy, plan, partial), aggregator (re-plan, release rules, merge), paged result checked against
its digest.

This module is imported by the benchmark scripts only (run as ``python bench/NAME.py``, which puts
bench/ first on the import path); nothing in the product or the tests imports it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import yaml

from dataisland.cli.federation import free_base_port, init_federation
from dataisland.client import FINAL, Client, QueryFailedError
from dataisland.federation import load_node_config
from dataisland.supervisor import FEDERATION_FILE, NODES_DIR, FederationProcesses
from dataisland.synthetic import populate_shard

DEPARTMENTS = ("qingpu", "wujiang", "jiashan")
REQUESTER = "qingpu/requester/analyst"
PURPOSE = "statistics"
NODE_COUNT = 2 * len(DEPARTMENTS) + 3  # coordinator, aggregator, enclaves, four witnesses
MEASURES = "count(*) AS claims, sum(amount) AS total"


def machine_info() -> dict[str, object]:
    """The machine the figures were measured on: cores, memory, CPU model, versions."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "duckdb": version("duckdb"),
        "grpcio": version("grpcio"),
        "load_average_at_start": load_average(),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def code_state() -> dict[str, object]:
    """The commit measured and the files that differed from it (others may be editing)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, check=True, capture_output=True, text=True
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted_files": changed}


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on a shared machine shows here)."""
    return [round(v, 2) for v in os.getloadavg()]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(nodes: FederationProcesses) -> dict[str, float]:
    """CPU seconds so far of every node, grouped by role, and of this (the client) process."""
    out: dict[str, float] = {}
    for node in nodes.nodes:
        group = {"department": "enclaves (3)", "witness": "witnesses (4)"}.get(
            node.spec.role, node.spec.role
        )
        try:
            out[group] = out.get(group, 0.0) + process_cpu_seconds(node.pid)
        except (OSError, IndexError, ValueError):
            continue
    times = os.times()
    out["client (this process)"] = times.user + times.system
    return out


def cpu_per_query(
    before: dict[str, float], after: dict[str, float], queries: int
) -> dict[str, float]:
    """Milliseconds of CPU per query, by process group, between two snapshots."""
    if queries <= 0:
        return {}
    per = {k: round((after[k] - before.get(k, 0.0)) * 1000 / queries, 2) for k in after}
    per["total"] = round(sum(per.values()), 2)
    return per


class Profiler:
    """py-spy sampling every enclave, the aggregator, the coordinator and this process.

    Used as a context manager around an extra, untimed phase (profiling slows what it samples);
    writes one collapsed-stack file per process into `directory` (py-spy's ``raw`` format) and a
    summary of the heaviest frames next to them. Does nothing when `directory` is None; refuses
    to start when py-spy is not installed (``uv pip install py-spy`` into the venv: it is not a
    project dependency).
    """

    def __init__(self, directory: Path | None, nodes: FederationProcesses, *, label: str) -> None:
        self.directory = directory
        self.nodes = nodes
        self.label = label
        self._children: list[subprocess.Popen[bytes]] = []
        self.outputs: list[Path] = []

    def __enter__(self) -> Profiler:
        if self.directory is None:
            return self
        executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(executable).is_file():
            raise RuntimeError("py-spy is not installed (uv pip install py-spy)")
        self.directory.mkdir(parents=True, exist_ok=True)
        targets = [(n.spec.name, n.pid) for n in self.nodes.nodes if n.spec.role != "witness"]
        targets.append(("client", os.getpid()))
        for name, pid in targets:
            output = self.directory / f"{self.label}-{name}.txt"
            self.outputs.append(output)
            self._children.append(
                subprocess.Popen(
                    [
                        executable,
                        "record",
                        *("-p", str(pid), "-f", "raw", "-o", str(output)),
                        *("--nonblocking", "--rate", "100", "--threads"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)  # let every sampler attach
        return self

    def __exit__(self, *exc: object) -> None:
        for child in self._children:
            child.send_signal(signal.SIGINT)
        for child in self._children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.directory is not None:
            summary = "\n\n".join(summarise_profile(p) for p in self.outputs if p.exists())
            (self.directory / f"{self.label}-summary.txt").write_text(summary, encoding="utf-8")


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else name


def summarise_profile(path: Path, top: int = 25) -> str:
    """The heaviest frames of a py-spy raw profile: inclusive and self share of the samples."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for name in {_frame_name(f) for f in frames if not f.startswith("thread (")}:
            inclusive[name] = inclusive.get(name, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"== {path.name}: {total} samples (100 per second per busy thread)"]
    lines.append("-- inclusive")
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{count:7d} {100 * count / max(total, 1):5.1f}%  {name}")
    lines.append("-- self")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[: top // 2]:
        lines.append(f"{count:7d} {100 * count / max(total, 1):5.1f}%  {name}")
    return "\n".join(lines)


@dataclass(frozen=True)
class NodeResources:
    """What every node of a benchmark federation may use."""

    threads: int = 2
    department_memory: str = "3GB"
    aggregator_memory: str = "3GB"
    query_timeout_seconds: int = 1800


def _set_key(text: str, key: str, value: str) -> str:
    pattern = re.compile(rf"^{key}:.*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(f"{key}: {value}", text)
    return text.rstrip("\n") + f"\n{key}: {value}\n"


def tune_nodes(directory: Path, resources: NodeResources) -> None:
    """Set threads, memory limit and deadline in every enclave's and the coordinator's file."""
    for path in sorted((directory / NODES_DIR).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        role = load_node_config(path).role
        if role in ("department", "aggregator"):
            memory = (
                resources.department_memory if role == "department" else resources.aggregator_memory
            )
            text = _set_key(text, "threads", str(resources.threads))
            text = _set_key(text, "memory_limit", memory)
        if role in ("department", "aggregator", "coordinator"):
            text = _set_key(text, "query_timeout_seconds", str(resources.query_timeout_seconds))
        path.write_text(text, encoding="utf-8")
        load_node_config(path)  # still valid
    _update_reference_measurements(directory)


BENCH_RATE = 100_000
"""The coordinator's per-caller rate limit in a benchmark federation: high enough that the
figures measure the query path, not the limiter (a deployment keeps `init`'s 50 a second)."""


def unthrottle(directory: Path) -> None:
    """Raise the coordinator's per-caller rate limit (`rate_per_caller`, `rate_burst`)."""
    path = directory / NODES_DIR / "coordinator.yaml"
    text = path.read_text(encoding="utf-8")
    text = _set_key(text, "rate_per_caller", str(BENCH_RATE))
    text = _set_key(text, "rate_burst", str(BENCH_RATE))
    path.write_text(text, encoding="utf-8")
    load_node_config(path)  # still valid


def _update_reference_measurements(directory: Path) -> None:
    """Pin the tuned enclaves' measurements as the federation's reference values.

    An enclave's lockdown (threads, memory limit) is part of its measurement, so tuning the
    nodes changes what their attestation evidence claims; the federation file pins the reference
    values. They are re-read from `dataisland enclave measure`, as an operator would.
    """
    federation_file = directory / FEDERATION_FILE
    text = federation_file.read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    attestation = document.get("attestation") if isinstance(document, dict) else None
    if not isinstance(attestation, dict):
        return  # a build without attestation: nothing pinned
    reference = attestation["reference"]
    for role, node in (("department", DEPARTMENTS[0]), ("aggregator", "aggregator")):
        output = subprocess.run(
            [
                sys.executable,
                "-m",
                "dataisland",
                "enclave",
                "measure",
                "--config",
                str(directory / NODES_DIR / f"{node}.yaml"),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        match = re.search(r"^measurement:\s*([0-9a-f]{64})$", output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"`dataisland enclave measure` printed no measurement: {output}")
        text = text.replace(str(reference[role]["measurement"]), match.group(1))
    federation_file.write_text(text, encoding="utf-8")


def build_federation(
    directory: Path,
    *,
    claims_per_department: Sequence[int],
    resources: NodeResources | None,
    water: bool = False,
    seed: int = 2024,
) -> None:
    """Write a federation directory, tune its nodes and fill its shards with synthetic claims.

    Args:
        directory: a new or empty directory.
        claims_per_department: claims rows for each of `DEPARTMENTS`, in order.
        resources: node threads, memory and deadlines; None keeps what `init` writes.
        water: also fill water readings (upstream and downstream), as the demo does.
        seed: the synthetic data's seed.
    """
    federation = init_federation(
        directory, DEPARTMENTS, name="bench", base_port=free_base_port(2 * NODE_COUNT)
    )
    if resources is not None:
        tune_nodes(directory, resources)
    unthrottle(directory)
    water_holders = list(federation.tables["water_readings"].holders)
    for department, rows in zip(DEPARTMENTS, claims_per_department, strict=True):
        tables = ["claims"]
        if water and department in water_holders:
            tables.append("water_readings")
        populate_shard(
            directory / "shards" / f"{department}.duckdb",
            department,
            tables,
            rows=rows,
            seed=seed,
            downstream=department in water_holders[1:],
        )


def client(directory: Path, *, timeout: float, identity: str = REQUESTER) -> Client:
    """The Python client of a benchmark federation, as a department service uses it."""
    return Client.from_federation(directory, identity=identity, timeout=timeout)


@dataclass(frozen=True)
class Timed:
    """One query through the client, timed at each client-side step.

    Attributes:
        total: submit to last page checked, in seconds.
        submit: the SubmitQuery call (coordinator: signature, parse, policy check, log append).
        wait: WaitResult calls until the query is final (enclaves, aggregator, log append).
        fetch: GetResult pages, reassembly and the digest check.
        server: the coordinator's finished_at minus submitted_at.
        rows: rows released.
        suppressed: whether the release rules withheld anything.
    """

    total: float
    submit: float
    wait: float
    fetch: float
    server: float
    rows: int
    suppressed: bool


def timed_query(
    client: Client, sql: str, *, purpose: str = PURPOSE, page_size: int = 10_000
) -> Timed:
    """Run `sql` through the full path and time its client-side steps.

    Raises:
        QueryFailedError: the query was refused, failed or did not finish in time.
    """
    start = time.perf_counter()
    status = client.submit(sql, purpose=purpose)
    submitted = time.perf_counter()
    status = client.wait(status.query_id)
    waited = time.perf_counter()
    if status.state not in FINAL:
        raise QueryFailedError("DEADLINE_EXCEEDED", f"query {status.query_id} did not finish")
    result = client.result(status.query_id, page_size=page_size)
    end = time.perf_counter()
    server = (
        result.status.finished_at.ToNanoseconds() - result.status.submitted_at.ToNanoseconds()
    ) / 1e9
    return Timed(
        total=end - start,
        submit=submitted - start,
        wait=waited - submitted,
        fetch=end - waited,
        server=server,
        rows=len(result.rows),
        suppressed=bool(result.status.suppressed),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Median, min, max and count of timings (seconds)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def directory_bytes(directory: Path) -> int:
    """Total size of the files under `directory`."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


@dataclass(frozen=True)
class BenchQuery:
    """A representative aggregate query: group keys (expression, alias) and fixed measures."""

    name: str
    keys: tuple[tuple[str, str], ...]

    def sql(self, table: str = "claims") -> str:
        """The query as a requester writes it (and as plain DuckDB runs it for (b))."""
        items = [f"{expr} AS {alias}" for expr, alias in self.keys] + [MEASURES]
        text = f"SELECT {', '.join(items)} FROM {table}"
        if self.keys:
            text += " GROUP BY " + ", ".join(expr for expr, _ in self.keys)
        return text

    def same_computation_sql(self, k: int, table: str = "claims_by_shard") -> str:
        """(a): the aggregates and count(DISTINCT person_id) per group and per shard, merged,
        keeping a group only if every shard's share reaches k people (the release rule when
        every owner's k is the same)."""
        inner_keys = ", ".join(f"{expr} AS {alias}" for expr, alias in self.keys)
        inner = (
            f"SELECT shard{', ' + inner_keys if inner_keys else ''}, count(*) AS n, "
            f"sum(amount) AS s, count(DISTINCT person_id) AS units FROM {table} "
            "GROUP BY shard" + "".join(f", {expr}" for expr, _ in self.keys)
        )
        aliases = [alias for _, alias in self.keys]
        outer = [*aliases, "sum(n) AS claims", "sum(s) AS total"]
        text = f"SELECT {', '.join(outer)} FROM ({inner}) AS per_shard"
        if aliases:
            text += " GROUP BY " + ", ".join(aliases)
        return text + f" HAVING min(units) >= {k}"


QUERIES = (
    BenchQuery("global sum", ()),
    BenchQuery("by month", (("date_trunc('month', service_date)", "month"),)),
    BenchQuery(
        "by level x category", (("hospital_level", "hospital_level"), ("category", "category"))
    ),
    BenchQuery(
        "date x age x category x sex",
        (
            ("service_date", "service_date"),
            ("age", "age"),
            ("category", "category"),
            ("sex", "sex"),
        ),
    ),
)
