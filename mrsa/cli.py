"""``mrsa``: serve the API, ask it a question with live progress, provision the model, bench, eval.

Flags override ``MRSA_*`` environment variables, which override the defaults in
service/settings.py.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any


# vLLM's names for the engine flags users type most; every other setting is --group.field.
SHORT_FLAGS = {
    "engine.model": "model",
    "engine.served_model_name": "served-model-name",
    "engine.max_model_len": "max-model-len",
    "engine.dtype": "dtype",
    "engine.gpu_memory_utilization": "gpu-memory-utilization",
    "engine.cpu_kvcache_space_gib": "cpu-kvcache-space",
    "engine.cca_ops": "cca-ops",
    "engine.tool_call_parser": "tool-call-parser",
    "engine.enable_auto_tool_choice": "enable-auto-tool-choice",
    "engine.reasoning_parser": "reasoning-parser",
    "engine.upstreams": "upstream",
}


def _flags(model: type, parser: argparse.ArgumentParser, prog: str) -> Any:
    """Every field of the settings ``model`` as a flag of ``parser`` (pydantic-settings' CLI
    source): dotted names for groups (``--engine.max-model-len``), SHORT_FLAGS beside them."""
    from pydantic_settings import CliSettingsSource

    return CliSettingsSource(model, root_parser=parser, cli_kebab_case=True, cli_implicit_flags=True,
                             # with kebab-case flags, pydantic-settings matches shortcut keys in kebab case
                             cli_shortcuts={k.replace("_", "-"): v for k, v in SHORT_FLAGS.items()},
                             cli_prog_name=prog)


def _settings_flags(parser: argparse.ArgumentParser) -> Any:
    """Every field of Settings as a flag of ``parser``."""
    from mrsa.service.settings import Settings

    return _flags(Settings, parser, "mrsa serve")


@functools.cache
def engine_settings() -> type:
    """Settings' engine group and ``cache_dir`` alone, read as ``mrsa serve`` reads them (the
    same fields, ``MRSA_*`` variables and flags): what a command that starts an engine of its
    own (eval, calibrate, bench) is configured with. Its other settings are the server's."""
    from pydantic_settings import BaseSettings

    from mrsa.engine.config import EngineConfig
    from mrsa.service.settings import Settings

    class EngineSettings(BaseSettings):
        model_config = Settings.model_config
        engine: EngineConfig = Settings.model_fields["engine"]
        cache_dir: Path = Settings.model_fields["cache_dir"]

    return EngineSettings


def engine_flags(parser: argparse.ArgumentParser, prog: str) -> None:
    """The engine group (and ``--cache-dir``) as flags of ``parser``, spelled, typed, defaulted
    and documented as ``mrsa serve``'s: :func:`engine_from` reads them back."""
    parser.set_defaults(engine_source=_flags(engine_settings(), parser, prog))


def engine_from(args: argparse.Namespace) -> Any:
    """The engine settings of a command built by :func:`engine_flags`: its flags, then
    ``MRSA_ENGINE__*`` and ``MRSA_CACHE_DIR``, then the defaults; exits on an invalid value."""
    from pydantic import ValidationError

    try:
        return engine_settings()(_cli_settings_source=args.engine_source(parsed_args=args))
    except ValidationError as exc:
        raise SystemExit(f"mrsa: invalid engine settings:\n{exc}") from None


def model_flag(args: argparse.Namespace) -> str | None:
    """``--model`` as given on the command line, not from ``MRSA_ENGINE__MODEL``: the model a
    command asks a running service (``--url``) for, whose own variables are not this one's."""
    return args.engine_source(parsed_args=args)().get("engine", {}).get("model")


