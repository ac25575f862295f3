"""Compile CCA kernel variants ahead of time for a GPU target, on a machine without one.

Triton compiles for any ``GPUTarget`` on a CPU host, through its bundled ptxas down to a cubin, so
every compile error a CUDA host would hit at engine start shows up here; ptxas's ``-v`` log (which
Triton writes when ``TRITON_DUMP_PTXAS_LOG`` is set) gives registers, spill bytes and the stack.
The kernels must be real ``JITFunction``s, so this runs in fresh processes without
``TRITON_INTERPRET`` (the kernel tests set it before importing the kernels):

    python -m mrsa.kernels.cca.aot < jobs.json > results.json     # one worker; see compile_all

The argument types are the ones the engine passes: activations and weights in the variant's
dtype, int32 ``cu_seqlens`` and slot indices, int64 positions, an fp32 cos/sin table; pointers and
row strides specialised as 16-divisible, as Triton's launcher does for them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from mrsa.kernels.cca.variants import Geometry, Variant, launch

ARCHS = (80, 90)  # Ampere (A100) and Hopper (H100/H200)

_TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_POINTER_TYPES = {"cu_ptr": "i32", "slot_ptr": "i32", "pos_ptr": "i64", "cs_ptr": "fp32"}
_FLOAT_ARGS = {"head_scale", "norm_eps"}
# Row strides: a multiple of 16 elements for any head_dim the kernels take.
_STRIDE_ARGS = {"sq", "sk", "svc", "svd", "init_conv_sb", "init_conv_ss", "init_v_sb", "conv_sb", "conv_ss", "v_sb"}


@dataclass(frozen=True)
class Job:
    variant: Variant
    arch: int


@dataclass
class Result:
    job: Job
    error: str | None = None
    registers: int | None = None
    spill_stores: int | None = None  # bytes
    spill_loads: int | None = None
    stack: int | None = None  # bytes of stack frame
    shared: int | None = None  # bytes of shared memory (Triton's metadata)
    num_warps: int = 0
    num_stages: int = 0
    block_rows: int = 0


def _kernel(kind: str):  # type: ignore[no-untyped-def]
    from triton.runtime.jit import JITFunction

    from mrsa.kernels.cca import decode, prefill

    fn = prefill._cca_prefill_kernel if kind == "prefill" else decode._cca_decode_kernel
    if not isinstance(fn, JITFunction):
        raise RuntimeError("the CCA kernels were imported under TRITON_INTERPRET; compile in a fresh process without it")
    return fn


def _ptxas_figures(log: str) -> dict[str, int]:
    out: dict[str, int] = {}
    if m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log):
        out.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
    if m := re.search(r"Used (\d+) registers", log):
        out["registers"] = int(m[1])
    return out


def compile_one(job: Job) -> Result:
    """Compile one variant for ``sm_<arch>`` (in this process; kernels must not be interpreted)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    v = job.variant
    cfg = launch(v, "cuda")
    res = Result(job, num_warps=cfg.num_warps, num_stages=cfg.num_stages, block_rows=cfg.block_rows)
    fn = _kernel(v.kind)
    constexprs = dict(cfg.constexprs)
    signature: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            if p.name not in constexprs:
                raise RuntimeError(f"launch() sets no value for {v.kind} constexpr {p.name}")
            signature[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            signature[p.name] = "*" + _POINTER_TYPES.get(p.name, _TRITON_DTYPE[v.dtype])
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif p.name in _FLOAT_ARGS:
            signature[p.name] = "fp32"
        else:
            signature[p.name] = "i32"
            if p.name in _STRIDE_ARGS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    extra = set(constexprs) - {p.name for p in fn.params if p.is_constexpr}
    if extra:
        raise RuntimeError(f"launch() sets constexprs the {v.kind} kernel lacks: {sorted(extra)}")
    log = io.StringIO()
    try:
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            kernel = triton.compile(
                ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", job.arch, 32),
                options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
            )
    except Exception as e:  # noqa: BLE001 - any compiler failure is the finding
        chain, cause = [], e  # Triton wraps the root cause (e.g. a ValueError) in CompilationErrors
        while cause is not None and len(chain) < 8:
            chain.append(f"{type(cause).__name__}: {cause}"[-3000:])
            cause = cause.__cause__ or cause.__context__
        res.error = "\n-- caused by --\n".join(chain)
        return res
    res.shared = int(kernel.metadata.shared)
    if os.environ.get("MRSA_AOT_LOG"):  # debugging a variant: ptxas's log and the PTX
        sys.stderr.write(log.getvalue())
        sys.stderr.write(kernel.asm["ptx"])
    for k, val in _ptxas_figures(log.getvalue()).items():
        setattr(res, k, val)
    return res


# --- jobs as JSON, so worker processes can be plain subprocesses with an explicit environment ---

_DTYPES = {str(t): t for t in _TRITON_DTYPE}


def _job_to_json(job: Job) -> dict[str, object]:
    v = job.variant
    return {**dataclasses.asdict(v), "dtype": str(v.dtype), "arch": job.arch}


def _job_from_json(d: dict[str, object]) -> Job:
    d = dict(d)
    arch = int(d.pop("arch"))  # type: ignore[call-overload]
    geom = Geometry(**d.pop("geometry"))  # type: ignore[arg-type]
    dtype = _DTYPES[str(d.pop("dtype"))]
    return Job(Variant(geometry=geom, dtype=dtype, **d), arch)  # type: ignore[arg-type]


def _result_to_json(r: Result) -> dict[str, object]:
    return {**{f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "job"}, "job": _job_to_json(r.job)}


def compile_all(jobs: Iterable[Job], workers: int | None = None, *, fresh: bool = False, timeout: float = 3600) -> list[Result]:
    """Compile ``jobs`` in ``workers`` fresh Python processes (default: one per CPU), in order.

    ``fresh`` bypasses Triton's on-disk cache, so every job runs ptxas and reports its figures
    (a cached job compiles without a ptxas log: its register/spill fields stay None)."""
    jobs = list(jobs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, made explicit
    if fresh:
        env["TRITON_ALWAYS_COMPILE"] = "1"
    chunks = [jobs[i::workers] for i in range(workers)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mrsa.kernels.cca.aot"], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for _ in chunks
    ]
    with ThreadPoolExecutor(len(procs)) as pool:  # feed and drain every worker at once
        outs = list(pool.map(lambda pc: pc[0].communicate(json.dumps([_job_to_json(j) for j in pc[1]]), timeout=timeout), zip(procs, chunks)))
    results: dict[Job, Result] = {}
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"compile worker failed ({p.returncode}):\n{err[-4000:]}")
        for d in json.loads(out):
            job = _job_from_json(d.pop("job"))
            results[job] = Result(job, **d)
    return [results[j] for j in jobs]


def _main() -> None:
    jobs = [_job_from_json(d) for d in json.loads(sys.stdin.read())]
    results = [_result_to_json(compile_one(j)) for j in jobs]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    _main()
