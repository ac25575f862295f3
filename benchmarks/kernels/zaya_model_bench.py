#!/usr/bin/env python
"""Benchmark the whole ZAYA1-8B-shaped model with random weights (GPU; torch + triton, no vLLM).

    python benchmarks/kernels/zaya_model_bench.py            # one H100: prefill and decode tokens/s, bf16
    python benchmarks/kernels/zaya_model_bench.py --smoke    # anywhere: tiny shape, fp32, checks + every path

The model is engine/zaya's math without vLLM: embedding, 40 layers of [RMSNorm -> CCA attention
-> residual scaling -> RMSNorm -> router + top-1 MoE (16 experts + skip) -> residual scaling],
final norm and tied LM head (engine/zaya/moe.py and norm.py are used as they are). Only the CCA
q/k/v step differs between the two variants compared:

* ``kernels``: the fused Triton ``cca_prefill`` / ``cca_decode`` (what the vLLM plugin runs on CUDA);
* ``reference``: ``cca_prefill_ref`` / ``cca_decode_ref`` (plain PyTorch, a Python loop per sequence).

Attention is torch SDPA (causal GQA) over a dense per-request KV cache, standing in for vLLM's
paged attention. Weights are random (std 0.02, router biases random so experts and skip are
used), bf16: about 17 GB. Timed: prefill of ``--batch`` sequences of ``--prompt`` tokens
(tokens/s over the whole forward incl. LM head on the last token), then ``--steps`` greedy decode
steps for the batch (tokens/s = batch / median step time). ``--smoke`` also checks that both
variants give the same logits. Prints a markdown table; writes JSON to $OUT/zaya_model_bench.json
when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels

from torch import Tensor, nn

from mrsa.engine.zaya.moe import ZayaSparseMoeBlock
from mrsa.engine.zaya.norm import ZayaResidualScaling, ZayaRMSNorm
from mrsa.kernels.cca.decode import cca_decode
from mrsa.kernels.cca.prefill import cca_prefill
from mrsa.kernels.cca.reference import CCAParams, cca_decode_ref, cca_prefill_ref, rope_cos_sin_cache

OPS = {"kernels": (cca_prefill, cca_decode), "reference": (cca_prefill_ref, cca_decode_ref)}


@dataclass(frozen=True)
class Shape:
    """The ZayaConfig fields the model needs (defaults: ZAYA1-8B)."""

    vocab_size: int = 262272
    hidden_size: int = 2048
    num_hidden_layers: int = 40
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 128
    cca_time0: int = 2
    cca_time1: int = 2
    num_experts: int = 16
    num_experts_per_tok: int = 1
    moe_intermediate_size: int = 2048
    router_hidden_size: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 5e6
    partial_rotary_factor: float = 0.5


SMOKE = Shape(vocab_size=300, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_experts=4, moe_intermediate_size=64, router_hidden_size=32)


class Attn(nn.Module):
    """CCA attention with a dense KV cache ``[slots, max_len, Hk, d]``."""

    def __init__(self, s: Shape, cos_sin: Tensor) -> None:
        super().__init__()
        d, hq, hk = s.head_dim, s.num_attention_heads, s.num_key_value_heads
        self.sizes = (hq * d, hk * d, hk * d // 2, hk * d // 2)
        c = (hq + hk) * d
        self.in_proj = nn.Parameter(torch.empty(sum(self.sizes), s.hidden_size))
        self.o_proj = nn.Parameter(torch.empty(s.hidden_size, hq * d))
        self.p = CCAParams(
            conv_dw_weight=nn.Parameter(torch.empty(c, 1, s.cca_time0)),
            conv_dw_bias=nn.Parameter(torch.empty(c)),
            conv_g_weight=nn.Parameter(torch.empty(c, d, s.cca_time1)),
            conv_g_bias=nn.Parameter(torch.empty(c)),
            key_temp=nn.Parameter(torch.empty(hk)),
            cos_sin_cache=cos_sin,
        )
        for i, t in enumerate((self.p.conv_dw_weight, self.p.conv_dw_bias, self.p.conv_g_weight, self.p.conv_g_bias, self.p.key_temp)):
            self.register_parameter(f"cca{i}", t)
        self.hq, self.hk, self.d = hq, hk, d
        self.cache: dict[str, Tensor] = {}

    def alloc(self, slots: int, max_len: int, s: Shape, dtype: torch.dtype, device: torch.device) -> None:
        st = (s.cca_time0 - 1) + (s.cca_time1 - 1)
        self.cache = {
            "k": torch.zeros(slots, max_len, self.hk, self.d, dtype=dtype, device=device),
            "v": torch.zeros(slots, max_len, self.hk, self.d, dtype=dtype, device=device),
            "conv": torch.zeros(slots, st, (self.hq + self.hk) * self.d, dtype=dtype, device=device),
            "vs": torch.zeros(slots, self.hk * self.d // 2, dtype=dtype, device=device),
        }

    def prefill(self, x: Tensor, b: int, n: int, impl: str) -> Tensor:
        """``b`` sequences of ``n`` tokens packed in ``x [b*n, E]``, slots 0..b-1."""
        pre = F.linear(x, self.in_proj).split(self.sizes, dim=-1)
        cu = torch.arange(0, (b + 1) * n, n, dtype=torch.int32, device=x.device)
        pos = torch.arange(n, device=x.device).repeat(b)
        out = OPS[impl][0](*pre, cu, pos, self.p)
        c = self.cache
        c["conv"][:b], c["vs"][:b] = out.conv_state, out.v_state
        k, v = out.k.view(b, n, self.hk, self.d), out.v.view(b, n, self.hk, self.d)
        c["k"][:b, :n], c["v"][:b, :n] = k, v
        q = out.q.view(b, n, self.hq, self.d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True)
        return F.linear(o.transpose(1, 2).reshape(b * n, -1), self.o_proj)

    def decode(self, x: Tensor, pos: int, impl: str) -> Tensor:
        """One token per slot 0..B-1 at position ``pos`` (all requests equally long)."""
        b = x.shape[0]
        pre = F.linear(x, self.in_proj).split(self.sizes, dim=-1)
        positions = torch.full((b,), pos, device=x.device, dtype=torch.long)
        slots = torch.arange(b, device=x.device, dtype=torch.int32)
        c = self.cache
        out = OPS[impl][1](*pre, positions, self.p, c["conv"], c["vs"], slots)
        c["k"][:b, pos], c["v"][:b, pos] = out.k, out.v
        q = out.q.view(b, 1, self.hq, self.d).transpose(1, 2)
        k, v = c["k"][:b, : pos + 1].transpose(1, 2), c["v"][:b, : pos + 1].transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return F.linear(o.transpose(1, 2).reshape(b, -1), self.o_proj)


class Layer(nn.Module):
    def __init__(self, s: Shape, i: int, cos_sin: Tensor) -> None:
        super().__init__()
        self.attn = Attn(s, cos_sin)
        self.mlp = ZayaSparseMoeBlock(s, i)
        self.n1, self.n2 = ZayaRMSNorm(s.hidden_size, s.rms_norm_eps), ZayaRMSNorm(s.hidden_size, s.rms_norm_eps)
        self.r1, self.r2 = ZayaResidualScaling(s.hidden_size), ZayaResidualScaling(s.hidden_size)

    def forward(self, residual: Tensor, router: Tensor | None, attn: Any) -> tuple[Tensor, Tensor]:
        dt = self.n1.weight.dtype
        residual = self.r1(attn(self.attn, self.n1(residual.to(dt))), residual)
        x, router = self.mlp(self.n2(residual.to(dt)), router)
        return self.r2(x, residual), router


class Model(nn.Module):
    def __init__(self, s: Shape, max_len: int) -> None:
        super().__init__()
        rd = int(s.head_dim * s.partial_rotary_factor)
        cos_sin = rope_cos_sin_cache(rd, s.rope_theta, max_len)
        self.embed = nn.Parameter(torch.empty(s.vocab_size, s.hidden_size))
        self.in_scale, self.in_bias = nn.Parameter(torch.empty(s.hidden_size)), nn.Parameter(torch.empty(s.hidden_size))
        self.layers = nn.ModuleList(Layer(s, i, cos_sin) for i in range(s.num_hidden_layers))
        self.norm = ZayaRMSNorm(s.hidden_size, s.rms_norm_eps)

    def run(self, ids: Tensor, attn: Any, last_rows: Tensor) -> Tensor:
        x = F.embedding(ids, self.embed)
        residual = ((x + self.in_bias) * self.in_scale).to(torch.float32)
        router = None
        for layer in self.layers:
            residual, router = layer(residual, router, attn)
        h = self.norm(residual[last_rows].to(self.norm.weight.dtype))
        return F.linear(h, self.embed)  # tied LM head


def build(s: Shape, max_len: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    with torch.device(device):
        m = Model(s, max_len)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("scale", "norm.weight", "n1.weight", "n2.weight")) or name.endswith("in_scale"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("cca4"):  # key temperature
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.5 if ".cca" in name else 0.02 if s.hidden_size > 512 else 0.2)
        for name, b in m.named_buffers():
            if name.endswith("balancing_biases"):
                b.normal_(0.0, 0.1)
    m = m.to(dtype)
    for layer in m.layers:
        layer.mlp.gate.balancing_biases.data = layer.mlp.gate.balancing_biases.float()
        layer.attn.p.cos_sin_cache.data = layer.attn.p.cos_sin_cache.float()
    return m.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bench(m: Model, s: Shape, impl: str, batch: int, prompt: int, steps: int, reps: int, device: torch.device) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, s.vocab_size, (batch * prompt,), generator=gen).to(device)
    last = torch.arange(prompt - 1, batch * prompt, prompt, device=device)
    for layer in m.layers:
        layer.attn.alloc(batch, prompt + steps + 1, s, m.embed.dtype, device)

    def prefill() -> Tensor:
        return m.run(ids, lambda a, x: a.prefill(x, batch, prompt, impl), last)

    times = []
    for _ in range(reps + 1):  # the first is warm-up (Triton compiles)
        _sync(device)
        t = time.perf_counter()
        logits = prefill()
        _sync(device)
        times.append(time.perf_counter() - t)
    prefill_s = statistics.median(times[1:])
    first_logits = logits.float().cpu()
    tok = logits.argmax(-1)
    step_times, decode_logits = [], []
    rows = torch.arange(batch, device=device)
    for i in range(steps):
        _sync(device)
        t = time.perf_counter()
        logits = m.run(tok, lambda a, x, p=prompt + i: a.decode(x, p, impl), rows)
        tok = logits.argmax(-1)
        _sync(device)
        step_times.append(time.perf_counter() - t)
        decode_logits.append(logits.float().cpu())
    step_s = statistics.median(step_times[1:] if len(step_times) > 1 else step_times)
    return {
        "impl": impl,
        "batch": batch,
        "prompt": prompt,
        "prefill_s": prefill_s,
        "prefill_tok_s": batch * prompt / prefill_s,
        "decode_step_s": step_s,
        "decode_tok_s": batch / step_s,
        "_logits": [first_logits, *decode_logits],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shape in fp32, both variants checked equal (CPU ok)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--impl", choices=["both", "kernels", "reference"], default="both")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        shape, dtype = SMOKE, torch.float32
        batches, prompt, steps, reps = [2], 9, 3, 1
    else:
        if device.type != "cuda":
            print("no CUDA device: the full-size benchmark needs a GPU (use --smoke here)")
            return 2
        shape, dtype = Shape(), torch.bfloat16
        batches, prompt, steps, reps = args.batch, args.prompt, args.steps, args.reps
    impls = ["kernels", "reference"] if args.impl == "both" else [args.impl]
    m = build(shape, prompt + steps + 1, dtype, device)
    n_params = sum(p.numel() for p in m.parameters())
    results = []
    for b in batches:
        for impl in impls:
            results.append(bench(m, shape, impl, b, prompt, steps, reps, device))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.smoke and len(impls) == 2:
        worst = 0.0
        for a, r in zip(results[0]["_logits"], results[1]["_logits"]):
            worst = max(worst, ((a - r).norm() / r.norm()).item())
        if not worst < 1e-4:
            raise SystemExit(f"kernels and reference disagree: rel. error {worst:.2e}")
        print(f"kernels vs reference logits (prefill + each decode step): max rel. error {worst:.1e}")
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"ZAYA model benchmark: {n_params / 1e9:.2f}B params, {dtype}, {dev}, prompt {prompt}, {steps} decode steps")
    print("| batch | CCA impl | prefill tok/s | decode tok/s | decode step ms |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['batch']} | {r['impl']} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {1e3 * r['decode_step_s']:.2f} |")
    out = os.environ.get("OUT")
    if out:
        rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        Path(out, "zaya_model_bench.json").write_text(
            json.dumps({"device": dev, "dtype": str(dtype), "params": n_params, "results": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
