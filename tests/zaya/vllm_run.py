"""Run the tiny ZAYA checkpoint through a real vLLM engine and dump what the tests compare.

    python -m tests.zaya.vllm_run CHECKPOINT OUT.json [auto|triton|reference]

Its own process, so the engine's threads, memory and environment stay out of pytest. The engine
core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so its KV-cache config can be
read. ``max_num_batched_tokens`` is small on purpose: longer prompts are prefilled in chunks,
interleaved with other requests' decode steps.

The third argument picks the CCA ops (``MRSA_CCA_OPS``). ``triton`` runs the fused kernels
inside the engine through Triton's interpreter (the path CUDA hosts take, on the CPU), with every
kernel output buffer NaN-filled first, so an element a kernel fails to write shows up as NaN.

Output JSON:
- ``logits``: per prompt, ``[L][V]`` raw logits at every prompt position (position i predicts
  token i+1; the last row is the first generated step's), from ``prompt_logprobs`` and
  ``logprobs`` with ``logprobs_mode="raw_logits"`` over the full vocabulary;
- ``greedy``: per prompt, 32 greedily decoded tokens, all prompts submitted together;
- ``kv_groups``: the engine's KV-cache groups (spec type, fields, page bytes, layer names);
- ``cca_ops``: the modules of the (prefill, decode) functions the model ran, and how many
  forward steps asked for them.
"""

from __future__ import annotations

import json
import os
import sys

LOGIT_PROMPTS_SEED = 1
MAX_NUM_BATCHED_TOKENS = 32
GREEDY_TOKENS = 32


def prompts(vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    """(logit prompts, greedy prompts): fixed token ids of different lengths (some longer than
    one scheduler step, so chunked)."""
    import random

    rnd = random.Random(LOGIT_PROMPTS_SEED)
    body = lambda n: [rnd.randrange(8, vocab) for _ in range(n)]  # noqa: E731 - no specials
    return [body(n) for n in (1, 5, 19, 47, 90)], [body(n) for n in (3, 11, 26, 40, 71, 2)]


def poison_kernel_outputs() -> None:
    """Every output buffer the Triton kernels allocate starts as NaN."""
    import torch

    from mrsa.kernels.cca import _args

    _args.empty = lambda shape, dtype, device: torch.full(shape, float("nan"), dtype=dtype, device=device)


def main(model: str, out: str, ops: str = "auto") -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from mrsa.engine.config import CCA_OPS_ENV

    os.environ[CCA_OPS_ENV] = ops
    if ops == "triton":
        os.environ["TRITON_INTERPRET"] = "1"  # before kernels.cca is imported
        poison_kernel_outputs()
    import torch
    from vllm import LLM, SamplingParams

    from mrsa.engine.zaya import state

    llm = LLM(
        model=model,
        dtype="float32",
        max_model_len=256,
        max_num_seqs=8,
        max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
        enable_chunked_prefill=True,
        gpu_memory_utilization=0.1,
        enforce_eager=True,
        seed=0,
        logprobs_mode="raw_logits",
        max_logprobs=-1,
    )
    vocab = llm.llm_engine.model_config.get_vocab_size()
    logit_prompts, greedy_prompts = prompts(vocab)

    def full_row(entry: dict) -> list[float]:
        row = [float("nan")] * vocab
        for tok, lp in entry.items():
            row[tok] = lp.logprob
        return row

    res = llm.generate(
        [{"prompt_token_ids": p} for p in logit_prompts],
        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=-1, logprobs=-1),
    )
    logits = []
    for r in res:
        rows = [full_row(e) for e in (r.prompt_logprobs or [])[1:]]
        rows.append(full_row(r.outputs[0].logprobs[0]))
        logits.append(rows)

    res = llm.generate(
        [{"prompt_token_ids": p} for p in greedy_prompts],
        SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0, ignore_eos=True),
    )
    greedy = [list(r.outputs[0].token_ids) for r in res]

    groups = []
    core = llm.llm_engine.engine_core.engine_core
    for g in core.scheduler.kv_cache_config.kv_cache_groups:
        spec = g.kv_cache_spec
        fields = {
            k: getattr(spec, k)
            for k in ("block_size", "num_kv_heads", "head_size", "shapes", "page_size_padded")
            if hasattr(spec, k)
        }
        groups.append(
            {
                "type": type(spec).__name__,
                "dtype": str(getattr(spec, "dtype", getattr(spec, "dtypes", ""))),
                "page_size_bytes": spec.page_size_bytes,
                "layer_names": list(g.layer_names),
                **fields,
            }
        )
    calls = state._ops.cache_info().hits + state._ops.cache_info().misses
    used = state.cca_ops(torch.device("cpu"))
    with open(out, "w") as f:
        json.dump(
            {
                "cca_ops": {"modules": [fn.__module__ for fn in used], "calls": calls},
                "vocab": vocab,
                "logit_prompts": logit_prompts,
                "logits": logits,
                "greedy_prompts": greedy_prompts,
                "greedy": greedy,
                "kv_groups": groups,
            },
            f,
        )


if __name__ == "__main__":
    main(*sys.argv[1:4])
