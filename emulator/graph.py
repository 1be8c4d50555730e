"""Microsoft Graph v1.0 routes: groups, members and transitive members (paged), users,
service principals and findTenantInformationByDomainName, with OData $select/$filter/$top."""
from __future__ import annotations

import base64
import json
import re
from urllib.parse import unquote

META = "https://graph.microsoft.com/v1.0/$metadata"
MAX_TOP = 999
DEFAULT_TOP = 100
CREATED = "2024-01-15T09:00:00Z"

ODATA_TYPES = {"user": "#microsoft.graph.user", "group": "#microsoft.graph.group", "servicePrincipal": "#microsoft.graph.servicePrincipal"}
CASTS = {"microsoft.graph.user": "user", "microsoft.graph.group": "group", "microsoft.graph.serviceprincipal": "servicePrincipal"}
COLLECTIONS = {"user": "users", "group": "groups", "servicePrincipal": "servicePrincipals"}

USER_DEFAULTS = ("businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
                 "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id")

# Properties each $filter may use: lower name -> (canonical, kind of literal)
FILTERABLE = {
    "group": {"displayname": "displayName", "mail": "mail", "securityenabled": "securityEnabled",
              "mailenabled": "mailEnabled", "id": "id", "mailnickname": "mailNickname"},
    "user": {"mail": "mail", "userprincipalname": "userPrincipalName", "displayname": "displayName", "id": "id",
             "usertype": "userType", "accountenabled": "accountEnabled"},
    "servicePrincipal": {"appid": "appId", "displayname": "displayName", "id": "id"},
}


def _nickname(obj) -> str:
    if obj.get("mail"):
        return obj["mail"].split("@")[0]
    return re.sub(r"[^A-Za-z0-9]", "", obj["displayName"]) or obj["id"][:8]


def _const(value):
    return lambda obj: value


# Per type: canonical property name -> getter. $select reads only what it needs.
PROPS = {
    "user": {
        "id": lambda o: o["id"], "businessPhones": lambda o: [], "displayName": lambda o: o["displayName"],
        "givenName": lambda o: o.get("givenName"), "jobTitle": lambda o: o.get("jobTitle"), "mail": lambda o: o["mail"],
        "mobilePhone": _const(None), "officeLocation": _const(None), "preferredLanguage": _const(None),
        "surname": lambda o: o.get("surname"), "userPrincipalName": lambda o: o["userPrincipalName"],
        "userType": lambda o: o["userType"], "accountEnabled": lambda o: o["accountEnabled"], "createdDateTime": _const(CREATED),
    },
    "group": {
        "id": lambda o: o["id"], "deletedDateTime": _const(None), "classification": _const(None), "createdDateTime": _const(CREATED),
        "description": lambda o: o["description"], "displayName": lambda o: o["displayName"],
        "groupTypes": lambda o: list(o["groupTypes"]), "mail": lambda o: o["mail"], "mailEnabled": lambda o: o["mailEnabled"],
        "mailNickname": _nickname, "securityEnabled": lambda o: o["securityEnabled"],
        "visibility": lambda o: "Private" if "Unified" in o["groupTypes"] else None, "onPremisesSyncEnabled": _const(None),
    },
    "servicePrincipal": {
        "id": lambda o: o["id"], "deletedDateTime": _const(None), "accountEnabled": _const(True), "appId": lambda o: o["appId"],
        "appDisplayName": lambda o: o["displayName"], "displayName": lambda o: o["displayName"],
        "servicePrincipalType": lambda o: o["servicePrincipalType"], "servicePrincipalNames": lambda o: [o["appId"]],
        "tags": lambda o: [],
    },
}
LOWER = {kind: {k.lower(): k for k in props} for kind, props in PROPS.items()}


def full_properties(kind: str, obj: dict) -> dict:
    return {k: get(obj) for k, get in PROPS[kind].items()}


def parse_select(req) -> list[str] | None:
    raw = req.query.get("$select")
    if raw is None:
        return None
    return [s.strip() for s in raw.split(",") if s.strip()]


def project(kind: str, obj: dict, select: list[str] | None, with_type: bool) -> dict:
    props = PROPS[kind]
    if select is None:
        names = USER_DEFAULTS if kind == "user" else props
    else:
        lower = LOWER[kind]
        names = ["id"] + [lower[s.lower()] for s in select if s.lower() in lower and s.lower() != "id"]
    out = {"@odata.type": ODATA_TYPES[kind]} if with_type else {}
    for name in names:
        out[name] = props[name](obj)
    return out


