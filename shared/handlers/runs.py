"""Runs requested over HTTP: the queued record, the in-progress check and the queue handler.

An apply cannot run inside an HTTP request (Azure cuts the response off after 230 s), so the request
records the run as "queued" in the audit and puts a message on `reconcile-requests`; the queue
trigger `run_reconcile` then executes it under the same run ID. Delivery is at least once, so a
redelivered message whose run already finished does nothing.

A queue message is a request, not an authority: anyone who can write to the host storage's queues
can write one. So a message is executed only if the audit holds its run, queued; what the run
covers, whether it may remove held deletions and who asked are read from that record, never from
the message; and a message that disagrees with its record (or names no queued run) writes nothing
and is itself audited as a refused run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from shared import app as wiring
from shared.adapters.audit import Audit, now_iso, now_ms
from shared.core.config import SyncConfig, resolve_selector
from shared.core.errors import ConfigError, PermanentError
from shared.adapters.queues import RECONCILE_REQUESTS
from shared.engine.reconcile import Engine, RunReport, new_run_id

log = logging.getLogger(__name__)

QUEUED, RUNNING = "queued", "running"
# "abandoned" is not finished: its redelivered message runs it again (every write is idempotent).
# "incomplete" is: its continuation (a new job) does the rest.
FINISHED = frozenset({"succeeded", "succeeded_with_holds", "partially_skipped", "failed", "partially failed",
                      "incomplete"})
RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")  # what a Table RowKey accepts and a run ID looks like
STALE_AFTER_MS = 30 * 60 * 1000  # 3x host.json's functionTimeout: a run still "running" after that has died
MAX_ATTEMPTS = 5  # host.json extensions.queues.maxDequeueCount
RECENT_RUNS = 50  # how far back the in-progress check looks


@dataclass(frozen=True)
class RunRequest:
    """The `reconcile-requests` message: which run, over what, approved by whom."""

    run_id: str
    scope: str | None = None
    approve_deletes: bool = False
    requested_by: str | None = None

    def as_message(self) -> dict[str, Any]:
        return {"runId": self.run_id, "scope": self.scope, "approveDeletes": self.approve_deletes,
                "requestedBy": self.requested_by}

    @classmethod
    def from_message(cls, body: str | bytes) -> "RunRequest":
        """Parse a message body; ValueError says what is wrong with it."""
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("runId"), str) or not RUN_ID.fullmatch(data["runId"]):
            raise ValueError("expected a JSON object with a runId of 1 to 100 letters, digits, '.', '_' or '-'")
        scope, approve, by = data.get("scope"), data.get("approveDeletes", False), data.get("requestedBy")
        if not (scope is None or isinstance(scope, str)) or not isinstance(approve, bool) \
                or not (by is None or isinstance(by, str)):
            raise ValueError("scope and requestedBy must be strings or null, approveDeletes a boolean")
        return cls(data["runId"], scope, approve, by)

    def annotations(self) -> dict[str, Any]:
        """What the audit keeps about the request on top of the run record."""
        return {"approveDeletes": self.approve_deletes, "requestedBy": self.requested_by}


def enqueue(engine: Engine, request: RunRequest) -> dict[str, Any]:
    """Record the run as queued, then send its message; return the queued record."""
    record = RunReport(request.run_id, "http", selector=request.scope).record()
    record |= request.annotations() | {"status": QUEUED}
    if not engine.audit.create_run(record):
        raise ValueError(f"run {request.run_id} already exists")  # never overwritten
    try:
        engine.queues.send(RECONCILE_REQUESTS, request.as_message())
    except Exception as error:
        # A run recorded as queued that never will run would block its clusters until it goes stale.
        engine.audit.record_end(record | {"status": "failed", "finished": now_iso(),
                                          "error": f"could not queue the run: {error}"}, [])
        raise
    return record


def in_progress(engine: Engine, selector: str | None, *, now: int | None = None) -> dict[str, Any] | None:
    """A recent queued or running (not dry) run whose clusters overlap the selector's, if any."""
    now = now_ms() if now is None else now
    wanted = clusters(engine.config, selector)
    for run in engine.audit.list_runs(limit=RECENT_RUNS):
        if run.get("status") not in (QUEUED, RUNNING) or run.get("dryRun"):
            continue
        if run.get("jobs") and rolled_up(engine.audit, run, changes=False)["status"] not in (QUEUED, RUNNING):
            continue
        if now - int(run.get("startedMs") or 0) > STALE_AFTER_MS:
            continue
        theirs = clusters(engine.config, run.get("scope"))
        if wanted is None or theirs is None or wanted & theirs:
            return run
    return None


