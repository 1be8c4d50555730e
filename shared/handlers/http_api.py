"""The HTTP API as plain Python: plan now, apply as a queued run, and the run history.

The Functions triggers turn their request into a `Request` and the `HttpResult` back into a
response; nothing here imports azure.functions. Errors are RFC 7807 problem+json, without stack
traces or secrets. docs/http-api.md describes every route.

Function keys guard the routes (the host enforces them). When `HTTP_REQUIRED_ROLE` is set, a
caller must also come through Easy Auth with that app role; `HTTP_APPROVER_ROLE` does the same for
applying with held deletes approved.
"""
from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from shared import app as wiring
from shared.handlers import runs
from shared.core.config import resolve_selector, valid_selectors
from shared.core.errors import ConfigError, TransientError
from shared.core.plan import Plan
from shared.engine.reconcile import new_run_id

log = logging.getLogger(__name__)

JSON, TEXT, PROBLEM = "application/json", "text/plain", "application/problem+json"
FIELDS = ("scope", "mode", "approveDeletes")
MAX_LIMIT = 100
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")  # what a Table RowKey accepts and a run ID looks like


@dataclass(frozen=True)
class HttpSettings:
    """The app settings of the HTTP routes (role values as in the app registration; case matters)."""

    required_role: str | None = None
    """HTTP_REQUIRED_ROLE: app role every caller of reconcile and runs needs (unset: function keys only)."""
    approver_role: str | None = None
    """HTTP_APPROVER_ROLE: app role needed to apply with approveDeletes (unset: no extra role)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "HttpSettings":
        env = os.environ if environ is None else environ
        return cls(*((env.get(key) or "").strip() or None for key in ("HTTP_REQUIRED_ROLE", "HTTP_APPROVER_ROLE")))


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
    caller = _authorize(req, settings.required_role)
    kind = _negotiate(req, (JSON, TEXT))
    scope, mode, approve = _reconcile_body(req)
    if mode == "apply" and approve and settings.approver_role:
        _authorize(req, settings.approver_role)
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
    role = HttpSettings.from_env().required_role
    if role is None:
        raise Problem(403, "forbidden", "Forbidden", "deep health reports the identity's permissions; on this anonymous "
                      "route it needs HTTP_REQUIRED_ROLE (Easy Auth); use `python -m shared doctor` otherwise")
    _authorize(req, role)
    _negotiate(req, (JSON,))
    report = diagnose(wiring.engine(), Settings.from_env())
    return HttpResult(200 if report.ok else 503, json.dumps(report.as_json()))


@_handler
def get_run(req: Request) -> HttpResult:
    """GET /api/runs/{id}: the run's status, counts, changes with results and held deletes."""
    _authorize(req, HttpSettings.from_env().required_role)
    _negotiate(req, (JSON,))
    run_id = req.route_params.get("id", "")
    record = wiring.engine().audit.get_run(run_id) if _RUN_ID.fullmatch(run_id) else None
    if record is None:
        shown = run_id[:100]
        raise Problem(404, "run-not-found", "Run not found", f"no run has the ID '{shown}'", runId=shown)
    return HttpResult(200, json.dumps(run_view(record)))


@_handler
def list_runs(req: Request) -> HttpResult:
    """GET /api/runs?limit=N: the latest runs, newest first, without their changes."""
    _authorize(req, HttpSettings.from_env().required_role)
    _negotiate(req, (JSON,))
    raw = req.params.get("limit", "20")
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        detail = f"limit must be an integer from 1 to {MAX_LIMIT}, got '{raw[:20]}'"
        raise Problem(400, "bad-limit", "Bad limit", detail)
    return HttpResult(200, json.dumps({"runs": wiring.engine().audit.list_runs(limit=int(raw))}))


# --- pieces -------------------------------------------------------------------------------------

def run_view(record: dict[str, Any]) -> dict[str, Any]:
    """A run as the API shows it: the audit record, its changes and the deletes it held."""
    changes = record.get("changes", [])
    return record | {"changes": changes, "heldDeletes": [c for c in changes if c.get("result") == "held"]}


@dataclass(frozen=True)
class Caller:
    """An Easy Auth principal: its name and its app roles."""

    name: str | None
    roles: frozenset[str]


def caller_of(req: Request) -> Caller | None:
    """The caller Easy Auth put in X-MS-CLIENT-PRINCIPAL (base64 JSON), or None when absent or unreadable."""
    raw = req.header("x-ms-client-principal")
    if not raw:
        return None
    try:
        data = json.loads(base64.b64decode(raw))
        claims = [(c["typ"], c["val"]) for c in data["claims"]]
    except (ValueError, TypeError, KeyError):
        return None
    role_types = {"roles", data.get("role_typ")}
    name_types = (data.get("name_typ"), "name", "preferred_username")
    name = req.header("x-ms-client-principal-name") or next((v for t, v in claims if t in name_types), None)
    return Caller(name, frozenset(v for t, v in claims if t in role_types))


def _authorize(req: Request, role: str | None) -> Caller | None:
    caller = caller_of(req)
    if role is None:
        return caller
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
