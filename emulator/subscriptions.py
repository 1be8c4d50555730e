"""Microsoft Graph v1.0 ``subscriptions`` (change notifications) and the Event Grid partner topic
they deliver lifecycle events to.

Graph routes: ``GET /subscriptions``, ``POST /subscriptions`` (201), ``GET``/``PATCH``/``DELETE
/subscriptions/{id}`` and ``POST /subscriptions/{id}/reauthorize`` (204), validated as Graph does:
- ``resource`` groups, users, groups/{id} or users/{id}; ``changeType`` a comma list of updated
  and deleted (user and group notifications support only those two);
- ``notificationUrl`` (and ``lifecycleNotificationUrl``) https, or ``EventGrid:?azuresubscriptionid=
  <guid>&resourcegroup=…&partnertopic=…&location=…`` with all four parameters;
- ``expirationDateTime`` required, in the future, at most 41,760 minutes ahead for these directory
  resources (400 ExtensionError "Subscription expiration can only be 41760 minutes in the future.");
- ``clientState`` at most 128 characters;
- the app role the resource needs: Group.Read.All for groups, User.Read.All for users (403).
An expired subscription is gone (404, not listed). The ``clientState`` is echoed on creation only.

Event Grid: lifecycle events go, as CloudEvents, to the partner topic of the subscription's
``lifecycleNotificationUrl`` (a subscription without one gets none, as in Graph); the topic's
event subscription is the storage queue set with ``POST /_emulator/eventgrid {"queueUrl"}``
(a queue URL with a SAS), where each event becomes one base64 message. Every event is also kept
in ``GET /_emulator/eventgrid``.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from xml.sax.saxutils import escape

from .wire import HttpError, Response, Route, graph_error

META = "https://graph.microsoft.com/v1.0/$metadata"
MAX_MINUTES = 41760  # user, group and other directory resources
MAX_CLIENT_STATE = 128
CHANGE_TYPES = ("updated", "deleted")  # what user and group subscriptions support
RESOURCES = {"groups": "Group.Read.All", "users": "User.Read.All"}
EVENT_GRID_KEYS = ("azuresubscriptionid", "resourcegroup", "partnertopic", "location")
LIFECYCLE_TYPES = {
    "reauthorizationRequired": "Microsoft.Graph.SubscriptionReauthorizationRequired",
    "subscriptionRemoved": "Microsoft.Graph.SubscriptionRemoved",
    "missed": "Microsoft.Graph.SubscriptionMissed",
}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class Subscriptions:
    """The subscriptions, the partner topic's delivery queue and the events it received."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: dict[str, dict] = {}
        self.queue_url: str | None = None
        self.events: list[dict] = []

    def reset(self):
        with self.lock:
            self.items.clear()
            self.events.clear()
            self.queue_url = None

    def live(self) -> dict[str, dict]:
        """The subscriptions not yet expired (an expired one is gone, as in Graph)."""
        t = now()
        with self.lock:
            for sid in [sid for sid, s in self.items.items() if s["expires"] <= t]:
                del self.items[sid]
            return dict(self.items)


