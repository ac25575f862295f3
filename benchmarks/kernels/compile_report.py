"""Registers, spills and shared memory of every CCA kernel variant, compiled for GPUs on a CPU host.

    python -m benchmarks.kernels.compile_report                  # engine variants, sm_80 + sm_90
    python -m benchmarks.kernels.compile_report --all            # every variant (bias-free ones too)
    python -m benchmarks.kernels.compile_report --label before --out docs/bench/x.json

Compiles each variant (kernels/cca/variants.py) at ZAYA1-8B's and the tiny test model's geometry
with Triton's own pipeline down to a cubin (kernels/cca/aot.py) and reads ptxas's ``-v`` figures:
registers per thread, spill store/load bytes, stack frame; shared memory comes from Triton's
metadata. Writes JSON (default docs/bench/cca-compile-<date>.json) and prints a markdown table.
Spills cost speed on the device: the goal is 0 bytes for the default bf16 variants at sm_90.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch
import triton
from transformers import ZayaConfig

from mrsa.engine.zaya.tiny import CONFIG as TINY_CONFIG
from mrsa.kernels.cca.aot import ARCHS, Job, Result, compile_all
from mrsa.kernels.cca.variants import Geometry, Variant, engine_variant, geometries_of, variants

ROOT = Path(__file__).resolve().parents[2]


def geometries() -> dict[str, list[Geometry]]:
    return {"zaya1-8b": geometries_of(ZayaConfig()), "tiny": geometries_of(ZayaConfig(**TINY_CONFIG))}


def default_variant(v: Variant) -> bool:
    """What serving a ZAYA model in bf16 runs: prefill (with or without states) and decode."""
    return engine_variant(v) and v.dtype == torch.bfloat16


def machine() -> dict[str, object]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", lscpu)
    flags = re.search(r"Flags:\s*(.+)", lscpu)
    fl = set(flags[1].split()) if flags else set()
    return {
        "host": platform.node(),
        "cpu": model[1].strip() if model else platform.processor(),
        "cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in fl,
        "amx": any(f.startswith("amx") for f in fl),
    }


def ptxas_versions() -> dict[str, str]:
    """The bundled ptxas Triton runs per target (the legacy one below sm_90)."""
    from triton.backends.nvidia.compiler import get_ptxas

    out = {}
    for arch in ARCHS:
        text = subprocess.run([get_ptxas(arch).path, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release [\d.]+, V[\d.]+", text)
        out[f"sm_{arch}"] = f"{Path(get_ptxas(arch).path).name} {m[0] if m else text.strip()}"
    return out


def row(name: str, r: Result) -> dict[str, object]:
    v = r.job.variant
    return {
        "geometry": name, "kind": v.kind, "dtype": str(v.dtype).removeprefix("torch."), "arch": f"sm_{r.job.arch}",
        "has_init": v.has_init, "has_dw_bias": v.has_dw_bias, "has_g_bias": v.has_g_bias,
        "default": default_variant(v), "block_rows": r.block_rows, "num_warps": r.num_warps,
        "num_stages": r.num_stages, "registers": r.registers, "spill_stores": r.spill_stores,
        "spill_loads": r.spill_loads, "stack": r.stack, "shared": r.shared, "error": r.error,
    }


def table(rows: list[dict[str, object]]) -> str:
    head = "| geometry | kernel | dtype | arch | init | rows | warps | regs | spill st/ld (B) | stack (B) | smem (B) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        kind = r["kind"]
        init = "-" if r["kind"] == "decode" else ("yes" if r["has_init"] else "no")
        figures = "ERROR" if r["error"] else f"{r['spill_stores']}/{r['spill_loads']}"
        lines.append(
            f"| {r['geometry']} | {kind}{' *' if r['default'] else ''} | {r['dtype']} | {r['arch']} | {init} | "
            f"{r['block_rows']} | {r['num_warps']} | {r['registers']} | {figures} | {r['stack']} | {r['shared']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="bias-free variants too (the kernel API takes them; the engine never launches them)")
    ap.add_argument("--default-only", action="store_true", help="only the default bf16 variants (quick tuning loop)")
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--geometry", nargs="+", choices=["zaya1-8b", "tiny"], default=["zaya1-8b", "tiny"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--label", default="", help="a note stored with the figures (e.g. before/after a change)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default docs/bench/cca-compile-<date>.json)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    named: list[tuple[str, Job]] = []
    for name, geoms in geometries().items():
        if name not in args.geometry:
            continue
        for g in geoms:
            for v in variants(g):
                if (args.all or engine_variant(v)) and (not args.default_only or default_variant(v)):
                    named += [(name, Job(v, arch)) for arch in args.arch]
    t0 = time.monotonic()
    results = compile_all([j for _, j in named], args.workers, fresh=True)
    seconds = time.monotonic() - t0
    rows = [row(name, r) for (name, _), r in zip(named, results)]
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {
        "what": "CCA Triton kernels compiled ahead of time for GPU targets on a CPU-only host (no GPU); ptxas -v figures",
        "label": args.label,
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "ptxas": ptxas_versions(),
        "compile_seconds": round(seconds, 1),
        "variants": rows,
    }
    print(table(rows))
    print(f"\n{len(rows)} compiles in {seconds:.0f} s; * = default bf16 variant")
    errors = [r for r in rows if r["error"]]
    for r in errors:
        print(f"ERROR {r['geometry']} {r['kind']} {r['dtype']} {r['arch']}: {r['error']}")
    if not args.no_write:
        out = args.out or ROOT / "docs" / "bench" / f"cca-compile-{now:%Y%m%d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
