"""The app's Microsoft Graph change-notification subscription: what it must look like and what to do
about the one Graph has (pure: no I/O).

One subscription per app, on `groups`, for `updated,deleted`, delivered to an Event Grid partner
topic (`notificationUrl` and `lifecycleNotificationUrl` both `EventGrid:?azuresubscriptionid=…&
resourcegroup=…&partnertopic=…&location=…`), with a `clientState` secret from the settings.

Facts it rests on (Microsoft Graph "subscription resource type" and "Receive Microsoft Graph API
change events through Azure Event Grid"):
- a subscription on user, group and other directory resources lives at most 41,760 minutes
  (under 29 days); Graph refuses a longer `expirationDateTime` with 400;
- an expired subscription stops delivering, silently; renewing is a PATCH of expirationDateTime;
- lifecycle events reach Event Grid only when `lifecycleNotificationUrl` was given at creation;
  it cannot be added later, so a subscription without it is replaced.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl

RESOURCE = "groups"
CHANGE_TYPE = "updated,deleted"
MAX_MINUTES = 41760  # user, group and other directory resources (under 29 days)
MAX_CLIENT_STATE = 128  # characters Graph keeps in clientState
# A renewal asks for the maximum minus this margin, so that a clock ahead of Graph's is not refused.
CLOCK_MARGIN = timedelta(minutes=10)
# Renewed once less than this is left: half the lifetime, so a run that fails (Graph down, a
# permission pulled) leaves two weeks of hourly retries before delivery stops.
RENEW_BEFORE = timedelta(minutes=MAX_MINUTES // 2)
# Less than this left and the subscription is reported unhealthy (doctor, health, the alert).
WARN_BEFORE = timedelta(days=1)

EVENT_GRID_KEYS = ("azuresubscriptionid", "resourcegroup", "partnertopic", "location")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9._()-]{1,90}$")  # resource group rules; topic names are narrower
_TOPIC = re.compile(r"^[A-Za-z0-9-]{3,50}$")
_LOCATION = re.compile(r"^[a-z0-9]{2,40}$")  # a region *name* (westeurope), never a display name


def event_grid_problems(url: str) -> list[str]:
    """What is wrong with an `EventGrid:?azuresubscriptionid=…&resourcegroup=…&partnertopic=…&location=…`
    URL, each problem once; [] when it is well formed."""
    prefix, sep, query = url.partition("?")
    if prefix.casefold() != "eventgrid:" or not sep:
        return ["must have the form EventGrid:?azuresubscriptionid=<guid>&resourcegroup=<name>"
                "&partnertopic=<name>&location=<region name>"]
    pairs = parse_qsl(query, keep_blank_values=True)
    found = {k.casefold(): v for k, v in pairs}
    problems = [f"unknown parameter '{k}'" for k in found if k not in EVENT_GRID_KEYS]
    problems += [f"'{k}' appears more than once" for k in EVENT_GRID_KEYS if sum(p[0].casefold() == k for p in pairs) > 1]
    checks = {"azuresubscriptionid": (_GUID, "an Azure subscription GUID"),
              "resourcegroup": (_NAME, "a resource group name"),
              "partnertopic": (_TOPIC, "a partner topic name (3-50 letters, digits and hyphens)"),
              "location": (_LOCATION, "an Azure region name such as westeurope (not a display name)")}
    for key, (pattern, what) in checks.items():
        value = found.get(key)
        if value is None:
            problems.append(f"'{key}' is missing")
        elif not pattern.match(value):
            problems.append(f"'{key}' must be {what}")
    return problems


@dataclass(frozen=True)
class Subscription:
    """A Graph subscription as the app sees it."""

    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_notification_url: str | None
    expires: datetime | None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> "Subscription":
        return cls(str(item.get("id")), str(item.get("resource") or ""), str(item.get("changeType") or ""),
                   str(item.get("notificationUrl") or ""), item.get("lifecycleNotificationUrl"),
                   parse_time(item.get("expirationDateTime")))

    def is_for(self, target: str) -> bool:
        """Made for this target: same resource and partner topic (whoever made it, by hand or the app)."""
        return (self.resource.strip("/").casefold() == RESOURCE
                and self.notification_url.casefold() == target.casefold())

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "expirationDateTime": iso(self.expires) if self.expires else None}


@dataclass(frozen=True)
class Decision:
    """What to do: `create` (when `keep` is None), `renew` or nothing with `keep`; `delete` the rest."""

    keep: Subscription | None
    renew: bool
    delete: tuple[Subscription, ...]
    reason: str

    @property
    def create(self) -> bool:
        return self.keep is None


def decide(existing: list[Subscription], target: str, now: datetime) -> Decision:
    """Exactly one subscription for the target: keep the one that lasts longest, renew it when less
    than RENEW_BEFORE is left, replace one that cannot carry lifecycle events, delete duplicates."""
    ours = sorted((s for s in existing if s.is_for(target)),
                  key=lambda s: (s.lifecycle_notification_url is not None, s.expires or now), reverse=True)
    if not ours:
        return Decision(None, False, (), "no subscription for the target")
    keep, rest = ours[0], tuple(ours[1:])
    if keep.lifecycle_notification_url is None:
        return Decision(None, False, tuple(ours), "no lifecycleNotificationUrl: lifecycle events would never arrive")
    if keep.expires is None or keep.expires - now < RENEW_BEFORE:
        return Decision(keep, True, rest, f"expires {iso(keep.expires) if keep.expires else 'at an unknown time'}")
    return Decision(keep, False, rest, f"valid until {iso(keep.expires)}")


def new_expiry(now: datetime) -> datetime:
    """The latest expirationDateTime Graph accepts for groups, less the clock margin."""
    return now + timedelta(minutes=MAX_MINUTES) - CLOCK_MARGIN


def health(subscription: Subscription | None, now: datetime) -> tuple[bool, str]:
    """(healthy, why): missing, or expiring within WARN_BEFORE, is unhealthy."""
    if subscription is None:
        return False, "no Graph subscription: group change events are not delivered (the timer sync still runs)"
    if subscription.expires is None or subscription.expires - now < WARN_BEFORE:
        return False, (f"Graph subscription {subscription.id} expires "
                       f"{iso(subscription.expires) if subscription.expires else 'at an unknown time'}, "
                       "within a day, and was not renewed")
    return True, f"Graph subscription {subscription.id} valid until {iso(subscription.expires)}"


def parse_time(value: Any) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else None


def iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
