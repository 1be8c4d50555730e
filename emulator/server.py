"""HTTP/TLS plumbing: request parsing, routing, bearer-token checks, injected faults and the
request log. The API modules (arm, graph, identity, admin) only see Request/Response."""
from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import uuid

from . import admin, arm, graph, identity, permissions, subscriptions
from .identity import TokenError, TokenIssuer, audiences_for
from .state import State
from .wire import HttpError, Request, Response, Route, arm_error, graph_error

DEFAULT_ARM_AUDIENCES = ["https://management.azure.com", "https://management.core.windows.net"]
DEFAULT_GRAPH_AUDIENCES = ["https://graph.microsoft.com"]
CLUSTER_PATH = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Kusto/clusters/(?P<cluster>[^/]+)",
                          re.IGNORECASE)
OPERATION_PATH = re.compile(r"^/subscriptions/[^/]+/providers/Microsoft\.Kusto/locations/[^/]+/operationResults/(?P<op>[^/]+)$", re.IGNORECASE)


class Faults:
    """Injected faults, consumed in order by matching requests."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: list[dict] = []

    def add(self, spec: dict) -> dict:
        problems = []
        method = spec.get("method", "*")
        if not isinstance(method, str):
            problems.append("method: must be an HTTP method or '*'")
        try:
            regex = re.compile(spec.get("path", ""))
        except (re.error, TypeError) as exc:
            problems.append(f"path: invalid regex: {exc}")
            regex = None
        status = spec.get("status")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            problems.append("status: must be an HTTP status code or null")
        count = spec.get("count", 1)
        if not isinstance(count, int) or count == 0 or count < -1:
            problems.append("count: must be a positive integer or -1 (forever)")
        for key in ("retryAfter", "latencyMs"):
            if spec.get(key) is not None and not isinstance(spec[key], (int, float)):
                problems.append(f"{key}: must be a number")
        if status is None and not spec.get("latencyMs"):
            problems.append("status: required unless latencyMs is given")
        for key in spec:
            if key not in ("method", "path", "status", "count", "retryAfter", "latencyMs", "body"):
                problems.append(f"{key}: unknown key")
        if problems:
            raise HttpError(400, {"error": "invalid fault", "problems": problems})
        fault = {
            "id": uuid.uuid4().hex[:12], "method": method.upper(), "path": spec.get("path", ""),
            "status": status, "count": count, "retryAfter": spec.get("retryAfter"),
            "latencyMs": spec.get("latencyMs") or 0, "body": spec.get("body"), "hits": 0, "_regex": regex,
        }
        with self.lock:
            self.items.append(fault)
        return self.public(fault)

    @staticmethod
    def public(fault: dict) -> dict:
        return {k: v for k, v in fault.items() if not k.startswith("_")}

    def list(self) -> list[dict]:
        with self.lock:
            return [self.public(f) for f in self.items]

    def clear(self):
        with self.lock:
            self.items.clear()

    def take(self, method: str, targets: tuple[str, ...]):
        with self.lock:
            for fault in self.items:
                if fault["method"] not in ("*", method):
                    continue
                if not any(fault["_regex"].search(t) for t in targets):
                    continue
                fault["hits"] += 1
                if fault["count"] > 0:
                    fault["count"] -= 1
                    if fault["count"] == 0:
                        self.items.remove(fault)
                return dict(fault)
        return None


class RequestLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries: list[dict] = []

    def add(self, entry: dict):
        with self.lock:
            self.entries.append(entry)

    def snapshot(self) -> dict:
        with self.lock:
            entries = list(self.entries)
        counts: dict[str, int] = {}
        for e in entries:
            counts[e["route"]] = counts.get(e["route"], 0) + 1
        return {"requests": entries, "counts": counts, "total": len(entries)}

    def clear(self):
        with self.lock:
            self.entries.clear()


class App:
    """Everything a handler needs: state, token issuer, options, faults, log and routes."""

    def __init__(self, data: dict, lro_polls: int = 0, lro_retry_after: int | None = None,
                 arm_audiences=None, graph_audiences=None, lro_seconds: float = 0.0):
        self.state = State(data)
        self.issuer = TokenIssuer(self.state.directory.tenant_id)
        self.identity_header = secrets.token_urlsafe(24)
        self.lro_polls = lro_polls
        self.lro_retry_after = lro_retry_after
        self.lro_seconds = lro_seconds
        self._lro_options = (lro_polls, lro_retry_after, lro_seconds)
        self.arm_audiences = audiences_for(arm_audiences or DEFAULT_ARM_AUDIENCES)
        self.graph_audiences = audiences_for(graph_audiences or DEFAULT_GRAPH_AUDIENCES)
        self.faults = Faults()
        self.log = RequestLog()
        self.operations = arm.Operations()
        self.subscriptions = subscriptions.Subscriptions()
        self.routes = {"arm": arm.routes(self), "graph": graph.routes(self) + subscriptions.routes(self), "identity": [
            Route(["GET"], "identity", "/msi/token", r"/msi/token", lambda req: identity.token_endpoint(self, req)),
        ]}

    def reset(self):
        self.lro_polls, self.lro_retry_after, self.lro_seconds = self._lro_options
        self.state.reset()
        self.operations.clear()
        self.subscriptions.reset()
        self.faults.clear()
        self.log.clear()

    @staticmethod
    def classify(path: str) -> str | None:
        low = path.lower()
        if low.startswith("/_emulator/") or low == "/_emulator":
            return "admin"
        if low.startswith("/subscriptions/") or low == "/subscriptions":
            return "arm"
        if low.startswith("/v1.0/") or low == "/v1.0":
            return "graph"
        if low.startswith("/msi/"):
            return "identity"
        return None

    def match(self, api: str, method: str, path: str):
        """(route, params, allowed_methods)."""
        allowed: set[str] = set()
        for route in self.routes.get(api, []):
            m = route.regex.match(path)
            if m is None:
                continue
            if method in route.methods:
                return route, m.groupdict(), route.methods
            allowed |= route.methods
        return None, {}, allowed

    def handle(self, req: Request) -> tuple[Response, dict | None]:
        """The response and the request-log entry (None for admin requests)."""
        api = self.classify(req.path)
        if api == "admin":
            try:
                return admin.handle(self, req), None
            except HttpError as exc:
                return exc.response, None
        path = req.path
        if api == "graph":
            path = path[len("/v1.0"):] or "/"
        route, params, allowed = self.match(api, req.method, path) if api else (None, {}, set())
        template = route.template if route else "<unmatched>"
        entry = {"method": req.method, "path": req.path, "query": req.raw_query, "status": None,
                 "api": api or "unknown", "route": f"{req.method} {api or 'unknown'} {template}"}
        try:
            resp = self._fault(api, req)
            if resp is None:
                resp = self._serve(api, req, route, params, allowed, path)
        except HttpError as exc:
            resp = exc.response
        except Exception as exc:  # a bug in the emulator must still answer like a service would
            resp = Response(500, {"error": {"code": "InternalServerError", "message": f"emulator error: {exc!r}"}})
        entry["status"] = resp.status
        return resp, entry

    def _fault(self, api, req):
        fault = self.faults.take(req.method, (req.target, urllib.parse.unquote(req.target)))
        if fault is None:
            return None
        if fault["latencyMs"]:
            time.sleep(fault["latencyMs"] / 1000.0)
        status = fault["status"]
        if status is None:
            return None
        headers = {}
        if fault["retryAfter"] is not None:
            headers["Retry-After"] = str(int(fault["retryAfter"]) if float(fault["retryAfter"]).is_integer() else fault["retryAfter"])
        body = fault["body"] if fault["body"] is not None else default_error_body(api, status)
        return Response(status, body, headers)

    def _serve(self, api, req, route, params, allowed, path):
        if api is None:
            raise arm_error(404, "NotFound", f"No service is emulated at '{req.path}'.")
        if api == "arm":
            arm.check_api_version(req, route)
            claims = self.check_token(api, req)
            if route is None:
                if allowed:
                    raise arm_error(405, "MethodNotAllowed", f"The requested resource does not support http method '{req.method}'.")
                raise arm_error(404, "InvalidResourceType", f"The resource type for path '{req.path}' could not be found in the namespace 'Microsoft.Kusto'.")
            self.authorize_arm(req, claims)
        elif api == "graph":
            self.check_token(api, req)
            if route is None:
                if allowed:
                    raise graph_error(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
                segment = next((s for s in path.split("/") if s), "")
                raise graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        elif route is None:
            raise HttpError(404, {"statusCode": 404, "message": f"No route for '{req.path}'."})
        return route.handler(req, **params)

    def authorize_arm(self, req: Request, claims: dict) -> None:
        """ARM RBAC: the request's action must be allowed on its cluster. A request about a
        cluster that does not exist goes on to the route's 404; listing one's own permissions
        needs no action."""
        action = permissions.arm_action(req.method, req.path)
        if action is None or action.lower().startswith("microsoft.authorization/"):
            return
        cluster = None
        m = CLUSTER_PATH.match(req.path)
        with self.state.lock:
            if m is not None:
                cluster, _ = self.state.find_cluster(m["sub"], m["rg"], m["cluster"])
            else:
                op = OPERATION_PATH.match(req.path)
                found = self.operations.items.get(op["op"].lower()) if op else None
                cluster = found["cluster"] if found else None
            if cluster is not None and not permissions.allows(cluster.permissions, action):
                raise permissions.authorization_failed(claims, action, req.path)

    def require_graph_role(self, role: str) -> None:
        """Graph's 403 when the managed identity's app roles do not include (or imply) `role`."""
        with self.state.lock:
            roles = list(self.state.graph_roles)
        if not permissions.GraphAccess(roles).has(role):
            raise permissions.denied()

    def check_token(self, api: str, req: Request) -> dict:
        audiences = self.arm_audiences if api == "arm" else self.graph_audiences
        try:
            return self.issuer.verify(req.headers.get("Authorization"), audiences)
        except TokenError as exc:
            raise token_refusal(api, exc, sorted(audiences), self.state.directory.tenant_id) from None


def token_refusal(api: str, exc: TokenError, audiences: list[str], tenant_id: str) -> HttpError:
    if api == "arm":
        if exc.kind == "missing":
            code, message = "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
        elif exc.kind == "audience":
            allowed = ",".join(f"'{a}'" for a in audiences)
            code = "InvalidAuthenticationTokenAudience"
            message = (f"The access token has been obtained for wrong audience or resource '{exc.claims.get('aud')}'. "
                       f"It should exactly match with one of the allowed audiences {allowed}.")
        elif exc.kind == "expired":
            code = "ExpiredAuthenticationToken"
            message = "The access token expiry UTC time is earlier than current UTC time."
        else:
            code, message = "InvalidAuthenticationToken", f"The access token is invalid. {exc}"
        challenge = (f'Bearer authorization_uri="https://login.microsoftonline.com/{tenant_id}", '
                     f'error="invalid_token", error_description="{message.replace(chr(34), chr(39))}"')
        return arm_error(401, code, message, {"WWW-Authenticate": challenge})
    if exc.kind == "missing":
        message = "Access token is empty."
    elif exc.kind == "audience":
        message = "Access token validation failure. Invalid audience."
    elif exc.kind == "expired":
        message = "Lifetime validation failed, the token is expired."
    else:
        message = "Access token validation failure."
    challenge = ('Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                 'client_id="00000003-0000-0000-c000-000000000000"')
    return graph_error(401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": challenge})


_STATUS_CODES = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
    429: "TooManyRequests", 500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def default_error_body(api: str | None, status: int):
    code = _STATUS_CODES.get(status, f"Http{status}")
    if api == "identity":
        return {"statusCode": status, "message": f"Injected fault: {code}.", "correlationId": str(uuid.uuid4())}
    if api == "graph":
        message = "Too many requests. Please retry after the time given in Retry-After." if status == 429 else f"Injected fault: {code}."
        return {"error": {"code": code, "message": message}}
    if status == 429:
        return {"error": {"code": "TooManyRequests", "message": "The request was throttled. Please retry after the time given in Retry-After."}}
    if status == 409:
        return {"error": {"code": "ServiceIsInMaintenance", "message": "Cluster is in process of maintenance. Please retry in a few minutes."}}
    return {"error": {"code": code, "message": f"Injected fault: {code}."}}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300
    server_version = "kusto-sync-emulator"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - per-request logging would swamp stderr
        pass

    def setup(self):
        super().setup()
        try:
            self.connection.do_handshake()
        except (ssl.SSLError, OSError):
            self.close_connection = True
            self.rfile = self.wfile = None

    def handle(self):
        if self.rfile is None:
            return
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, socket.timeout, OSError):
            pass

    def finish(self):
        if self.rfile is None:
            return
        try:
            super().finish()
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    def _dispatch(self):
        app: App = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        req = Request(self.command, self.path, self.headers, body, host)
        resp, entry = app.handle(req)
        if entry is not None:
            app.log.add(entry)
        self._send(req, resp, entry["api"] if entry else "admin")

    def _send(self, req: Request, resp: Response, api: str):
        headers = dict(resp.headers)
        if api == "arm":
            headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
            headers.setdefault("x-ms-correlation-request-id",
                               req.headers.get("x-ms-correlation-request-id") or req.headers.get("x-ms-client-request-id") or str(uuid.uuid4()))
        elif api == "graph":
            request_id = str(uuid.uuid4())
            client_request_id = req.headers.get("client-request-id") or request_id
            headers.setdefault("request-id", request_id)
            headers.setdefault("client-request-id", client_request_id)
            if resp.status >= 400 and isinstance(resp.body, dict) and isinstance(resp.body.get("error"), dict):
                resp.body["error"].setdefault("innerError", {
                    "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": request_id,
                    "client-request-id": client_request_id,
                })
        if resp.body is None:
            payload = b""
        elif isinstance(resp.body, bytes):
            payload = resp.body
        else:
            payload = json.dumps(resp.body, separators=(",", ":")).encode()
            ctype = "application/json; charset=utf-8"
            if api == "graph" and resp.status < 400:
                ctype = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
            headers.setdefault("Content-Type", ctype)
        if req.method == "HEAD":
            payload = b""
        self.send_response(resp.status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(app: App, ssl_context: ssl.SSLContext, port: int = 0) -> Server:
    server = Server(("127.0.0.1", port), Handler)
    # The handshake runs in the connection's own thread (Handler.setup), never in accept().
    server.socket = ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.app = app
    return server
