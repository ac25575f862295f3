"""Kernel tests: Triton through its interpreter when there is no CUDA device, fresh seeds per check.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a function, so the kernels must be
imported while it is set; conftest files are imported at collection time, before any test module.
Triton's interpreter also reads it at launch time, so an autouse fixture sets it again around each
test here; between them it is restored, so it does not leak into the rest of the session (tests/e2e
starts a vLLM server whose own Triton use must not fall into the interpreter). If something imported
kernels.cca before this file ran without the variable, the kernels would not be interpretable:
fail loudly rather than run them wrongly.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import torch

if not torch.cuda.is_available():
    _prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import mrsa.kernels.cca.decode
        import mrsa.kernels.cca.prefill
        from triton.runtime.interpreter import InterpretedFunction

        for _kernel in (mrsa.kernels.cca.prefill._cca_prefill_kernel, mrsa.kernels.cca.decode._cca_decode_kernel):
            if not isinstance(_kernel, InterpretedFunction):
                raise RuntimeError("mrsa.kernels.cca was imported before TRITON_INTERPRET=1 was set; run it in a fresh process")
    finally:
        if _prev is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _prev

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Seeded:
    """A fresh random seed per check (``CCA_TEST_SEED`` pins it to reproduce a failure)."""

    def __init__(self) -> None:
        pinned = os.environ.get("CCA_TEST_SEED")
        self.seed = int(pinned) if pinned else secrets.randbits(31)
        self.gen = torch.Generator().manual_seed(self.seed)
        print(f"seed={self.seed} (rerun with CCA_TEST_SEED={self.seed})")

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=self.gen) * scale).to(device=DEVICE, dtype=dtype)

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=self.gen)


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    if DEVICE.type != "cuda":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def rng() -> Iterator[Seeded]:
    yield Seeded()
