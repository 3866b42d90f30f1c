"""The benchmark suite's sections run to the end and record their figures (what they measure is the bench's
own business; here only that a section neither crashes nor writes an empty result)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_prepare_section_records_both_tokenizers(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--only", "prepare", "--reps", "1",
                           "--json", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "SLMTRAIN_SHARED_DATA": str(shared_data)})
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())["prepare"]
    assert r["MB"] > 1
    for name in ("gpt2", "bpe-4096"):
        assert r[name]["n"] == 1 and r[name]["median"] > 0, r
        assert f"{name} " in proc.stdout
