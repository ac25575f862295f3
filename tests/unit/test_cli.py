"""`mrsa serve`'s flags come from Settings: the long dotted ones and the vLLM-style shortcuts;
`mrsa eval`, `mrsa calibrate` and `mrsa bench` take its engine flags, spelled and read as serve's."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mrsa.cli import SHORT_FLAGS, build_parser, settings_from
from mrsa.engine.config import EngineConfig

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


# ------------------------------------------------ the engine commands: serve's engine flags


def _subparser(name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _bench_parser() -> argparse.ArgumentParser:
    from benchmarks.run import build_parser as bench_parser

    return bench_parser()


def _engine_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Each engine setting's flags in ``parser``, by its dotted path."""
    return {a.dest: set(a.option_strings) for a in parser._actions if a.dest.startswith("engine.")}


@pytest.mark.parametrize("command", ["eval", "calibrate", "bench"])
def test_every_engine_setting_is_a_flag_of_the_engine_commands_as_serve_spells_it(command: str) -> None:
    parser = _bench_parser() if command == "bench" else _subparser(command)
    serve, own = _engine_options(_subparser("serve")), _engine_options(parser)
    assert {f"engine.{name}" for name in EngineConfig.model_fields} <= set(serve)
    for name in EngineConfig.model_fields:
        assert own[f"engine.{name}"] == serve[f"engine.{name}"], name
    for flags in own.values():  # serve's spelling and help: the same action, field by field
        (action,) = [a for a in parser._actions if set(a.option_strings) == flags]
        (served,) = [a for a in _subparser("serve")._actions if set(a.option_strings) == flags]
        assert (action.help, action.metavar) == (served.help, served.metavar)


@pytest.mark.parametrize("command", ["eval", "calibrate"])
def test_the_engine_flags_and_variables_reach_the_embedded_engine(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    import mrsa.engine as engine_pkg
    from mrsa.cli import main
    from tests.fakes import FakeEngine

    seen: list = []

    def create_engine(config, cache_dir=None):
        seen.append((config, cache_dir))
        return FakeEngine(delay=0.0)

    monkeypatch.setattr(engine_pkg, "create_engine", create_engine)
    monkeypatch.setenv("MRSA_ENGINE__GPU_MEMORY_UTILIZATION", "0.2")
    monkeypatch.setenv("MRSA_ENGINE__MAX_MODEL_LEN", "1024")
    engine_flags = ["--model", "some/model", "--max-model-len", "2048", "--dtype", "float32",
                    "--engine.max-num-seqs", "8", "--cache-dir", str(tmp_path / "cache")]
    if command == "eval":
        argv = ["eval", "--size", "2", "--config", "single", "--out", str(tmp_path / "out"), *engine_flags]
    else:
        data = tmp_path / "data.jsonl"
        data.write_text('{"question": "What is 40 + 2?", "answer": "42"}\n')
        argv = ["calibrate", "--dataset", str(data), "--size", "1", "--levels", "2", "--reference", "vote@2",
                "--run", "rsa:n=2,k=2,t=1", "--out", str(tmp_path / "out"), *engine_flags]
    assert main(argv) == 0
    ((config, cache_dir),) = seen
    assert (config.model, config.max_model_len, config.dtype, config.max_num_seqs) == ("some/model", 2048, "float32", 8)
    assert config.gpu_memory_utilization == 0.2  # a variable the flags leave alone
    assert cache_dir == tmp_path / "cache"


def test_with_url_the_model_asked_for_is_the_flag_not_the_servers_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """MRSA_ENGINE__MODEL configures an engine started here; a running service names its own."""
    from mrsa.cli import engine_from, model_flag

    monkeypatch.setenv("MRSA_ENGINE__MODEL", "/checkpoints/model")
    args = build_parser().parse_args(["eval", "--url", "http://127.0.0.1:8000"])
    assert engine_from(args).engine.model == "/checkpoints/model" and model_flag(args) is None
    args = build_parser().parse_args(["eval", "--url", "http://127.0.0.1:8000", "--model", "served"])
    assert model_flag(args) == "served"


def test_a_bad_engine_flag_stops_the_command() -> None:
    from mrsa.cli import engine_from

    with pytest.raises(SystemExit, match="max_model_len"):
        engine_from(build_parser().parse_args(["eval", "--max-model-len", "8"]))
