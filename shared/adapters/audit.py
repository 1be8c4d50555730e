"""Audit trail: every run and every change it made or tried, in Azure Table storage.

Two tables:
- `syncruns`: one entity per run under PartitionKey "run" (looked up by run ID), and a copy under
  PartitionKey "recent" whose RowKey sorts newest first (Table storage only sorts ascending).
- `syncchanges`: one entity per change, PartitionKey = run ID, RowKey = its position in the run.

A run is written when it starts (status "running"), again at every heartbeat while it runs
(`heartbeatMs`), and when it ends. A run still "running" whose heartbeat has lapsed died with its
process: readers see it as "abandoned" (the stored row is left as it was).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Protocol

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
    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]]) -> None: ...
    def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]: ...


class MemoryAudit:
    """Audit kept in memory: for the CLI without storage and for tests."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.changes: dict[str, list[dict[str, Any]]] = {}

    def record_start(self, run: dict[str, Any]) -> None:
        self.runs[run["runId"]] = dict(run)

    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        self.runs[run["runId"]] = dict(run)
        self.changes[run["runId"]] = [dict(c) for c in changes]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        run = self.runs.get(run_id)
        return None if run is None else seen(run) | {"changes": self.changes.get(run_id, [])}

    def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return [seen(r) for r in sorted(self.runs.values(), key=lambda r: r["startedMs"], reverse=True)[:limit]]


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

    def record_end(self, run: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        from azure.data.tables import TableTransactionError, UpdateMode

        entities = [
            {"PartitionKey": run["runId"], "RowKey": f"{index:06d}", **_flat(change)}
            for index, change in enumerate(changes)
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
        recent = f"{_NEWEST_FIRST - run['startedMs']:013d}-{run['runId']}"
        _call(self._runs().upsert_entity, {"PartitionKey": "recent", "RowKey": recent, **entity}, mode=UpdateMode.REPLACE)

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
