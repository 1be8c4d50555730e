"""The HTTP API as plain Python: plan now, apply as a queued run, the run history, and the
onboarding grants waiting for approval.

The Functions triggers turn their request into a `Request` and the `HttpResult` back into a
response; nothing here imports azure.functions. Errors are RFC 7807 problem+json, without stack
traces or secrets. docs/http-api.md describes every route.

Function keys guard the routes (the host enforces them). When `HTTP_REQUIRED_ROLE` is set, a
caller must also come through Easy Auth with that app role; `HTTP_APPROVER_ROLE` does the same for
applying with held deletes approved and for approving grants. The caller is read from
X-MS-CLIENT-PRINCIPAL only when the platform says Easy Auth is on (WEBSITE_AUTH_ENABLED):
otherwise anyone holding a function key could write that header.
"""
from __future__ import annotations

import base64
import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from shared import app as wiring
from shared.handlers import onboarding, runs
from shared.core.config import resolve_selector, valid_selectors
from shared.core.errors import ConfigError, TransientError
from shared.core.plan import Plan
from shared.core.settings import HttpSettings
from shared.engine.reconcile import new_run_id

log = logging.getLogger(__name__)

JSON, TEXT, PROBLEM = "application/json", "text/plain", "application/problem+json"
FIELDS = ("scope", "mode", "approveDeletes")
MAX_LIMIT = 100


