"""benchmarks/kernels/zaya_model_bench.py --smoke: the whole-model benchmark runs (CPU: Triton interpreter)
and its two CCA variants (fused kernels, PyTorch reference) give the same logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_model_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/kernels/zaya_model_bench.py", "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "max rel. error" in proc.stdout
    report = json.loads((tmp_path / "zaya_model_bench.json").read_text())
    assert {r["impl"] for r in report["results"]} == {"kernels", "reference"}
    assert all(r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 for r in report["results"])
