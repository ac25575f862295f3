"""Which compiled forms of the CCA kernels exist, and each one's launch settings: the one home.

A :class:`Variant` is everything that selects a kernel binary apart from the target GPU: the kernel,
the layer's geometry, the activation dtype and the launch-time switches. :func:`launch` turns one
into the constexprs and launch options the launchers (prefill.py, decode.py) pass to Triton, and
:func:`variants` lists every variant a CUDA launch can select for a geometry, by walking
:data:`SWITCHES` (a value set per switch field of :class:`Variant`). tests/kernels/test_compile.py
compiles each for sm_80 and sm_90 without a GPU; benchmarks/kernels/compile_report.py records
their registers and spills. A new switch is a new :class:`Variant` field, which must get its value
set here, so it cannot escape either.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["prefill", "decode"]

# Token rows (prefill) or requests (decode) per program: the grouped conv stays a [16, d] x [d, d]
# tensor-core dot and a program reads its head's conv weights once per 16 rows. Larger tiles
# spill on sm_90 at d = 128 (ptxas -v, bf16, 8 warps: 492 bytes of spill stores at 64 rows, 16 at
# 16; kernels/BENCHMARKS.md), and consecutive programs share a head, so its weights stay in L2.
BLOCK_ROWS = 16


@dataclass(frozen=True)
class Geometry:
    """A CCA layer's shape: query / key-value heads, head dim, conv taps, rotary dims."""

    hq: int
    hk: int
    d: int
    k0: int
    k1: int
    rd: int


@dataclass(frozen=True)
class Variant:
    kind: Kind
    geometry: Geometry
    dtype: torch.dtype  # q_pre / k_pre (and the conv weights, cast to it)
    has_dw_bias: bool
    has_g_bias: bool
    has_init: bool  # prefill: initial states given (decode always reads its slots' states)

    def normal(self) -> Variant:
        """The same binary with the switches its kind ignores at their fixed value."""
        if self.kind == "decode":
            return dataclasses.replace(self, has_init=True)
        return self


# Every value each switch field of Variant takes in a CUDA launch; launch() refuses others, so
# nothing uncompiled by tests/kernels/test_compile.py can launch. bf16 and fp32 activations (no
# ZAYA checkpoint or test uses fp16); the engine's CCA layers always carry both conv biases, the
# kernel API also takes layers without them.
SWITCHES: dict[str, tuple[object, ...]] = {
    "kind": ("prefill", "decode"),
    "dtype": (torch.bfloat16, torch.float32),
    "has_dw_bias": (True, False),
    "has_g_bias": (True, False),
    "has_init": (True, False),
}


@dataclass(frozen=True)
class Launch:
    """What a launcher passes to Triton for one variant."""

    block_rows: int
    num_warps: int
    num_stages: int
    constexprs: tuple[tuple[str, int | bool], ...]

    def kwargs(self) -> dict[str, int | bool]:
        return {**dict(self.constexprs), "num_warps": self.num_warps, "num_stages": self.num_stages}


def launch(v: Variant, device_type: str = "cuda") -> Launch:
    """Tile rows, warps and constexprs for variant ``v`` on a ``device_type`` device ("cpu" means
    Triton's interpreter, whose bf16 dot is broken, so it takes the exact fp32 dot there too)."""
    if v.dtype not in SWITCHES["dtype"]:
        raise ValueError(f"the CCA kernels take {[str(t) for t in SWITCHES['dtype']]} activations, got {v.dtype}")
    g = v.geometry
    rows = BLOCK_ROWS
    constexprs: dict[str, int | bool] = dict(
        HQ=g.hq, HK=g.hk, D=g.d, K0=g.k0, K1=g.k1, RD=g.rd, BT=rows,
        HAS_DW_BIAS=v.has_dw_bias, HAS_G_BIAS=v.has_g_bias,
        IEEE=v.dtype == torch.float32 or device_type == "cpu",
    )
    if v.kind == "prefill":
        constexprs["HAS_INIT"] = v.has_init
    return Launch(rows, 8 if g.d >= 128 else 4, 1, tuple(constexprs.items()))


def variants(geometry: Geometry) -> list[Variant]:
    """Every distinct variant a CUDA launch can select at ``geometry``, in a stable order."""
    fields = [f.name for f in dataclasses.fields(Variant) if f.name != "geometry"]
    missing = set(fields) ^ set(SWITCHES)
    if missing:
        raise RuntimeError(f"SWITCHES and Variant's fields differ: {sorted(missing)}")
    seen: dict[Variant, None] = {}
    for values in itertools.product(*(SWITCHES[f] for f in fields)):
        seen[Variant(geometry=geometry, **dict(zip(fields, values))).normal()] = None  # type: ignore[arg-type]
    return list(seen)


def engine_variant(v: Variant) -> bool:
    """Whether the engine launches ``v``: its CCA layers always carry both conv biases
    (engine/zaya/cca_layer.py); bias-free layers come only through the kernel API."""
    return v.has_dw_bias and v.has_g_bias


def geometries_of(cfg: object) -> list[Geometry]:
    """The CCA geometries of a transformers ``ZayaConfig`` (one per distinct rotary width over its
    layer types, the rule engine/zaya/model.py builds its cos/sin tables by)."""
    rope = cfg.rope_parameters  # type: ignore[attr-defined]
    per_type = rope.values() if all(isinstance(r, dict) for r in rope.values()) else [rope]
    rds = sorted({int(cfg.head_dim * r.get("partial_rotary_factor", 1.0)) for r in per_type})  # type: ignore[attr-defined]
    return [
        Geometry(
            hq=cfg.num_attention_heads, hk=cfg.num_key_value_heads, d=cfg.head_dim,  # type: ignore[attr-defined]
            k0=cfg.cca_time0, k1=cfg.cca_time1, rd=rd,  # type: ignore[attr-defined]
        )
        for rd in rds
    ]
