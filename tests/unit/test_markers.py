"""Each test carries its folder's markers (tests/conftest.py): `pytest -m "not e2e"` leaves out
every test that starts a server, an engine or a fresh venv, and keeps the in-process ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# One file per folder kind: in process, a served model, a tiny ZAYA in vLLM, a wheel build.
FILES = ["tests/unit/test_layers.py", "tests/e2e/test_service.py", "tests/zaya/test_model.py", "tests/packaging/test_names.py"]


def _collected(marks: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marks, *FILES],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode in (0, 5), proc.stdout[-3000:] + proc.stderr[-3000:]  # 5: nothing selected
    return {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}


def test_not_e2e_is_the_in_process_subset() -> None:
    assert _collected("not e2e") == {"tests/unit/test_layers.py"}


def test_e2e_selects_servers_engines_and_builds() -> None:
    assert _collected("e2e") == {"tests/e2e/test_service.py", "tests/zaya/test_model.py", "tests/packaging/test_names.py"}



def test_no_two_test_files_share_a_name() -> None:
    """Test folders are not packages, so pytest imports each file by its bare name: two files of
    one name stop the collection of the whole suite ("import file mismatch")."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path.relative_to(ROOT)} and {seen[path.name].relative_to(ROOT)}"
        seen[path.name] = path