CLAIM_GRACE_MS = 60_000  # a claim whose run was never recorded (its request died) is free after this


def claim(engine: Engine, selector: str | None, run_id: str, *, now: int | None = None) -> str | None:
    """Hold every cluster the selector covers for `run_id` (in a fixed order, so that of two applies
    over overlapping clusters one always gets through); the run holding one of them, or None.

    A claim is a conditional insert in the audit table, taken over (conditionally too) only from a
    run that is no longer queued or running, so two simultaneous applies can never both start.
    """
    now = now_ms() if now is None else now
    wanted = clusters(engine.config, selector)
    if wanted is None:
        wanted = frozenset(s.cluster_key for s in resolve_selector(engine.config, None).scopes)

    def free(holder: str, claimed_ms: int) -> bool:
        if not RUN_ID.fullmatch(holder or ""):
            return True
        run = engine.audit.get_run(holder)
        if run is None:
            return now - claimed_ms > CLAIM_GRACE_MS
        if now - int(run.get("startedMs") or 0) > STALE_AFTER_MS:
            return True
        return rolled_up(engine.audit, run, changes=False).get("status") not in (QUEUED, RUNNING)

    for key in sorted(wanted):
        holder = engine.audit.claim(hashlib.sha256(key.encode()).hexdigest()[:32], run_id, free)
        if holder is not None:
            return holder
    return None


def clusters(config: SyncConfig, selector: str | None) -> frozenset[str] | None:
    """The cluster keys a selector covers; None means every cluster."""
    if not (selector or "").strip():
        return None
    try:
        return frozenset(s.cluster_key for s in resolve_selector(config, selector).scopes)
    except ConfigError:
        return None  # a scope the config no longer knows may have touched anything


def run_reconcile(body: str | bytes, *, dequeue_count: int = 1, jobs: bool = False) -> RunReport | None:
    """Execute a queued run; None when the message is refused or the run already finished.

    The run's scope, approval and requester come from its queued audit record (see the module doc).
    With `jobs` (in the Functions host) its writes are queued as cluster jobs. Config and permanent
    errors end the run as failed (recorded by the engine) without raising: a retry cannot help.
    Anything else re-queues the record and raises, so the host retries, up to its last attempt,
    which is left recorded as failed.
    """
    engine = wiring.engine()
    try:
        request = RunRequest.from_message(body)
    except ValueError as error:
        refuse(engine, RECONCILE_REQUESTS, body, f"malformed: {error}")
        return None
    record = engine.audit.get_run(request.run_id)
    if record and record.get("status") in FINISHED:
        log.info("run %s already %s; redelivered message ignored", request.run_id, record["status"])
        return None
    problem = _mismatch(request, record)
    if problem:
        refuse(engine, RECONCILE_REQUESTS, body, problem)
        return None
    request = RunRequest(request.run_id, record.get("scope"), bool(record.get("approveDeletes")),
                         record.get("requestedBy"))
    # Keeping the queued start time keeps the run's single row in the newest-first listing.
    kept = {k: record[k] for k in ("started", "startedMs") if k in record}
    audit = _Annotated(engine.audit, kept | request.annotations())
    try:
        report = dataclasses.replace(engine, audit=audit).run(
            request.scope, trigger="http", approve_deletes=request.approve_deletes, run_id=request.run_id,
            jobs=jobs)
    except (ConfigError, PermanentError) as error:
        log.error("run %s failed and will not be retried: %s", request.run_id, error)
        return None
    except Exception as error:
        if dequeue_count < MAX_ATTEMPTS:
            retry = RunReport(request.run_id, "http", selector=request.scope).record() | {
                "status": QUEUED, "error": f"attempt {dequeue_count} of {MAX_ATTEMPTS} failed: {error}; retrying"}
            audit.record_start(retry)
        raise
    log.info("run %s %s: %s", report.run_id, report.status, report.counts())
    return report


