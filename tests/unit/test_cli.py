"""`mrsa serve`'s flags come from Settings: the long dotted ones and the vLLM-style shortcuts."""

from __future__ import annotations

import pytest

from mrsa.cli import SHORT_FLAGS, build_parser, settings_from

# A value for every shortcut, and what Settings must then hold at its dotted path.
VALUES = {
    "engine.model": ("some/model", "some/model"),
    "engine.served_model_name": ("alias", ["alias"]),
    "engine.max_model_len": ("2048", 2048),
    "engine.dtype": ("float32", "float32"),
    "engine.gpu_memory_utilization": ("0.2", 0.2),
    "engine.cpu_kvcache_space_gib": ("2", 2.0),
    "engine.cca_ops": ("reference", "reference"),
    "engine.tool_call_parser": ("hermes", "hermes"),
    "engine.enable_auto_tool_choice": (None, True),  # a switch: no value
    "engine.reasoning_parser": ("qwen3", "qwen3"),
    "engine.upstreams": ("http://10.0.0.5:8000", ["http://10.0.0.5:8000"]),
}


def _settings(*argv: str):
    return settings_from(build_parser().parse_args(["serve", *argv]))


def _at(settings, path: str):
    value = settings
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_every_shortcut_has_a_case_here() -> None:
    assert set(VALUES) == set(SHORT_FLAGS)


@pytest.mark.parametrize("path", sorted(SHORT_FLAGS))
def test_each_shortcut_sets_its_setting(path: str) -> None:
    given, expected = VALUES[path]
    value = () if given is None else (given,)
    assert _at(_settings(f"--{SHORT_FLAGS[path]}", *value), path) == expected
    assert _at(_settings(f"--{path.replace('_', '-')}", *value), path) == expected  # the long form


def test_several_served_names_and_upstreams() -> None:
    settings = _settings("--served-model-name", "a", "--served-model-name", "b", "--upstream", "http://x", "--upstream", "http://y")
    assert settings.engine.served_model_name == ["a", "b"] and settings.engine.upstreams == ["http://x", "http://y"]


def test_a_flag_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRSA_ENGINE__MAX_MODEL_LEN", "1024")
    monkeypatch.setenv("MRSA_RSA__POPULATION", "6")
    assert _settings().engine.max_model_len == 1024 and _settings().rsa.population == 6
    assert _settings("--max-model-len", "2048").engine.max_model_len == 2048


def test_a_bad_server_default_stops_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRSA_RSA__SELECTION", "bogus")
    with pytest.raises(SystemExit, match="selection"):
        _settings()
