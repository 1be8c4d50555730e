"""What the emulator's HTTP plumbing (server) and its APIs (arm, graph, identity, admin) share:
the parsed request, the response, the error that becomes a response, and a route. A module of its
own, so the API modules never import the server that imports them."""
from __future__ import annotations

import json
import re
import urllib.parse


class Request:
    """One parsed HTTP request. ``query`` maps each parameter to its first value."""

    def __init__(self, method, target, headers, body, host):
        self.method = method
        self.target = target
        raw_path, _, self.raw_query = target.partition("?")
        self.raw_path = raw_path
        self.path = urllib.parse.unquote(raw_path)
        pairs = urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True)
        self.query = {}
        for k, v in pairs:
            self.query.setdefault(k, v)
        self.headers = headers
        self.body = body
        self.base_url = f"https://{host}"

    def json(self):
        if not self.body:
            return None
        return json.loads(self.body)


class Response:
    def __init__(self, status: int, body=None, headers: dict | None = None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class HttpError(Exception):
    """Raised by handlers to answer with an error response."""

    def __init__(self, status: int, body, headers: dict | None = None):
        super().__init__(f"{status}: {body}")
        self.response = Response(status, body, headers)


def arm_error(status: int, code: str, message: str, headers: dict | None = None) -> HttpError:
    return HttpError(status, {"error": {"code": code, "message": message}}, headers)


def graph_error(status: int, code: str, message: str, headers: dict | None = None) -> HttpError:
    return HttpError(status, {"error": {"code": code, "message": message}}, headers)


class Route:
    """``versions``: the api-versions an ARM route accepts, when not Microsoft.Kusto's."""

    def __init__(self, methods, api, template, pattern, handler, versions=None):
        self.versions = versions
        self.methods = set(methods)
        self.api = api
        self.template = template
        self.regex = re.compile("^" + pattern + "$", re.IGNORECASE)
        self.handler = handler
