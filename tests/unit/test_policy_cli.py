"""`dataisland policy ...`: lint, explain, test, keygen, sign and verify, as officers run them."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

from click.testing import CliRunner

from dataisland.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "examples" / "qingpu.yaml"
CASES = ROOT / "policies" / "examples" / "qingpu.cases.yaml"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["policy", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_lint_ok_and_errors(tmp_path: Path) -> None:
    code, out = run("lint", str(EXAMPLE), "--at", "2025-01-01T00:00:00Z")
    assert code == 0, out
    assert "ok" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text(EXAMPLE.read_text().replace("      age: dimension\n",
                                                  "      agee: dimension\n"))  # fmt: skip
    code, out = run("lint", str(broken))
    assert code == 1
    assert "agee" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nsurprise: true\n")
    code, out = run("lint", str(bad))
    assert code == 1


def test_lint_reports_a_template_its_own_rules_deny(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace(
        "          exemptions:\n            identity_literal_comparison: allow\n", ""
    )
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, out = run("lint", str(path), "--at", "2025-01-01T00:00:00Z")
    assert code == 1
    assert "identity.literal_comparison" in out


def test_explain_prints_the_decision_and_why() -> None:
    code, out = run("explain", str(EXAMPLE), "SELECT min(amount) AS m FROM claims",
                    "--as", "wujiang/requester/bob", "--purpose", "statistics", "--json",
                    "--at", "2025-01-01T00:00:00Z")  # fmt: skip
    assert code == 0
    decision = json.loads(out)
    assert decision["verdict"] == "DENY"
    assert decision["reasons"][0]["rule"] == "measure.aggregate_not_allowed"
    assert decision["reasons"][0]["column"] == "amount"
    code, out = run("explain", str(EXAMPLE), "SELECT * FROM claims", "--as", "a/requester/b",
                    "--purpose", "statistics")  # fmt: skip
    assert code == 0
    assert "DENY" in out


def test_policy_test_runs_officer_cases(tmp_path: Path) -> None:
    code, out = run("test", str(EXAMPLE), str(CASES), "--at", "2025-01-01T00:00:00Z")
    assert code == 0, out
    assert "7 passed, 0 failed" in out
    wrong = tmp_path / "cases.yaml"
    wrong.write_text(CASES.read_text().replace("expect: ALLOW", "expect: DENY", 1))
    code, out = run("test", str(EXAMPLE), str(wrong), "--at", "2025-01-01T00:00:00Z")
    assert code == 1
    assert "FAIL monthly totals are fine" in out


def test_keygen_sign_verify(tmp_path: Path) -> None:
    policy = tmp_path / "qingpu.yaml"
    shutil.copy(EXAMPLE, policy)
    keys = {}
    for officer in ("ana", "bo"):
        key = tmp_path / f"{officer}.key"
        code, out = run("keygen", "--out", str(key))
        assert code == 0, out
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        keys[officer] = (key, (tmp_path / f"{officer}.key.pub").read_text().strip())
        code, out = run("sign", str(policy), "--key", str(key), "--officer", officer)
        assert code == 0, out
    signatures = json.loads((tmp_path / "qingpu.yaml.sig.json").read_text())
    assert [s["officer"] for s in signatures] == ["ana", "bo"]
    pins = [f"--officer={name}={pub}" for name, (_, pub) in keys.items()]
    code, out = run("verify", str(policy), *pins, "--required", "2")
    assert code == 0, out
    assert "verified" in out
    policy.write_text(policy.read_text().replace("k: 5", "k: 2"))
    code, _ = run("verify", str(policy), *pins, "--required", "2")
    assert code == 1
    code, _ = run("keygen", "--out", str(keys["ana"][0]))
    assert code == 1
