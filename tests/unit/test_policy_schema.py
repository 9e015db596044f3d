"""The published JSON Schema for policy documents is exactly what the model generates now."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "policies" / "schema" / "policy.schema.json"


def test_policy_schema_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "policy.schema.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_policy_schema.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_text() == SCHEMA.read_text(), (
        "regenerate with `python scripts/gen_policy_schema.py`"
    )


def test_policy_schema_forbids_unknown_fields() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["additionalProperties"] is False
    assert all(d.get("additionalProperties") is False for d in schema["$defs"].values()
               if d.get("type") == "object")  # fmt: skip
    assert set(schema["required"]) >= {"schema_version", "department", "version", "tables"}