def event_grid_problem(url: str) -> str | None:
    _, sep, query = url.partition("?")
    if not sep:
        return "an EventGrid: URL needs its parameters"
    found = {k.lower(): v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    missing = [k for k in EVENT_GRID_KEYS if not found.get(k)]
    if missing:
        return f"the EventGrid: URL lacks {', '.join(missing)}"
    if not _GUID.match(found["azuresubscriptionid"]):
        return "azuresubscriptionid must be an Azure subscription ID"
    return None


def _url_problem(name: str, url) -> str | None:
    if not isinstance(url, str) or not url:
        return f"{name} is a required property for subscription creation."
    if url.lower().startswith("eventgrid:"):
        problem = event_grid_problem(url)
        return f"Invalid {name}: {problem}." if problem else None
    if not url.lower().startswith("https://"):
        return f"Invalid {name}: the URL must use https."
    return None


def _expiry(body: dict, t: dt.datetime) -> dt.datetime:
    raw = body.get("expirationDateTime")
    if raw is None:
        raise graph_error(400, "InvalidRequest", "expirationDateTime is a required property for subscription creation.")
    try:
        when = dt.datetime.fromisoformat(str(raw))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise graph_error(400, "InvalidRequest", f"Cannot convert the literal '{raw}' to the expected type 'Edm.DateTimeOffset'.")
    if when <= t:
        raise graph_error(400, "ExtensionError", "Subscription expiration must be in the future.")
    if when > t + dt.timedelta(minutes=MAX_MINUTES):
        raise graph_error(400, "ExtensionError", f"Subscription expiration can only be {MAX_MINUTES} minutes in the future.")
    return when


def routes(app):
    store: Subscriptions = app.subscriptions

    def not_found(sid):
        return graph_error(404, "ResourceNotFound", f"The object was not found. Subscription '{sid}' does not exist.")

    def as_json(s: dict, *, created: bool = False) -> dict:
        mi = app.state.directory.managed_identity
        return {"id": s["id"], "resource": s["resource"], "applicationId": mi["appId"], "changeType": s["changeType"],
                "clientState": s["clientState"] if created else None, "notificationUrl": s["notificationUrl"],
                "notificationQueryOptions": None, "lifecycleNotificationUrl": s["lifecycleNotificationUrl"],
                "expirationDateTime": iso(s["expires"]), "creatorId": mi["objectId"], "includeResourceData": False,
                "latestSupportedTlsVersion": "v1_2", "encryptionCertificate": None, "encryptionCertificateId": None,
                "notificationUrlAppId": None}

    def body_of(req) -> dict:
        try:
            body = req.json()
        except ValueError:
            raise graph_error(400, "BadRequest", "Unable to read JSON request payload.") from None
        if not isinstance(body, dict):
            raise graph_error(400, "BadRequest", "Unable to read JSON request payload.")
        return body

    def create(req):
        body = body_of(req)
        resource = str(body.get("resource") or "").strip("/")
        kind = resource.split("/")[0].lower()
        if not resource:
            raise graph_error(400, "InvalidRequest", "resource is a required property for subscription creation.")
        if kind not in RESOURCES or len(resource.split("/")) > 2:
            raise graph_error(400, "InvalidRequest", f"Resource '{resource}' is not supported.")
        app.require_graph_role(RESOURCES[kind])
        change = str(body.get("changeType") or "")
        kinds = [c.strip().lower() for c in change.split(",") if c.strip()]
        if not kinds:
            raise graph_error(400, "InvalidRequest", "changeType is a required property for subscription creation.")
        if any(k not in CHANGE_TYPES for k in kinds):
            raise graph_error(400, "ExtensionError", f"ChangeType '{change}' is not supported for resource '{resource}'; "
                                                     f"supported: {', '.join(CHANGE_TYPES)}.")
        for name in ("notificationUrl", "lifecycleNotificationUrl"):
            if name == "lifecycleNotificationUrl" and body.get(name) is None:
                continue
            problem = _url_problem(name, body.get(name))
            if problem:
                raise graph_error(400, "InvalidRequest", problem)
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > MAX_CLIENT_STATE):
            raise graph_error(400, "InvalidRequest", f"clientState must be a string of at most {MAX_CLIENT_STATE} characters.")
        sub = {"id": str(uuid.uuid4()), "resource": resource, "changeType": ",".join(kinds),
               "notificationUrl": body["notificationUrl"], "lifecycleNotificationUrl": body.get("lifecycleNotificationUrl"),
               "clientState": client_state, "expires": _expiry(body, now()), "needsReauthorization": False}
        with store.lock:
            store.items[sub["id"]] = sub
        return Response(201, {"@odata.context": f"{META}#subscriptions/$entity", **as_json(sub, created=True)})

    def listing(req):
        items = sorted(store.live().values(), key=lambda s: s["id"])
        return Response(200, {"@odata.context": f"{META}#subscriptions", "value": [as_json(s) for s in items]})

    def get(req, id):
        sub = store.live().get(id.lower())
        if sub is None:
            raise not_found(id)
        return Response(200, {"@odata.context": f"{META}#subscriptions/$entity", **as_json(sub)})

    def update(req, id):
        sub = store.live().get(id.lower())
        if sub is None:
            raise not_found(id)
        app.require_graph_role(RESOURCES[sub["resource"].split("/")[0].lower()])
        body = body_of(req)
        unknown = sorted(set(body) - {"expirationDateTime", "notificationUrl"})
        if unknown:
            raise graph_error(400, "InvalidRequest", f"Only expirationDateTime and notificationUrl can be updated, not {', '.join(unknown)}.")
        expires = _expiry(body, now()) if "expirationDateTime" in body else sub["expires"]
        if "notificationUrl" in body:
            problem = _url_problem("notificationUrl", body["notificationUrl"])
            if problem:
                raise graph_error(400, "InvalidRequest", problem)
        with store.lock:
            sub.update(expires=expires, notificationUrl=body.get("notificationUrl", sub["notificationUrl"]),
                       needsReauthorization=False)  # renewing also reauthorizes
        return Response(200, {"@odata.context": f"{META}#subscriptions/$entity", **as_json(sub)})

    def delete(req, id):
        with store.lock:
            if store.items.pop(id.lower(), None) is None:
                raise not_found(id)
        return Response(204)

    def reauthorize(req, id):
        sub = store.live().get(id.lower())
        if sub is None:
            raise not_found(id)
        app.require_graph_role(RESOURCES[sub["resource"].split("/")[0].lower()])
        with store.lock:
            sub["needsReauthorization"] = False
        return Response(204)

    return [
        Route(["GET"], "graph", "/subscriptions", r"/subscriptions", listing),
        Route(["POST"], "graph", "/subscriptions", r"/subscriptions", create),
        Route(["GET"], "graph", "/subscriptions/{id}", r"/subscriptions/(?P<id>[^/]+)", get),
        Route(["PATCH"], "graph", "/subscriptions/{id}", r"/subscriptions/(?P<id>[^/]+)", update),
        Route(["DELETE"], "graph", "/subscriptions/{id}", r"/subscriptions/(?P<id>[^/]+)", delete),
        Route(["POST"], "graph", "/subscriptions/{id}/reauthorize", r"/subscriptions/(?P<id>[^/]+)/reauthorize", reauthorize),
    ]


