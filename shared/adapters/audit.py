"""Audit trail: every run and every change it made or tried, in Azure Table storage.

Two tables:
- `syncruns`: one entity per run under PartitionKey "run" (looked up by run ID), and a copy under
  PartitionKey "recent" whose RowKey sorts newest first (Table storage only sorts ascending). A
  cluster job (a run with `parentRunId`) has its copy under "jobs-<parent run ID>" instead, so the
  parent finds its jobs and the run history lists parents only. Claims ("claim", one per cluster)
  say which HTTP apply holds a cluster: taken by a conditional insert, or by a conditional replace
  (ETag) once their holder is done, so two applies can never both hold one.
- `syncchanges`: one entity per change, PartitionKey = run ID, RowKey = its position in the run
  (`first` + its index: a job delivered again after an attempt died writes after that attempt's
  changes, so the writes the dead attempt recorded stay in the audit).

A run is written when it starts (status "running"), before its first write (every write it will
make, result "intended"), again at every heartbeat while it runs (`heartbeatMs`, with `record_end`
and the results so far), and when it ends. A run still "running" whose heartbeat has lapsed died
with its process: readers see it as "abandoned" (the stored row is left as it was), and its
"intended" changes are the writes whose outcome it never recorded.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
import threading
from typing import Any, Callable, Protocol

from shared.core.errors import TransientError
from shared.adapters.tables import LazyTable

log = logging.getLogger(__name__)

RUNS_TABLE = "syncruns"
CHANGES_TABLE = "syncchanges"
_MAX_TEXT = 8000  # Table properties hold 64 KiB; keep error texts well inside it
_NEWEST_FIRST = 10**13  # RowKey = this minus the start time in ms, zero-padded
HEARTBEAT_MS = 60_000  # how often a running run rewrites its record
LAPSE_MS = 5 * HEARTBEAT_MS  # five missed beats: the process is gone (a busy host misses one or two)


class Audit(Protocol):
    def record_start(self, run: dict[str, Any]) -> None: ...
    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]], first: int = 0) -> None: ...
    def create_run(self, run: dict[str, Any]) -> bool: ...  # False (nothing written) when the ID exists
    def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]: ...
    def jobs(self, parent_id: str, changes: bool = True) -> list[dict[str, Any]]: ...
    def claim(self, key: str, run_id: str, free: Callable[[str, int], bool]) -> str | None: ...


class MemoryAudit:
    """Audit kept in memory: for the CLI without storage and for tests."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, list[dict[str, Any]]] = {}
        self.claims: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def record_start(self, run: dict[str, Any]) -> None:
        self.runs[run["runId"]] = dict(run)

    def create_run(self, run: dict[str, Any]) -> bool:
        with self._lock:
            if run["runId"] in self.runs:
                return False
            self.runs[run["runId"]] = dict(run)
            return True

    def jobs(self, parent_id: str, changes: bool = True) -> list[dict[str, Any]]:
        found = sorted((r for r in self.runs.values() if r.get("parentRunId") == parent_id), key=lambda r: r["runId"])
        return [seen(r) | ({"changes": self.changes.get(r["runId"], [])} if changes else {}) for r in found]

    def claim(self, key: str, run_id: str, free: Callable[[str, int], bool]) -> str | None:
        with self._lock:
            holder, since = self.claims.get(key, (None, 0))
            if holder is not None and holder != run_id and not free(holder, since):
                return holder
            self.claims[key] = (run_id, now_ms())
            return None

    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]], first: int = 0) -> None:
        """As in Table storage: a change is stored at its position, replaced, never deleted."""
        with self._lock:
            self.runs[run["runId"]] = dict(run)
            stored = self.changes.setdefault(run["runId"], [])
            stored[first:first + len(changes)] = [dict(c) for c in changes]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        return None if run is None else seen(run) | {"changes": self.changes.get(run_id, [])}

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        parents = [r for r in self.runs.values() if not r.get("parentRunId")]
        return [seen(r) for r in sorted(parents, key=lambda r: r["startedMs"], reverse=True)[:limit]]


