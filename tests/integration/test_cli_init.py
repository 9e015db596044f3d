"""`dataisland init` and `dataisland shard load` on real DuckDB files, through the click CLI."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import duckdb
import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataisland.cli import main
from dataisland.cli.federation import load_shard_file
from dataisland.errors import SchemaMismatchError
from dataisland.federation import load_federation, load_node_config
from dataisland.identity import TrustStore, credential_paths, load_certificate, load_private_key
from dataisland.synthetic import CLAIMS_COLUMNS, WATER_COLUMNS, claims_sql, water_sql

DEPARTMENTS = "qingpu,wujiang,jiashan"


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _said(result: Result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    directory = tmp_path / "fed"
    result = _run("init", str(directory), "--departments", DEPARTMENTS, "--base-port", "7300")
    assert result.exit_code == 0, result.output
    return directory


def _shard_schema(path: Path) -> dict[str, list[tuple[str, str]]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        return {
            t: [(str(r[0]), str(r[1])) for r in con.execute(f"DESCRIBE {t}").fetchall()]
            for t in tables
        }
    finally:
        con.close()


def _count(path: Path, table: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    finally:
        con.close()


def test_init_writes_a_documented_valid_federation(fed: Path) -> None:
    text = (fed / "federation.yaml").read_text(encoding="utf-8")
    assert text.startswith("#")
    assert "development conveniences" in text
    federation = load_federation(fed / "federation.yaml")
    assert federation.development is True
    assert list(federation.departments) == ["qingpu", "wujiang", "jiashan"]
    assert federation.committee.coordinator == "127.0.0.1:7300"
    assert federation.committee.aggregator == "127.0.0.1:7301"
    assert [d.enclave for d in federation.departments.values()] == [
        "127.0.0.1:7302",
        "127.0.0.1:7303",
        "127.0.0.1:7304",
    ]
    assert federation.tables["claims"].holders == ("qingpu", "wujiang", "jiashan")
    assert federation.tables["claims"].privacy_unit == "person_id"
    assert federation.tables["water_readings"].holders == ("qingpu", "wujiang")
    assert federation.tables["water_readings"].privacy_unit == "station_id"


def test_init_writes_node_files_with_relative_paths(fed: Path) -> None:
    raw = yaml.safe_load((fed / "nodes" / "wujiang.yaml").read_text(encoding="utf-8"))
    assert raw["shard"] == "../shards/wujiang.duckdb"
    config = load_node_config(fed / "nodes" / "wujiang.yaml")
    assert config.role == "department"
    assert config.department == "wujiang"
    assert config.listen == "127.0.0.1:7303"
    assert config.shard is not None
    assert config.shard.resolve() == (fed / "shards" / "wujiang.duckdb").resolve()
    assert config.federation.resolve() == (fed / "federation.yaml").resolve()
    assert load_node_config(fed / "nodes" / "aggregator.yaml").role == "aggregator"
    assert load_node_config(fed / "nodes" / "coordinator.yaml").listen == "127.0.0.1:7300"


def _trust_store(fed: Path) -> TrustStore:
    federation = load_federation(fed / "federation.yaml")
    authorities, revocations = {}, {}
    for name, (ca, crl) in federation.authorities().items():
        authorities[name] = load_certificate(ca.read_bytes())
        assert crl is not None
        revocations[name] = x509.load_pem_x509_crl(crl.read_bytes())
    return TrustStore(
        federation=federation.federation, authorities=authorities, revocations=revocations
    )


def test_init_makes_each_department_and_the_committee_its_own_authority(fed: Path) -> None:
    federation = load_federation(fed / "federation.yaml")
    authorities = federation.authorities()
    assert sorted(authorities) == ["committee", "jiashan", "qingpu", "wujiang"]
    keys = set()
    for name, (ca, crl) in authorities.items():
        assert ca == (fed / "identity" / name / "ca.crt").resolve()
        certificate = load_certificate(ca.read_bytes())
        certificate.verify_directly_issued_by(certificate)
        keys.add(
            certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        assert crl is not None
        revocation_list = x509.load_pem_x509_crl(crl.read_bytes())
        assert revocation_list.is_signature_valid(certificate.public_key())  # type: ignore[arg-type]
        assert len(revocation_list) == 0
    assert len(keys) == len(authorities)  # four authorities, four keys


def test_init_issues_every_node_its_identity_with_its_dns_name(fed: Path) -> None:
    federation = load_federation(fed / "federation.yaml")
    store = _trust_store(fed)
    checked = []
    for node_file in sorted((fed / "nodes").glob("*.yaml")):
        config = load_node_config(node_file)
        certificate = load_certificate(config.tls.certificate.read_bytes())
        principal = store.verify(certificate, now=dt.datetime.now(dt.UTC))
        role = "enclave" if config.role == "department" else config.role
        # Department nodes come from their department's CA, the committee's from the committee's.
        department = config.department or federation.committee.name
        assert (principal.role, principal.department) == (role, department), node_file
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [
            federation.dns_name(principal.role, principal.department)
        ]
        key = load_private_key(config.tls.key.read_bytes())
        assert key.public_key() == certificate.public_key()
        checked.append(node_file.stem)
    assert {"qingpu", "wujiang", "jiashan", "aggregator", "coordinator"} <= set(checked)


def test_init_issues_a_requester_officer_and_auditor_per_department(fed: Path) -> None:
    store = _trust_store(fed)
    for department in DEPARTMENTS.split(","):
        for role, name in (
            ("requester", "analyst"),
            ("officer", "officer"),
            ("auditor", "auditor"),
        ):
            certificate, key = credential_paths(fed, department=department, role=role, name=name)
            issued = load_certificate(certificate.read_bytes())
            principal = store.verify(issued, now=dt.datetime.now(dt.UTC))
            assert str(principal) == f"{department}/{role}/{name}"
            assert load_private_key(key.read_bytes()).public_key() == issued.public_key()


def test_init_writes_every_private_key_owner_only(fed: Path) -> None:
    keys = sorted((fed / "identity").rglob("*.key"))
    assert len(keys) >= 4 + 3 * 4 + 2  # CAs, people and enclaves, coordinator and aggregator
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_init_creates_typed_empty_shards(fed: Path) -> None:
    claims = list(CLAIMS_COLUMNS.items())
    water = list(WATER_COLUMNS.items())
    assert _shard_schema(fed / "shards" / "qingpu.duckdb") == {
        "claims": claims,
        "water_readings": water,
    }
    assert _shard_schema(fed / "shards" / "jiashan.duckdb") == {"claims": claims}
    assert _count(fed / "shards" / "wujiang.duckdb", "claims") == 0


def test_init_refuses_a_non_empty_directory(fed: Path) -> None:
    result = _run("init", str(fed), "--departments", DEPARTMENTS)
    assert result.exit_code == 1
    assert "not empty" in _said(result)


@pytest.mark.parametrize(
    ("departments", "message"),
    [
        ("qingpu,qingpu", "listed twice"),
        ("qingpu,Wu-jiang", "invalid department name 'Wu-jiang'"),
        ("qingpu,aggregator", "reserved"),
        (",", "no department"),
    ],
)
def test_init_refuses_bad_department_lists(tmp_path: Path, departments: str, message: str) -> None:
    result = _run("init", str(tmp_path / "fed"), "--departments", departments)
    assert result.exit_code == 1
    assert message in _said(result)
    assert not (tmp_path / "fed").exists()


def test_init_no_dev_and_federation_name(tmp_path: Path) -> None:
    result = _run(
        "init", str(tmp_path / "f"), "--departments", "a", "--federation", "zone", "--no-dev"
    )
    assert result.exit_code == 0, result.output
    federation = load_federation(tmp_path / "f" / "federation.yaml")
    assert federation.federation == "zone"
    assert federation.development is False
    assert federation.tables["water_readings"].holders == ("a",)


def _export(sql: str, path: Path) -> None:
    con = duckdb.connect()
    options = "(HEADER)" if path.suffix == ".csv" else "(FORMAT parquet)"
    con.execute(f"COPY ({sql}) TO '{path}' {options}")
    con.close()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_shard_load_appends_csv_and_parquet(fed: Path, tmp_path: Path, suffix: str) -> None:
    source = tmp_path / f"claims{suffix}"
    _export(claims_sql("qingpu", rows=1_234, seed=1), source)
    for expected in (1_234, 2_468):
        result = _run(
            "shard", "load", str(fed), "--department", "qingpu", "--table", "claims", str(source)
        )
        assert result.exit_code == 0, result.output
        assert "loaded 1,234 rows" in _said(result)
        assert _count(fed / "shards" / "qingpu.duckdb", "claims") == expected
    # Values survive exactly, identifiers with leading zeros included.
    con = duckdb.connect(str(fed / "shards" / "qingpu.duckdb"), read_only=True)
    # The unit masks `shard load` adds after the logical columns are not part of the data.
    columns = ", ".join(f'"{c}"' for c in CLAIMS_COLUMNS)
    loaded = con.execute(f"SELECT DISTINCT {columns} FROM claims ORDER BY claim_id").fetchall()
    con.close()
    reference = (
        duckdb.connect()
        .execute(f"SELECT * FROM ({claims_sql('qingpu', rows=1_234, seed=1)}) ORDER BY claim_id")
        .fetchall()
    )
    assert loaded == reference


def test_shard_load_accepts_columns_in_any_order(fed: Path, tmp_path: Path) -> None:
    source = tmp_path / "water.parquet"
    sql = water_sql("wujiang", stations=1, days=1, seed=1)
    _export(f"SELECT ammonia_nitrogen, ph, * EXCLUDE (ammonia_nitrogen, ph) FROM ({sql})", source)
    loaded = load_shard_file(fed, "wujiang", "water_readings", source)
    assert loaded == 24


@pytest.mark.parametrize(
    ("select", "named"),
    [
        ("* EXCLUDE (age)", "'age'"),
        ("*, 1 AS colour", "'colour'"),
        ("* REPLACE ('about ' || age AS age)", "'age'"),
        ("* REPLACE ('2024-13-45' AS service_date)", "'service_date'"),
        ("* REPLACE (amount * 1e12 AS amount)", "'amount'"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_shard_load_refuses_schema_mismatch_naming_the_column(
    fed: Path, tmp_path: Path, select: str, named: str, suffix: str
) -> None:
    source = tmp_path / f"bad{suffix}"
    _export(f"SELECT {select} FROM ({claims_sql('x', rows=20, seed=1)})", source)
    with pytest.raises(SchemaMismatchError, match=named):
        load_shard_file(fed, "jiashan", "claims", source)
    result = _run("shard", "load", str(fed), "-d", "jiashan", "-t", "claims", str(source))
    assert result.exit_code == 1
    assert "FAILED_PRECONDITION" in _said(result)
    assert _count(fed / "shards" / "jiashan.duckdb", "claims") == 0


def test_shard_load_refuses_a_table_the_department_does_not_hold(fed: Path, tmp_path: Path) -> None:
    source = tmp_path / "water.csv"
    _export(water_sql("jiashan", stations=1, days=1, seed=1), source)
    result = _run("shard", "load", str(fed), "-d", "jiashan", "-t", "water_readings", str(source))
    assert result.exit_code == 1
    assert "does not hold a shard of 'water_readings'" in _said(result)


def test_shard_load_refuses_unknown_department_table_and_format(fed: Path, tmp_path: Path) -> None:
    source = tmp_path / "claims.csv"
    _export(claims_sql("x", rows=5, seed=1), source)
    result = _run("shard", "load", str(fed), "-d", "songjiang", "-t", "claims", str(source))
    assert result.exit_code == 1
    assert "no department 'songjiang'" in _said(result)
    result = _run("shard", "load", str(fed), "-d", "qingpu", "-t", "prescriptions", str(source))
    assert result.exit_code == 1
    assert "NOT_FOUND" in _said(result)
    text = tmp_path / "claims.txt"
    text.write_text("claim_id\n1\n", encoding="utf-8")
    result = _run("shard", "load", str(fed), "-d", "qingpu", "-t", "claims", str(text))
    assert result.exit_code == 1
    assert ".csv or .parquet" in _said(result)


def test_shard_load_refuses_a_shard_whose_table_drifted(fed: Path, tmp_path: Path) -> None:
    con = duckdb.connect(str(fed / "shards" / "wujiang.duckdb"))
    con.execute("ALTER TABLE claims ALTER age TYPE BIGINT")
    con.close()
    source = tmp_path / "claims.parquet"
    _export(claims_sql("x", rows=5, seed=1), source)
    with pytest.raises(SchemaMismatchError, match="'age' is BIGINT in the shard"):
        load_shard_file(fed, "wujiang", "claims", source)
