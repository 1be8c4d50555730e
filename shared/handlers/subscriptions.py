"""The app's Graph subscription for group change events: kept alive by a timer, repaired by the
lifecycle events Graph sends, and reported by doctor and the deep health check.

- `maintain`: exactly one subscription on `groups` for GRAPH_EVENTS_TARGET: created when missing,
  renewed to the maximum Graph allows once half its life is gone, replaced when it cannot carry
  lifecycle events, duplicates deleted (shared.core.subscriptions decides). Listing the app's
  subscriptions every run also notices one Graph removed without telling anyone.
- `on_lifecycle`: `reauthorizationRequired` → POST /subscriptions/{id}/reauthorize (recreated if
  Graph no longer has it); `subscriptionRemoved` → created again; `missed` → a full read of every
  mapping (a groups subscription covers them all), which also renews the quick-cycle baseline.
- `status`: id, expiry and health, for doctor and /api/health?deep=true.

With GRAPH_EVENTS_TARGET unset nothing here calls Graph.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from shared.adapters.graph_subscriptions import GraphSubscriptions, Subscriptions
from shared.core.errors import NotFoundError, SyncError
from shared.core.settings import Settings
from shared.core.subscriptions import Subscription, decide, health, iso, new_expiry

log = logging.getLogger(__name__)

TRIGGER = "graph-lifecycle"
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
DISABLED = "GRAPH_EVENTS_TARGET is not set: no Graph change notifications"


@dataclass(frozen=True)
class Outcome:
    action: str  # disabled | created | renewed | unchanged | reauthorized | full-read | ignored
    subscription: Subscription | None
    detail: str
    report: Any = None  # the RunReport of a full read


def port_for(engine) -> Subscriptions:
    """The Graph subscriptions port over the engine's own Graph transport."""
    return GraphSubscriptions(engine.directory)


def run_timer(environ=None) -> Outcome:
    """The `graph_subscription` timer (hourly, so that a subscription Graph removed without a word
    is back within the hour). Builds nothing and calls nothing when the feature is off."""
    settings = Settings.from_env(environ)
    if not settings.graph_events_target:
        return Outcome("disabled", None, DISABLED)
    from shared.app import engine

    built = engine(environ)
    outcome = maintain(None, settings, engine=built)
    if outcome.subscription is not None and outcome.subscription.expires is not None:
        built.telemetry.graph_subscription(outcome.subscription.expires.timestamp())
    return outcome


def maintain(port: Subscriptions | None, settings: Settings, *, engine=None, now: datetime | None = None) -> Outcome:
    """Create, renew or repair the subscription; raises what the timer should report (typed errors)."""
    target, secret = settings.graph_events_target, settings.graph_events_client_state
    if not target or not secret:
        return Outcome("disabled", None, DISABLED)
    port = port or port_for(engine)
    now = now or datetime.now(timezone.utc)
    decision = decide(port.list(), target, now)
    for extra in decision.delete:
        _delete_quietly(port, extra.id)
    if decision.create:
        subscription = port.create(target, secret, new_expiry(now))
        outcome = Outcome("created", subscription, f"created ({decision.reason})")
    elif decision.renew:
        try:
            subscription = port.renew(decision.keep.id, new_expiry(now))
            outcome = Outcome("renewed", subscription, f"renewed ({decision.reason})")
        except NotFoundError:  # removed between the list and the renewal
            subscription = port.create(target, secret, new_expiry(now))
            outcome = Outcome("created", subscription, "created (gone before it could be renewed)")
    else:
        outcome = Outcome("unchanged", decision.keep, decision.reason)
    expires = outcome.subscription.expires if outcome.subscription else None
    log.info("graph subscription %s %s, expires %s%s", outcome.subscription.id if outcome.subscription else "-",
             outcome.action, iso(expires) if expires else "?",
             f"; {len(decision.delete)} duplicate(s) deleted" if decision.delete else "")
    return outcome


def on_lifecycle(engine, kind: str, subscription_id: str | None, settings: Settings, *,
                 port: Subscriptions | None = None, now: datetime | None = None) -> Outcome:
    """Answer one lifecycle event (already checked: tenant, clientState)."""
    if kind == "missed":
        report = engine.sync(trigger=TRIGGER, full=True)
        return Outcome("full-read", None, f"full read after missed notifications: run {report.run_id} {report.status}",
                       report)
    if not settings.graph_events_target:
        log.info("graph lifecycle event %s ignored: %s", kind, DISABLED)
        return Outcome("ignored", None, DISABLED)
    port = port or port_for(engine)
    if kind == "reauthorizationRequired" and subscription_id:
        try:
            port.reauthorize(subscription_id)
            log.info("graph subscription %s reauthorized", subscription_id)
            return Outcome("reauthorized", None, f"subscription {subscription_id} reauthorized")
        except NotFoundError:
            log.info("graph subscription %s to reauthorize is gone: making a new one", subscription_id)
    return maintain(port, settings, now=now)


def status(engine, settings: Settings, *, port: Subscriptions | None = None,
           now: datetime | None = None) -> dict[str, Any]:
    """{configured, healthy, id, expirationDateTime, detail} of the subscription, for doctor and
    /api/health?deep=true. One Graph call when configured, none otherwise."""
    if not settings.graph_events_target:
        return {"configured": False, "healthy": True, "id": None, "expirationDateTime": None, "detail": DISABLED}
    now = now or datetime.now(timezone.utc)
    try:
        found = [s for s in (port or port_for(engine)).list() if s.is_for(settings.graph_events_target)]
    except SyncError as error:
        return {"configured": True, "healthy": False, "id": None, "expirationDateTime": None,
                "detail": f"cannot list Graph subscriptions: {error}"}
    current = max(found, key=lambda s: s.expires or now, default=None)
    healthy, detail = health(current, now)
    return {"configured": True, "healthy": healthy, **(current.as_json() if current else
                                                       {"id": None, "expirationDateTime": None}), "detail": detail}


def _delete_quietly(port: Subscriptions, subscription_id: str) -> None:
    try:
        port.delete(subscription_id)
    except NotFoundError:
        pass