def _mismatch(request: RunRequest, record: dict[str, Any] | None) -> str | None:
    """Why a reconcile-requests message does not match a queued HTTP run, or None."""
    if record is None:
        return f"no run {request.run_id} was queued"
    if record.get("trigger") != "http" or record.get("parentRunId"):
        return f"run {request.run_id} is not an HTTP run"
    if record.get("status") not in (QUEUED, RUNNING, "abandoned"):
        return f"run {request.run_id} is {record.get('status')}, not queued"
    queued = (record.get("scope"), bool(record.get("approveDeletes")), record.get("requestedBy"))
    if (request.scope, request.approve_deletes, request.requested_by) != queued:
        return (f"the message does not match queued run {request.run_id} (scope, approveDeletes or "
                "requestedBy differ); the queued record is authoritative")
    return None


def refuse(engine: Engine, queue: str, body: str | bytes, reason: str) -> str:
    """Audit a refused queue message as a failed run of its own (nothing else is written); its ID."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    log.error("%s: refused a message: %s", queue, reason)
    record = RunReport(new_run_id(), f"refused:{queue}").record() | {
        "status": "failed", "finished": now_iso(), "error": f"refused a {queue} message: {reason}",
        "message": text[:2000]}
    engine.audit.create_run(record)
    return record["runId"]


def rolled_up(audit: Audit, record: dict[str, Any], *, changes: bool = True) -> dict[str, Any]:
    """A run whose writes went to cluster jobs, as one run: its jobs' latest parts, their changes
    (a part's `pending` writes are left out once a later part took them over), counts and status.

    Without `changes`, the same status and counts come from the jobs' recorded counts, one query
    in all (for lists and status checks); changes of an attempt that died with its process are
    then not counted."""
    if not record.get("jobs"):
        return record
    latest: dict[Any, dict[str, Any]] = {}
    jobs = audit.jobs(record["runId"], changes)
    for job in jobs:
        index = job.get("jobIndex")
        if index not in latest or int(job.get("part") or 0) > int(latest[index].get("part") or 0):
            latest[index] = job
    listed = list(record.get("changes", []))
    counts: dict[str, int] = {} if changes else dict(record.get("counts") or {})
    for job in jobs:
        superseded = job is not latest.get(job.get("jobIndex"))
        if changes:
            listed += [c for c in job.get("changes", []) if not (superseded and c.get("result") == "pending")]
            continue
        for result, count in (job.get("counts") or {}).items():
            if not (superseded and result == "pending"):
                counts[result] = counts.get(result, 0) + int(count)
    for change in listed:
        counts[change.get("result")] = counts.get(change.get("result"), 0) + 1
    statuses = {job.get("status") for job in latest.values()}
    results = {result for result, count in counts.items() if count}
    done = "succeeded" in results
    if len(latest) < len(record["jobs"]) or statuses & {QUEUED, RUNNING}:
        status = RUNNING
    elif "abandoned" in statuses:
        status = "abandoned"
    elif "incomplete" in statuses:
        status = "incomplete"
    elif "failed" in results or statuses & {"failed", "partially failed"}:
        status = "partially failed" if done else "failed"
    elif "skipped" in results:
        status = "partially_skipped"
    elif "held" in results:
        status = "succeeded_with_holds"
    else:
        status = "succeeded"
    finished = None if status == RUNNING else max((j.get("finished") or "" for j in jobs), default=None)
    own = record if changes else {k: v for k, v in record.items() if k != "changes"}
    return own | {"status": status, "counts": counts, "finished": finished or None,
                  "clusterJobs": [{k: j.get(k) for k in ("runId", "cluster", "part", "status", "counts", "error")}
                                  for j in jobs]} | ({"changes": listed} if changes else {})


@dataclass
class _Annotated:
    """The audit, with the request's fields kept on every record the engine writes."""

    inner: Audit
    extra: dict[str, Any]
    first_change: int = 0  # where this attempt's changes start: after those an earlier attempt recorded

    def record_start(self, run: dict[str, Any]) -> None:
        self.inner.record_start(run | self.extra)

    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]], first: int = 0) -> None:
        self.inner.record_end(run | self.extra, changes, first + self.first_change)

    def create_run(self, run: dict[str, Any]) -> bool:
        return self.inner.create_run(run)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.inner.get_run(run_id)

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.inner.list_runs(limit)

    def jobs(self, parent_id: str, changes: bool = True) -> list[dict[str, Any]]:
        return self.inner.jobs(parent_id, changes)

    def claim(self, key: str, run_id: str, free) -> str | None:
        return self.inner.claim(key, run_id, free)

