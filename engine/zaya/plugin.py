"""vLLM general plugin: makes ``ZayaForCausalLM`` checkpoints loadable by vLLM.

Installed as the ``vllm.general_plugins`` entry point ``zaya`` (pyproject.toml), so vLLM calls
:func:`register` in every process it starts (API front end, engine core, workers) before it
resolves the architecture. Registration is lazy ("module:Class"), so nothing here imports torch
model code until vLLM actually builds a ZAYA model.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

ARCHITECTURE = "ZayaForCausalLM"


def register() -> None:
    """Idempotent (vLLM may call it several times per process). A failure here is logged, not
    raised: vLLM does not guard general plugins, and serving other models must keep working."""
    try:
        from vllm import ModelRegistry
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP

        if ARCHITECTURE not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(ARCHITECTURE, "mrsa.engine.zaya.model:ZayaForCausalLM")
        MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, _config_hook())
    except Exception:
        log.exception("could not register the ZAYA model with vLLM")


def _config_hook() -> type:
    """The per-architecture config hook vLLM runs before it sizes caches and graphs.

    - Prefix caching off: vLLM's hybrid prefix caching ("align" mode) needs every stateful layer
      to checkpoint its state at block boundaries; the CCA layer keeps one state slot per request.
    - Eager execution: the MoE dispatch and the CCA reference path are data-dependent Python
      (host syncs), which neither torch.compile nor CUDA-graph capture may contain.
    """
    from vllm.model_executor.models.config import VerifyAndUpdateConfig

    class ZayaVerifyAndUpdateConfig(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config) -> None:  # type: ignore[no-untyped-def]
            cache = vllm_config.cache_config
            if cache.enable_prefix_caching:
                log.info("ZAYA: disabling prefix caching (CCA state has one slot per request)")
                cache.enable_prefix_caching = False
            model = vllm_config.model_config
            if model is not None and not model.enforce_eager:
                log.info("ZAYA: enforcing eager execution (no torch.compile / CUDA graphs)")
                model.enforce_eager = True
            if vllm_config.parallel_config.tensor_parallel_size != 1:
                raise ValueError(
                    "ZAYA's CCA layer is not split across tensor-parallel ranks; use "
                    "tensor_parallel_size=1 and data-parallel replicas instead"
                )
            if vllm_config.num_speculative_tokens:
                raise ValueError("ZAYA: speculative decoding is not supported by the CCA layer")

    return ZayaVerifyAndUpdateConfig
