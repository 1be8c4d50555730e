"""Managed identity: the App Service style token endpoint (``GET /msi/token``) and the check
of the bearer tokens it issues (HS256 JWTs signed with a per-process secret)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid

from .wire import HttpError, Response


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenError(Exception):
    """A bearer token that is missing, malformed, forged, expired or for another audience."""

    def __init__(self, kind: str, message: str, claims: dict | None = None):
        super().__init__(message)
        self.kind = kind  # missing | invalid | expired | audience
        self.claims = claims or {}


class TokenIssuer:
    """Issues and verifies the emulator's access tokens."""

    def __init__(self, tenant_id: str, lifetime: int = 3600):
        self.secret = secrets.token_bytes(32)
        self.tenant_id = tenant_id
        self.lifetime = lifetime

    def issue(self, audience: str, managed_identity: dict, lifetime: int | None = None,
              roles: list[str] | None = None) -> tuple[str, int]:
        """A signed token; ``roles`` (the app roles granted on the audience's API) become the
        ``roles`` claim, as Entra puts them in app-only tokens."""
        now = int(time.time())
        exp = now + (self.lifetime if lifetime is None else lifetime)
        claims = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": exp,
            "tid": self.tenant_id,
            "oid": managed_identity["objectId"],
            "sub": managed_identity["objectId"],
            "appid": managed_identity["appId"],
            "idtyp": "app",
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
        }
        if roles:
            claims["roles"] = list(roles)
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = _b64(hmac.new(self.secret, signing_input, hashlib.sha256).digest())
        return f"{header}.{payload}.{signature}", exp

    def verify(self, authorization: str | None, audiences: set[str]) -> dict:
        """Claims of a valid token from an ``Authorization: Bearer`` header value."""
        if not authorization:
            raise TokenError("missing", "The 'Authorization' header is missing.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("invalid", "The 'Authorization' header is not a Bearer token.")
        parts = token.strip().split(".")
        if len(parts) != 3:
            raise TokenError("invalid", "The access token is not a well-formed JWT.")
        expected = _b64(hmac.new(self.secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, parts[2]):
            raise TokenError("invalid", "The access token signature is invalid.")
        try:
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            raise TokenError("invalid", "The access token payload is not JSON.") from None
        now = time.time()
        if claims.get("exp", 0) <= now:
            raise TokenError("expired", "The access token has expired.", claims)
        if claims.get("nbf", 0) > now + 300:
            raise TokenError("invalid", "The access token is not yet valid.", claims)
        if claims.get("aud") not in audiences:
            raise TokenError("audience", "The access token has been obtained for the wrong audience.", claims)
        return claims


def audiences_for(values: list[str]) -> set[str]:
    """Each audience with and without its trailing slash, as ARM and Graph accept both."""
    out: set[str] = set()
    for v in values:
        base = v.rstrip("/")
        out.update({base, base + "/"})
    return out


def token_endpoint(app, req):
    """``GET /msi/token?api-version=2019-08-01&resource=...`` as App Service answers it. Errors
    use App Service's ``{"statusCode", "message", "correlationId"}`` body, which MSAL parses."""
    def refuse(status, message):
        return HttpError(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})

    header = req.headers.get("X-IDENTITY-HEADER")
    if header is None:
        raise refuse(400, "Required header X-IDENTITY-HEADER is missing.")
    if not hmac.compare_digest(header.encode(), app.identity_header.encode()):
        raise refuse(401, "The X-IDENTITY-HEADER value is not valid.")
    api_version = req.query.get("api-version")
    if api_version != "2019-08-01":
        raise refuse(400, f"The api-version '{api_version}' is not supported; use 2019-08-01.")
    resource = req.query.get("resource")
    if not resource:
        raise refuse(400, "Required query parameter 'resource' is missing.")
    mi = app.state.directory.managed_identity
    for key, field in (("client_id", "appId"), ("object_id", "objectId"), ("principal_id", "objectId")):
        value = req.query.get(key)
        if value and value.lower() != mi[field].lower():
            raise refuse(400, f"No managed identity found for specified {key} '{value}'.")
    if req.query.get("mi_res_id"):
        raise refuse(400, "No managed identity found for the specified mi_res_id.")
    roles = app.state.graph_roles if resource in app.graph_audiences else None
    token, exp = app.issuer.issue(resource, mi, roles=roles)
    return Response(200, {
        "access_token": token,
        "expires_on": str(exp),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": mi["appId"],
    })