@dataclass(frozen=True)
class Request:
    """What a handler needs of an HTTP request; header names lower-cased."""

    method: str
    path: str
    """The URL's path only: its query string can carry the function key (`?code=`)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    route_params: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def of(cls, req: Any) -> "Request":
        """From an azure.functions.HttpRequest (or anything shaped like one)."""
        headers = {k.lower(): v for k, v in req.headers.items()}
        return cls(req.method, urlsplit(req.url).path, headers, dict(req.params), dict(req.route_params), req.get_body() or b"")

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True)
class HttpResult:
    status: int
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON


class Problem(Exception):
    """An RFC 7807 answer, raised anywhere in a handler and rendered at its top."""

    def __init__(self, status: int, kind: str, title: str, detail: str, headers: Mapping[str, str] | None = None,
                 **extensions: Any):
        super().__init__(detail)
        self.status, self.headers = status, dict(headers or {})
        self.body = {"type": f"urn:kusto-access-sync:problem:{kind}", "title": title, "status": status,
                     "detail": detail, **extensions}

    def result(self) -> HttpResult:
        return HttpResult(self.status, json.dumps(self.body), self.headers, PROBLEM)


def _handler(fn: Callable[[Request], HttpResult]) -> Callable[[Request], HttpResult]:
    """Every failure becomes problem+json: settings/config and transient ones 503, the rest 500."""

    @functools.wraps(fn)
    def handle(req: Request) -> HttpResult:
        try:
            return fn(req)
        except Problem as problem:
            return problem.result()
        except ConfigError as error:
            return Problem(503, "invalid-configuration", "The app's settings or sync config are invalid",
                           f"{error.source} has {len(error.problems)} problem(s)", source=error.source,
                           problems=error.problems).result()
        except TransientError as error:
            wait = {"Retry-After": str(int(error.retry_after))} if error.retry_after is not None else {}
            return Problem(503, "unavailable", "A service the app depends on is unavailable, try again later",
                           str(error), wait).result()
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            return Problem(500, "internal", "Internal error",
                           "the request failed unexpectedly; the function's log has the details").result()

    return handle


# --- routes -------------------------------------------------------------------------------------

@_handler
def reconcile(req: Request) -> HttpResult:
    """POST /api/reconcile {scope?, mode: plan|apply, approveDeletes?}."""
    settings = HttpSettings.from_env()
    caller = _authorize(req, settings, settings.required_role)
    kind = _negotiate(req, (JSON, TEXT))
    scope, mode, approve = _reconcile_body(req)
    if mode == "apply" and approve and settings.approver_role:
        _authorize(req, settings, settings.approver_role)
    engine = wiring.engine()
    try:
        resolve_selector(engine.config, scope)
    except ConfigError as error:
        raise Problem(400, "unknown-scope", "Invalid scope", "; ".join(error.problems), scope=scope,
                      validScopes=valid_selectors(engine.config)) from None
    if mode == "plan":
        return _plan_result(engine.plan(scope, approve_deletes=approve), kind)
    busy = runs.in_progress(engine, scope)
    if busy:
        raise Problem(409, "run-in-progress", "A run is already in progress",
                      f"run {busy['runId']} ({busy['status']}) covers an overlapping cluster; "
                      "wait for it to finish", runId=busy["runId"], location=_location(busy["runId"]))
    request = runs.RunRequest(new_run_id(), scope, approve, caller.name if caller else None)
    holder = runs.claim(engine, scope, request.run_id)
    if holder:  # another apply got there in the same instant
        raise Problem(409, "run-in-progress", "A run is already in progress",
                      f"run {holder} covers an overlapping cluster; wait for it to finish",
                      runId=holder, location=_location(holder))
    record = runs.enqueue(engine, request)
    location = _location(request.run_id)
    if kind == TEXT:
        return HttpResult(202, f"run {request.run_id} queued: GET {location}\n", {"Location": location}, TEXT)
    return HttpResult(202, json.dumps(run_view(record)), {"Location": location})


@_handler
def health(req: Request) -> HttpResult:
    """GET /api/health (anonymous): settings and config. With ?deep=true, the doctor's preflight of
    the identity's permissions, for a caller authorised like /api/runs: because the route is
    anonymous, that takes HTTP_REQUIRED_ROLE (Easy Auth), never a function key."""
    from shared.core.settings import Settings
    from shared.handlers import health as shallow
    from shared.handlers.doctor import diagnose

    if req.params.get("deep", "").strip().lower() not in ("true", "1"):
        status, body = shallow.check()
        return HttpResult(status, json.dumps(body))
    settings = HttpSettings.from_env()
    role = settings.required_role
    if role is None:
        raise Problem(403, "forbidden", "Forbidden", "deep health reports the identity's permissions; on this anonymous "
                      "route it needs HTTP_REQUIRED_ROLE (Easy Auth); use `python -m shared doctor` otherwise")
    _authorize(req, settings, role)
    _negotiate(req, (JSON,))
    report = diagnose(wiring.engine(), Settings.from_env())
    return HttpResult(200 if report.ok else 503, json.dumps(report.as_json()))


@_handler
def get_run(req: Request) -> HttpResult:
    """GET /api/runs/{id}: the run's status, counts, changes with results and held deletes."""
    settings = HttpSettings.from_env()
    _authorize(req, settings, settings.required_role)
    _negotiate(req, (JSON,))
    run_id = req.route_params.get("id", "")
    audit = wiring.engine().audit
    record = audit.get_run(run_id) if runs.RUN_ID.fullmatch(run_id) else None
    if record is None:
        shown = run_id[:100]
        raise Problem(404, "run-not-found", "Run not found", f"no run has the ID '{shown}'", runId=shown)
    return HttpResult(200, json.dumps(run_view(runs.rolled_up(audit, record))))


@_handler
def list_runs(req: Request) -> HttpResult:
    """GET /api/runs?limit=N: the latest runs, newest first, without their changes."""
    settings = HttpSettings.from_env()
    _authorize(req, settings, settings.required_role)
    _negotiate(req, (JSON,))
    raw = req.params.get("limit", "20")
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        detail = f"limit must be an integer from 1 to {MAX_LIMIT}, got '{raw[:20]}'"
        raise Problem(400, "bad-limit", "Bad limit", detail)
    audit = wiring.engine().audit
    listed = [runs.rolled_up(audit, run, changes=False) for run in audit.list_runs(limit=int(raw))]
    return HttpResult(200, json.dumps({"runs": listed}))


_GRANT_STATUSES = ("pending", "approved", "granted", "denied", "expired", "all")


@_handler
def list_grants(req: Request) -> HttpResult:
    """GET /api/grants?status=pending: onboarding grants waiting for approval (or decided ones)."""
    settings = HttpSettings.from_env()
    _authorize(req, settings, settings.required_role)
    _negotiate(req, (JSON,))
    status = req.params.get("status", "pending")
    if status not in _GRANT_STATUSES:
        raise Problem(400, "bad-status", "Bad status",
                      f"status must be one of {', '.join(_GRANT_STATUSES)}, got '{status[:20]}'")
    found = onboarding.list_pending(wiring.engine(), None if status == "all" else status)
    return HttpResult(200, json.dumps({"grants": [p.as_json() for p in found]}))


