#!/usr/bin/env python
"""Benchmark the fused CCA kernels at the ZAYA1-8B attention shape (GPU; torch + triton, no vLLM).

    python benchmarks/kernels/cca_bench.py            # on a CUDA machine: correctness re-check, then timings
    python benchmarks/kernels/cca_bench.py --smoke    # anywhere: correctness only, tiny shapes (CPU: interpreter)

Shape: hidden 2048, 8 query / 2 KV heads of 128, bf16, rotary on 64 dims (theta 5e6), t0 = t1 = 2.
Before timing it re-checks both kernels against the reference on the device (fresh random inputs,
NaN-poisoned outputs, ragged batches, fp32 < 1e-5 and bf16 < 1e-2 relative error). Timings are
medians of ``triton.testing.do_bench`` for:

* prefill (one sequence of 1k/4k/16k tokens): our CCA layer (merged q/k/v_cur/v_del projection GEMM +
  ``cca_prefill`` + SDPA causal GQA + o_proj), the CCA kernel alone, the PyTorch reference CCA
  (no attention), an MHA layer at equal hidden size (16 x 128: qkv GEMM + SDPA + o_proj), the SDPA
  GQA and MHA cores alone, and transformers' ZayaAttention (eager PyTorch with SDPA);
* decode (one token per request, batch 1/16/64, ``--ctx`` tokens of dense KV per request): the
  ``cca_decode`` kernel vs ``cca_decode_ref``, and a whole layer step (GEMM + CCA + SDPA over the
  KV + o_proj; appending the new K/V to the cache is not included) vs an MHA layer step;

plus the FLOP and byte floors of each kernel (H100 SXM peaks unless the device is an H200) and the
KV-cache bytes per token against MHA. Prints markdown tables; writes JSON to $OUT/cca_bench.json
when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels

from torch import Tensor

from mrsa.kernels.cca import _args
from mrsa.kernels.cca.decode import cca_decode
from mrsa.kernels.cca.prefill import cca_prefill
from mrsa.kernels.cca.reference import (
    CCAParams,
    cca_decode_ref,
    cca_prefill_ref,
    rope_cos_sin_cache,
)

# (peak dense bf16 FLOP/s, HBM bytes/s)
_PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}


@dataclass(frozen=True)
class Shape:
    hidden: int = 2048
    hq: int = 8
    hk: int = 2
    d: int = 128
    t0: int = 2
    t1: int = 2
    theta: float = 5e6

    @property
    def c(self) -> int:
        return (self.hq + self.hk) * self.d

    @property
    def s(self) -> int:
        return self.t0 + self.t1 - 2

    @property
    def vh(self) -> int:
        return self.hk * self.d // 2

    @property
    def proj_width(self) -> int:
        return self.hq * self.d + self.hk * self.d + 2 * self.vh


ZAYA1_8B = Shape()
TINY = Shape(hidden=64, hq=8, hk=2, d=16)


# ---------------------------------------------------------------- correctness


def _nan_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _params(sh: Shape, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> CCAParams:
    def r(*shape: int, scale: float) -> Tensor:
        return (torch.randn(shape, generator=gen) * scale).to(dev, dtype)

    return CCAParams(
        conv_dw_weight=r(sh.c, 1, sh.t0, scale=0.5),
        conv_dw_bias=r(sh.c, scale=0.5),
        conv_g_weight=r(sh.c, sh.d, sh.t1, scale=sh.d**-0.5),
        conv_g_bias=r(sh.c, scale=0.5),
        key_temp=r(sh.hk, scale=1.0),
        cos_sin_cache=rope_cos_sin_cache(sh.d // 2, sh.theta, 1 << 17, dev),  # ZAYA1 max_position_embeddings
    )


def _f32(t: Tensor | None) -> Tensor | None:
    return None if t is None or not t.is_floating_point() else t.float()


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check_correctness(sh: Shape, lens: list[int], batch: int, dev: torch.device) -> list[dict[str, Any]]:
    """Kernel vs reference (the reference's math in fp32 on the same values), fresh seed per check,
    outputs poisoned with NaN. Raises AssertionError on any failure."""
    results: list[dict[str, Any]] = []
    real_empty = _args.empty
    _args.empty = _nan_empty
    try:
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
            gen = torch.Generator().manual_seed(seed)
            p = _params(sh, dtype, dev, gen)
            p32 = CCAParams(**{k: _f32(v) for k, v in vars(p).items()})
            n = sum(lens)

            def r(*shape: int) -> Tensor:
                return torch.randn(shape, generator=gen).to(dev, dtype)

            proj = r(n, sh.proj_width)
            ins = list(proj.split([sh.hq * sh.d, sh.hk * sh.d, sh.vh, sh.vh], dim=1))
            cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=dev)
            pos = torch.cat([torch.arange(L) + int(torch.randint(0, 1000, (1,), generator=gen)) for L in lens]).to(dev)
            st = (r(len(lens), sh.s, sh.c), r(len(lens), sh.vh))
            got = cca_prefill(*ins, cu, pos, p, *st)
            ref = cca_prefill_ref(*[t.float() for t in ins], cu, pos, p32, *[t.float() for t in st])
            for name in ref._fields:
                g, w = getattr(got, name), getattr(ref, name).to(dtype)
                err = _rel(g, w)
                ok = not g.isnan().any().item() and err < tol
                results.append({"kernel": "prefill", "dtype": str(dtype), "out": name, "rel_err": err, "seed": seed, "ok": ok})
                assert ok, f"prefill {name} {dtype}: rel err {err:.3g}, NaN={g.isnan().any().item()} (seed {seed})"

            slots_n = batch + 5
            slots = torch.randperm(slots_n, generator=gen)[:batch].to(torch.int32)
            if batch > 2:
                slots[0] = -1  # one padding entry
            slots = slots.to(dev)
            dins = [t[:batch].contiguous() for t in ins] if n >= batch else [r(batch, t.shape[1]) for t in ins]
            dpos = torch.randint(0, 4000, (batch,), generator=gen).to(dev)
            conv = torch.full((slots_n, sh.s, sh.c), float("nan"), dtype=dtype, device=dev)
            vst = torch.full((slots_n, sh.vh), float("nan"), dtype=dtype, device=dev)
            live = slots[slots >= 0].long()
            conv[live], vst[live] = r(len(live), sh.s, sh.c), r(len(live), sh.vh)
            conv32, vst32 = conv.to(torch.float32, copy=True), vst.to(torch.float32, copy=True)
            got_d = cca_decode(*dins, dpos, p, conv, vst, slots)
            ref_d = cca_decode_ref(*[t.float() for t in dins], dpos, p32, conv32, vst32, slots)
            pairs = [(name, getattr(got_d, name), getattr(ref_d, name)) for name in ref_d._fields]
            pairs += [("conv_state", conv[live], conv32[live]), ("v_state", vst[live], vst32[live])]
            for name, g, w in pairs:
                err = _rel(g, w.to(dtype))
                ok = not g.isnan().any().item() and err < tol
                results.append({"kernel": "decode", "dtype": str(dtype), "out": name, "rel_err": err, "seed": seed, "ok": ok})
                assert ok, f"decode {name} {dtype}: rel err {err:.3g} (seed {seed})"
            dead = torch.ones(slots_n, dtype=torch.bool, device=dev)
            dead[live] = False
            assert conv[dead].isnan().all() and vst[dead].isnan().all(), f"decode wrote an unused slot (seed {seed})"
    finally:
        _args.empty = real_empty
    return results


# ---------------------------------------------------------------- timing


def _floors(flops: float, nbytes: float, dev_name: str) -> dict[str, float]:
    peak_f, peak_b = _PEAKS["H200" if "H200" in dev_name else "H100"]
    return {"gflop": flops / 1e9, "mbytes": nbytes / 1e6, "flop_floor_us": flops / peak_f * 1e6, "byte_floor_us": nbytes / peak_b * 1e6}


def prefill_floors(sh: Shape, T: int, dev_name: str) -> dict[str, float]:
    """cca_prefill: grouped conv = (Hq+Hk) heads x t1 taps of d x d per token (+ depthwise and the
    elementwise epilogue, counted); bytes = read the 4 projections, write q/k/v, read the weights."""
    flops = T * (sh.c * sh.t1 * 2 * sh.d + sh.c * sh.t0 * 2 + sh.c * 12)
    nbytes = 2 * (T * sh.proj_width * 2 + sh.c * sh.d * sh.t1 + sh.c * (sh.t0 + 2))
    return _floors(flops, nbytes, dev_name)


def decode_floors(sh: Shape, B: int, dev_name: str) -> dict[str, float]:
    """cca_decode: prefill's per-token work plus reading and rewriting S rows of conv state and the
    value state per request; the conv weights are read once per launch."""
    flops = B * (sh.c * sh.t1 * 2 * sh.d + sh.c * sh.t0 * 2 + sh.c * 12)
    nbytes = 2 * (B * (sh.proj_width * 2 + 2 * (sh.s * sh.c + sh.vh)) + sh.c * sh.d * sh.t1 + sh.c * (sh.t0 + 2))
    return _floors(flops, nbytes, dev_name)


def attention_floors(T: int, hq: int, hk: int, d: int, dev_name: str) -> dict[str, float]:
    flops = 4 * hq * d * T * T / 2  # causal: QK^T and PV over half the square
    nbytes = 2 * T * d * (2 * hq + 2 * hk)
    return _floors(flops, nbytes, dev_name)


Timer = Callable[[Callable[[], Any]], float]


def do_bench_ms(fn: Callable[[], Any]) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def once_ms(fn: Callable[[], Any]) -> float:
    """--smoke timer: one call, wall clock (exercises every timed path without a GPU)."""
    import time

    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _hf_layer(sh: Shape, dev: torch.device, dtype: torch.dtype) -> tuple[Any, Any] | None:
    try:
        from transformers import ZayaConfig
        from transformers.models.zaya.modeling_zaya import ZayaAttention, ZayaRotaryEmbedding
    except Exception:  # transformers without ZAYA: skip that column
        return None
    cfg = ZayaConfig(
        hidden_size=sh.hidden, num_attention_heads=sh.hq, num_key_value_heads=sh.hk, head_dim=sh.d,
        num_hidden_layers=1, cca_time0=sh.t0, cca_time1=sh.t1,
    )
    cfg._attn_implementation = "sdpa"
    attn = ZayaAttention(cfg, 0).to(dev, dtype).eval()
    return attn, ZayaRotaryEmbedding(cfg).to(dev)


@torch.no_grad()
def time_prefill(
    sh: Shape, T: int, dev: torch.device, gen: torch.Generator, timer: Timer, bf: torch.dtype = torch.bfloat16
) -> dict[str, float]:
    E = sh.hidden

    def w(i: int, o: int) -> Tensor:
        return (torch.randn(i, o, generator=gen) * i**-0.5).to(dev, bf)

    x = torch.randn(T, E, generator=gen).to(dev, bf)
    w_cca, w_o = w(E, sh.proj_width), w(sh.hq * sh.d, E)
    w_mha, w_mo = w(E, 3 * E), w(E, E)
    p = _params(sh, bf, dev, gen)
    cu = torch.tensor([0, T], dtype=torch.int32, device=dev)
    pos = torch.arange(T, device=dev)
    split = [sh.hq * sh.d, sh.hk * sh.d, sh.vh, sh.vh]

    def cca_layer() -> Tensor:
        out = cca_prefill(*(x @ w_cca).split(split, dim=1), cu, pos, p)
        o = F.scaled_dot_product_attention(
            out.q.transpose(0, 1)[None], out.k.transpose(0, 1)[None], out.v.transpose(0, 1)[None],
            is_causal=True, enable_gqa=True,
        )
        return o[0].transpose(0, 1).reshape(T, -1) @ w_o

    proj = (x @ w_cca).split(split, dim=1)
    nh = E // sh.d

    def mha_layer() -> Tensor:
        q, k, v = (x @ w_mha).view(T, 3, nh, sh.d).permute(1, 2, 0, 3).unbind(0)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)
        return o[0].transpose(0, 1).reshape(T, E) @ w_mo

    qg = torch.randn(1, sh.hq, T, sh.d, generator=gen).to(dev, bf)
    kg, vg = (torch.randn(1, sh.hk, T, sh.d, generator=gen).to(dev, bf) for _ in range(2))
    qm, km, vm = (torch.randn(1, nh, T, sh.d, generator=gen).to(dev, bf) for _ in range(3))
    res = {
        "cca_layer": timer(cca_layer),
        "cca_kernel": timer(lambda: cca_prefill(*proj, cu, pos, p)),
        "mha_layer": timer(mha_layer),
        "sdpa_gqa_core": timer(lambda: F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=True)),
        "sdpa_mha_core": timer(lambda: F.scaled_dot_product_attention(qm, km, vm, is_causal=True)),
    }
    if T <= 4096:  # per-sequence PyTorch ops; slow but bounded
        res["cca_reference"] = timer(lambda: cca_prefill_ref(*proj, cu, pos, p))
    hf = _hf_layer(sh, dev, bf)
    if hf is not None:
        attn, rotary = hf
        cos, sin = rotary(x[None], pos[None], "hybrid")
        res["hf_zaya_layer"] = timer(lambda: attn(x[None], attention_mask=None, past_key_values=None, position_embeddings=(cos, sin)))
    return res


@torch.no_grad()
def time_decode(
    sh: Shape, B: int, ctx: int, dev: torch.device, gen: torch.Generator, timer: Timer, bf: torch.dtype = torch.bfloat16
) -> dict[str, float]:
    E = sh.hidden

    def w(i: int, o: int) -> Tensor:
        return (torch.randn(i, o, generator=gen) * i**-0.5).to(dev, bf)

    x = torch.randn(B, E, generator=gen).to(dev, bf)
    w_cca, w_o, w_mha, w_mo = w(E, sh.proj_width), w(sh.hq * sh.d, E), w(E, 3 * E), w(E, E)
    p = _params(sh, bf, dev, gen)
    split = [sh.hq * sh.d, sh.hk * sh.d, sh.vh, sh.vh]
    conv = torch.randn(B, sh.s, sh.c, generator=gen).to(dev, bf)
    vst = torch.randn(B, sh.vh, generator=gen).to(dev, bf)
    slots = torch.arange(B, dtype=torch.int32, device=dev)
    pos = torch.full((B,), ctx, device=dev)
    proj = [t.contiguous() for t in (x @ w_cca).split(split, dim=1)]
    kc, vc = (torch.randn(B, sh.hk, ctx, sh.d, generator=gen).to(dev, bf) for _ in range(2))
    nh = E // sh.d
    kmc, vmc = (torch.randn(B, nh, ctx, sh.d, generator=gen).to(dev, bf) for _ in range(2))

    def cca_step() -> Tensor:
        out = cca_decode(*(x @ w_cca).split(split, dim=1), pos, p, conv, vst, slots)
        o = F.scaled_dot_product_attention(out.q[:, :, None], kc, vc, enable_gqa=True)
        return o.reshape(B, -1) @ w_o

    def mha_step() -> Tensor:
        q = (x @ w_mha)[:, :E].view(B, nh, 1, sh.d)
        o = F.scaled_dot_product_attention(q, kmc, vmc)
        return o.reshape(B, E) @ w_mo

    conv_r, vst_r = conv.clone(), vst.clone()
    return {
        "cca_decode_kernel": timer(lambda: cca_decode(*proj, pos, p, conv, vst, slots)),
        "cca_decode_reference": timer(lambda: cca_decode_ref(*proj, pos, p, conv_r, vst_r, slots)),
        "cca_layer_step": timer(cca_step),
        "mha_layer_step": timer(mha_step),
    }


def kv_bytes(sh: Shape) -> dict[str, int]:
    mha = 2 * sh.hidden * 2  # K and V, 16 x 128 heads, bf16
    cca = 2 * sh.hk * sh.d * 2
    return {
        "cca_kv_bytes_per_token_layer": cca,
        "mha_kv_bytes_per_token_layer": mha,
        "kv_reduction": mha // cca,
        "cca_state_bytes_per_request_layer": 2 * (sh.s * sh.c + sh.vh),
    }


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "-")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="correctness only, tiny shapes (runs on CPU via the interpreter)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--ctx", type=int, default=4096, help="KV tokens per request in the decode layer step")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (triton interpreter)"}

    checks = check_correctness(TINY, [1, 5, 17], 3, dev)
    if not args.smoke:
        checks += check_correctness(ZAYA1_8B, [1, 37, 300, 1000], 64, dev)
    report["correctness"] = checks
    worst = max(c["rel_err"] for c in checks if "bfloat16" in c["dtype"])
    worst32 = max(c["rel_err"] for c in checks if "float32" in c["dtype"])
    print(f"correctness: ok ({len(checks)} checks; worst rel err fp32 {worst32:.2g}, bf16 {worst:.2g})")
    if args.smoke:
        # Tiny fp32 shapes, one call per timed function: proves the timing code runs, measures
        # nothing (fp32 because first bf16 calls on a CPU pay seconds of oneDNN setup).
        sh, timer, tokens, batches, ctx, dtype = TINY, once_ms, [24], [3], 16, torch.float32
    elif dev.type != "cuda":
        print("no CUDA device: timings skipped (use --smoke to exercise them on tiny shapes)")
        _write(report)
        return 0
    else:
        sh, timer, tokens, batches, ctx, dtype = ZAYA1_8B, do_bench_ms, args.tokens, args.batches, args.ctx, torch.bfloat16
    report["smoke"] = args.smoke

    name = report["device"]
    gen = torch.Generator().manual_seed(0)
    prefill_rows = []
    for T in tokens:
        r = {"tokens": T, **time_prefill(sh, T, dev, gen, timer, dtype)}
        fl, at = prefill_floors(sh, T, name), attention_floors(T, sh.hq, sh.hk, sh.d, name)
        r["kernel_floor_ms"] = max(fl["flop_floor_us"], fl["byte_floor_us"]) / 1e3
        r["gqa_core_floor_ms"] = max(at["flop_floor_us"], at["byte_floor_us"]) / 1e3
        r["cca_layer_vs_mha_layer"] = r["cca_layer"] / r["mha_layer"]
        r["floors"] = {"cca_prefill": fl, "sdpa_gqa": at, "sdpa_mha": attention_floors(T, 16, 16, sh.d, name)}
        prefill_rows.append(r)
    decode_rows = []
    for B in batches:
        r = {"batch": B, "ctx": ctx, **time_decode(sh, B, ctx, dev, gen, timer, dtype)}
        fl = decode_floors(sh, B, name)
        r["kernel_floor_ms"] = max(fl["flop_floor_us"], fl["byte_floor_us"]) / 1e3
        r["floors"] = {"cca_decode": fl}
        decode_rows.append(r)
    report.update(prefill=prefill_rows, decode=decode_rows, kv=kv_bytes(sh))

    what = "SMOKE (tiny shapes, one wall-clock call: not a measurement)" if args.smoke else "ZAYA1-8B attention shape"
    print(f"\n## CCA prefill, {what}, {dtype}, {name} (ms, do_bench median)\n")
    print(_table(prefill_rows, [
        "tokens", "cca_layer", "mha_layer", "cca_layer_vs_mha_layer", "cca_kernel", "kernel_floor_ms",
        "cca_reference", "sdpa_gqa_core", "gqa_core_floor_ms", "sdpa_mha_core", "hf_zaya_layer",
    ]))
    print(f"\n## CCA decode step per layer (ms), ctx {ctx}\n")
    print(_table(decode_rows, [
        "batch", "cca_decode_kernel", "kernel_floor_ms", "cca_decode_reference", "cca_layer_step", "mha_layer_step",
    ]))
    print("\n## Floors (FLOP / byte, us)\n")
    floor_rows = [{"kernel": f"{k} T={r['tokens']}", **v} for r in prefill_rows for k, v in r["floors"].items()]
    floor_rows += [{"kernel": f"cca_decode B={r['batch']}", **r["floors"]["cca_decode"]} for r in decode_rows]
    print(_table(floor_rows, ["kernel", "gflop", "mbytes", "flop_floor_us", "byte_floor_us"]))
    kv = report["kv"]
    print(
        f"\nKV bytes per token per layer: CCA {kv['cca_kv_bytes_per_token_layer']} vs MHA "
        f"{kv['mha_kv_bytes_per_token_layer']} ({kv['kv_reduction']}x less); CCA state per request per layer "
        f"{kv['cca_state_bytes_per_request_layer']} B"
    )
    _write(report)
    return 0


def _write(report: dict[str, Any]) -> None:
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "cca_bench.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
