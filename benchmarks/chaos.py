"""``mrsa bench chaos``: background runs and responses while the server is killed -9 and restarted.

On 127.0.0.1 only, bounded in count and time. ``--specs`` background RSA runs
(``POST /v1/rsa/runs``, two in three) and responses (``POST /v1/responses`` with
``background``), each with a fixed seed and a marker in its question, are submitted at once by
clients that retry (connection refused or cut, 429, 5xx) with the same ``Idempotency-Key``, then
follow their run's ``/events``, reconnecting with ``Last-Event-ID``. Meanwhile the server is
killed with SIGKILL ``--kills`` times at random moments and restarted on the same store. Before
that the same specs run on an uninterrupted server: the reference.

Reported: runs in the store, kills, lost (accepted, then absent), duplicated (more than one run
for a spec), stuck (not ended by the deadline), events after a terminal one, sequence gaps (in
what the followers saw and in a final replay), answers and usage (prompt and completion tokens)
against the reference, store size, and with ``--engine real`` the engine processes still alive
after each kill (waited for ``--orphan-wait-s``) and at the end. Goal: 0 lost, 0 duplicated, 0
stuck, 0 events after a terminal one, 0 gaps, usage and answers exact, 0 leftover engines.

``--engine fake`` (default) serves tests/fakes.py's engine through ``mrsa serve``'s own HTTP
stack (tests/fake_serve.py); ``--engine real`` runs ``mrsa serve`` with the small built-in model
and must hold the engine lock: ``flock /tmp/mrsa-engine.lock mrsa bench chaos --engine real``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.servers import cpu_description, free_port

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"run_completed", "run_failed", "run_cancelled"}
RETRY_STATUSES = {429, 500, 502, 503, 504}


@dataclass
class Spec:
    n: int
    kind: str  # "run" | "response"
    seed: int
    key: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex}")

    @property
    def marker(self) -> str:
        return f"[chaos spec {self.n}]"

    def request(self, model: str, rsa: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        question = f"{self.marker} A shop sells pens at 3 dollars each. How much do {self.n + 2} pens cost?"
        params = {**rsa, "seed": self.seed}
        if self.kind == "run":
            return "/v1/rsa/runs", {"model": model, "messages": [{"role": "user", "content": question}], "rsa": params}
        return "/v1/responses", {"model": model, "input": question, "background": True, "rsa": params}


@dataclass
class Outcome:
    spec: Spec
    run_id: str | None = None
    submits: int = 0
    conflicts: int = 0
    seqs: list[int] = field(default_factory=list)
    after_terminal: int = 0
    reconnects: int = 0
    terminal: str | None = None


# ------------------------------------------------------------------------------------ servers

class Server:
    """One server on a fixed port and store; started, killed and restarted by the benchmark."""

    def __init__(self, engine: str, port: int, store: Path, log: Path, args: argparse.Namespace) -> None:
        self.engine, self.port, self.store, self.log, self.args = engine, port, store, log, args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.model = "fake-model"

    def start(self) -> None:
        flags = ["--host", "127.0.0.1", "--port", str(self.port), "--store-path", str(self.store),
                 "--admission.max-queued-runs", "256", "--log-format", "text"]
        env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        if self.engine == "fake":
            cmd = [sys.executable, "-m", "tests.fake_serve", *flags]
            env.update({"FAKE_DELAY": str(self.args.fake_delay), "FAKE_LENGTH": "40"})
        else:
            from mrsa.engine.provision import SMALL_MODEL

            cmd = [sys.executable, "-m", "mrsa", "serve", *flags]
            env.update({"MRSA_ENGINE__MODEL": SMALL_MODEL, "MRSA_ENGINE__MAX_MODEL_LEN": "2048",
                        "MRSA_ENGINE__CPU_KVCACHE_SPACE_GIB": "1", "MRSA_ENGINE__DTYPE": "float32"})
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + (600 if self.engine == "real" else 60)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2)
                if r.status_code == 200:
                    self.model = r.json()["model"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start; see {self.log}")

    def engine_processes(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True) if self.proc else []
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> list[psutil.Process]:
        """SIGKILL the server process alone (as the OOM killer would); its engine processes."""
        assert self.proc is not None
        engine = self.engine_processes()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return engine

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def _wait_gone(procs: list[psutil.Process], bound_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + bound_s
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(procs)


# ------------------------------------------------------------------------------------ clients

def _submit(url: str, spec: Spec, model: str, rsa: dict, out: Outcome, deadline: float) -> None:
    path, body = spec.request(model, rsa)
    while time.monotonic() < deadline:
        out.submits += 1
        try:
            r = httpx.post(f"{url}{path}", json=body, headers={"Idempotency-Key": spec.key}, timeout=30)
        except httpx.HTTPError:
            time.sleep(random.uniform(0.2, 0.6))
            continue
        if r.status_code in (200, 202):
            out.run_id = r.json()["id"]
            return
        if r.status_code == 409:
            out.conflicts += 1
        if r.status_code in RETRY_STATUSES or r.status_code == 409:
            time.sleep(float(r.headers.get("retry-after", "0.5")))
            continue
        raise RuntimeError(f"spec {spec.n}: {r.status_code} {r.text[:300]}")


def _follow(url: str, out: Outcome, deadline: float) -> None:
    """Read the run's events to its terminal one, reconnecting with Last-Event-ID."""
    last: int | None = None
    while time.monotonic() < deadline and out.terminal is None:
        headers = {} if last is None else {"Last-Event-ID": str(last)}
        try:
            with httpx.stream("GET", f"{url}/v1/rsa/runs/{out.run_id}/events", headers=headers,
                              timeout=httpx.Timeout(30, read=40)) as stream:
                if stream.status_code != 200:
                    time.sleep(0.5)
                    continue
                seq: int | None = None
                for line in stream.iter_lines():
                    if line.startswith("id: "):
                        seq = int(line[4:])
                    elif line.startswith("data: ") and seq is not None:
                        event = json.loads(line[6:]).get("event")
                        out.seqs.append(seq)
                        last, seq = seq, None
                        if out.terminal is not None:
                            out.after_terminal += 1
                        elif event in TERMINAL:
                            out.terminal = event
        except (httpx.HTTPError, ValueError):
            pass
        if out.terminal is None:
            out.reconnects += 1
            time.sleep(random.uniform(0.2, 0.6))


