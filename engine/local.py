"""The embedded engine: vLLM V1's ``AsyncLLM`` in this process.

One vLLM request per trace, each with its own seed: a seeded request with ``n > 1`` crashes
vLLM's CPU sampler, and one request per trace is what lets the RSA dataflow schedule start and
abort traces independently anyway. Outputs are requested as deltas so the service can stream
the final answer's tokens as they are generated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from mrsa.engine import lifetime
from mrsa.engine.base import AsyncCloseable, EngineError, GenerationDelta, SamplingParams
from mrsa.engine.config import CCA_OPS_ENV, ZAYA_IMPL_ENV, EngineConfig
from mrsa.engine.openai_layer import VllmOpenAI
from mrsa.engine.parsers import ModelParsers, model_parsers, with_model_parsers
from mrsa.engine.reasoning import reasoning_parsers
from mrsa.engine.tokenizer import HFTokenizer

log = logging.getLogger(__name__)


def resolve_model(config: EngineConfig, cache_dir: Path | str | None = None) -> tuple[str, str]:
    """The checkpoint to load and the name to serve it under.

    Unset: the provisioned default model. A built-in model's name (``Qwen2.5-Coder-0.5B-Instruct``)
    that is not also a local folder: that model, provisioned. Anything else goes to vLLM as given
    (a folder or a hub id) and is served under what the user passed, as ``vllm serve`` does.
    """
    from mrsa.engine.provision import DEFAULT_MODEL, ensure_model, lookup

    packaged = lookup(config.model or DEFAULT_MODEL)
    if packaged is not None and not (config.model and Path(config.model).exists()):
        return str(ensure_model(packaged, cache_dir)), packaged.name
    assert config.model is not None
    return config.model, config.model


def default_parsers(config: EngineConfig, checkpoint: str) -> ModelParsers:
    """The parsers the model being served needs (engine/parsers.py): a built-in model's from
    its catalog entry, any other checkpoint's from its architecture."""
    from mrsa.engine.provision import DEFAULT_MODEL, lookup

    packaged = lookup(config.model or DEFAULT_MODEL)
    if packaged is not None and not (config.model and Path(config.model).exists()):
        return model_parsers(checkpoint, ModelParsers(packaged.tool_call_parser, packaged.reasoning_parser))
    return model_parsers(checkpoint)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): its ``/proc/cpuinfo``
    flags (``cpuinfo``: that file's text, read when not given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def device_defaults(config: EngineConfig, *, cpu: bool, native_bf16: bool) -> dict:
    """The engine arguments that follow the device where ``config`` leaves them unset.

    A CPU host wants a small context, a modest share of memory and no graph capture (seconds to
    start); a GPU the model's own context, 0.9 of its memory and CUDA graphs. ``dtype="auto"``
    on a CPU without bf16 instructions is float32: vLLM's own "auto" downcasts float32
    checkpoints to bf16 there, which such a CPU emulates (measured 4x slower on an AVX2 host).
    Explicit settings win on either device."""
    dtype = config.dtype
    if cpu and dtype == "auto" and not native_bf16:
        dtype = "float32"
    return {
        "dtype": dtype,
        "max_model_len": config.max_model_len or (4096 if cpu else None),
        "gpu_memory_utilization": config.gpu_memory_utilization or (0.35 if cpu else 0.9),
        "enforce_eager": config.enforce_eager if config.enforce_eager is not None else cpu,
    }


class LocalEngine(AsyncCloseable):
    """vLLM ``AsyncLLM`` implementing :class:`engine.base.Engine`."""

    def __init__(self, config: EngineConfig, cache_dir: Path | str | None = None) -> None:
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        from mrsa.engine.zaya.plugin import register as register_zaya

        model, name = resolve_model(config, cache_dir)
        config = with_model_parsers(config, default_parsers(config, model))
        self.served_names = list(config.served_model_name or [name])
        self.model_name = self.served_names[0]
        cpu = current_platform.is_cpu()
        device = device_defaults(config, cpu=cpu, native_bf16=cpu and cpu_has_native_bf16())
        max_model_len = device["max_model_len"]
        scheduling: dict = {}
        if cpu:
            # After a partial (chunked) prefill vLLM rewinds the request's seeded generator,
            # which a CPU generator cannot do ("CPU Generator does not use offset"): the engine
            # died as soon as concurrent seeded prompts overflowed one step's token budget, and
            # every RSA trace is seeded. Whole prompts only, as vLLM itself does for MLA on CPU.
            scheduling = {
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(max_model_len or 8192, 2048),
            }
            # Read by the engine-core process: the KV cache size, and how many cores it leaves
            # to the front end (vLLM keeps one by default; on 2 cores that halves the engine).
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{config.cpu_kvcache_space_gib:g}"
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(config.cpu_reserved_cores)
        # Read by the ZAYA plugin in the engine's worker processes (engine/zaya/state.py, plugin.py).
        os.environ[CCA_OPS_ENV] = config.cca_ops
        os.environ[ZAYA_IMPL_ENV] = config.zaya_impl
        register_zaya()  # this process too: the `zaya` parsers where vLLM lacks them, before they are looked up
        if config.cca_ops == "triton" and not current_platform.is_cuda_alike():
            os.environ["TRITON_INTERPRET"] = "1"
        args = AsyncEngineArgs(
            model=model,
            served_model_name=self.served_names,
            **device,
            max_num_seqs=config.max_num_seqs,
            seed=config.seed,
            disable_log_stats=True,
            reasoning_parser=config.reasoning_parser or "",
            **scheduling,
        )
        lifetime.end_leftovers(cache_dir)  # a crashed server's engine must not stay beside this one
        log.info("starting vLLM engine for %s", model)
        self._llm = AsyncLLM.from_engine_args(args)
        self._cache_dir = cache_dir
        lifetime.record(cache_dir)  # the next start ends these processes if this server is killed
        self.max_model_len: int = self._llm.model_config.max_model_len
        self.tokenizer = HFTokenizer(model)
        self.reasoning_parser = reasoning_parsers(config.reasoning_parser, self.tokenizer)
        self.openai = VllmOpenAI(self._llm, model, self.served_names, config)

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        sampling = VllmSamplingParams(
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            stop=list(params.stop) or None,
            ignore_eos=params.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        try:
            # vLLM's generator aborts the request itself when closed or cancelled.
            async for out in self._llm.generate(prompt, sampling, request_id):
                choice = out.outputs[0]
                yield GenerationDelta(
                    token_ids=list(choice.token_ids),
                    text=choice.text,
                    finished=out.finished,
                    finish_reason=_finish_reason(choice.finish_reason) if out.finished else None,
                    prompt_tokens=len(out.prompt_token_ids or ()),
                    cached_tokens=out.num_cached_tokens or 0,  # vLLM's prefix-cache hits
                )
        except (ValueError, TypeError) as exc:  # vLLM's request validation
            raise EngineError(str(exc)) from exc

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def num_in_flight(self) -> int:
        return self._llm.get_num_unfinished_requests()

    async def check_health(self) -> None:
        await self._llm.check_health()

    async def aclose(self) -> None:
        """Stop vLLM's engine core and its workers. Idempotent."""
        # Drop our reference too: AsyncLLM.__del__ shuts down again, and at interpreter exit
        # (module globals already gone) that second call raises a noisy TypeError.
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
            lifetime.forget(self._cache_dir)


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "abort") else "stop"
