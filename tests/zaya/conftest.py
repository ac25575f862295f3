"""Fixtures for the ZAYA plugin tests: the tiny checkpoint (written by the repo's own script)
and real vLLM runs over it (tests/zaya/vllm_run.py), one per CCA path, once per session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_zaya(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-zaya")
    subprocess.run([sys.executable, "-m", "mrsa.engine.zaya.tiny", str(out)], cwd=ROOT, check=True, timeout=300)
    return out


@pytest.fixture(scope="session", params=["reference", "triton"])
def vllm_results(request: pytest.FixtureRequest, tiny_zaya: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One engine run per CCA path: the PyTorch reference (what CPU hosts serve with) and the
    fused Triton kernels (what CUDA hosts serve with), here through Triton's interpreter."""
    ops = request.param
    out = tmp_path_factory.mktemp(f"zaya-vllm-{ops}") / "results.json"
    log = out.with_suffix(".log")
    with log.open("wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.zaya.vllm_run", str(tiny_zaya), str(out), ops],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM run failed ({proc.returncode}):\n{log.read_text()[-4000:]}")
    res = json.loads(out.read_text())
    res["ops"] = ops
    return res