def parse_top(req) -> int:
    from .server import graph_error

    raw = req.query.get("$top")
    if raw is None:
        return DEFAULT_TOP
    try:
        top = int(raw)
    except ValueError:
        raise graph_error(400, "Request_BadRequest", f"Invalid value '{raw}' for query option '$top'.") from None
    if top < 1 or top > MAX_TOP:
        raise graph_error(400, "Request_BadRequest", f"Invalid page size specified: '{top}'. Must be between 1 and {MAX_TOP} inclusive.")
    return top


def encode_token(offset: int, version: int) -> str:
    raw = json.dumps({"o": offset, "v": version}, separators=(",", ":")).encode()
    return "X" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> int:
    from .server import graph_error

    try:
        if not token.startswith("X"):
            raise ValueError(token)
        body = token[1:]
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        offset = int(data["o"])
        if offset < 0:
            raise ValueError(offset)
        return offset
    except (ValueError, KeyError, TypeError):
        raise graph_error(400, "Request_BadRequest", "The specified page token value has expired or is invalid.") from None


def parse_filter(text: str, kind: str) -> list[tuple[str, object]]:
    """``prop eq 'literal'`` clauses joined by ``and``; anything else is refused like Graph."""
    from .server import graph_error

    clauses = re.split(r"\s+and\s+(?=(?:[^']*'[^']*')*[^']*$)", text.strip(), flags=re.IGNORECASE)
    out = []
    resource = COLLECTIONS[kind]
    for clause in clauses:
        m = re.match(r"^\s*([A-Za-z]+)\s+eq\s+(?:'((?:[^']|'')*)'|(true|false|null))\s*$", clause, re.IGNORECASE)
        if m is None:
            prop = re.match(r"^\s*(?:\w+\()?([A-Za-z]+)", clause)
            name = prop.group(1) if prop else clause
            if prop and name.lower() in FILTERABLE[kind] and re.search(r"\b(ne|gt|lt|ge|le|in|startswith|endswith)\b", clause, re.IGNORECASE) is None:
                raise graph_error(400, "BadRequest", f"Invalid filter clause: syntax error in '{clause.strip()}'.")
            raise graph_error(400, "Request_UnsupportedQuery",
                              f"Unsupported or invalid query filter clause specified for property '{name}' of resource '{resource}'.")
        prop = m.group(1)
        canon = FILTERABLE[kind].get(prop.lower())
        if canon is None:
            raise graph_error(400, "Request_UnsupportedQuery",
                              f"Unsupported or invalid query filter clause specified for property '{prop}' of resource '{resource}'.")
        if m.group(2) is not None:
            value: object = m.group(2).replace("''", "'")
        else:
            value = {"true": True, "false": False, "null": None}[m.group(3).lower()]
        out.append((canon, value))
    return out


def matches(full: dict, clauses) -> bool:
    for prop, value in clauses:
        have = full.get(prop)
        if isinstance(value, str):
            if not isinstance(have, str) or have.lower() != value.lower():
                return False
        elif have != value:
            return False
    return True