# -- admin ------------------------------------------------------------------------------------

def admin(app, path: str, method: str, body) -> Response | None:
    """``/_emulator/eventgrid`` and ``/_emulator/subscriptions/...``; None for other paths."""
    store: Subscriptions = app.subscriptions
    if path == "/_emulator/eventgrid":
        if method == "GET":
            with store.lock:
                return Response(200, {"queueUrl": store.queue_url is not None, "events": list(store.events)})
        if method == "POST":
            spec = body()
            url = spec.get("queueUrl") if isinstance(spec, dict) else None
            if url is not None and (not isinstance(url, str) or not url.lower().startswith(("http://", "https://"))):
                raise HttpError(400, {"error": "invalid delivery", "problems": ["queueUrl: must be a queue URL (with a SAS) or null"]})
            with store.lock:
                store.queue_url = url
            return Response(200, {"queueUrl": url is not None})
        raise HttpError(405, {"error": f"method {method} not allowed on '{path}'"})
    if path == "/_emulator/subscriptions/lifecycle" and method == "POST":
        spec = body()
        kind = spec.get("lifecycleEvent") if isinstance(spec, dict) else None
        if kind not in LIFECYCLE_TYPES:
            raise HttpError(400, {"error": "invalid lifecycle event",
                                  "problems": [f"lifecycleEvent: must be one of {', '.join(LIFECYCLE_TYPES)}"]})
        sub = _pick(store, spec)
        with store.lock:
            if kind == "subscriptionRemoved":
                store.items.pop(sub["id"], None)
            elif kind == "reauthorizationRequired":
                sub["needsReauthorization"] = True
        return Response(200, emit(app, sub, kind))
    if path == "/_emulator/subscriptions/expire" and method == "POST":
        spec = body()
        seconds = spec.get("inSeconds", 0) if isinstance(spec, dict) else None
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise HttpError(400, {"error": "invalid expiry", "problems": ["inSeconds: must be a number"]})
        sub = _pick(store, spec)
        with store.lock:
            sub["expires"] = now() + dt.timedelta(seconds=seconds)
        return Response(200, {"id": sub["id"], "expirationDateTime": iso(sub["expires"])})
    if path == "/_emulator/subscriptions" and method == "GET":
        with store.lock:
            items = [dict(s, expires=iso(s["expires"])) for s in store.items.values()]
        return Response(200, {"subscriptions": items})
    return None


