"""Every CCA kernel variant compiles for Ampere (sm_80) and Hopper (sm_90), on a host without a GPU.

The other kernel tests run Triton's interpreter, which does not enforce the compiler's rules (it
ran a constexpr reassigned inside a ``static_range`` that the compiler rejects), so only a real
compile shows whether ``--cca-ops auto`` can start on a CUDA host. kernels/cca/aot.py runs Triton's
whole pipeline down to a cubin through its bundled ptxas, in fresh processes without
``TRITON_INTERPRET`` (conftest.py sets it around these tests). The variants come from
kernels/cca/variants.py, the same code the launchers take their constexprs from; the geometries
from ZAYA1-8B's config (transformers' ``ZayaConfig`` defaults) and the tiny test model's.
"""

from __future__ import annotations

import pytest
import torch
from transformers import ZayaConfig

from mrsa.engine.zaya.tiny import CONFIG as TINY_CONFIG
from mrsa.kernels.cca import decode, prefill
from mrsa.kernels.cca.aot import ARCHS, Job, compile_all
from mrsa.kernels.cca.variants import Geometry, Variant, engine_variant, geometries_of, launch, variants
from tests.kernels.conftest import DEVICE, Seeded
from tests.kernels.test_cca import cu_of, make_inputs, make_params, positions_of

GEOMETRIES = {"zaya1-8b": geometries_of(ZayaConfig()), "tiny": geometries_of(ZayaConfig(**TINY_CONFIG))}


def test_geometries_are_the_models() -> None:
    """ZAYA1-8B: 8 query / 2 KV heads of 128, rotary on half of each, conv taps 2 and 2."""
    assert GEOMETRIES["zaya1-8b"] == [Geometry(hq=8, hk=2, d=128, k0=2, k1=2, rd=64)]
    assert GEOMETRIES["tiny"] == [Geometry(hq=8, hk=2, d=32, k0=2, k1=2, rd=16)]


def test_every_variant_compiles_for_ampere_and_hopper() -> None:
    """Every variant the engine launches at both models' geometries; the bias-free ones (kernel API
    only: a bias is one [d] add either way) at the tiny geometry, whose compiles are quick."""
    jobs = [
        Job(v, arch)
        for name, geoms in GEOMETRIES.items()
        for g in geoms
        for v in variants(g)
        if name == "tiny" or engine_variant(v)
        for arch in ARCHS
    ]
    results = compile_all(jobs)
    failed = [f"{r.job.variant} sm_{r.job.arch}:\n{r.error}" for r in results if r.error]
    assert not failed, f"{len(failed)} of {len(results)} variants fail to compile:\n" + "\n\n".join(failed[:3])


def test_launchers_only_build_listed_variants(monkeypatch, rng: Seeded) -> None:  # type: ignore[no-untyped-def]
    """What cca_prefill / cca_decode launch is in variants(): prefills with and without initial
    states and a decode, each recorded at the launcher's call to launch()."""
    seen: list[Variant] = []

    def spy(v: Variant, device_type: str = "cuda"):  # type: ignore[no-untyped-def]
        seen.append(v)
        return launch(v, device_type)

    monkeypatch.setattr(prefill, "launch", spy)
    monkeypatch.setattr(decode, "launch", spy)
    hq, hk, d = 4, 2, 16
    for dtype in (torch.float32, torch.bfloat16):
        params = make_params(rng, hq, hk, d, dtype)
        for lens, with_state in (([3, 2], False), ([9, 9], True)):
            inputs = make_inputs(rng, sum(lens), hq, hk, d, dtype)
            states = (
                rng.randn(len(lens), params.state_len, (hq + hk) * d, dtype=dtype),
                rng.randn(len(lens), hk * d // 2, dtype=dtype),
            )
            out = prefill.cca_prefill(*inputs, cu_of(lens), positions_of(rng, lens), params, *(states if with_state else ()))
        slots = torch.tensor([1, 0], dtype=torch.int32, device=DEVICE)
        decode.cca_decode(*[t[:2] for t in inputs], positions_of(rng, [2]), params, out.conv_state, out.v_state, slots)
    assert [(v.kind, v.has_init) for v in seen[:3]] == [("prefill", False), ("prefill", True), ("decode", True)]
    assert len(seen) == 6
    for v in seen:
        assert v.normal() in variants(v.geometry), v


def test_launch_refuses_a_dtype_no_variant_has() -> None:
    """fp16 is not in SWITCHES, so nothing compiled it: the launchers must not run it."""
    geometry = GEOMETRIES["tiny"][0]
    with pytest.raises(ValueError, match="float16"):
        launch(Variant("decode", geometry, torch.float16, True, True, True))