def routes(app):
    from .server import Response, Route, graph_error

    state = app.state

    def not_found(oid):
        return graph_error(404, "Request_ResourceNotFound",
                           f"Resource '{oid}' does not exist or one of its queried reference-property objects are not present.")

    def context(collection, select, entity):
        sel = f"({','.join(select)})" if select else ""
        return f"{META}#{collection}{sel}" + ("/$entity" if entity else "")

    def page(req, items, ctx, select, with_type, resolve=None):
        """items: a sequence of (kind, obj), or of ids with ``resolve(id) -> (kind, obj)``.
        Serves one page and a nextLink to the rest; only the page is resolved."""
        top = parse_top(req)
        token = req.query.get("$skiptoken")
        offset = decode_token(token) if token else 0
        chunk = items[offset:offset + top]
        if resolve is not None:
            chunk = [resolve(i) for i in chunk]
        body = {"@odata.context": ctx, "value": [project(k, o, select, with_type) for k, o in chunk]}
        if offset + top < len(items):
            params = [(k, v) for k, v in _raw_params(req) if k.lower() != "$skiptoken"]
            params.append(("$skiptoken", encode_token(offset + top, state.directory.version)))
            query = "&".join(f"{k}={v}" for k, v in params)
            body["@odata.nextLink"] = f"{req.base_url}{req.raw_path}?{query}"
        return Response(200, body)

    def get_group(req, id):
        select = parse_select(req)
        with state.lock:
            g = state.directory.groups.get(id.lower())
        if g is None:
            raise not_found(id)
        return Response(200, {"@odata.context": context("groups", select, True), **project("group", g, select, False)})

    def members(req, id, cast=None, transitive=False):
        select = parse_select(req)
        with state.lock:
            directory = state.directory
        g = directory.groups.get(id.lower())
        if g is None:
            raise not_found(id)
        want = CASTS.get(cast.lower()) if cast else None
        if cast and want is None:
            raise graph_error(400, "BadRequest", f"Resource not found for the segment '{cast}'.")
        ids = directory.member_ids(id, transitive, want)
        ctx = context(COLLECTIONS[want] if want else "directoryObjects", select, False)
        return page(req, ids, ctx, select, True, directory.get_object)

    def list_of(kind, table):
        def handler(req):
            select = parse_select(req)
            with state.lock:
                objects = list(table().values())
            raw = req.query.get("$filter")
            if raw is not None:
                clauses = parse_filter(raw, kind)
                objects = [o for o in objects if matches(full_properties(kind, o), clauses)]
            return page(req, [(kind, o) for o in objects], context(COLLECTIONS[kind], select, False), select, False)
        return handler

    def get_user(req, id):
        select = parse_select(req)
        d = state.directory
        u = d.users.get(id.lower()) or d.users_by_upn.get(id.lower())
        if u is None:
            raise not_found(id)
        return Response(200, {"@odata.context": context("users", select, True), **project("user", u, select, False)})

    def get_sp(req, id=None, app_id=None):
        select = parse_select(req)
        d = state.directory
        sp = d.service_principals.get(id.lower()) if id is not None else d.sp_by_app_id.get(app_id.replace("''", "'").lower())
        if sp is None:
            raise not_found(id if id is not None else app_id)
        return Response(200, {"@odata.context": context("servicePrincipals", select, True), **project("servicePrincipal", sp, select, False)})

    def get_directory_object(req, id):
        select = parse_select(req)
        kind, obj = state.directory.get_object(id)
        if kind is None:
            raise not_found(id)
        return Response(200, {"@odata.context": context("directoryObjects", select, True), **project(kind, obj, select, True)})

    def tenant_info(req, domain):
        info = state.directory.tenant_by_domain(domain.replace("''", "'"))
        if info is None:
            raise not_found(domain)
        return Response(200, {"@odata.context": f"{META}#microsoft.graph.tenantInformation", **info, "federationBrandName": None})

    cast = r"/(?P<cast>microsoft\.graph\.[A-Za-z]+)"
    return [
        Route(["GET"], "graph", "/groups", r"/groups", list_of("group", lambda: state.directory.groups)),
        Route(["GET"], "graph", "/groups/{id}", r"/groups/(?P<id>[^/()]+)", get_group),
        Route(["GET"], "graph", "/groups/{id}/members", r"/groups/(?P<id>[^/]+)/members", members),
        Route(["GET"], "graph", "/groups/{id}/members/{cast}", r"/groups/(?P<id>[^/]+)/members" + cast, members),
        Route(["GET"], "graph", "/groups/{id}/transitiveMembers", r"/groups/(?P<id>[^/]+)/transitiveMembers",
              lambda req, id: members(req, id, transitive=True)),
        Route(["GET"], "graph", "/groups/{id}/transitiveMembers/{cast}", r"/groups/(?P<id>[^/]+)/transitiveMembers" + cast,
              lambda req, id, cast: members(req, id, cast, transitive=True)),
        Route(["GET"], "graph", "/users", r"/users", list_of("user", lambda: state.directory.users)),
        Route(["GET"], "graph", "/users/{id}", r"/users/(?P<id>[^/]+)", get_user),
        Route(["GET"], "graph", "/servicePrincipals", r"/servicePrincipals", list_of("servicePrincipal", lambda: state.directory.service_principals)),
        Route(["GET"], "graph", "/servicePrincipals(appId={appId})", r"/servicePrincipals\(appId='(?P<app_id>(?:[^']|'')*)'\)", get_sp),
        Route(["GET"], "graph", "/servicePrincipals/{id}", r"/servicePrincipals/(?P<id>[^/]+)", get_sp),
        Route(["GET"], "graph", "/directoryObjects/{id}", r"/directoryObjects/(?P<id>[^/]+)", get_directory_object),
        Route(["GET"], "graph", "/tenantRelationships/findTenantInformationByDomainName",
              r"/tenantRelationships/findTenantInformationByDomainName\(domainName='(?P<domain>(?:[^']|'')*)'\)", tenant_info),
    ]


def _raw_params(req):
    """The query parameters as sent (still percent-encoded), in order."""
    out = []
    for part in req.raw_query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((unquote(k), v))
    return out
