"""The committed dataisland/v1 code must be exactly what scripts/gen_proto.py makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "dataisland" / "v1").iterdir()}
    committed = {
        p.name: p.read_bytes()
        for p in (ROOT / "dataisland" / "v1").iterdir()
        if p.is_file() and p.suffix in {".py", ".pyi"}
    }
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"regenerate with `python scripts/gen_proto.py`: stale {stale}"
