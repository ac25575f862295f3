"""Triton CCA kernels vs the PyTorch reference: fresh random inputs and a fresh seed per check,
NaN-poisoned outputs (every element must be written), ragged packed batches, GQA groups 1/2/4,
head dims 16/32/64, fp32 (rel. error < 1e-5) and bf16 (< 1e-2). On CUDA the same tests run on the GPU;
without one they run through Triton's interpreter (see conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mrsa.kernels.cca import _args
from mrsa.kernels.cca.decode import cca_decode
from mrsa.kernels.cca.prefill import cca_prefill
from mrsa.kernels.cca.reference import (
    CCADecodeOut,
    CCAParams,
    CCAPrefillOut,
    cca_decode_ref,
    cca_params_from_hf,
    cca_prefill_ref,
    rope_cos_sin_cache,
)
from tests.kernels.conftest import DEVICE, Seeded
from tests.kernels.zaya_hf import HFZaya, tiny_config

ROOT = Path(__file__).resolve().parents[2]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the kernels' wrappers allocate starts as NaN."""

    def nan_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(_args, "empty", nan_empty)


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def assert_close(name: str, got: Tensor, ref: Tensor, dtype: torch.dtype, rng: Seeded) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype, (name, got.shape, ref.shape, got.dtype, ref.dtype)
    assert not got.isnan().any(), f"{name}: {int(got.isnan().sum())} elements never written (seed {rng.seed})"
    err = rel_err(got, ref.to(got.device))
    assert err < TOL[dtype], f"{name}: rel err {err:.3g} >= {TOL[dtype]} (seed {rng.seed})"


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None or not t.is_floating_point() else t.float()


def _f32_params(p: CCAParams) -> CCAParams:
    return CCAParams(**{k: _f32(v) for k, v in vars(p).items()})


def oracle_prefill(
    inputs: list[Tensor], cu: Tensor, pos: Tensor, params: CCAParams,
    states: tuple[Tensor | None, Tensor | None], dtype: torch.dtype,
) -> CCAPrefillOut:
    """The reference's math on the same (bf16-valued) inputs, evaluated in fp32 and rounded once to
    the output dtype, like the kernel. (The reference's bf16 path instead rounds after every op as
    transformers does - it is anchored to transformers bit-for-bit in test_cca_reference.py; the
    kernel differs from that path by up to ~1.1e-2 on tensors of a few dozen elements, about 5e-3 of
    it the reference's own rounding: too close to the 1e-2 bar for a stable test.)"""
    out = cca_prefill_ref(*[_f32(t) for t in inputs], cu, pos, _f32_params(params), *map(_f32, states))  # type: ignore[misc]
    return CCAPrefillOut(*[t.to(dtype) for t in out])


def oracle_decode(
    inputs: list[Tensor], pos: Tensor, params: CCAParams, conv: Tensor, vst: Tensor, slots: Tensor,
    dtype: torch.dtype,
) -> CCADecodeOut:
    """Decode twin of :func:`oracle_prefill`; updates ``conv`` / ``vst`` in place (in their dtype)."""
    conv32, vst32 = conv.float(), vst.float()
    out = cca_decode_ref(*[t.float() for t in inputs], pos, _f32_params(params), conv32, vst32, slots)
    conv.copy_(conv32)
    vst.copy_(vst32)
    return CCADecodeOut(*[t.to(dtype) for t in out])


