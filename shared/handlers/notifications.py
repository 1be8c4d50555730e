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

Work per message is bounded: the events are de-duplicated by group before anything runs, each
affected mapping runs once, and a message of more than MAX_EVENTS events becomes one run over all
the affected mappings' scopes (one read of each group, however many events named it).

Lifecycle events of the app's Graph subscription (`data.lifecycleEvent` reauthorizationRequired,
subscriptionRemoved or missed; Event Grid type Microsoft.Graph.Subscription…) are answered by
shared.handlers.subscriptions. With GRAPH_EVENTS_CLIENT_STATE set, every event must carry that
clientState: a message with an event that does not is rejected with the reason.
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.core.config import select_scopes
from shared.core.errors import PermanentError
from shared.core.principals import is_guid
from shared.core.settings import Settings
from shared.core.subscriptions import parse_time
from shared.handlers import subscriptions

log = logging.getLogger(__name__)

TRIGGER = "graph-notification"
GROUP_EVENTS = ("Microsoft.Graph.GroupUpdated", "Microsoft.Graph.GroupDeleted")
CACHE_SECONDS = 600.0  # group names in the config are re-resolved to IDs this often
CLOCK_SKEW = timedelta(seconds=5)
MAX_EVENTS = 20  # more events in one message: one run over every affected mapping instead of one per mapping
LIFECYCLE_TYPES = {"microsoft.graph.subscriptionreauthorizationrequired": "reauthorizationRequired",
                   "microsoft.graph.subscriptionremoved": "subscriptionRemoved",
                   "microsoft.graph.subscriptionmissed": "missed"}

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


@dataclass(frozen=True)
class Lifecycle:
    event_id: str
    kind: str  # reauthorizationRequired | subscriptionRemoved | missed
    subscription_id: str | None
    tenant_id: str | None


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
                       parse_time(resource.get("eventTime") or event.get("time") or event.get("eventTime")))


def lifecycle_of(event: dict) -> Lifecycle | None:
    """The lifecycle event of the app's Graph subscription this event is; None for any other event."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    kind = data.get("lifecycleEvent") or LIFECYCLE_TYPES.get(str(event.get("type") or event.get("eventType")).casefold())
    if kind is None:
        return None
    if kind not in subscriptions.LIFECYCLE_EVENTS:
        raise PermanentError(f"graph notification {event.get('id')}: unknown lifecycleEvent {kind!r}")
    tenant = data.get("tenantId") or data.get("organizationId")
    return Lifecycle(str(event.get("id")), kind, data.get("subscriptionId"), str(tenant).lower() if tenant else None)


def check_client_state(events: list, secret: str | None) -> None:
    """With a secret configured, every event must carry it as data.clientState; PermanentError otherwise."""
    if not secret:
        return
    for event in events:
        data = event.get("data") if isinstance(event, dict) else None
        sent = data.get("clientState") if isinstance(data, dict) else None
        if not isinstance(sent, str):
            raise PermanentError(f"graph notification {event.get('id') if isinstance(event, dict) else '?'} carries "
                                 "no clientState, but GRAPH_EVENTS_CLIENT_STATE is set: it does not come from the "
                                 "app's Graph subscription")
        if not hmac.compare_digest(sent.encode(), secret.encode()):
            raise PermanentError(f"graph notification {event.get('id')}: its clientState does not match "
                                 "GRAPH_EVENTS_CLIENT_STATE: it does not come from the app's Graph subscription")


def handle(engine, data: Any, *, settings: Settings | None = None) -> list:
    """Answer the lifecycle events and reconcile the mappings of the groups the events name; the
    RunReports of the runs made. PermanentError (nothing done) for a malformed or foreign event."""
    settings = settings or Settings.from_env(require_config=False)
    events = data if isinstance(data, list) else [data]
    check_client_state(events, settings.graph_events_client_state)
    lifecycle, changes = [], []
    for event in events:  # everything parsed first: a malformed event rejects the message before any work
        found = lifecycle_of(event)
        if found is not None:
            lifecycle.append(found)
        elif (change := parse(event)) is not None:
            changes.append(change)
    reports = []
    for event in _distinct(lifecycle):
        if event.tenant_id and event.tenant_id != engine.home_tenant_id.lower():
            log.info("graph lifecycle event %s for tenant %s ignored", event.event_id, event.tenant_id)
            continue
        outcome = subscriptions.on_lifecycle(engine, event.kind, event.subscription_id, settings)
        log.info("graph lifecycle event %s (%s): %s", event.event_id, event.kind, outcome.detail)
        if outcome.report is not None:
            reports.append(outcome.report)
    return reports + _reconcile(engine, changes, len(events))


def _distinct(events: list[Lifecycle]) -> list[Lifecycle]:
    seen, out = set(), []
    for event in events:
        if (event.kind, event.subscription_id) not in seen:
            seen.add((event.kind, event.subscription_id))
            out.append(event)
    return out


def _reconcile(engine, changes: list[GroupChange], count: int) -> list:
    """One run per affected mapping, or one run for all of them when the message held more than
    MAX_EVENTS events; each group counted once, at its newest event."""
    newest: dict[str, GroupChange] = {}
    for change in changes:
        if change.tenant_id != engine.home_tenant_id.lower():
            log.info("graph notification %s for tenant %s ignored: the app serves tenant %s",
                     change.event_id, change.tenant_id, engine.home_tenant_id)
            continue
        seen = newest.get(change.group_id)
        if seen is None or _later(change.time, seen.time):
            newest[change.group_id] = change
    due: dict[str, GroupChange] = {}
    for group_id, change in newest.items():
        mappings = mappings_of(engine, group_id)
        if not mappings:
            log.info("graph notification %s ignored: no mapping names group %s", change.event_id, group_id)
        for name in mappings:
            if name not in due or _later(change.time, due[name].time):
                due[name] = change
    for name in list(due):
        last = _last_run.get((engine.config.version, name))
        if due[name].time and last and due[name].time < last - CLOCK_SKEW:
            log.info("graph notification %s: mapping %s was read after the change; nothing to do", due[name].event_id, name)
            del due[name]
    if count > MAX_EVENTS and len(due) > 1:
        names = [m.name for m in engine.config.mappings if m.name in due]
        scopes = {t.scope for m in engine.config.mappings if m.name in due for t in m.targets}
        log.info("graph notification: %d events in one message (more than %d): one run for mappings %s",
                 count, MAX_EVENTS, ", ".join(names))
        return [_run(engine, names, selection=select_scopes(engine.config, scopes))]
    return [_run(engine, [name]) for name in due]


def _run(engine, names: list[str], selection=None):
    started = datetime.now().astimezone()
    selector = ", ".join(names)
    report = engine.run(selector=selector if selection is not None else names[0], trigger=TRIGGER, selection=selection)
    log.info("graph notification: mapping(s) %s run %s %s", selector, report.run_id, report.status)
    if report.status == "succeeded":
        with _lock:
            for name in names:
                key = (engine.config.version, name)
                _last_run[key] = max(started, _last_run.get(key, started))
    return report


def _later(a: datetime | None, b: datetime | None) -> bool:
    """Whether `a` is newer than `b`; an unknown time counts as newest (nothing can cover it)."""
    return b is not None and (a is None or a > b)


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
