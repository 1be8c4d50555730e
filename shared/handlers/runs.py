"""Runs requested over HTTP: the queued record, the in-progress check and the queue handler.

An apply cannot run inside an HTTP request (Azure cuts the response off after 230 s), so the request
records the run as "queued" in the audit and puts a message on `reconcile-requests`; the queue
trigger `run_reconcile` then executes it under the same run ID. Delivery is at least once, so a
redelivered message whose run already finished does nothing.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from shared import app as wiring
from shared.adapters.audit import Audit, now_iso, now_ms
from shared.core.config import SyncConfig, resolve_selector
from shared.core.errors import ConfigError, PermanentError
from shared.adapters.queues import RECONCILE_REQUESTS
from shared.engine.reconcile import Engine, RunReport

log = logging.getLogger(__name__)

QUEUED, RUNNING = "queued", "running"
# "abandoned" is not finished: its redelivered message runs it again (every write is idempotent).
FINISHED = frozenset({"succeeded", "succeeded_with_holds", "partially_skipped", "failed", "partially failed"})
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
        if not isinstance(data, dict) or not isinstance(data.get("runId"), str) or not data["runId"]:
            raise ValueError("expected a JSON object with a runId")
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
    engine.audit.record_start(record)
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
        if now - int(run.get("startedMs") or 0) > STALE_AFTER_MS:
            continue
        theirs = clusters(engine.config, run.get("scope"))
        if wanted is None or theirs is None or wanted & theirs:
            return run
    return None


def clusters(config: SyncConfig, selector: str | None) -> frozenset[str] | None:
    """The cluster keys a selector covers; None means every cluster."""
    if not (selector or "").strip():
        return None
    try:
        return frozenset(s.cluster_key for s in resolve_selector(config, selector).scopes)
    except ConfigError:
        return None  # a scope the config no longer knows may have touched anything


def run_reconcile(body: str | bytes, *, dequeue_count: int = 1) -> RunReport | None:
    """Execute a queued run; None when the message is malformed or the run already finished.

    Config and permanent errors end the run as failed (recorded by the engine) without raising: a
    retry cannot help. Anything else re-queues the record and raises, so the host retries, up to
    its last attempt, which is left recorded as failed.
    """
    try:
        request = RunRequest.from_message(body)
    except ValueError as error:
        log.error("reconcile-requests: dropping a malformed message: %s", error)
        return None
    engine = wiring.engine()
    record = engine.audit.get_run(request.run_id)
    if record and record.get("status") in FINISHED:
        log.info("run %s already %s; redelivered message ignored", request.run_id, record["status"])
        return None
    # Keeping the queued start time keeps the run's single row in the newest-first listing.
    kept = {k: record[k] for k in ("started", "startedMs") if record and k in record}
    audit = _Annotated(engine.audit, kept | request.annotations())
    try:
        report = dataclasses.replace(engine, audit=audit).run(
            request.scope, trigger="http", approve_deletes=request.approve_deletes, run_id=request.run_id)
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


@dataclass
class _Annotated:
    """The audit, with the request's fields kept on every record the engine writes."""

    inner: Audit
    extra: dict[str, Any]

    def record_start(self, run: dict[str, Any]) -> None:
        self.inner.record_start(run | self.extra)

    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        self.inner.record_end(run | self.extra, changes)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self.inner.get_run(run_id)

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.inner.list_runs(limit)