def make_params(
    rng: Seeded, hq: int, hk: int, d: int, dtype: torch.dtype, *, taps: tuple[int, int] = (2, 2),
    rotary_dim: int | None = None, bias: bool = True,
) -> CCAParams:
    c = (hq + hk) * d
    return CCAParams(
        conv_dw_weight=rng.randn(c, 1, taps[0], dtype=dtype, scale=0.5),
        conv_dw_bias=rng.randn(c, dtype=dtype, scale=0.5) if bias else None,
        conv_g_weight=rng.randn(c, d, taps[1], dtype=dtype, scale=d**-0.5),
        conv_g_bias=rng.randn(c, dtype=dtype, scale=0.5) if bias else None,
        key_temp=rng.randn(hk, dtype=dtype),
        cos_sin_cache=rope_cos_sin_cache(rotary_dim or d // 2, 1e4, 4096, DEVICE),
    )


def make_inputs(rng: Seeded, n: int, hq: int, hk: int, d: int, dtype: torch.dtype) -> list[Tensor]:
    """q_pre, k_pre, v_cur, v_del as column slices of ONE merged projection output (row stride >
    width), the layout a vLLM layer's merged qkv projection produces."""
    widths = [hq * d, hk * d, hk * d // 2, hk * d // 2]
    merged = rng.randn(n, sum(widths) + 8, dtype=dtype)
    return list(torch.split(merged[:, : sum(widths)], widths, dim=1))


def cu_of(lens: list[int]) -> Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)


def positions_of(rng: Seeded, lens: list[int]) -> Tensor:
    return torch.cat([torch.arange(L) + int(rng.randint(0, 3000, 1)) for L in lens]).to(DEVICE)


PREFILL_CASES = [  # (heads, sequence lengths, initial states given)
    ((2, 2, 16), [1, 5, 17], False),  # G = 1, ragged, 2 token tiles
    ((4, 2, 32), [1, 2, 3, 4, 5, 6], True),  # G = 2, d = 32, lengths 1..6
    ((8, 2, 16), [1, 5, 17], True),  # G = 4 (ZAYA1's grouping)
    ((8, 2, 16), [0, 4, 1, 0], True),  # empty sequences; one 16-token tile
    ((3, 1, 16), [7, 1, 2], False),  # odd Hk: the value head straddles v_cur / v_delayed
    ((4, 2, 64), [3, 18], True),  # d = 64: the fp32 conv contracts in two 32-channel chunks
]


def _case_id(case: tuple[tuple[int, int, int], list[int], bool]) -> str:
    (hq, hk, d), lens, st = case
    return f"hq{hq}-hk{hk}-d{d}-L{'.'.join(map(str, lens))}{'-state' if st else ''}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads,lens,with_state", PREFILL_CASES, ids=[_case_id(c) for c in PREFILL_CASES])
