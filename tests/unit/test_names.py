"""Our top-level packages `kernels` and `rsa` share names with Hugging Face's `kernels` and
PyPI's `rsa` (crypto). These tests prove the environment cannot confuse them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _probe(code: str) -> str:
    """Run in a fresh interpreter outside the repo, so only the installed environment counts."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    ).stdout.strip()


def test_kernels_resolves_to_ours_outside_the_repo() -> None:
    origin = _probe("import kernels; print(kernels.__file__)")
    assert Path(origin).resolve() == ROOT / "kernels" / "__init__.py"


def test_transformers_does_not_take_our_kernels_for_hugging_faces() -> None:
    out = _probe(
        "from transformers.utils.import_utils import is_kernels_available;"
        "import transformers.integrations.hub_kernels;"  # imports `kernels` if it thinks it is HF's
        "print(is_kernels_available())"
    )
    assert out == "False"


def test_transformers_still_loads_a_model_class() -> None:
    out = _probe("from transformers import LlamaConfig, LlamaForCausalLM; print(LlamaForCausalLM.__name__)")
    assert out == "LlamaForCausalLM"


def test_rsa_resolves_to_ours_and_the_crypto_package_is_absent() -> None:
    origin = _probe("import rsa; print(rsa.__file__)")
    assert Path(origin).resolve() == ROOT / "rsa" / "__init__.py"
    dists = importlib.metadata.packages_distributions().get("rsa", [])
    assert set(dists) == {"markovian-rsa"}, dists  # no other distribution provides `rsa`
    assert importlib.util.find_spec("rsa.params") is not None
