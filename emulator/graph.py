"""Microsoft Graph v1.0 routes: groups, members and transitive members (paged), users,
service principals and findTenantInformationByDomainName, with OData $select/$filter/$top;
and ``GET /groups/delta`` (also ``/groups/microsoft.graph.delta`` and ``/groups/delta()``).

Delta, as documented for group: delta / delta query:
- first round (no token, or an empty ``$deltatoken``): every group (or the ``$filter=id eq 'a'
  or id eq 'b'`` ones, at most 50, more is 400 Request_UnsupportedQuery) with its ``$select``
  properties (all when no $select) and, when members are tracked (no $select, ``members`` in
  it, or ``$expand=members``), ``members@delta``: its DIRECT members as {@odata.type, id}
  (omitted for a group without members). Pages hold at most 200 objects and 500 member
  entries: a larger member list is split over several occurrences of the same group. Pages are
  linked by ``@odata.nextLink`` (``/v1.0/groups/delta?$skiptoken=``); the last one carries
  ``@odata.deltaLink`` (``/v1.0/groups/delta?$deltatoken=``). ``$deltatoken=latest`` answers
  just a deltaLink.
- a deltaLink round: the groups changed since the token's version, collapsed per group. Created
  groups as in the first round; changed ones with their properties and, in members@delta, only
  added members and removed ones (``"@removed": {"reason": "deleted"}``), the last change of a
  link winning; a group whose changes touch only untracked properties is left out; deleted
  groups as ``{"id", "@removed": {"reason": "changed"|"deleted"}}``. No change: empty value.
- tokens are base64 JSON of (generation, versions, filter, select, page). A garbage token, one
  from before ``POST /_emulator/reset`` or ``POST /_emulator/delta/expire`` is refused with
  400 syncStateNotFound; after ``/_emulator/delta/expire {"mode": "resync"}`` with 410
  resyncRequired and a Location header to restart the round. Pages of a round are served from
  the directory snapshot of the round's version, so changes made mid-round don't shift them.
"""
from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, unquote

from .permissions import BASIC_USER_PROPERTIES, GraphAccess, denied
from .wire import Response, Route, graph_error

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
        "visibility": lambda o: o.get("visibility") or ("Private" if "Unified" in o["groupTypes"] else None),
        "onPremisesSyncEnabled": _const(None),
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


def member_view(access: GraphAccess, kind: str, obj: dict, select: list[str] | None) -> dict:
    """A member as the roles let Graph show it: whole; a user's basic profile only (other
    properties null); or limited information, ``@odata.type`` and ``id`` with the rest null."""
    out = project(kind, obj, select, True)
    if not access.can_read(kind):
        keep = ("@odata.type", "id")
    elif kind == "user" and access.user_level() == "basic":
        keep = BASIC_USER_PROPERTIES | {"@odata.type"}
    else:
        return out
    return {k: (v if k in keep else None) for k, v in out.items()}


def hidden(group: dict) -> bool:
    return group.get("visibility") == "HiddenMembership"


def parse_top(req) -> int:
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


DELTA_MAX_IDS = 50
DELTA_PAGE_OBJECTS = 200
DELTA_PAGE_MEMBERS = 500
# Group properties Graph derives from stored ones: a change to these stored keys changes them too.
DERIVED = {"mailNickname": ("mail", "displayName"), "visibility": ("groupTypes",)}


def encode_delta(kind: str, data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return kind + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_delta(kind: str, token: str) -> dict | None:
    """The token's data, or None when it is not a ``kind`` token this emulator wrote."""
    try:
        if not token.startswith(kind):
            return None
        body = token[len(kind):]
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError):
        return None

    def strings(value):
        return value is None or (isinstance(value, list) and all(isinstance(x, str) for x in value))

    ok = (isinstance(data, dict) and isinstance(data.get("g"), str) and isinstance(data.get("v"), int)
          and strings(data.get("f")) and strings(data.get("s"))
          and isinstance(data.get("since"), (int, type(None))) and isinstance(data.get("p", 0), int))
    return data if ok else None


