"""Microsoft Graph `subscriptions`: list, create, renew, reauthorize and delete the app's change
notification subscription, through the Graph adapter's transport (same auth, retry and error typing).

The body of a subscription carries its clientState secret: nothing here logs a body.
"""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

from shared.adapters.directory import GraphDirectory
from shared.core.subscriptions import CHANGE_TYPE, RESOURCE, Subscription, iso


class Subscriptions(Protocol):
    """What the lifecycle handler needs from Graph; GraphSubscriptions implements it, tests use a fake."""

    def list(self) -> list[Subscription]: ...
    def create(self, target: str, client_state: str, expires: datetime) -> Subscription: ...
    def renew(self, subscription_id: str, expires: datetime) -> Subscription: ...
    def reauthorize(self, subscription_id: str) -> None: ...
    def delete(self, subscription_id: str) -> None: ...


class GraphSubscriptions:
    """Subscriptions over Graph v1.0 `/subscriptions` (an app sees the subscriptions it created)."""

    def __init__(self, graph: GraphDirectory):
        self.graph = graph

    def list(self) -> list[Subscription]:
        return [Subscription.from_json(item) for page in self.graph.iter_pages("/subscriptions") for item in page]

    def create(self, target: str, client_state: str, expires: datetime) -> Subscription:
        body = {"changeType": CHANGE_TYPE, "resource": RESOURCE, "notificationUrl": target,
                "lifecycleNotificationUrl": target, "expirationDateTime": iso(expires), "clientState": client_state}
        return Subscription.from_json(self.graph.send_json("POST", "/subscriptions", body) or {})

    def renew(self, subscription_id: str, expires: datetime) -> Subscription:
        body = self.graph.send_json("PATCH", f"/subscriptions/{subscription_id}", {"expirationDateTime": iso(expires)})
        return Subscription.from_json(body or {})

    def reauthorize(self, subscription_id: str) -> None:
        self.graph.send_json("POST", f"/subscriptions/{subscription_id}/reauthorize")

    def delete(self, subscription_id: str) -> None:
        self.graph.send_json("DELETE", f"/subscriptions/{subscription_id}")