def _client(url_of: Any, spec: Spec, rsa: dict, out: Outcome, deadline: float, start_after: float) -> None:
    time.sleep(start_after)
    _submit(url_of(), spec, url_of.model(), rsa, out, deadline)
    if out.run_id is not None:
        _follow(url_of(), out, deadline)


class UrlOf:
    def __init__(self, server: Server) -> None:
        self.server = server

    def __call__(self) -> str:
        return self.server.url

    def model(self) -> str:
        return self.server.model


def _run_clients(server: Server, specs: list[Spec], rsa: dict, deadline: float, spread_s: float) -> list[Outcome]:
    outcomes = [Outcome(s) for s in specs]
    threads = [threading.Thread(target=_client, daemon=True,
                                args=(UrlOf(server), o.spec, rsa, o, deadline, random.uniform(0, spread_s)))
               for o in outcomes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 60))
    return outcomes


# ------------------------------------------------------------------------------------ results

def _final(url: str, outcome: Outcome) -> dict[str, Any]:
    """The run's end as the API reports it, and a full replay of its events."""
    run = httpx.get(f"{url}/v1/rsa/runs/{outcome.run_id}", timeout=30)
    data: dict[str, Any] = {"status": None, "answer": None, "usage": None, "replay": [],
                            "run_status": run.json().get("status") if run.status_code == 200 else None}
    if outcome.spec.kind == "response":
        resp = httpx.get(f"{url}/v1/responses/{outcome.run_id}", timeout=30).json()
        data["status"] = resp.get("status")
        data["answer"] = (resp.get("rsa") or {}).get("answer")
        usage = resp.get("usage") or {}
        data["usage"] = [usage.get("input_tokens"), usage.get("output_tokens")]
    elif run.status_code == 200:
        body = run.json()
        data["status"] = body["status"]
        data["answer"] = ((body.get("result") or {}).get("rsa") or {}).get("answer")
        usage = body.get("usage") or {}
        data["usage"] = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    with httpx.stream("GET", f"{url}/v1/rsa/runs/{outcome.run_id}/events", timeout=60) as stream:
        seq = None
        for line in stream.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line.startswith("data: ") and seq is not None:
                data["replay"].append((seq, json.loads(line[6:]).get("event")))
                seq = None
    return data