def parse_delta_filter(text: str) -> list[str]:
    """``id eq '<id>' or id eq '<id>'`` (the only filter delta supports), at most 50 ids."""
    clauses = re.split(r"\s+or\s+", text.strip(), flags=re.IGNORECASE)
    ids: list[str] = []
    for clause in clauses:
        m = re.match(r"^\s*\(?\s*id\s+eq\s+'([^']*)'\s*\)?\s*$", clause, re.IGNORECASE)
        if m is None:
            prop = re.match(r"^\s*(?:\w+\()?([A-Za-z]+)", clause)
            raise graph_error(400, "Request_UnsupportedQuery",
                              f"Unsupported or invalid query filter clause specified for property '{prop.group(1) if prop else clause}' of resource 'groups'.")
        if m.group(1).lower() not in ids:
            ids.append(m.group(1).lower())
    if len(clauses) > DELTA_MAX_IDS:
        raise graph_error(400, "Request_UnsupportedQuery",
                          f"Too many child clauses specified in search filter expression containing 'OR' operators: "
                          f"{len(clauses)}. Max allowed: {DELTA_MAX_IDS}.")
    return ids


def delta_items(directory, changes, ids, select, show_hidden: bool = True) -> list[tuple[dict, list]]:
    """(group object, members@delta entries) of one round: the whole state when ``changes`` is
    None, else the collapsed changes from ``State.group_changes``. Without ``show_hidden``
    (Member.Read.Hidden) hidden-membership groups come without members@delta."""
    tracks = select is None or any(s.lower() == "members" for s in select)

    def tracks_members(g):
        return tracks and (show_hidden or not hidden(g))
    props = None if select is None else [s for s in select if s.lower() != "members"]
    tracked = None if props is None else {LOWER["group"][p.lower()] for p in props if p.lower() in LOWER["group"]}

    def member(mid, kind, removed=False):
        entry = {"@odata.type": ODATA_TYPES[kind], "id": mid}
        return {**entry, "@removed": {"reason": "deleted"}} if removed else entry

    def whole(g):
        members = [member(m, directory.get_object(m)[0]) for m in directory.member_ids(g["id"], False)] if tracks_members(g) else []
        return project("group", g, props, False), members

    wanted = None if ids is None else set(ids)
    if changes is None:
        return [whole(g) for low, g in directory.groups.items() if wanted is None or low in wanted]
    items = []
    for low, c in changes.items():
        if wanted is not None and low not in wanted:
            continue
        g = directory.groups.get(low)
        if c["deleted"] or g is None:
            items.append(({"id": c["id"], "@removed": {"reason": c["reason"] or "changed"}}, []))
            continue
        if c["created"]:
            items.append(whole(g))
            continue
        members = [member(mid, kind, not added) for mid, kind, added in c["members"].values()] if tracks_members(g) else []
        changed = set(c["properties"]) | {name for name, keys in DERIVED.items() if c["properties"] & set(keys)}
        if members or (changed and (tracked is None or changed & tracked)):
            items.append((project("group", g, props, False), members))
    return items


def delta_pages(items) -> list[list[dict]]:
    """Pages of at most DELTA_PAGE_OBJECTS objects and DELTA_PAGE_MEMBERS member entries; a
    member list that does not fit continues in another occurrence of the same group."""
    pages: list[list[dict]] = []
    page: list[dict] = []
    links = 0
    for obj, members in items:
        done = 0
        while True:
            if len(page) >= DELTA_PAGE_OBJECTS or (members and links >= DELTA_PAGE_MEMBERS):
                pages.append(page)
                page, links = [], 0
            if not members:
                page.append(obj)
                break
            take = min(DELTA_PAGE_MEMBERS - links, len(members) - done)
            page.append({**obj, "members@delta": members[done:done + take]})
            links += take
            done += take
            if done == len(members):
                break
    pages.append(page)
    return pages


