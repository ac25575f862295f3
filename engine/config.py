"""Engine settings: what the embedded vLLM engine is started with.

Plain pydantic so service/settings.py can nest it (env vars ``MRSA_ENGINE__*``) without
service/ importing vLLM.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

CcaOps = Literal["auto", "triton", "reference"]
"""Which CCA q/k/v step a ZAYA model runs: ``auto`` (Triton on CUDA, the reference elsewhere),
``triton`` (the fused kernels) or ``reference`` (their PyTorch reference)."""

ZayaImpl = Literal["auto", "upstream", "plugin"]
"""Which ZAYA model vLLM builds: ``upstream`` (vLLM's own, from 0.34: CCA state in the hybrid
cache, prefix caching and CUDA graphs), ``plugin`` (engine/zaya: our CCA kernels, eager, no
prefix caching) or ``auto`` (upstream where vLLM has ZAYA, else ours)."""

ZAYA_IMPL_ENV = "MRSA_ZAYA_IMPL"
"""How ``EngineConfig.zaya_impl`` reaches the plugin in vLLM's processes (engine/zaya/plugin.py)."""

CCA_OPS_ENV = "MRSA_CCA_OPS"
"""How ``EngineConfig.cca_ops`` reaches the ZAYA plugin in vLLM's worker processes (and how a
plain ``vllm serve`` with the plugin is told)."""


class EngineConfig(BaseModel):
    model: str | None = Field(
        None, description="HF checkpoint folder or hub id; unset = the provisioned default model."
    )
    served_model_name: list[str] | None = Field(
        None,
        description="Names clients may use in `model`, the first one reported (default: the model "
        "as given, as vllm serve does; a built-in model's name; the replicas' model).",
    )
    dtype: str = Field(
        "auto",
        description="vLLM's --dtype; auto on a CPU without bf16 instructions means float32.",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (default: 4096 on a CPU, the model's own on a GPU)."
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vLLM's share of device memory, on the CPU of NUMA node 0's memory "
        "(default: 0.9 on a GPU, 0.35 on a CPU).",
    )
    cpu_kvcache_space_gib: float = Field(
        1.0, gt=0, description="KV cache size on CPU hosts; sets VLLM_CPU_KVCACHE_SPACE (this setting wins)."
    )
    cpu_reserved_cores: int = Field(
        0,
        ge=0,
        description="Cores vLLM's CPU backend keeps for the front end (VLLM_CPU_NUM_OF_RESERVED_CPU); "
        "0 gives the engine every core (measured 1.6-1.8x faster on 2 cores).",
    )
    max_num_seqs: int = Field(256, ge=1, description="Sequences batched together per step.")
    enforce_eager: bool | None = Field(
        None, description="Skip graph capture (default: on a CPU, for a fast start; off on a GPU)."
    )
    seed: int = Field(0, description="Engine seed; every trace also carries its own seed.")
    tool_call_parser: str | None = Field(
        None, description="vLLM's --tool-call-parser for plain requests' tool calls (e.g. hermes; default: the "
        "model's own, hermes for the built-in Qwen models, zaya for ZAYA; an empty value: none)."
    )
    enable_auto_tool_choice: bool = Field(
        False, description="vLLM's --enable-auto-tool-choice: loads the tool-call parser (vLLM 0.32 uses it only "
        "then, for every tool_choice). Unset, it is on where the tool-call parser is the model's own."
    )
    reasoning_parser: str | None = Field(
        None, description="vLLM's --reasoning-parser (e.g. qwen3): a reasoning model's thinking goes to "
        "`reasoning` (default: the model's own, zaya for ZAYA; an empty value: none)."
    )
    zaya_impl: ZayaImpl = Field(
        "auto",
        description="ZAYA models: vLLM's own model (upstream, vLLM >= 0.34) or this project's plugin "
        "(plugin: the CCA kernels, eager, no prefix caching); auto: upstream where vLLM has it.",
    )
    cca_ops: CcaOps = Field(
        "auto",
        description="ZAYA models' CCA q/k/v step: the Triton kernels (auto: on CUDA) or the "
        "PyTorch reference (auto: elsewhere). triton on a CPU runs Triton's interpreter (tests).",
    )

    # Remote replicas (engine/remote/): set `upstreams` to serve through OpenAI-compatible
    # vLLM servers instead of an embedded engine.
    upstreams: list[str] = Field(
        default_factory=list,
        description="Base URLs of vLLM servers (e.g. http://10.0.0.5:8000); set = remote engine.",
    )
    upstream_connect_timeout_s: float = Field(3.0, gt=0, description="TCP connect timeout.")
    upstream_read_timeout_s: float = Field(
        120.0, gt=0, description="Longest silence between two streamed chunks of a request."
    )
    upstream_attempts: int = Field(
        4, ge=1, description="Failed attempts in a row (no token gained) before a request fails."
    )
    upstream_retry_deadline_s: float = Field(
        30.0, gt=0, description="Time spent retrying since the last token before a request fails."
    )
    upstream_backoff_s: float = Field(0.1, ge=0, description="First retry backoff (full jitter).")
    upstream_backoff_max_s: float = Field(2.0, ge=0, description="Largest retry backoff.")
    upstream_retry_after_max_s: float = Field(10.0, ge=0, description="Cap on a 429's Retry-After.")
    upstream_health_interval_s: float = Field(2.0, gt=0, description="Health probe period.")
    upstream_eject_after: int = Field(
        2, ge=1, description="Consecutive failures (probes or requests) that eject a replica."
    )
    upstream_max_connections: int = Field(512, ge=1, description="HTTP connection pool size.")