def settings_from(args: argparse.Namespace) -> Any:
    """Settings from parsed flags, then ``MRSA_*``, then defaults; exits on an invalid value."""
    from pydantic import ValidationError

    from mrsa.service.settings import Settings

    try:
        return Settings(_cli_settings_source=args.settings_source(parsed_args=args))
    except ValidationError as exc:
        raise SystemExit(f"mrsa: invalid settings:\n{exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from mrsa.service import logs
    from mrsa.service.app import create_app

    settings = settings_from(args)
    if settings.store_path is None:
        settings = settings.model_copy(update={"store_path": settings.default_store_path()})
    logs.setup(settings.log_level, settings.log_format)
    serve_app(create_app(settings), settings)
    return 0


def serve_app(app: Any, settings: Any) -> None:
    """Serve ``app`` as ``mrsa serve`` does (tests serve the fake engine's app through it too):
    uvicorn with the connection guard of service/connections.py, and a stop that ends open
    requests at once (service/shutdown.py) and exits within ``shutdown_grace_s`` plus the
    engine's own shutdown."""
    import threading

    import uvicorn

    from mrsa.service.connections import fitting_connections, guarded_protocol

    http = settings.http
    max_connections = fitting_connections(http.max_connections)
    if max_connections < http.max_connections:
        logging.getLogger("mrsa.serve").info(
            "max_connections lowered to %d to fit the open-file limit", max_connections)
    drain = app.state.drain
    grace = settings.shutdown_grace_s

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if not drain.started:
                drain.begin()
                # Last resort: a stop that hangs (an engine that does not shut down) still exits;
                # the engine's processes die with this one (engine/lifetime.py).
                backstop = threading.Timer(grace + 60, _exit_now, args=(grace + 60,))
                backstop.daemon = True
                backstop.start()

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers propagate to the JSON handler of mrsa.service.logs
        http=guarded_protocol(http.request_read_timeout_s, max_connections),
        timeout_keep_alive=http.keep_alive_s,
        h11_max_incomplete_event_size=http.max_header_bytes,
        backlog=http.backlog,
        timeout_graceful_shutdown=grace,  # type: ignore[arg-type]  # a float works (asyncio.timeout)
    )
    Server(config).run()


def _exit_now(after_s: float) -> None:
    logging.getLogger("mrsa.serve").error("shutdown still running after %gs; exiting", after_s)
    logging.shutdown()
    os._exit(1)


