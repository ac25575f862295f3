"""Background RSA runs: accepted at once, executed under admission control, checkpointed node by
node in the store, resumed after a restart, cancellable, observable as a resumable event stream.

Life of a run::

    submit() -> queued --(admission slot)--> running --> completed | failed
                  \\______________ cancel() ______________/--> cancelled

Every finished node's record goes to the store together with its progress event (one
transaction), so after a crash :meth:`RunManager.start` finds the run ``queued`` or ``running``
and restarts it from its checkpoints: the plan is rebuilt from the stored seed and only the
nodes that were in flight are redone (see :mod:`mrsa.rsa`). Usage and budget include the
work done before the restart; the run's age (for ``deadline_s``) too.

Retention: a run that ended more than ``ttl_s`` ago (and a response of ``/v1/responses``
created that long ago) is gone: reads answer as if it never existed, and every new submission
first removes what expired, so the store holds at most ``ttl_s`` of work.

A resumed run continues only on the model it was accepted for: on another it ends failed
(``model_changed``, naming both). A run whose stored record cannot be read is quarantined
(ended failed, ``store_corrupt``, logged and counted in :attr:`RunManager.quarantined`), so one
bad record never stops a start-up. A node that completes its round is checkpointed with the
round's ``round_completed`` in one transaction, and ``final_started`` is logged once per run
(not once per attempt), so a crash leaves the log as an uninterrupted run's.

The store is opened at start, and with it its exclusive lock: a second server pointed at the
same file refuses to start (:class:`~mrsa.service.runs.store.StoreLocked`) instead of failing its
first background request. Without a path (``store_path`` unset, as in tests) it is a temporary
file removed at shutdown: runs then live as long as the process.

Replicas (``store_url`` = ``postgresql://...``, :mod:`~mrsa.service.runs.pg_store`): the API
replicas share one database and each run is leased to the replica executing it. Every third of
``lease_s`` a replica renews its leases, stops the runs it no longer holds (cancelled on another
replica, or taken over after a stall) and claims the runs whose lease expired: a replica that
died loses its runs to the others, which resume them from their checkpoints as a restart does.
A replica that stops cleanly gives its leases back, so its runs move on at once. Followers are
woken by the database's ``NOTIFY`` of each event, whichever replica logged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from mrsa.engine.base import Engine, EngineError
from mrsa.rsa import RsaParams, RsaRun
from mrsa.rsa.events import FinalDelta, FinalStarted, NodeFinished, RoundCompleted, RunCompleted, RunFailed, Usage
from mrsa.service import logs, metrics
from mrsa.service.admission import Admission, Ticket
from mrsa.service.errors import APIError
from mrsa.service.pipeline import failure
from mrsa.service.runs.store import AsyncStore, Idempotent, StoredRun, StoreError
from mrsa.service.runs.stores import LeaseLost, open_store
from mrsa.service.wire import (
    RunObject,
    RunProgress,
    now,
    progress_event,
    rsa_completion,
    planned_nodes,
    usage_info,
)

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Submitted:
    """A run as :meth:`RunManager.submit` accepted it: new, or the one its idempotency key named."""

    run: StoredRun
    replayed: bool


class RunManager:
    """Owns the background runs of one server: their tasks, the store and the run admission."""

    def __init__(self, store_path: Path | None, admission: Admission, ttl_s: float = 7 * 24 * 3600, *,
                 store_url: str | None = None, lease_s: float = 15.0) -> None:
        self.engine: Engine | None = None
        self.ttl_s = ttl_s
        self.store_url = store_url  # postgresql://...: a store the replicas share (stores.py)
        self.lease_s = lease_s
        self._lost: set[str] = set()  # runs another replica took over: stopped, not ended
        self._lease_task: asyncio.Task[None] | None = None
        self._tmpdir: str | None = None
        if store_path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="mrsa-runs-")
            store_path = Path(self._tmpdir) / "runs.sqlite3"
        self.store_path = store_path
        self.admission = admission
        self._store: AsyncStore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tickets: dict[str, Ticket] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._closing = False
        self.quarantined = 0  # runs the last start() set aside (records that cannot be read)

    # ------------------------------------------------------------------------ lifecycle

    def _open(self) -> AsyncStore:
        if self._store is None:
            self._store = AsyncStore(open_store(self.store_url, self.store_path, lease_s=self.lease_s))
            log.info("run store: %s", self._store.store)
        return self._store

    def open(self) -> None:
        """Open the store, taking its lock (:class:`StoreLocked` if another server holds it).
        Done first at start-up, before an engine is loaded that would then go unused."""
        self._open()

    async def start(self, engine: Engine) -> int:
        """Serve runs on ``engine``: resume every run the last server left queued or running;
        returns how many. A run whose stored record cannot be read is quarantined (ended as
        failed, ``store_corrupt``) and one accepted for another model is ended as failed
        (``model_changed``), each logged: neither stops the start-up."""
        self.engine = engine
        store = self._open()
        await self.purge()
        resumed = await self._resume(*await store.claim())
        if store.store.shared:  # other replicas: follow their events, renew leases, take over
            loop = asyncio.get_running_loop()
            store.store.subscribe(lambda run_id: loop.call_soon_threadsafe(self._wake, run_id))
            self._lease_task = asyncio.create_task(self._keep_leases(), name="run-leases")
        return resumed

    async def _resume(self, runs: list[StoredRun], bad: list[tuple[str, str]]) -> int:
        """Restart claimed runs from their checkpoints; returns how many."""
        assert self.engine is not None
        engine, store = self.engine, self._open()
        resumed = 0
        for run in runs:
            if run.spec.get("model") != engine.model_name:
                error = APIError.for_status(
                    500, f"This run was accepted for model `{run.spec.get('model')}`; the server now serves "
                         f"`{engine.model_name}`, which cannot continue its traces. Submit it again.",
                    code="model_changed").body()
                await store.finish(run.id, "failed", {"event": "run_failed", **error}, error=error)
                log.warning("run %s was accepted for %s, not %s: ended as failed", run.id, run.spec.get("model"),
                            engine.model_name)
                continue
            try:
                records = await store.records(run.id)
            except StoreError as exc:
                bad.append((run.id, exc.message))
                continue
            await store.append(run.id, {"event": "run_resumed", "checkpoints": len(records), "attempt": run.attempts + 1})
            ticket = self.admission.admit(force=True, owner=run.owner)  # accepted before the restart
            self._spawn(run.id, run.spec, ticket, records=records, elapsed_s=run.elapsed_s, attempt=run.attempts + 1)
            log.info("resuming run %s from %d checkpoints", run.id, len(records))
            resumed += 1
        for run_id, why in bad:
            await store.quarantine(run_id, why)
            log.error("quarantined run %s: %s", run_id, why)
        if bad:
            log.error("quarantined %d stored runs whose records cannot be read", len(bad))
        self.quarantined += len(bad)
        return resumed

    async def _keep_leases(self) -> None:
        """Shared store, every third of a lease: renew the leases of this replica's runs, stop
        the ones it no longer holds (taken over after a stall, or cancelled on another replica),
        and resume the runs of replicas that died (their leases expired)."""
        store = self._open()
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                mine = list(self._tasks)
                held = await store.heartbeat(mine)
                for run_id in set(mine) - held:
                    task = self._tasks.get(run_id)
                    if task is not None:
                        self._lost.add(run_id)
                        task.cancel()
                        log.warning("run %s is no longer this replica's: stopped", run_id)
                took = await self._resume(*await store.claim())
                if took:
                    log.info("took over %d runs whose replica stopped", took)
            except StoreError as exc:  # the database is away: the leases run out, others take over
                log.warning("run leases not renewed: %s", exc.message)
            except Exception:  # a bug must not stop the renewals (this replica's runs would move)
                log.exception("run lease renewal failed")

    def _wake(self, run_id: str | None) -> None:
        """Another replica logged an event of ``run_id`` (None: of any run)."""
        if run_id is not None:
            self._notify(run_id)
        else:
            for event in self._changed.values():
                event.set()

    async def close(self) -> None:
        """Stop executing without ending the runs: the next server resumes them (on a shared
        store another replica does at once: this one gives their leases back)."""
        self._closing = True
        if self._lease_task is not None:
            self._lease_task.cancel()
            await asyncio.gather(self._lease_task, return_exceptions=True)
        running = list(self._tasks)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._store is not None and running:
            with contextlib.suppress(StoreError):
                await self._store.release(running)
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # ------------------------------------------------------------------------ API

    def _cutoff(self) -> float:
        return time.time() - self.ttl_s

    async def purge(self) -> int:
        """Remove what expired (runs ended, responses created, more than ``ttl_s`` ago)."""
        removed = await self._open().expire(self._cutoff())
        if removed:
            log.info("expired %d stored runs and responses", removed)
        return removed

    async def submit(self, owner: str, model: str, run_id: str, run: RsaRun, ticket: Ticket,
                     extra: dict | None = None, *, response: dict | None = None,
                     idempotency: tuple[str, str] | None = None) -> Submitted:
        """Persist and start a run whose parameters and context were checked (``run`` is
        built, its seed drawn); ``ticket`` is its admission, which the run then owns;
        ``extra`` is kept in its spec (what a response of ``/v1/responses`` needs to be shown
        again), ``response`` is the record of the background response it is, written with it.
        With ``idempotency`` (key, body digest) a key the owner used before starts nothing:
        the earlier run is returned (``replayed``), or 409 if its body differed."""
        store = self._open()
        await self.purge()
        spec = {
            "model": model,
            "messages": run.messages,
            "params": {**run.params.model_dump(), "seed": run.seed},
            **(extra or {}),
        }
        earlier = await store.create(run_id, owner, spec, run.started.wire(), response=response,
                                     idempotency=idempotency)
        if earlier is not None:  # the same key, submitted meanwhile
            return await self._replayed(owner, earlier)
        self._spawn(run_id, spec, ticket, run=run, attempt=1)
        stored = await store.get(run_id)
        assert stored is not None
        return Submitted(stored, replayed=False)

    async def idempotent(self, owner: str, key: str, digest: str) -> Submitted | None:
        """What ``key`` of ``owner`` created before (409 if with another body); None if new."""
        earlier = await self._open().idempotent(owner, key, digest)
        return None if earlier is None else await self._replayed(owner, earlier)

    async def _replayed(self, owner: str, earlier: Idempotent) -> Submitted:
        if not earlier.same_body:
            raise APIError("This Idempotency-Key was used with another request body.", status=409,
                           param="Idempotency-Key", code="idempotency_key_reused")
        stored = await self.get(owner, earlier.object_id)
        if stored is None:  # deleted since: the key went with it
            raise APIError("This Idempotency-Key named an object that was deleted.", status=409,
                           param="Idempotency-Key", code="idempotency_key_reused")
        return Submitted(stored, replayed=True)

    async def get(self, owner: str, run_id: str) -> StoredRun | None:
        """The run, if it exists and belongs to ``owner``."""
        run = await self._open().get(run_id)
        if run is None or run.owner != owner or (run.terminal and run.updated < self._cutoff()):
            return None
        return run

    async def put_response(self, owner: str, response_id: str, data: dict, run_id: str | None = None) -> None:
        """Keep a response of ``/v1/responses`` (under ``owner``) until it expires."""
        await self.purge()
        await self._open().put_response(response_id, owner, data, run_id)

    async def get_response(self, owner: str, response_id: str) -> tuple[str | None, dict] | None:
        """``(run_id, data)`` of a stored response, if it exists, has not expired and belongs
        to ``owner``."""
        found = await self._open().get_response(response_id)
        if found is None:
            return None
        stored_owner, created, run_id, data = found
        if stored_owner != owner:
            return None
        if created < self._cutoff() and (run_id is None or run_id not in self._tasks):
            return None
        return run_id, data

    async def delete_response(self, owner: str, response_id: str) -> bool:
        """Remove a stored response (its run cancelled first, its engine requests aborted)."""
        found = await self.get_response(owner, response_id)
        if found is None:
            return False
        run_id, _ = found
        if run_id is not None:
            await self.cancel(owner, run_id)
        return await self._open().delete_response(response_id)

    async def run_object(self, stored: StoredRun) -> RunObject:
        """The run as the API shows it: status, progress and usage so far, result or error."""
        params = stored.spec["params"]
        progress = await self._open().progress(stored.id)
        if stored.result is not None:
            usage = stored.result["usage"]
        elif stored.error is not None and "usage" in stored.error:
            usage = stored.error["usage"]
        else:
            usage = usage_info(Usage(progress.prompt_tokens, progress.completion_tokens, progress.reasoning_tokens,
                                     progress.cached_tokens))
        return RunObject(
            id=stored.id,
            created=int(stored.created),
            model=stored.spec["model"],
            status=stored.status,
            seed=params["seed"],
            progress=RunProgress(
                nodes_finished=progress.nodes,
                nodes_total=planned_nodes(params)[0],
                rounds=planned_nodes(params)[1],
                attempts=stored.attempts,
            ),
            usage=usage,
            result=stored.result,
            error=None if stored.error is None else stored.error["error"],
        )

    async def cancel(self, owner: str, run_id: str) -> StoredRun | None:
        """Cancel a queued or running run: its engine requests are aborted before this returns."""
        run = await self.get(owner, run_id)
        if run is None:
            return None
        store = self._open()
        if await store.finish(run_id, "cancelled", {"event": "run_cancelled"}) is not None:
            self._notify(run_id)
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return await store.get(run_id)

    async def events(self, owner: str, run_id: str, after: int, heartbeat_s: float = 15.0) -> AsyncIterator[tuple[int, dict] | None]:
        """``(seq, event)`` after ``after`` until the run ended and its last event was sent;
        ``None`` as a heartbeat when nothing happened for ``heartbeat_s``."""
        store = self._open()
        try:
            while True:
                changed = self._changed.setdefault(run_id, asyncio.Event())
                changed.clear()
                batch = await store.events(run_id, after)
                for seq, event in batch:
                    after = seq
                    yield seq, event
                if batch:
                    continue
                run = await store.get(run_id)
                if run is None or (run.terminal and run_id not in self._tasks):
                    if not await store.events(run_id, after):
                        return
                    continue
                try:
                    await asyncio.wait_for(changed.wait(), heartbeat_s)
                except TimeoutError:
                    yield None
        finally:
            if run_id not in self._tasks:  # an ended run needs no wake-ups
                self._changed.pop(run_id, None)

    # ------------------------------------------------------------------------ execution

    def _notify(self, run_id: str) -> None:
        event = self._changed.get(run_id)
        if event is not None:
            event.set()

    def _spawn(self, run_id: str, spec: dict, ticket: Ticket, *, attempt: int, run: RsaRun | None = None,
               records: list | None = None, elapsed_s: float = 0.0) -> None:
        self._tickets[run_id] = ticket.detach()  # the run's task releases it, not the request
        task = asyncio.create_task(
            self._execute(run_id, spec, ticket, attempt, run, records or [], elapsed_s), name=run_id
        )
        self._tasks[run_id] = task

    async def _execute(self, run_id: str, spec: dict, ticket: Ticket, attempt: int, run: RsaRun | None,
                       records: list, elapsed_s: float) -> None:
        """Run it to its end in the store. Its own loop, not :func:`mrsa.service.pipeline.execute`
        (which a live run's client reads): a node that completes its round is checkpointed with
        the round's ``round_completed`` in one transaction, which needs the scheduler's next
        event as the node is read (a reader task running ahead would have taken it already);
        and a shutdown or a lost lease stops it without ending it (not counted as cancelled,
        nothing stored: another attempt goes on from its checkpoints). What it shares with the
        live runs: the metrics observer, and the error a failure stores (the envelope as
        :func:`mrsa.service.pipeline.failure` maps it, a failed run's usage with it)."""
        store = self._open()
        logs.bind_run(run_id)  # this task's own context: every record it logs names the run
        observer = metrics.RunObserver()
        try:
            with ticket:
                await ticket.wait()
                if await store.set_status(run_id, "running", {"event": "run_running", "attempt": attempt}) is None:
                    return  # cancelled while queued
                self._notify(run_id)
                if run is None:
                    assert self.engine is not None, "start() gives the manager its engine"
                    run = RsaRun(self.engine, spec["messages"], RsaParams(**spec["params"]),
                                 run_id=f"{run_id}-a{attempt}", resume=records, elapsed_s=elapsed_s)
                async with aclosing(run.events()) as events:
                    async for event in events:
                        observer.observe(event)
                        if isinstance(event, FinalDelta):
                            continue
                        if isinstance(event, RunCompleted):
                            with_trace = run.params.return_trace
                            body = rsa_completion(run_id, now(), spec["model"], event.result, with_trace).model_dump()
                            await store.finish(run_id, "completed", event.wire(with_trace, with_usage=True), result=body)
                        elif isinstance(event, NodeFinished) and event.record is not None and event.status != "aborted":
                            # The round this node completes is logged in its checkpoint's
                            # transaction: a restart restores the round without reporting it.
                            then = None
                            if _round_completed_next(run, event.round):
                                completed = await anext(events)
                                observer.observe(completed)
                                then = progress_event(completed)
                            progress = progress_event(event)
                            await store.checkpoint(run_id, event.record, progress, event.elapsed_s, then)
                        elif (progress := progress_event(event)) is not None:
                            # the final call starts again on each attempt; the log says so once
                            await store.append(run_id, progress, once=isinstance(event, FinalStarted))
                        self._notify(run_id)
        except LeaseLost:  # another replica resumed it: it is that replica's to end
            log.warning("run %s was taken over by another replica: stopped", run_id)
        except asyncio.CancelledError:
            # DELETE; a shutdown is no stop (the run resumes on restart), nor is a lost lease
            if not self._closing and run_id not in self._lost:
                observer.cancelled()
                raise
        except RunFailed as exc:
            observer.failed(exc.calls, exc.usage.completion_tokens)
            error = failure(exc).body()
            await store.finish(run_id, "failed", {"event": "run_failed", **error}, error=error)
        except Exception as exc:  # a bug or an engine that cannot run it: the run fails, the server stays
            if not isinstance(exc, EngineError):
                log.exception("background run %s failed", run_id)
            error = failure(exc).body()
            await store.finish(run_id, "failed", {"event": "run_failed", **error}, error=error)
        finally:
            self._tasks.pop(run_id, None)
            self._tickets.pop(run_id, None)
            self._lost.discard(run_id)
            self._notify(run_id)


def _round_completed_next(run: RsaRun, round: int) -> bool:
    """Whether the run's next event, already due, is the completion of ``round`` (the
    scheduler queues it right after the node that completes it)."""
    due = run.scheduler.events
    return bool(due) and isinstance(due[0], RoundCompleted) and due[0].round == round