class TableAudit:
    """Audit in Azure Table storage (Azurite locally)."""

    def __init__(self, service_client):
        self._runs = LazyTable(service_client.get_table_client(RUNS_TABLE))
        self._changes = LazyTable(service_client.get_table_client(CHANGES_TABLE))

    def probe(self) -> None:
        """Whether the runs table answers (the doctor): raises what the service answered otherwise."""
        from shared.adapters.tables import probe

        probe(lambda: next(iter(self._runs().query_entities("PartitionKey eq 'doctor-probe'", results_per_page=1)), None),
              f"table {RUNS_TABLE}")

    def record_start(self, run: dict[str, Any]) -> None:
        self._write_run(run)

    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]], first: int = 0) -> None:
        from azure.data.tables import TableTransactionError, UpdateMode

        entities = [
            {"PartitionKey": run["runId"], "RowKey": f"{index:06d}", **_flat(change)}
            for index, change in enumerate(changes, first)
        ]
        for batch_start in range(0, len(entities), 100):  # a table transaction takes 100 entities
            batch = [("upsert", e, {"mode": UpdateMode.REPLACE}) for e in entities[batch_start:batch_start + 100]]
            try:
                _call(self._changes().submit_transaction, batch)
            except TableTransactionError as error:
                raise TransientError(f"could not record the changes of run {run['runId']}: {error}") from error
        self._write_run(run)

    def _write_run(self, run: dict[str, Any]) -> None:
        from azure.data.tables import UpdateMode

        entity = _flat(run)
        _call(self._runs().upsert_entity, {"PartitionKey": "run", "RowKey": run["runId"], **entity}, mode=UpdateMode.REPLACE)
        self._write_copy(run, entity)

    def _write_copy(self, run: dict[str, Any], entity: dict[str, Any]) -> None:
        from azure.data.tables import UpdateMode

        if run.get("parentRunId"):
            key = {"PartitionKey": f"jobs-{run['parentRunId']}", "RowKey": run["runId"]}
        else:
            key = {"PartitionKey": "recent", "RowKey": f"{_NEWEST_FIRST - run['startedMs']:013d}-{run['runId']}"}
        _call(self._runs().upsert_entity, key | entity, mode=UpdateMode.REPLACE)

    def create_run(self, run: dict[str, Any]) -> bool:
        """Insert the run only if no run has its ID (Table storage's insert fails on an existing key)."""
        from azure.core.exceptions import ResourceExistsError

        entity = _flat(run)
        try:
            _call(self._runs().create_entity, {"PartitionKey": "run", "RowKey": run["runId"], **entity})
        except ResourceExistsError:
            return False
        self._write_copy(run, entity)
        return True

    def jobs(self, parent_id: str, changes: bool = True) -> list[dict[str, Any]]:
        """The parent's cluster jobs, each with its changes unless `changes` is false (then one query)."""
        rows = self._runs().query_entities("PartitionKey eq @p", parameters={"p": f"jobs-{parent_id}"})
        found = []
        for row in sorted(rows, key=lambda r: r["RowKey"]):
            job = seen(_plain(row))
            if changes:
                listed = self._changes().query_entities("PartitionKey eq @run", parameters={"run": row["RowKey"]})
                job |= {"changes": [_plain(c) for c in sorted(listed, key=lambda c: c["RowKey"])]}
            found.append(job)
        return found

    def claim(self, key: str, run_id: str, free: Callable[[str, int], bool]) -> str | None:
        """Make `run_id` the holder of `key` unless a holder that is not `free(holder, claimed_ms)`
        has it; return that holder. Insert-if-absent, or replace-if-unchanged (ETag), so of two
        callers racing for one key exactly one wins."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceExistsError
        from azure.data.tables import EdmType, UpdateMode

        row = {"PartitionKey": "claim", "RowKey": key, "runId": run_id, "claimedMs": (now_ms(), EdmType.INT64)}
        try:
            _call(self._runs().create_entity, row)
            return None
        except ResourceExistsError:
            pass
        current = _call(self._runs().get_entity, "claim", key)
        holder = current.get("runId")
        if holder != run_id and not free(holder, int(getattr(current.get("claimedMs"), "value", current.get("claimedMs")) or 0)):
            return holder
        try:
            _call(self._runs().update_entity, row, mode=UpdateMode.REPLACE,
                  etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        except HttpResponseError as error:
            if error.status_code != 412:
                raise
            return _call(self._runs().get_entity, "claim", key).get("runId")  # taken in between
        return None

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            run = seen(_plain(_call(self._runs().get_entity, "run", run_id)))
        except ResourceNotFoundError:
            return None
        changes = self._changes().query_entities("PartitionKey eq @run", parameters={"run": run_id})
        return run | {"changes": [_plain(c) for c in sorted(changes, key=lambda c: c["RowKey"])]}

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        pages = self._runs().query_entities("PartitionKey eq 'recent'", results_per_page=limit)
        runs = []
        for entity in pages:
            runs.append(seen(_plain(entity)))
            if len(runs) >= limit:
                break
        return runs


def seen(run: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """The run as readers see it: "running" with a lapsed heartbeat is "abandoned"."""
    if run.get("status") != "running":
        return run
    last = int(run.get("heartbeatMs") or run.get("startedMs") or 0)
    if (now_ms() if now is None else now) - last <= LAPSE_MS:
        return run
    return run | {"status": "abandoned", "error": run.get("error") or
                  f"no heartbeat for {LAPSE_MS // 60_000} minutes: the process running it died"}


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    """Table properties are scalars: nested values become JSON, long texts are cut."""
    import json

    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"))
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            value = value[:_MAX_TEXT] + "…"
        if isinstance(value, int) and not isinstance(value, bool) and not -2**31 <= value < 2**31:
            from azure.data.tables import EdmType

            value = (value, EdmType.INT64)  # a plain int is sent as Int32 and refused
        if value is not None:
            out[key] = value
    return out


def _plain(entity) -> dict[str, Any]:
    import json

    out = {}
    for key, value in dict(entity).items():
        if key in ("PartitionKey", "RowKey"):
            continue
        value = getattr(value, "value", value)  # Int64 properties come back wrapped
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out


def _call(fn, *args, **kwargs):
    """Storage throttling and outages are transient for the caller."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError

    try:
        return fn(*args, **kwargs)
    except ServiceRequestError as error:
        raise TransientError(f"table storage unreachable: {error}") from error
    except HttpResponseError as error:
        if error.status_code in (429, 500, 503):
            raise TransientError(f"table storage busy: {error.message}") from error
        raise


def now_ms() -> int:
    return int(time.time() * 1000)


def now_iso() -> str:
    """The current UTC time as the audit records it, e.g. 2026-11-23T18:25:04+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
