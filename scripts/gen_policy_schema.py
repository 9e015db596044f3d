"""Write the policy document's JSON Schema (for editors) from the pydantic model.

Usage: python scripts/gen_policy_schema.py [--out FILE]
(default: policies/schema/policy.schema.json).
tests/unit/test_policy_schema.py fails when the committed file is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.document import policy_json_schema  # noqa: E402


def render() -> str:
    """The schema file's text."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "policies/schema/policy.schema.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
