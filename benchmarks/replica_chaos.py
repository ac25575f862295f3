"""``mrsa bench replica-chaos``: background runs on two API replicas over one PostgreSQL run
store while the replicas are killed -9 and restarted in turn.

On 127.0.0.1 only, bounded in count and time. A PostgreSQL server of its own (tests/postgres.py,
Debian's package) and two ``mrsa serve`` replicas over it (tests/replicas.py: the real HTTP
stack, run manager and store, each over its own fake engine; tests/replicas.py says why). The
``--runs`` background runs (fixed seeds, a marker in each question) are submitted at once,
alternating replicas, by clients that retry on the other replica (connection refused or cut,
5xx) with the same ``Idempotency-Key``; one follower per run reads its ``/events`` and, when its
replica dies under it, goes on at the other with ``Last-Event-ID``. Meanwhile ``--kills`` times
one replica is killed with SIGKILL at a random moment (the other one always up) and restarted
on the same port; after each kill the time until no unfinished run is left on an expired lease
is the takeover time. Before that the same runs go through an uninterrupted replica on a
database of its own: the reference.

Reported: runs in the store, kills, lost (accepted, then absent), duplicated (more than one run
for a spec), stuck (not ended by the deadline), events after a terminal one, sequence gaps (in
what the followers saw and in the store), answers and usage against the reference, runs taken
over (attempts > 1), takeover time per kill. Goal: 0 lost, 0 duplicated, 0 stuck, 0 events after
a terminal one, 0 gaps, answers and usage exact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.servers import cpu_description

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.postgres import fresh_database, postgres_server  # noqa: E402
from tests.replicas import ApiReplica  # noqa: E402

TERMINAL = {"run_completed", "run_failed", "run_cancelled"}
RSA = {"population": 4, "k": 2, "rounds": 3, "tail_tokens": 16, "trace_max_tokens": 64, "selection": "aggregate"}


@dataclass
class Spec:
    n: int
    seed: int
    key: str = field(default_factory=lambda: f"replica-chaos-{uuid.uuid4().hex}")

    @property
    def marker(self) -> str:
        return f"[replica chaos spec {self.n}]"

    def body(self) -> dict:
        question = f"{self.marker} A shop sells pens at 3 dollars each. How much do {self.n + 2} pens cost?"
        return {"model": "fake-model", "messages": [{"role": "user", "content": question}],
                "rsa": {**RSA, "seed": self.seed}}


@dataclass
class Outcome:
    spec: Spec
    run_id: str | None = None
    submits: int = 0
    seqs: list[int] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    after_terminal: int = 0
    reconnects: int = 0
    terminal: str | None = None


def _submit(spec: Spec, urls: list[str], outcome: Outcome, deadline: float) -> None:
    """POST until a replica accepts it (the other one on any failure), same Idempotency-Key."""
    i = spec.n % len(urls)
    while time.monotonic() < deadline:
        url = urls[i % len(urls)]
        i += 1
        outcome.submits += 1
        try:
            r = httpx.post(f"{url}/v1/rsa/runs", json=spec.body(), headers={"Idempotency-Key": spec.key}, timeout=30)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if r.status_code in (200, 202):
            outcome.run_id = r.json()["id"]
            return
        time.sleep(0.2)


def _follow(urls: list[str], outcome: Outcome, deadline: float) -> None:
    """Read the run's events to its end, moving to another replica with Last-Event-ID when cut."""
    last = 0
    i = outcome.spec.n
    while outcome.terminal is None and time.monotonic() < deadline:
        url = urls[i % len(urls)]
        i += 1
        seq = None
        try:
            with httpx.stream("GET", f"{url}/v1/rsa/runs/{outcome.run_id}/events",
                              headers={"Last-Event-ID": str(last)} if last else {},
                              timeout=httpx.Timeout(10, read=60)) as stream:
                if stream.status_code != 200:
                    raise httpx.HTTPError(f"status {stream.status_code}")
                for line in stream.iter_lines():
                    if line.startswith("id: "):
                        seq = int(line[4:])
                    elif line.startswith("data: ") and seq is not None:
                        event = json.loads(line[6:])
                        if outcome.terminal is not None:
                            outcome.after_terminal += 1
                        outcome.seqs.append(seq)
                        outcome.events.append(event)
                        last = seq
                        if event.get("event") in TERMINAL:
                            outcome.terminal = event["event"]
        except httpx.HTTPError:
            outcome.reconnects += 1
            time.sleep(0.2)


