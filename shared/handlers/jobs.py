"""Cluster jobs: one cluster's writes of a run, executed by the `apply_cluster_job` queue function.

A run started by the timer or an HTTP apply plans, then queues its writes as one job per cluster
(`Engine.dispatch`): each job is recorded in the audit as "queued" under its parent run, and its
message on `cluster-jobs` is `{"jobId": ...}`. The Functions host spreads the messages over its
instances by queue length, and host.json's `batchSize` bounds how many run at once per instance.

Here a job is checked against its record (the message is a request, not an authority: a job ID
the audit does not hold as a queued job under an existing parent writes nothing and is audited as
refused), its scopes are planned again (the parent's plan may be minutes old), and the writes are
made under the cluster's lease, within the run's deadline. A job that runs out of time or loses its
lease ends `incomplete` and queues its continuation (the next part of the same job), which plans
and writes the rest. A job that ends without converging makes the next timer cycle a full read.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from shared import app as wiring
from shared.adapters.queues import CLUSTER_JOBS
from shared.core.config import select_scopes
from shared.core.errors import ConfigError, PermanentError, SyncError
from shared.core.scopes import Scope
from shared.engine.delta import Observed
from shared.engine.reconcile import Engine, RunReport, job_record
from shared.handlers.runs import FINISHED, MAX_ATTEMPTS, QUEUED, RUN_ID, _Annotated, refuse

log = logging.getLogger(__name__)

RUNNABLE = frozenset({QUEUED, "running", "abandoned"})  # running/abandoned: redelivered after a crash
_KEPT = ("started", "startedMs", "parentRunId", "parentStartedMs", "jobIndex", "part", "cluster", "scopes", "approveDeletes")


def run_cluster_job(body: str | bytes, *, dequeue_count: int = 1) -> RunReport | None:
    """Execute one queued cluster job; None when the message is refused or the job already ran."""
    engine = wiring.engine()
    try:
        data = json.loads(body)
        job_id = data["jobId"] if isinstance(data, dict) else None
        if not isinstance(job_id, str) or not RUN_ID.fullmatch(job_id):
            raise ValueError("expected {\"jobId\": ID}, the ID 1 to 100 letters, digits, '.', '_' or '-'")
    except (ValueError, KeyError) as error:
        refuse(engine, CLUSTER_JOBS, body, f"malformed: {error}")
        return None
    record = engine.audit.get_run(job_id)
    if record is not None and record.get("status") in FINISHED:
        log.info("job %s already %s; redelivered message ignored", job_id, record["status"])
        return None
    problem = _not_runnable(engine, job_id, record)
    if problem:
        refuse(engine, CLUSTER_JOBS, body, problem)
        return None
    scopes = [Scope(s["cluster"], s.get("database")) for s in record["scopes"]]
    # An earlier attempt that died (or failed and was retried) keeps the changes it recorded.
    audit = _Annotated(engine.audit, {k: record[k] for k in _KEPT if k in record}, len(record.get("changes") or []))
    try:
        report = dataclasses.replace(engine, audit=audit).run(
            trigger="job", approve_deletes=bool(record.get("approveDeletes")), run_id=job_id,
            selection=select_scopes(engine.config, scopes), observed=Observed(started_ms=int(record.get("parentStartedMs") or 0)))
    except (ConfigError, PermanentError) as error:
        log.error("job %s failed and will not be retried: %s", job_id, error)
        engine.force_full_read()
        return None
    except Exception as error:
        if dequeue_count < MAX_ATTEMPTS:
            audit.record_start(record | {"status": QUEUED, "finished": None,
                                         "error": f"attempt {dequeue_count} of {MAX_ATTEMPTS} failed: {error}; retrying"})
        else:
            engine.force_full_read()
        raise
    if report.status == "incomplete":
        queue_continuation(engine, record, scopes)
    elif not report.converged:
        engine.force_full_read()
    log.info("job %s %s: %s", job_id, report.status, report.counts())
    return report


def queue_continuation(engine: Engine, record: dict[str, Any], scopes: list[Scope]) -> str:
    """Record and queue the next part of an incomplete job; its ID."""
    following = job_record(record["parentRunId"], int(record["jobIndex"]), int(record["part"]) + 1,
                           record["cluster"], scopes, approve_deletes=bool(record.get("approveDeletes")),
                           parent_started_ms=int(record.get("parentStartedMs") or 0))
    engine.audit.create_run(following)
    engine.queues.send(CLUSTER_JOBS, {"jobId": following["runId"]})
    log.info("job %s incomplete: continued as %s", record["runId"], following["runId"])
    return following["runId"]


def _not_runnable(engine: Engine, job_id: str, record: dict[str, Any] | None) -> str | None:
    """Why the audit does not back this job, or None."""
    if record is None:
        return f"no job {job_id} was queued"
    parent_id = record.get("parentRunId")
    if not parent_id or not record.get("scopes") or not record.get("cluster"):
        return f"run {job_id} is not a cluster job"
    if record.get("status") not in RUNNABLE:
        return f"job {job_id} is {record.get('status')}, not queued"
    if engine.audit.get_run(parent_id) is None:
        return f"job {job_id} names a parent run {parent_id} the audit does not hold"
    try:
        if any(Scope(s["cluster"], s.get("database")).cluster_key != record["cluster"].casefold()
               for s in record["scopes"]):
            return f"job {job_id} has scopes outside its cluster"
    except (KeyError, TypeError, ValueError, SyncError) as error:
        return f"job {job_id} has unreadable scopes: {error}"
    return None