@_handler
def approve_grant(req: Request) -> HttpResult:
    """POST /api/grants/{id}/approve {reason?}: release a pending grant; the onboarding queue writes it."""
    return _decide(req, "approve")


@_handler
def deny_grant(req: Request) -> HttpResult:
    """POST /api/grants/{id}/deny {reason}: reject a pending grant with the reason."""
    return _decide(req, "deny")


_APPROVAL_PROBLEMS = {"not-found": (404, "grant-not-found", "Pending grant not found"),
                      "decided": (409, "grant-decided", "The grant is already decided"),
                      "expired": (409, "grant-expired", "The grant waited too long and expired"),
                      "self-approval": (403, "self-approval", "The requester may not approve their own grant")}


def _decide(req: Request, verb: str) -> HttpResult:
    settings = HttpSettings.from_env()
    _authorize(req, settings, settings.required_role)
    if settings.approver_role is None:
        raise Problem(403, "approval-not-configured", "Approval is not configured",
                      "set HTTP_APPROVER_ROLE (with App Service authentication on) to approve or deny grants over "
                      "HTTP, or use the CLI")
    caller = _authorize(req, settings, settings.approver_role)
    _negotiate(req, (JSON,))
    reason = _decision_body(req, required=verb == "deny")
    grant_id = req.route_params.get("id", "")
    engine = wiring.engine()
    try:
        if verb == "approve":
            decided = onboarding.approve(engine, grant_id, approver=caller.name or caller.object_id or "?",
                                         approver_ids=caller.ids, reason=reason)
        else:
            decided = onboarding.deny(engine, grant_id, approver=caller.name or caller.object_id or "?", reason=reason)
    except onboarding.ApprovalError as error:
        status, kind, title = _APPROVAL_PROBLEMS[error.kind]
        raise Problem(status, kind, title, str(error), grantId=grant_id[:64]) from None
    return HttpResult(200, json.dumps(decided.as_json()))


def _decision_body(req: Request, *, required: bool) -> str | None:
    """The `reason` of an approval (optional) or denial (required), from a JSON body."""
    data: Any = {}
    if req.body.strip():
        try:
            data = json.loads(req.body)
        except ValueError:
            raise Problem(400, "malformed-body", "Malformed body", "the body is not valid JSON") from None
    reason = data.get("reason") if isinstance(data, dict) else None
    problems = [f"{key}: unknown field (allowed: reason)" for key in (data if isinstance(data, dict) else {})
                if key != "reason"]
    if not isinstance(data, dict):
        problems.append("the body must be a JSON object")
    elif reason is None and required:
        problems.append("reason: is required to deny a grant")
    elif reason is not None and (not isinstance(reason, str) or not reason.strip() or len(reason) > 1024
                                 or onboarding.unsafe_character(reason)):
        problems.append("reason: must be a non-empty string of at most 1024 characters, without control characters")
    if problems:
        raise Problem(400, "malformed-body", "Malformed body", "; ".join(problems), problems=problems)
    return reason.strip() if reason else None


# --- pieces -------------------------------------------------------------------------------------