def _store_runs(store: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT id, status, spec FROM runs"))


def _open_runs(store: Path) -> int:
    """Runs in the store not ended yet (what a kill cuts)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled')").fetchone()[0]
    except sqlite3.Error:
        return -1


def _store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.parent.glob(store.name + "*"))


def _gaps(seqs: list[int]) -> int:
    """Steps that are not +1 (a replayed event after a reconnect counts too)."""
    return sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b != a + 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    random.seed(args.seed)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rsa = {"population": args.population, "k": 2, "rounds": args.rounds,
           **({"trace_max_tokens": 48, "tail_tokens": 24} if args.engine == "real" else {})}
    specs = [Spec(n, "response" if n % 3 == 2 else "run", seed=1000 + n) for n in range(args.specs)]
    started = time.monotonic()

    # The reference: the same specs, one uninterrupted server.
    ref_server = Server(args.engine, free_port(), work / "reference.sqlite3", work / "reference.log", args)
    ref_server.start()
    try:
        ref = _run_clients(ref_server, specs, rsa, time.monotonic() + args.deadline_s, spread_s=0)
        reference = {o.spec.n: _final(ref_server.url, o) for o in ref if o.run_id}
    finally:
        ref_server.stop()

    # The chaos: the same specs again (new keys), the server killed and restarted meanwhile.
    for s in specs:
        s.key = f"chaos-{uuid.uuid4().hex}"
    server = Server(args.engine, free_port(), work / "chaos.sqlite3", work / "chaos.log", args)
    server.start()
    deadline = time.monotonic() + args.deadline_s
    kills: list[dict[str, Any]] = []
    killer_done = threading.Event()

    def killer() -> None:
        try:
            for _ in range(args.kills):
                time.sleep(random.uniform(args.kill_min_s, args.kill_max_s))
                open_runs = _open_runs(server.store)
                engine = server.kill()
                left = _wait_gone(engine, args.orphan_wait_s) if args.engine == "real" else []
                kills.append({"at_s": round(time.monotonic() - started, 1), "open_runs": open_runs,
                              "engine_processes": len(engine),
                              "left_after_wait": len(left)})
                for p in left:  # do not let one failure snowball into memory exhaustion
                    p.kill()
                server.start()
        finally:
            killer_done.set()

    killer_thread = threading.Thread(target=killer, daemon=True)
    killer_thread.start()
    outcomes = _run_clients(server, specs, rsa, deadline, spread_s=args.spread_s)
    killer_done.wait(max(1.0, deadline - time.monotonic() + 600))
    # Whatever is still open when the clients stop: give the last server the rest of the deadline.
    finals = {}
    for o in outcomes:
        if o.run_id is None:
            continue
        end = time.monotonic() + max(0.0, deadline - time.monotonic())
        while True:
            finals[o.spec.n] = _final(server.url, o)
            if finals[o.spec.n]["run_status"] in ("completed", "failed", "cancelled") or time.monotonic() >= end:
                break
            time.sleep(1)
    engine_at_end = server.engine_processes()
    server.stop()
    leftover_at_end = len(_wait_gone(engine_at_end, args.orphan_wait_s)) if args.engine == "real" else 0

    rows = _store_runs(server.store)
    per_spec = {s.n: [r for r in rows if s.marker in r[2]] for s in specs}
    lost = [o.spec.n for o in outcomes if o.run_id is not None and not any(r[0] == o.run_id for r in rows)]
    unsubmitted = [o.spec.n for o in outcomes if o.run_id is None]
    duplicated = sum(max(0, len(v) - 1) for v in per_spec.values())
    stuck = [r[0] for r in rows if r[1] not in ("completed", "failed", "cancelled")]
    after_terminal = sum(o.after_terminal for o in outcomes)
    replay_after_terminal = 0
    replay_gaps = 0
    for f in finals.values():
        events = [e for _, e in f["replay"]]
        ends = [i for i, e in enumerate(events) if e in TERMINAL]
        if ends:
            replay_after_terminal += len(events) - ends[0] - 1
        seqs = [s for s, _ in f["replay"]]
        replay_gaps += _gaps(seqs) + (1 if seqs and seqs[0] != 1 else 0)
    follower_gaps = sum(_gaps(o.seqs) for o in outcomes)
    answers_differ = [n for n, f in finals.items() if n in reference and f["answer"] != reference[n]["answer"]]
    usage_differ = [n for n, f in finals.items() if n in reference and f["usage"] != reference[n]["usage"]]
    statuses: dict[str, int] = {}
    for f in finals.values():
        statuses[str(f["run_status"])] = statuses.get(str(f["run_status"]), 0) + 1
    return {
        "benchmark": "chaos",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "cpu": cpu_description(),
        "engine": args.engine,
        "model": server.model,
        "config": {"specs": args.specs, "kills": args.kills, "population": args.population, "rounds": args.rounds,
                   "kill_every_s": [args.kill_min_s, args.kill_max_s], "deadline_s": args.deadline_s,
                   "seed": args.seed, **({"fake_delay_s": args.fake_delay} if args.engine == "fake" else {})},
        "reference_completed": sum(1 for f in reference.values() if f["run_status"] == "completed"),
        "runs_in_store": len(rows),
        "kills": len(kills),
        "kills_with_open_runs": sum(1 for k in kills if k["open_runs"] > 0),
        "statuses": statuses,
        "lost": len(lost),
        "unsubmitted": len(unsubmitted),
        "duplicated": duplicated,
        "stuck": len(stuck),
        "events_after_terminal": after_terminal + replay_after_terminal,
        "sequence_gaps": {"followers": follower_gaps, "replay": replay_gaps},
        "answers_differ": len(answers_differ),
        "usage_differ": len(usage_differ),
        "submit_attempts": sum(o.submits for o in outcomes),
        "idempotency_conflicts": sum(o.conflicts for o in outcomes),
        "follower_reconnects": sum(o.reconnects for o in outcomes),
        "store_bytes": _store_bytes(server.store),
        "leftover_engine_processes": {"after_kills": sum(k["left_after_wait"] for k in kills),
                                      "at_end": leftover_at_end} if args.engine == "real" else None,
        "kill_log": kills,
        "detail": {"lost": lost, "unsubmitted": unsubmitted, "stuck": stuck, "answers_differ": answers_differ,
                   "usage_differ": {n: [finals[n]["usage"], reference[n]["usage"]] for n in usage_differ},
                   "duplicates": {n: [r[0] for r in v] for n, v in per_spec.items() if len(v) > 1}},
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrsa bench chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["fake", "real"], default="fake")
    parser.add_argument("--specs", type=int, default=30, help="background runs and responses (a third responses)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--kill-min-s", type=float, default=1.0)
    parser.add_argument("--kill-max-s", type=float, default=4.0)
    parser.add_argument("--spread-s", type=float, default=8.0, help="clients start within this many seconds")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fake-delay", type=float, default=0.1, help="fake engine: seconds between deltas")
    parser.add_argument("--deadline-s", type=float, default=300, help="per phase: runs not ended by then are stuck")
    parser.add_argument("--orphan-wait-s", type=float, default=30, help="real: wait this long for engine processes to end")
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument("--workdir", default="benchmarks/results/chaos")
    parser.add_argument("--out", help="write the JSON here (e.g. docs/bench/chaos-fake.json)")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    goal = (result["lost"] == 0 and result["duplicated"] == 0 and result["stuck"] == 0
            and result["events_after_terminal"] == 0 and result["usage_differ"] == 0)
    return 0 if goal else 1


if __name__ == "__main__":
    raise SystemExit(main())
