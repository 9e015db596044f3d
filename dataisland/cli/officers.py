"""Officers' signing keys and the demonstration policies a local federation starts with.

`dataisland init` gives each department one officer ("officer") with an Ed25519 signing key
(identity/DEPT/officer-officer.signing.key, owner-only), pins its public key in the federation
file, and writes a signed policy per department (policies/DEPT.yaml and .sig.json) made from
policies/examples/qingpu.yaml. A real department writes its own policy, has its officers sign
it with `dataisland policy sign`, and deploys it with `dataisland policy deploy`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from dataisland.identity import IDENTITY_DIR, write_pem, write_private_key
from policies.document import Policy
from policies.signing import (
    add_signature,
    encode_signatures,
    generate_key,
    load_private_key,
    private_key_pem,
    public_key_bytes,
    sign_policy,
)

LOCAL_OFFICER = "officer"
POLICIES_DIR = "policies"
EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "examples" / "qingpu.yaml"


def officer_key_path(directory: Path, department: str, officer: str = LOCAL_OFFICER) -> Path:
    """Where a local federation keeps an officer's Ed25519 signing key."""
    return directory / IDENTITY_DIR / department / f"officer-{officer}.signing.key"


def provision_officers(directory: Path, departments: Sequence[str]) -> dict[str, str]:
    """One officer signing key per department; returns department to base64 public key."""
    public = {}
    for department in departments:
        key = generate_key()
        write_private_key(officer_key_path(directory, department), private_key_pem(key))
        public[department] = base64.b64encode(public_key_bytes(key.public_key())).decode("ascii")
    return public


def demo_policy_text(
    department: str, *, departments: Sequence[str], tables: Collection[str]
) -> str:
    """The example policy, rewritten for `department` and the tables it holds."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = (
        re.sub(r"\bqingpu\b", department, text.split("tables:", 1)[0])
        + "tables:"
        + (text.split("tables:", 1)[1])
    )
    everyone = ", ".join(departments)
    text = text.replace("[qingpu, wujiang, jiashan, committee]", f"[{everyone}, committee]")
    text = text.replace("[qingpu, wujiang, jiashan]", f"[{everyone}]")
    if "water_readings" not in tables:
        text = text.split("  water_readings:", 1)[0]
    return text


def write_signed_policy(directory: Path, department: str, text: str) -> Path:
    """Write `text` as the department's policy, signed by its local officer."""
    path = directory / POLICIES_DIR / f"{department}.yaml"
    write_pem(path, text.encode("utf-8"))
    policy = Policy.from_yaml(text)
    key = load_private_key(officer_key_path(directory, department).read_bytes())
    signatures = add_signature([], sign_policy(policy, officer=LOCAL_OFFICER, private_key=key))
    write_pem(path.with_name(path.name + ".sig.json"), encode_signatures(signatures) + b"\n")
    return path