def run_view(record: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it: the audit record, its changes and the deletes it held."""
    changes = record.get("changes", [])
    return record | {"changes": changes, "heldDeletes": [c for c in changes if c.get("result") == "held"]}


@dataclass(frozen=True)
class Caller:
    """An Easy Auth principal: its name, object ID and app roles."""

    name: str | None
    roles: frozenset[str]
    object_id: str | None = None

    @property
    def ids(self) -> frozenset[str]:
        """Every way a message's requestedBy may name this caller."""
        return frozenset(i for i in (self.name, self.object_id) if i)


_OBJECT_ID_TYPES = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")


def caller_of(req: Request, settings: HttpSettings | None = None) -> Caller | None:
    """The caller Easy Auth put in X-MS-CLIENT-PRINCIPAL (base64 JSON); None when absent, unreadable,
    or when the platform's authentication is off (then the header is whatever the caller wrote)."""
    settings = settings or HttpSettings.from_env()
    raw = req.header("x-ms-client-principal")
    if not raw or not settings.auth_enabled:
        return None
    try:
        data = json.loads(base64.b64decode(raw))
        claims = [(c["typ"], c["val"]) for c in data["claims"]]
    except (ValueError, TypeError, KeyError):
        return None
    role_types = {"roles", data.get("role_typ")}
    name_types = (data.get("name_typ"), "name", "preferred_username")
    name = req.header("x-ms-client-principal-name") or next((v for t, v in claims if t in name_types), None)
    object_id = req.header("x-ms-client-principal-id") or next((v for t, v in claims if t in _OBJECT_ID_TYPES), None)
    return Caller(name, frozenset(v for t, v in claims if t in role_types), object_id)


def _authorize(req: Request, settings: HttpSettings, role: str | None) -> Caller | None:
    caller = caller_of(req, settings)
    if role is None:
        return caller
    if not settings.auth_enabled:
        raise Problem(503, "authentication-disabled", "App Service authentication is off",
                      f"this request needs the app role '{role}', but App Service authentication is off "
                      "(WEBSITE_AUTH_ENABLED), so no caller's roles can be trusted", requiredRole=role)
    if caller is None:
        raise Problem(401, "unauthenticated", "Authentication required",
                      f"this request needs a signed-in caller (Easy Auth) with the app role '{role}'",
                      {"WWW-Authenticate": "Bearer"}, requiredRole=role)
    if role not in caller.roles:
        raise Problem(403, "forbidden", "Forbidden", f"the caller does not have the app role '{role}'",
                      requiredRole=role)
    return caller


def _negotiate(req: Request, offered: tuple[str, ...]) -> str:
    """The offered media type the Accept header prefers (the first offered when it has no preference)."""
    header = req.header("accept").strip()
    if not header:
        return offered[0]
    best, best_q = None, 0.0
    for item in header.split(","):
        media, *params = (p.strip().lower() for p in item.split(";"))
        q = next((_number(p[2:]) for p in params if p.startswith("q=")), 1.0)
        for kind in offered:
            if q > best_q and media in (kind, "*/*", kind.split("/")[0] + "/*"):
                best, best_q = kind, q
    if best is None:
        raise Problem(406, "not-acceptable", "Not acceptable",
                      f"this route answers {' or '.join(offered)}; the Accept header allows neither",
                      accepted=list(offered))
    return best


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _reconcile_body(req: Request) -> tuple[str | None, str, bool]:
    """(scope, mode, approveDeletes) from the JSON body; an empty body plans everything."""
    if not req.body.strip():
        return None, "plan", False
    media = req.header("content-type").split(";")[0].strip().lower()
    if media != JSON and not media.endswith("+json"):
        raise Problem(415, "unsupported-media-type", "Unsupported media type",
                      f"the body must be {JSON}, got '{media or 'no Content-Type'}'")
    try:
        data = json.loads(req.body)
    except ValueError:
        raise Problem(400, "malformed-body", "Malformed body", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "malformed-body", "Malformed body", "the body must be a JSON object")
    scope, mode, approve = data.get("scope"), data.get("mode", "plan"), data.get("approveDeletes", False)
    problems = [f"{key}: unknown field (allowed: {', '.join(FIELDS)})" for key in data if key not in FIELDS]
    if not (scope is None or isinstance(scope, str)):
        problems.append("scope: must be a string (a cluster resource ID, CLUSTER/DATABASE or a mapping name)")
    if mode not in ("plan", "apply"):
        problems.append(f"mode: must be 'plan' or 'apply', got {json.dumps(mode)[:50]}")
    if not isinstance(approve, bool):
        problems.append("approveDeletes: must be true or false")
    if problems:
        raise Problem(400, "malformed-body", "Malformed body", "; ".join(problems), problems=problems)
    return (scope or "").strip() or None, mode, approve


def _plan_result(the_plan: Plan, kind: str) -> HttpResult:
    if kind == TEXT:
        return HttpResult(200, "\n".join(the_plan.describe()) + "\n", content_type=TEXT)
    return HttpResult(200, json.dumps(the_plan.as_json()))


def _location(run_id: str) -> str:
    return f"/api/runs/{run_id}"