def test_prefill_kernel_matches_reference(
    rng: Seeded, heads: tuple[int, int, int], dtype: torch.dtype, lens: list[int], with_state: bool
) -> None:
    hq, hk, d = heads
    params = make_params(rng, hq, hk, d, dtype)
    n = sum(lens)
    inputs = make_inputs(rng, n, hq, hk, d, dtype)
    cu, pos = cu_of(lens), positions_of(rng, lens)
    states: tuple[Tensor | None, Tensor | None] = (None, None)
    if with_state:
        c, s = (hq + hk) * d, params.state_len
        states = (rng.randn(len(lens), s, c, dtype=dtype), rng.randn(len(lens), hk * d // 2, dtype=dtype))
    ref = oracle_prefill(inputs, cu, pos, params, states, dtype)
    got = cca_prefill(*inputs, cu, pos, params, *states)
    for name in ref._fields:
        assert_close(name, getattr(got, name), getattr(ref, name), dtype, rng)


DECODE_CASES = [  # (heads, requests): 19 requests span two 16-request tiles
    ((2, 2, 16), 5),
    ((4, 2, 32), 19),
    ((8, 2, 16), 1),
    ((8, 2, 16), 19),
    ((3, 1, 16), 5),
    ((4, 2, 64), 5),  # d = 64: chunked fp32 contraction
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "heads,n", DECODE_CASES, ids=["hq{}-hk{}-d{}-n{}".format(*h, n) for h, n in DECODE_CASES]
)
def test_decode_kernel_matches_reference(rng: Seeded, heads: tuple[int, int, int], dtype: torch.dtype, n: int) -> None:
    """Random distinct slots (some requests padding), poisoned unused slots stay untouched."""
    hq, hk, d = heads
    params = make_params(rng, hq, hk, d, dtype)
    c, s, vh = (hq + hk) * d, params.state_len, hk * d // 2
    num_slots = n + 7
    inputs = make_inputs(rng, n, hq, hk, d, dtype)
    pos = torch.randint(0, 4000, (n,), generator=rng.gen).to(DEVICE)
    slots = torch.randperm(num_slots, generator=rng.gen)[:n].to(torch.int32)
    if n > 1:
        slots[torch.randperm(n, generator=rng.gen)[: n // 3]] = -1
    slots = slots.to(DEVICE)
    conv = torch.full((num_slots, s, c), float("nan"), dtype=dtype, device=DEVICE)
    vst = torch.full((num_slots, vh), float("nan"), dtype=dtype, device=DEVICE)
    live = slots[slots >= 0].long()
    conv[live] = rng.randn(len(live), s, c, dtype=dtype)
    vst[live] = rng.randn(len(live), vh, dtype=dtype)
    conv_ref, vst_ref = conv.clone(), vst.clone()

    ref = oracle_decode(inputs, pos, params, conv_ref, vst_ref, slots, dtype)
    got = cca_decode(*inputs, pos, params, conv, vst, slots)
    for name in ref._fields:
        assert_close(name, getattr(got, name), getattr(ref, name), dtype, rng)
    assert_close("conv_state", conv[live], conv_ref[live], dtype, rng)
    assert_close("v_state", vst[live], vst_ref[live], dtype, rng)
    dead = torch.ones(num_slots, dtype=torch.bool, device=DEVICE)
    dead[live] = False
    assert conv[dead].isnan().all() and vst[dead].isnan().all(), f"wrote an unused slot (seed {rng.seed})"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_kernel_prefill_then_kernel_decode_equals_full_prefill(rng: Seeded, dtype: torch.dtype) -> None:
    """State correctness through the kernels alone: prefill prefixes, then decode the rest one token
    per step through a slot cache; q/k/v and final states equal one reference prefill of it all."""
    hq, hk, d = 8, 2, 16
    params = make_params(rng, hq, hk, d, dtype)
    lens, cuts = [3, 7, 2], [1, 4, 2]
    n = sum(lens)
    inputs = make_inputs(rng, n, hq, hk, d, dtype)
    cu, pos = cu_of(lens), positions_of(rng, lens)
    full = oracle_prefill(inputs, cu, pos, params, (None, None), dtype)

    starts = cu[:-1].tolist()
    idx = torch.cat([torch.arange(s0, s0 + c0) for s0, c0 in zip(starts, cuts)]).to(DEVICE)
    pre = cca_prefill(*[t[idx] for t in inputs], cu_of(cuts), pos[idx], params)
    for name in ("q", "k", "v"):
        assert_close(name, getattr(pre, name), getattr(full, name)[idx], dtype, rng)
    slots = torch.tensor([4, 0, 2], dtype=torch.int32, device=DEVICE)
    conv = torch.full((5, *pre.conv_state.shape[1:]), float("nan"), dtype=dtype, device=DEVICE)
    vst = torch.full((5, pre.v_state.shape[1]), float("nan"), dtype=dtype, device=DEVICE)
    conv[slots.long()], vst[slots.long()] = pre.conv_state, pre.v_state
    for step in range(max(L - c0 for L, c0 in zip(lens, cuts))):
        live = [b for b in range(3) if cuts[b] + step < lens[b]]
        tok = torch.tensor([starts[b] + cuts[b] + step for b in live], device=DEVICE)
        out = cca_decode(*[t[tok] for t in inputs], pos[tok], params, conv, vst, slots[live])
        for name in ("q", "k", "v"):
            assert_close(f"{name}@{step}", getattr(out, name), getattr(full, name)[tok], dtype, rng)
    assert_close("conv_state", conv[slots.long()], full.conv_state, dtype, rng)
    assert_close("v_state", vst[slots.long()], full.v_state, dtype, rng)


@pytest.mark.parametrize(
    "taps,rotary,bias", [((3, 2), "half", True), ((2, 3), "full", False), ((2, 2), "full", True)]
)
def test_kernel_variants(rng: Seeded, taps: tuple[int, int], rotary: str, bias: bool) -> None:
    """Other conv widths (S = 3), full-head RoPE and bias-free convs, prefill and decode."""
    hq, hk, d, dtype = 4, 2, 16, torch.float32
    params = make_params(rng, hq, hk, d, dtype, taps=taps, rotary_dim=d if rotary == "full" else d // 2, bias=bias)
    lens = [2, 6, 1]
    inputs = make_inputs(rng, sum(lens), hq, hk, d, dtype)
    cu, pos = cu_of(lens), positions_of(rng, lens)
    states = (
        rng.randn(3, params.state_len, (hq + hk) * d, dtype=dtype),
        rng.randn(3, hk * d // 2, dtype=dtype),
    )
    ref, got = cca_prefill_ref(*inputs, cu, pos, params, *states), cca_prefill(*inputs, cu, pos, params, *states)
    for name in ref._fields:
        assert_close(name, getattr(got, name), getattr(ref, name), dtype, rng)
    conv, vst = states[0].clone(), states[1].clone()
    slots = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEVICE)
    one = [t[:3] for t in inputs]
    dref = cca_decode_ref(*one, pos[:3], params, states[0], states[1], slots)
    dgot = cca_decode(*one, pos[:3], params, conv, vst, slots)
    for name in dref._fields:
        assert_close(name, getattr(dgot, name), getattr(dref, name), dtype, rng)
    assert_close("conv_state", conv, states[0], dtype, rng)
    assert_close("v_state", vst, states[1], dtype, rng)


def test_prefill_kernel_matches_transformers(rng: Seeded) -> None:
    """Close the loop: the kernel on a real ZayaAttention's projections reproduces the q/k/v the
    module hands to its attention (fp32)."""
    hf = HFZaya(tiny_config(8, 2, 16), rng.gen, torch.float32)
    params = cca_params_from_hf(hf.attn, rope_cos_sin_cache(hf.rotary_dim, hf.theta, 256))
    params = CCAParams(**{k: (None if v is None else v.to(DEVICE)) for k, v in vars(params).items()})
    n = 13
    x = torch.randn(n, hf.cfg.hidden_size, generator=rng.gen)
    positions = torch.arange(n)
    hq_, hk_, hv_, _ = hf.forward(x, positions, None)
    proj = [t.to(DEVICE) for t in hf.projections(x)]
    got = cca_prefill(*proj, cu_of([n]), positions.to(DEVICE), params)
    for name, theirs in (("q", hq_), ("k", hk_), ("v", hv_)):
        assert_close(name, getattr(got, name), theirs.to(DEVICE), torch.float32, rng)


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the GPU runs the full benchmark instead")
def test_bench_smoke() -> None:
    """benchmarks/kernels/cca_bench.py --smoke: imports and runs its correctness part on tiny shapes."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels" / "cca_bench.py"), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "correctness: ok" in proc.stdout


def test_conv_weight_changed_in_place_is_used(rng: Seeded) -> None:
    """The kernels read the grouped conv weight in a tap-major copy kept per weight tensor
    (_args.tap_major); a weight loaded or changed in place after a first call must be seen."""
    hq, hk, d, dtype = 4, 2, 16, torch.float32
    params = make_params(rng, hq, hk, d, dtype)
    lens = [5, 3]
    inputs = make_inputs(rng, sum(lens), hq, hk, d, dtype)
    cu, pos = cu_of(lens), positions_of(rng, lens)
    cca_prefill(*inputs, cu, pos, params)
    params.conv_g_weight.copy_(rng.randn(*params.conv_g_weight.shape, dtype=dtype, scale=d**-0.5))
    ref, got = cca_prefill_ref(*inputs, cu, pos, params), cca_prefill(*inputs, cu, pos, params)
    for name in ref._fields:
        assert_close(name, getattr(got, name), getattr(ref, name), dtype, rng)