def _drive(specs: list[Spec], urls: list[str], deadline: float) -> list[Outcome]:
    outcomes = [Outcome(spec) for spec in specs]

    def client(outcome: Outcome) -> None:
        _submit(outcome.spec, urls, outcome, deadline)
        if outcome.run_id is not None:
            _follow(urls, outcome, deadline)

    threads = [threading.Thread(target=client, args=(o,), daemon=True) for o in outcomes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    return outcomes


def _store_runs(url: str) -> dict[str, dict]:
    """Every run in the store: status, attempts, its marker, result, and its event log."""
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, status, attempts, spec, result FROM runs").fetchall()
        runs = {}
        for run_id, status, attempts, spec, result in rows:
            events = conn.execute("SELECT seq, data FROM events WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
            question = json.loads(spec)["messages"][0]["content"]
            runs[run_id] = {"status": status, "attempts": attempts, "question": question,
                            "result": None if result is None else json.loads(result),
                            "seqs": [s for s, _ in events], "events": [json.loads(d)["event"] for _, d in events]}
    return runs


def _held_by(url: str, pid: int) -> int:
    """Unfinished runs still leased to the replica whose process was ``pid`` (its replica name
    is host-pid-suffix): what a takeover has yet to claim."""
    import psycopg

    with psycopg.connect(url) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running') AND "
                            "lease_owner LIKE %s", (f"%-{pid}-%",)).fetchone()
    return int(n)


def _unfinished(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM runs WHERE status IN ('queued', 'running')").fetchone()
    return int(n)


def _reference(specs: list[Spec], server_url: str, folder: Path, args: argparse.Namespace) -> dict[int, dict]:
    db = fresh_database(server_url)
    replica = ApiReplica("reference", db, folder, lease_s=args.lease_s, env={**_env(args), "MRSA_ADMISSION__MAX_RUNNING_RUNS": "4"})
    replica.start()
    try:
        outcomes = _drive(specs, [replica.url], time.monotonic() + args.time_cap)
        out = {}
        for o in outcomes:
            if o.run_id is not None:
                run = httpx.get(f"{replica.url}/v1/rsa/runs/{o.run_id}", timeout=10).json()
                out[o.spec.n] = run
        return out
    finally:
        replica.stop()


def _env(args: argparse.Namespace) -> dict[str, str]:
    return {"FAKE_DELAY": str(args.fake_delay), "FAKE_LENGTH": "12",
            "MRSA_ADMISSION__MAX_RUNNING_RUNS": str(args.slots), "MRSA_ADMISSION__MAX_QUEUED_RUNS": "256"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrsa bench replica-chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease-s", type=float, default=2.0)
    parser.add_argument("--fake-delay", type=float, default=0.3, help="seconds per fake delta (a trace: six)")
    parser.add_argument("--slots", type=int, default=2, help="runs executing at once per replica")
    parser.add_argument("--time-cap", type=float, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    specs = [Spec(n, seed=1000 + n) for n in range(args.runs)]
    folder = Path(tempfile.mkdtemp(prefix="mrsa-replica-chaos-"))
    started = time.monotonic()

    with postgres_server() as server_url:
        reference = _reference(specs, server_url, folder, args)
        db = fresh_database(server_url)
        replicas = [ApiReplica(name, db, folder, lease_s=args.lease_s, env=_env(args)) for name in ("a", "b")]
        for r in replicas:
            r.start()
        urls = [r.url for r in replicas]
        deadline = time.monotonic() + args.time_cap
        outcomes: list[Outcome] = []
        driver = threading.Thread(target=lambda: outcomes.extend(_drive(specs, urls, deadline)), daemon=True)
        driver.start()

        kills, takeovers, restarts = [], [], []
        try:
            for k in range(args.kills):
                time.sleep(rng.uniform(1.0, 4.0))
                victim = replicas[k % 2]
                unfinished = _unfinished(db)
                assert victim.proc is not None
                pid, held = victim.proc.pid, _held_by(db, victim.proc.pid)
                victim.kill()
                killed_at = time.monotonic()
                kills.append({"replica": victim.name, "at_s": round(killed_at - started, 2),
                              "unfinished_runs": unfinished, "runs_it_held": held})
                restart = threading.Thread(target=victim.start)
                restart.start()
                # meanwhile the survivor (or the restarted replica) claims what the victim held
                while _held_by(db, pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                takeovers.append(round(time.monotonic() - killed_at, 2))
                restart.join()
                restarts.append(round(time.monotonic() - killed_at, 2))
            driver.join(max(1.0, deadline - time.monotonic()))
            store = _store_runs(db)
        finally:
            for r in replicas:
                r.stop()

    by_marker: dict[int, list[str]] = {}
    for run_id, run in store.items():
        for spec in specs:
            if spec.marker in run["question"]:
                by_marker.setdefault(spec.n, []).append(run_id)
    accepted = [o for o in outcomes if o.run_id is not None]
    lost = [o.spec.n for o in accepted if o.run_id not in store]
    duplicated = [n for n, ids in by_marker.items() if len(ids) > 1]
    stuck = [run_id for run_id, run in store.items() if run["status"] in ("queued", "running")]
    store_gaps = [run_id for run_id, run in store.items() if run["seqs"] != list(range(1, len(run["seqs"]) + 1))]
    after_terminal_store = [run_id for run_id, run in store.items()
                            if any(e in TERMINAL for e in run["events"][:-1])]
    follower_gaps = [o.spec.n for o in accepted if o.seqs != list(range(1, len(o.seqs) + 1))]
    answers_differ, usage_differ = [], []
    for o in accepted:
        run, ref = store.get(o.run_id), reference.get(o.spec.n)
        if run is None or ref is None or run["result"] is None or ref.get("result") is None:
            continue
        if run["result"]["choices"] != ref["result"]["choices"]:
            answers_differ.append(o.spec.n)
        usage = {k: v for k, v in run["result"]["usage"].items() if k != "prompt_tokens_details"}
        if usage != {k: v for k, v in ref["result"]["usage"].items() if k != "prompt_tokens_details"}:
            usage_differ.append(o.spec.n)
    statuses: dict[str, int] = {}
    for run in store.values():
        statuses[run["status"]] = statuses.get(run["status"], 0) + 1

    result = {
        "benchmark": "replica-chaos",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        "cpu": cpu_description(),
        "engine": "fake (one per replica)",
        "store": "PostgreSQL (Debian's package, on 127.0.0.1)",
        "config": {"runs": args.runs, "kills": args.kills, "lease_s": args.lease_s, "fake_delay": args.fake_delay,
                   "slots_per_replica": args.slots, "rsa": RSA, "seed": args.seed},
        "reference_completed": sum(1 for r in reference.values() if r.get("status") == "completed"),
        "runs_in_store": len(store),
        "accepted": len(accepted),
        "statuses": statuses,
        "kills": kills,
        "kills_with_unfinished_runs": sum(1 for k in kills if k["unfinished_runs"]),
        "restart_s": restarts,
        # from the kill until no unfinished run was leased to the dead replica any more
        "takeover_s": takeovers,
        "takeover_s_median": statistics.median(takeovers) if takeovers else None,
        "taken_over_runs": sum(1 for run in store.values() if run["attempts"] > 1),
        "max_attempts": max((run["attempts"] for run in store.values()), default=0),
        "submits": sum(o.submits for o in outcomes),
        "follower_reconnects": sum(o.reconnects for o in outcomes),
        "lost": lost,
        "duplicated": duplicated,
        "stuck": stuck,
        "events_after_terminal": sum(o.after_terminal for o in outcomes) + len(after_terminal_store),
        "sequence_gaps": {"followers": follower_gaps, "store": store_gaps},
        "answers_differ": answers_differ,
        "usage_differ": usage_differ,
        "wall_s": round(time.monotonic() - started, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = not (lost or duplicated or stuck or result["events_after_terminal"] or follower_gaps or store_gaps
              or answers_differ or usage_differ) and len(accepted) == args.runs
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