def _provision(args: argparse.Namespace) -> int:
    from mrsa.engine.provision import CATALOG, ensure_model, lookup
    from mrsa.service.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = Settings(**({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    name = args.model or settings.engine.model
    if name and lookup(name) is None:
        raise SystemExit(f"mrsa provision: {name!r} is not a built-in model ({', '.join(CATALOG)})")
    print(ensure_model(lookup(name) if name else None, settings.cache_dir))
    return 0


def _ask(args: argparse.Namespace) -> int:
    from mrsa.service.ask import ask

    rsa = {
        k: v
        for k, v in {
            "population": args.population,
            "k": args.k,
            "rounds": args.rounds,
            "tail_tokens": args.tail_tokens,
            "trace_max_tokens": args.trace_max_tokens,
            "budget_tokens": args.budget_tokens,
            "selection": args.selection,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    return ask(args.url, args.question, rsa, model=args.model, api_key=args.api_key)


def _bench(args: argparse.Namespace) -> int:
    """Benchmarks are not shipped in the package: they run from a source checkout."""
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "run.py").is_file():
        raise SystemExit("mrsa bench runs from a source checkout of markovian-rsa (benchmarks/ is not installed)")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    import importlib

    # Benchmarks with flags of their own (mrsa bench NAME --help); the rest is benchmarks/run.py.
    own = {"load": "benchmarks.load", "plain": "benchmarks.plain_vs_vllm", "engine": "benchmarks.engine_speed",
           "effort": "benchmarks.effort", "chaos": "benchmarks.chaos", "replica-chaos": "benchmarks.replica_chaos"}
    which = args.bench_args[0] if args.bench_args else None
    if which in own:
        return importlib.import_module(own[which]).main(args.bench_args[1:])
    from benchmarks.run import main as bench_main

    return bench_main(args.bench_args)


def _eval(args: argparse.Namespace) -> int:
    import signal

    from mrsa.evals.cli import main as eval_main
    from mrsa.service.settings import Settings

    # SIGTERM ends an evaluation as Ctrl-C does: asyncio cancels it, so the embedded engine is
    # closed and its processes end with it (Python's default would exit and leave them running).
    # A shell starts background jobs with SIGINT ignored, and asyncio only takes over a SIGINT
    # left at Python's default: restore that first, or the relayed signal is dropped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    settings = engine_from(args)  # as mrsa serve's: flags, then MRSA_ENGINE__* and MRSA_CACHE_DIR
    try:
        return eval_main(args, settings.engine, settings.cache_dir, model=model_flag(args))
    except KeyboardInterrupt:
        print("mrsa eval: interrupted; results.json holds the problems done so far", file=sys.stderr)
        return 130


def _calibrate(args: argparse.Namespace) -> int:
    import signal

    from rich.console import Console
    from rich.table import Table

    from mrsa.evals.calibrate import main as calibrate_main
    from mrsa.service.presets import load_presets

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as _eval: SIGTERM closes the engine
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    settings = engine_from(args)
    try:
        calibration = calibrate_main(args, settings.engine, settings.cache_dir, model=model_flag(args))
    except KeyboardInterrupt:
        print("mrsa calibrate: interrupted; --resume continues from what --out holds", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        raise SystemExit(f"mrsa calibrate: {exc}") from None
    presets = args.presets or os.path.join(args.out, "presets.json")
    load_presets(presets)  # what mrsa serve --presets will read: fails here, not at serve time
    table = Table(title=f"effort levels on {calibration['meta']['problems']} problems "
                  f"(against {calibration['meta']['reference']})")
    for column in ("level", "method", "accuracy", "tokens", "diff [95% CI]"):
        table.add_column(column)
    for level, c in calibration["efforts"].items():
        v = c["vs_reference"]
        table.add_row(level, c["name"], f"{c['accuracy']:.3f}", f"{c['tokens_mean']:.0f}",
                      f"{v['diff']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]")
    Console().print(table)
    print(f"presets: {presets}\ncalibration: {os.path.join(args.out, 'calibration.json')}")
    return 0


ENGINE_COMMAND = ("Without --url it runs its own engine, set up as mrsa serve's: the engine flags (below) and "
                  "MRSA_ENGINE__* variables, a flag winning over its variable.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrsa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", help="serve the OpenAI-compatible API",
        description="Every setting is a flag (below) and an MRSA_* variable; a flag wins over its variable.",
    )
    serve.set_defaults(func=_serve, settings_source=_settings_flags(serve))

    ask = sub.add_parser("ask", help="run one RSA query against a running server, live")
    ask.add_argument("question")
    ask.add_argument("--url", default="http://127.0.0.1:8000")
    ask.add_argument("--api-key", help="bearer token, when the server requires keys")
    ask.add_argument("--model", help="default: the server's only model")
    ask.add_argument("--population", "-n", type=int)
    ask.add_argument("--k", "-k", type=int)
    ask.add_argument("--rounds", "-t", type=int)
    ask.add_argument("--tail-tokens", type=int)
    ask.add_argument("--trace-max-tokens", type=int)
    ask.add_argument("--budget-tokens", type=int)
    ask.add_argument("--selection", choices=["aggregate", "majority", "auto"])
    ask.add_argument("--seed", type=int)
    ask.set_defaults(func=_ask)

    prov = sub.add_parser("provision", help="download, convert and cache a built-in model (default: the default model)")
    prov.add_argument("--model", help="a built-in model's name (default: the default model)")
    prov.add_argument("--cache-dir")
    prov.set_defaults(func=_provision)

    bench = sub.add_parser(
        "bench", help="benchmarks (from a checkout): P1 HTTP overhead, P3 dataflow vs rounds; "
        "`bench load`: concurrent clients; `bench engine`: engine tok/s per dtype and CPU reserve; "
        "`bench plain`: plain requests here vs vllm serve; `bench chaos`: kill -9 and restarts under load; "
        "`bench replica-chaos`: the same on two API replicas over one PostgreSQL store"
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_bench)

    from mrsa.evals.cli import add_arguments as eval_arguments

    evaluate = sub.add_parser(
        "eval", help="accuracy of single sample, majority vote and RSA on a dataset",
        description=f"{ENGINE_COMMAND} --model names the served model to ask --url for (default: its only one).",
    )
    eval_arguments(evaluate)
    engine_flags(evaluate, "mrsa eval")
    evaluate.set_defaults(func=_eval)

    from mrsa.evals.calibrate import add_arguments as calibrate_arguments

    calibrate = sub.add_parser(
        "calibrate", help="measure accuracy against tokens of vote, adaptive vote and RSA on a model; "
        "write the effort presets mrsa serve loads (--presets)",
        description=f"{ENGINE_COMMAND} --model names the served model to ask --url for (default: its only one).",
    )
    calibrate_arguments(calibrate)
    engine_flags(calibrate, "mrsa calibrate")
    calibrate.set_defaults(func=_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