def _pick(store: Subscriptions, spec: dict) -> dict:
    live = store.live()
    sid = spec.get("id")
    if sid is None and len(live) == 1:
        return next(iter(live.values()))
    sub = live.get(str(sid).lower()) if sid is not None else None
    if sub is None:
        raise HttpError(404, {"error": f"no live subscription {sid!r}" if sid else
                              f"{len(live)} live subscriptions: name one with 'id'"})
    return sub


def emit(app, sub: dict, kind: str) -> dict:
    """A lifecycle event as Graph publishes it to the subscription's partner topic, delivered to
    the topic's queue (when one is set). Returns {event, delivered, status}."""
    directory = app.state.directory
    event = {
        "id": str(uuid.uuid4()), "type": LIFECYCLE_TYPES[kind],
        "source": f"/tenants/{directory.tenant_id}/applications/{directory.managed_identity['appId']}",
        "subject": f"Subscriptions/{sub['id']}", "time": iso(now()), "datacontenttype": "application/json",
        "specversion": "1.0",
        "data": {"lifecycleEvent": kind, "subscriptionId": sub["id"], "resource": sub["resource"],
                 "subscriptionExpirationDateTime": iso(sub["expires"]), "clientState": sub["clientState"],
                 "tenantId": directory.tenant_id},
    }
    target = sub.get("lifecycleNotificationUrl") or ""
    if not target.lower().startswith("eventgrid:"):
        return {"event": event, "delivered": False, "status": "the subscription has no Event Grid lifecycleNotificationUrl"}
    with app.subscriptions.lock:
        app.subscriptions.events.append(event)
        queue_url = app.subscriptions.queue_url
    if queue_url is None:
        return {"event": event, "delivered": False, "status": "no queue set (POST /_emulator/eventgrid)"}
    return {"event": event, **_deliver(queue_url, event)}


def _deliver(queue_url: str, event: dict) -> dict:
    """Put Message on a storage queue: POST {queue}/messages?{sas} with the base64 event."""
    base, _, sas = queue_url.partition("?")
    text = base64.b64encode(json.dumps(event).encode()).decode()
    payload = f'<?xml version="1.0" encoding="utf-8"?><QueueMessage><MessageText>{escape(text)}</MessageText></QueueMessage>'
    req = urllib.request.Request(f"{base.rstrip('/')}/messages" + (f"?{sas}" if sas else ""), data=payload.encode(),
                                 method="POST", headers={"Content-Type": "application/xml", "x-ms-version": "2021-08-06"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return {"delivered": True, "status": resp.status}
    except (urllib.error.URLError, OSError) as exc:
        return {"delivered": False, "status": f"delivery failed: {exc}"}
