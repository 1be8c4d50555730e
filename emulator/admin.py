"""Admin routes under ``/_emulator/`` (no auth, never logged): faults, request log, state,
long-running-operation timing (``lro``) and the operations' history (``operations``),
reset, directory and cluster changes, the managed identity's permissions (``GET``/``POST
/_emulator/permissions``), delta-token expiry (``POST /_emulator/delta/expire``
with an optional ``{"mode": "expired"|"resync"}``), Graph subscriptions and their Event Grid
lifecycle events (emulator.subscriptions) and a token helper for tests."""
from __future__ import annotations

from .wire import HttpError, Response


def lro_settings(app) -> dict:
    return {"seconds": app.lro_seconds, "polls": app.lro_polls, "retryAfter": app.lro_retry_after}


def handle(app, req):
    path = req.path.rstrip("/").lower()
    method = req.method

    def body():
        try:
            return req.json() or {}
        except ValueError as exc:
            raise HttpError(400, {"error": "invalid JSON body", "problems": [str(exc)]}) from None

    from .subscriptions import admin as subscriptions_admin

    answer = subscriptions_admin(app, path, method, body)
    if answer is not None:
        return answer
    if path == "/_emulator/faults":
        if method == "GET":
            return Response(200, {"faults": app.faults.list()})
        if method == "POST":
            spec = body()
            specs = spec if isinstance(spec, list) else [spec]
            return Response(201, {"faults": [app.faults.add(s if isinstance(s, dict) else {"?": s}) for s in specs]})
        if method == "DELETE":
            app.faults.clear()
            return Response(204)
    elif path == "/_emulator/requests":
        if method == "GET":
            return Response(200, app.log.snapshot())
        if method == "DELETE":
            app.log.clear()
            return Response(204)
    elif path == "/_emulator/lro":
        if method == "GET":
            return Response(200, lro_settings(app))
        if method == "POST":
            spec = body()
            problems = [f"{key}: unknown key" for key in spec if key not in ("seconds", "polls", "retryAfter")]
            seconds, polls = spec.get("seconds", app.lro_seconds), spec.get("polls", app.lro_polls)
            retry = spec.get("retryAfter", app.lro_retry_after)
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
                problems.append("seconds: must be a number >= 0")
            if not isinstance(polls, int) or isinstance(polls, bool) or polls < 0:
                problems.append("polls: must be an integer >= 0")
            if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
                problems.append("retryAfter: must be an integer >= 0 or null")
            if problems:
                raise HttpError(400, {"error": "invalid LRO settings", "problems": problems})
            with app.state.lock:
                app.lro_seconds, app.lro_polls, app.lro_retry_after = float(seconds), polls, retry
            return Response(200, lro_settings(app))
    elif path == "/_emulator/operations":
        if method == "GET":
            with app.state.lock:
                return Response(200, {"operations": app.operations.history()})
    elif path == "/_emulator/state":
        if method == "GET":
            with app.state.lock:
                app.operations.settle_all()
                return Response(200, app.state.to_data())
    elif path == "/_emulator/reset":
        if method == "POST":
            with app.state.lock:
                app.reset()
            return Response(200, {"reset": True, "version": app.state.version})
    elif path == "/_emulator/directory":
        if method == "GET":
            with app.state.lock:
                return Response(200, {"version": app.state.version, "changes": list(app.state.changelog)})
        if method == "POST":
            problems = app.state.change_directory(body())
            if problems:
                raise HttpError(400, {"error": "invalid directory change", "problems": problems})
            return Response(200, {"version": app.state.version})
    elif path == "/_emulator/delta/expire":
        if method == "POST":
            spec = body()
            mode = spec.get("mode", "expired") if isinstance(spec, dict) else None
            if mode not in ("expired", "resync"):
                raise HttpError(400, {"error": "invalid delta expiry", "problems": ["mode: must be 'expired' or 'resync'"]})
            app.state.expire_delta(mode)
            return Response(200, {"expired": True, "mode": mode})
    elif path == "/_emulator/clusters":
        if method == "POST":
            from .arm import apply_cluster_change

            problems = apply_cluster_change(app, body())
            if problems:
                raise HttpError(400, {"error": "invalid cluster change", "problems": problems})
            return Response(200, {"ok": True})
    elif path == "/_emulator/permissions":
        if method == "GET":
            return Response(200, app.state.permissions())
        if method == "POST":
            problems = app.state.set_permissions(body())
            if problems:
                raise HttpError(400, {"error": "invalid permissions", "problems": problems})
            return Response(200, app.state.permissions())
    elif path == "/_emulator/token":
        if method == "POST":
            spec = body()
            aud = spec.get("aud")
            if not isinstance(aud, str):
                raise HttpError(400, {"error": "aud (string) is required"})
            roles = app.state.graph_roles if aud in app.graph_audiences else None
            token, exp = app.issuer.issue(aud, app.state.directory.managed_identity,
                                          lifetime=int(spec.get("expiresIn", 3600)), roles=roles)
            return Response(200, {"access_token": token, "expires_on": str(exp)})
    elif path == "/_emulator/health":
        return Response(200, {"ok": True})
    else:
        raise HttpError(404, {"error": f"unknown admin route '{req.path}'"})
    raise HttpError(405, {"error": f"method {method} not allowed on '{req.path}'"})

