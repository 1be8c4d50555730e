"""Microsoft Graph change notifications for groups, delivered by Event Grid to the onboarding queue.

Accepted shapes, one event per message or a JSON list of them:
- Event Grid schema: {"id", "topic", "subject", "eventType", "eventTime", "data", "dataVersion", ...}
- CloudEvents 1.0:   {"specversion", "id", "source", "subject", "type", "time", "data", ...}
with `type`/`eventType` Microsoft.Graph.GroupUpdated or Microsoft.Graph.GroupDeleted and `data`
{"changeType", "resource": "Groups/<id>", "resourceData": {"id", "organizationId", ...},
"tenantId", "subscriptionId", "clientState", ...}.

The event is only a hint: the mappings of that group are reconciled, and their membership is read
again from Graph as in any run. Events of another tenant, of other resource types, or of a group no
mapping names are ignored with a log line. A change inside a nested group raises an event for that
group only: it maps back to the configured groups containing it through the nesting the last full
sync saw (shared.engine.delta); nesting newer than that is caught by the scheduled sync.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.core.errors import PermanentError
from shared.core.principals import is_guid

log = logging.getLogger(__name__)

TRIGGER = "graph-notification"
GROUP_EVENTS = ("Microsoft.Graph.GroupUpdated", "Microsoft.Graph.GroupDeleted")
CACHE_SECONDS = 600.0  # group names in the config are re-resolved to IDs this often
CLOCK_SKEW = timedelta(seconds=5)

_lock = threading.Lock()
_groups: dict[tuple[str, str], tuple[float, dict[str, tuple[str, ...]]]] = {}
_last_run: dict[tuple[str, str], datetime] = {}  # (config version, mapping) -> start of the last good run


@dataclass(frozen=True)
class GroupChange:
    event_id: str
    event_type: str
    group_id: str
    tenant_id: str
    time: datetime | None


def is_event(data: Any) -> bool:
    """True for an Event Grid or CloudEvents event (or a list of them) rather than an onboarding message."""
    items = data if isinstance(data, list) else [data]
    return bool(items) and all(isinstance(e, dict) and ("eventType" in e or "specversion" in e) for e in items)


def parse(event: dict) -> GroupChange | None:
    """The group change an event reports; None for other event types; PermanentError when malformed."""
    kind = event.get("type") or event.get("eventType")
    if kind not in GROUP_EVENTS:
        log.info("graph notification %s of type %r ignored: only group events trigger a reconcile", event.get("id"), kind)
        return None
    data = event.get("data")
    resource = data.get("resourceData") if isinstance(data, dict) else None
    if not isinstance(resource, dict):
        raise PermanentError(f"graph notification {event.get('id')}: data.resourceData is missing")
    group_id = resource.get("id") or str(data.get("resource") or "").rpartition("/")[2]
    tenant_id = data.get("tenantId") or resource.get("organizationId")
    if not is_guid(str(group_id)) or not is_guid(str(tenant_id)):
        raise PermanentError(f"graph notification {event.get('id')}: resourceData.id and tenantId must be GUIDs")
    return GroupChange(str(event.get("id")), kind, group_id.lower(), tenant_id.lower(),
                       _time(resource.get("eventTime") or event.get("time") or event.get("eventTime")))


def handle(engine, data: Any) -> list:
    """Reconcile the mappings of every group the events name; the RunReports of the runs made."""
    reports = []
    for event in data if isinstance(data, list) else [data]:
        change = parse(event)
        if change is None:
            continue
        if change.tenant_id != engine.home_tenant_id.lower():
            log.info("graph notification %s for tenant %s ignored: the app serves tenant %s",
                     change.event_id, change.tenant_id, engine.home_tenant_id)
            continue
        mappings = mappings_of(engine, change.group_id)
        if not mappings:
            log.info("graph notification %s ignored: no mapping names group %s", change.event_id, change.group_id)
            continue
        for name in mappings:
            key = (engine.config.version, name)
            last = _last_run.get(key)
            if change.time and last and change.time < last - CLOCK_SKEW:
                log.info("graph notification %s: mapping %s was read after the change; nothing to do", change.event_id, name)
                continue
            started = datetime.now().astimezone()
            report = engine.run(selector=name, trigger=TRIGGER)
            log.info("graph notification %s: mapping %s run %s %s", change.event_id, name, report.run_id, report.status)
            if report.converged:
                with _lock:
                    _last_run[key] = max(started, _last_run.get(key, started))
            reports.append(report)
    return reports


def mappings_of(engine, group_id: str) -> tuple[str, ...]:
    """Names of the mappings whose group is `group_id`, or contains it as a nested group as seen by
    the last full sync (shared.engine.delta)."""
    found = set(_direct(engine).get(group_id.lower(), ()))
    state = engine.delta_state.load()
    if state is not None and state.config_version == engine.config.version:
        affected = state.affected({group_id.lower()})
        found |= {m.name for m in engine.config.mappings if state.group_ids.get(m.group.casefold()) in affected}
    return tuple(m.name for m in engine.config.mappings if m.name in found)


def _direct(engine) -> dict[str, tuple[str, ...]]:
    """Group ID -> names of the mappings naming it; group names are resolved once per CACHE_SECONDS."""
    key = (engine.config.version, engine.home_tenant_id.lower())
    with _lock:
        cached = _groups.get(key)
    if cached is None or time.monotonic() - cached[0] > CACHE_SECONDS:
        by_id: dict[str, tuple[str, ...]] = {}
        for mapping in engine.config.mappings:
            try:
                gid = mapping.group if is_guid(mapping.group) else engine.directory.find_group(mapping.group).id
            except PermanentError as error:
                log.warning("mapping %s: group %r cannot be resolved: %s", mapping.name, mapping.group, error)
                continue
            by_id[gid.lower()] = by_id.get(gid.lower(), ()) + (mapping.name,)
        cached = (time.monotonic(), by_id)
        with _lock:
            _groups[key] = cached
    return cached[1]


def _time(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else None
