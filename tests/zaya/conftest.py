"""Fixtures for the ZAYA plugin tests: the tiny checkpoint (written by the repo's own script)
and one real vLLM run over it (tests/zaya/vllm_run.py), both once per session."""

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
    subprocess.run([sys.executable, "-m", "engine.zaya.tiny", str(out)], cwd=ROOT, check=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def vllm_results(tiny_zaya: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("zaya-vllm") / "results.json"
    log = out.with_suffix(".log")
    with log.open("wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.zaya.vllm_run", str(tiny_zaya), str(out)],
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM run failed ({proc.returncode}):\n{log.read_text()[-4000:]}")
    return json.loads(out.read_text())
