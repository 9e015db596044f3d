"""The federation file: a valid one loads; each kind of mistake is a ConfigError naming it."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dataisland.errors import ConfigError
from dataisland.federation import Federation, load_federation, load_node_config

OFFICER_KEY = base64.b64encode(
    Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()

VALID: dict[str, Any] = {
    "federation": "zone",
    "development": True,
    "departments": {
        "qingpu": {
            "enclave": "127.0.0.1:7102",
            "ca": "identity/qingpu/ca.crt",
            "revocations": "identity/qingpu/revocations.crl",
            "policy": "policies/qingpu.yaml",
            "officers": {"officer": OFFICER_KEY},
        },
        "wujiang": {
            "enclave": "127.0.0.1:7103",
            "ca": "identity/wujiang/ca.crt",
            "policy": "policies/wujiang.yaml",
            "officers": {"officer": OFFICER_KEY},
        },
    },
    "committee": {
        "coordinator": "127.0.0.1:7100",
        "aggregator": "127.0.0.1:7101",
        "ca": "identity/committee/ca.crt",
        "revocations": "identity/committee/revocations.crl",
    },
    "tables": {
        "claims": {
            "privacy_unit": "person_id",
            "holders": ["qingpu", "wujiang"],
            "columns": {
                "person_id": "VARCHAR",
                "amount": "DECIMAL(12,2)",
                "service_date": "DATE",
            },
        }
    },
}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _load(tmp_path: Path, data: object) -> Federation:
    return load_federation(_write(tmp_path, data))


def test_valid_file_loads_and_gives_a_catalog(tmp_path: Path) -> None:
    federation = _load(tmp_path, VALID)
    assert federation.development is True
    assert list(federation.departments) == ["qingpu", "wujiang"]
    catalog = federation.catalog()
    assert catalog["claims"].privacy_unit == "person_id"
    assert catalog["claims"].holders == frozenset({"qingpu", "wujiang"})
    assert dict(catalog["claims"].columns)["amount"] == "DECIMAL(12,2)"


def test_authorities_resolve_against_the_file_and_include_the_committee(tmp_path: Path) -> None:
    federation = _load(tmp_path, VALID)
    base = tmp_path.resolve()
    assert federation.authorities() == {
        "qingpu": (
            base / "identity" / "qingpu" / "ca.crt",
            base / "identity" / "qingpu" / "revocations.crl",
        ),
        # A department may have no revocation list yet.
        "wujiang": (base / "identity" / "wujiang" / "ca.crt", None),
        "committee": (
            base / "identity" / "committee" / "ca.crt",
            base / "identity" / "committee" / "revocations.crl",
        ),
    }
    assert federation.dns_name("enclave", "qingpu") == "enclave.qingpu.zone.dataisland"
    assert federation.departments["qingpu"].policy == base / "policies" / "qingpu.yaml"
    assert list(federation.officer_keys("wujiang")) == ["officer"]


def _broken(path: tuple[str, ...], value: object) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return data


@pytest.mark.parametrize(
    ("data", "named"),
    [
        pytest.param(_broken(("colour",), "blue"), "colour", id="unknown top-level field"),
        pytest.param(
            _broken(("departments", "qingpu", "port"), 1), "port", id="unknown department field"
        ),
        pytest.param(
            _broken(("tables", "claims", "holders"), ["qingpu", "songjiang"]),
            "songjiang",
            id="unknown holder",
        ),
        pytest.param(
            _broken(("tables", "claims", "columns", "amount"), "MONEY"),
            "MONEY",
            id="bad column type",
        ),
        pytest.param(
            _broken(("tables", "claims", "privacy_unit"), "citizen_id"),
            "citizen_id",
            id="privacy unit not a column",
        ),
        pytest.param(
            _broken(("departments", "wujiang", "enclave"), "localhost"),
            "localhost",
            id="address without port",
        ),
        pytest.param(
            _broken(("committee", "coordinator"), "127.0.0.1:port"),
            "127.0.0.1:port",
            id="address with a non-numeric port",
        ),
        pytest.param(
            _broken(("tables", "claims", "holders"), ["qingpu", "qingpu"]),
            "twice",
            id="holder listed twice",
        ),
        pytest.param(_broken(("federation",), "Zone-1"), "federation", id="bad federation name"),
        pytest.param(_without(("departments", "wujiang", "ca")), "ca", id="department without ca"),
        pytest.param(_without(("committee", "ca")), "ca", id="committee without ca"),
        pytest.param(
            _broken(("committee", "name"), "qingpu"), "also a department", id="committee clash"
        ),
    ],
)
def test_mistakes_are_config_errors_naming_the_problem(
    tmp_path: Path, data: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data)
    assert named in str(info.value)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_federation(tmp_path / "absent.yaml")
    path = tmp_path / "federation.yaml"
    path.write_text("departments: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_federation(path)


def test_node_config_resolves_paths_against_its_file(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    path = nodes / "qingpu.yaml"
    path.write_text(
        "federation: ../federation.yaml\nrole: department\ndepartment: qingpu\n"
        "listen: 127.0.0.1:7102\nshard: ../shards/qingpu.duckdb\n"
        "tls:\n  certificate: ../identity/qingpu/enclave-node.crt\n"
        "  key: ../identity/qingpu/enclave-node.key\n",
        encoding="utf-8",
    )
    config = load_node_config(path)
    base = tmp_path.resolve() / "nodes" / ".."
    assert config.federation == base / "federation.yaml"
    assert config.shard == base / "shards" / "qingpu.duckdb"
    assert config.tls.certificate == base / "identity" / "qingpu" / "enclave-node.crt"
    assert config.tls.key == base / "identity" / "qingpu" / "enclave-node.key"


@pytest.mark.parametrize(
    ("tls", "named"),
    [
        pytest.param("", "tls", id="no tls section"),
        pytest.param("tls:\n  certificate: a.crt\n", "key", id="no key"),
        pytest.param(
            "tls:\n  certificate: a.crt\n  key: a.key\n  ca: x\n", "ca", id="unknown tls field"
        ),
    ],
)
def test_node_config_needs_its_tls_files(tmp_path: Path, tls: str, named: str) -> None:
    path = tmp_path / "coordinator.yaml"
    path.write_text(
        "federation: federation.yaml\nrole: coordinator\nlisten: 127.0.0.1:7100\n" + tls,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=named):
        load_node_config(path)


def test_node_config_role_fields_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.yaml"
    path.write_text(
        "federation: federation.yaml\nrole: aggregator\nlisten: 127.0.0.1:7101\nshard: x.duckdb\n"
        "tls: {certificate: a.crt, key: a.key}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="shard"):
        load_node_config(path)