def parse_filter(text: str, kind: str) -> list[tuple[str, object]]:
    """``prop eq 'literal'`` clauses joined by ``and``; anything else is refused like Graph."""
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
    state = app.state

    def not_found(oid):
        return graph_error(404, "Request_ResourceNotFound",
                           f"Resource '{oid}' does not exist or one of its queried reference-property objects are not present.")

    def context(collection, select, entity):
        sel = f"({','.join(select)})" if select else ""
        return f"{META}#{collection}{sel}" + ("/$entity" if entity else "")

    def access():
        """The app roles in force now: a consent change counts from the next request on, whatever
        token the client holds."""
        with state.lock:
            return GraphAccess(state.graph_roles)

    def require(granted: bool):
        if not granted:
            raise denied()

    def page(req, items, ctx, select, with_type, resolve=None, view=None):
        """items: a sequence of (kind, obj), or of ids with ``resolve(id) -> (kind, obj)``.
        Serves one page and a nextLink to the rest; only the page is resolved. ``view(kind,
        obj, select)`` shapes each item (default: ``project``)."""
        top = parse_top(req)
        token = req.query.get("$skiptoken")
        offset = decode_token(token) if token else 0
        chunk = items[offset:offset + top]
        if resolve is not None:
            chunk = [resolve(i) for i in chunk]
        view = view or (lambda k, o, s: project(k, o, s, with_type))
        body = {"@odata.context": ctx, "value": [view(k, o, select) for k, o in chunk]}
        if offset + top < len(items):
            params = [(k, v) for k, v in _raw_params(req) if k.lower() != "$skiptoken"]
            params.append(("$skiptoken", encode_token(offset + top, state.directory.version)))
            query = "&".join(f"{k}={v}" for k, v in params)
            body["@odata.nextLink"] = f"{req.base_url}{req.raw_path}?{query}"
        return Response(200, body)

    def get_group(req, id):
        require(access().can_read("group"))
        select = parse_select(req)
        with state.lock:
            g = state.directory.groups.get(id.lower())
        if g is None:
            raise not_found(id)
        return Response(200, {"@odata.context": context("groups", select, True), **project("group", g, select, False)})

    def members(req, id, cast=None, transitive=False):
        roles = access()
        require(roles.can_read("group"))
        select = parse_select(req)
        with state.lock:
            directory = state.directory
        g = directory.groups.get(id.lower())
        if g is None:
            raise not_found(id)
        want = CASTS.get(cast.lower()) if cast else None
        if cast and want is None:
            raise graph_error(400, "BadRequest", f"Resource not found for the segment '{cast}'.")
        if not roles.has("Member.Read.Hidden"):
            # A hidden-membership group, or one nested in it, is not listed without Member.Read.Hidden.
            traversed = [g] + [directory.groups[m.lower()] for m in directory.member_ids(id, True, "group")] if transitive else [g]
            require(not any(hidden(x) for x in traversed))
        ids = directory.member_ids(id, transitive, want)
        ctx = context(COLLECTIONS[want] if want else "directoryObjects", select, False)
        return page(req, ids, ctx, select, True, directory.get_object, lambda k, o, s: member_view(roles, k, o, s))

    def list_of(kind, table):
        def handler(req):
            roles = access()
            # Listing users takes User.Read.All: User.ReadBasic.All is refused here (FACTS).
            require(roles.user_level() == "full" if kind == "user" else roles.can_read(kind))
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
        level = access().user_level()
        select = parse_select(req)
        require(level == "full" or (level == "basic" and (select is None or all(s in BASIC_USER_PROPERTIES for s in select))))
        d = state.directory
        u = d.users.get(id.lower()) or d.users_by_upn.get(id.lower())
        if u is None:
            raise not_found(id)
        body = project("user", u, select, False)
        if level == "basic":
            body = {k: v for k, v in body.items() if k in BASIC_USER_PROPERTIES}
        return Response(200, {"@odata.context": context("users", select, True), **body})

    def get_sp(req, id=None, app_id=None):
        require(access().can_read("servicePrincipal"))
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
        require(access().can_read(kind))
        return Response(200, {"@odata.context": context("directoryObjects", select, True), **project(kind, obj, select, True)})

    def deleted_item(req, id):
        """GET /directory/deletedItems/{id}: a soft-deleted object, typed; 404 for any other id
        (never deleted, or deleted permanently: every security and distribution group). Reading
        a deleted group needs Group.Read.All (the API's permissions table)."""
        select = parse_select(req)
        with state.lock:
            g = state.deleted_items.get(id.lower())
        if g is None:
            raise not_found(id)
        require(access().has("Group.Read.All"))
        body = project("group", g, select, True)
        if select is None or "deletedDateTime" in select:
            body["deletedDateTime"] = g["deletedDateTime"]
        return Response(200, {"@odata.context": context("directoryObjects", select, True), **body})

    def tenant_info(req, domain):
        require(access().has("CrossTenantInformation.ReadBasic.All"))
        info = state.directory.tenant_by_domain(domain.replace("''", "'"))
        if info is None:
            raise not_found(domain)
        return Response(200, {"@odata.context": f"{META}#microsoft.graph.tenantInformation", **info, "federationBrandName": None})

    def refused(req, data):
        """What Graph answers for a delta token it no longer has the sync state of."""
        if data is not None and data["g"] in state.delta_resync:
            params = [("$select", ",".join(data["s"])) if data.get("s") is not None else None,
                      ("$filter", " or ".join(f"id eq '{i}'" for i in data["f"])) if data.get("f") is not None else None]
            query = "".join(f"{k}={quote(v, safe=',')}&" for k, v in filter(None, params))
            return graph_error(410, "resyncRequired", "The delta token is no longer valid, and the app must reset the sync state.",
                               {"Location": f"{req.base_url}/v1.0/groups/delta?{query}$deltatoken="})
        return graph_error(400, "syncStateNotFound",
                           "The sync state generation is not found. The delta token is expired and data must be synchronized again.")

    def groups_delta(req):
        roles = access()
        require(roles.can_read("group"))
        skip, token = req.query.get("$skiptoken"), req.query.get("$deltatoken")
        with state.lock:
            generation, version = state.delta_generation, state.version
        if skip or token:
            kind = "S" if skip else "D"
            if kind == "D" and token.lower() == "latest":
                data = {"g": generation, "v": version, "f": _delta_ids(req), "s": _delta_select(req)}
                return Response(200, {"@odata.context": context("groups", None, False), "value": [],
                                      "@odata.deltaLink": _delta_link(req, "D", data)})
            data = decode_delta(kind, skip or token)
            if data is None or data["g"] != generation or data["v"] > version:
                raise refused(req, data)
            ids, select = data.get("f"), data.get("s")
            if kind == "D":
                since, until, page_no = data["v"], version, 0
            else:
                since, until, page_no = data.get("since"), data["v"], int(data.get("p", 0))
        else:
            ids, select = _delta_ids(req), _delta_select(req)
            since, until, page_no = None, version, 0
        with state.lock:
            directory = state.snapshots.get(until)
        if directory is None:  # a round older than the snapshots kept
            raise refused(req, None)
        changes = None if since is None else state.group_changes(since, until)
        pages = delta_pages(delta_items(directory, changes, ids, select, roles.has("Member.Read.Hidden")))
        body = {"@odata.context": context("groups", select, False),
                "value": pages[page_no] if page_no < len(pages) else []}
        base = {"g": generation, "f": ids, "s": select}
        if page_no + 1 < len(pages):
            body["@odata.nextLink"] = _delta_link(req, "S", {**base, "v": until, "since": since, "p": page_no + 1})
        else:
            body["@odata.deltaLink"] = _delta_link(req, "D", {**base, "v": until})
        return Response(200, body)

    cast = r"/(?P<cast>microsoft\.graph\.[A-Za-z]+)"
    return [
        Route(["GET"], "graph", "/groups/delta", r"/groups/(?:microsoft\.graph\.)?delta(?:\(\))?", groups_delta),
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
        Route(["GET"], "graph", "/directory/deletedItems/{id}", r"/directory/deletedItems/(?P<id>[^/()]+)", deleted_item),
        Route(["GET"], "graph", "/tenantRelationships/findTenantInformationByDomainName",
              r"/tenantRelationships/findTenantInformationByDomainName\(domainName='(?P<domain>(?:[^']|'')*)'\)", tenant_info),
    ]


def _delta_select(req) -> list[str] | None:
    select = parse_select(req)
    if (req.query.get("$expand") or "").strip().lower() == "members" and select is not None:
        select = select + ["members"]
    return select


def _delta_ids(req) -> list[str] | None:
    raw = req.query.get("$filter")
    return None if raw is None else parse_delta_filter(raw)


def _delta_link(req, kind: str, data: dict) -> str:
    param = "$skiptoken" if kind == "S" else "$deltatoken"
    return f"{req.base_url}/v1.0/groups/delta?{param}={encode_delta(kind, data)}"


def _raw_params(req):
    """The query parameters as sent (still percent-encoded), in order."""
    out = []
    for part in req.raw_query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        out.append((unquote(k), v))
    return out
