"""ARM Microsoft.Kusto routes: clusters, databases, cluster and database principal
assignments (with ARM long-running operations) and the operation-status endpoints."""
from __future__ import annotations

import datetime as dt
import time
import uuid

from .permissions import allows
from .state import ResolveError, build_assignment, identity_key
from .wire import Response, Route, arm_error

SUPPORTED_API_VERSIONS = (
    "2025-02-14", "2024-04-13", "2023-08-15", "2023-05-02", "2022-12-29", "2022-11-11", "2022-07-07", "2022-02-01",
)
DEFAULT_API_VERSION = "2025-02-14"
AUTHORIZATION_API_VERSIONS = ("2022-04-01", "2018-01-01-preview", "2015-07-01")

BASE = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Kusto/clusters/(?P<cluster>[^/]+)"
DB = BASE + r"/databases/(?P<db>[^/]+)"


def json_body(req):
    """The request's JSON, or ARM's answer to a body it cannot read."""
    try:
        return req.json()
    except ValueError as exc:
        raise arm_error(400, "InvalidRequestContent",
                        f"The request content was invalid and could not be deserialized: {exc}.") from None


def _now(at: dt.datetime | None = None) -> str:
    """Now (or `at`) as ARM writes times."""
    return (at or dt.datetime.now(dt.timezone.utc)).isoformat().replace("+00:00", "Z")


def check_api_version(req, route=None):
    supported = (route.versions if route is not None else None) or SUPPORTED_API_VERSIONS
    version = req.query.get("api-version")
    if not version:
        raise arm_error(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
    if version not in supported:
        raise arm_error(400, "InvalidApiVersionParameter",
                        f"The api-version '{version}' is invalid. The supported versions are '{','.join(supported)}'.")


class Operations:
    """Pending and finished ARM asynchronous operations, keyed by operation id.

    By default (`--lro-polls 0 --lro-seconds 0`) an operation is done when it starts. Otherwise it
    reports InProgress until it has been polled N times *and* S seconds of wall time have passed
    and, like Kusto, its cluster takes no other management operation meanwhile: 409
    ServiceIsInMaintenance. An operation nobody polls finishes by itself after its S seconds, or
    after ABANDONED_SECONDS when it waits for polls, so a client that died cannot block a cluster.
    Every operation is kept with its start and end (`history`), for tests and benchmarks that check
    how many ran on one cluster at once.
    """

    ABANDONED_SECONDS = 5.0

    def __init__(self):
        self.items: dict[str, dict] = {}

    def clear(self):
        self.items.clear()

    def start(self, kind, cluster, database, assignment, polls, seconds=0.0):
        for op in self.items.values():
            if op["cluster"] is cluster and op["status"] == "InProgress":
                self.settle(op)
                if op["status"] == "InProgress":
                    raise arm_error(409, "ServiceIsInMaintenance",
                                    f"Cluster '{cluster.name}' is in process of maintenance for a short period. "
                                    "You may retry to invoke the operation in a few minutes.")
        op_id = str(uuid.uuid4())
        now = time.monotonic()
        self.items[op_id] = {"id": op_id, "kind": kind, "cluster": cluster, "database": database,
                             "assignment": assignment, "polls_left": polls, "status": "InProgress",
                             "startTime": _now(), "endTime": None, "started": now, "due": now + seconds,
                             "polled": now if polls <= 0 else None, "ended": None}
        return self.items[op_id]

    def finish_if_instant(self, op) -> None:
        """Apply an operation that takes no polls and no time at once (after the caller has put its
        resource in place)."""
        self.settle(op)

    def settle(self, op) -> None:
        """Finish the operation if its time has come: polled enough and its seconds passed, or
        abandoned by its client."""
        if op["status"] != "InProgress":
            return
        now = time.monotonic()
        if op["polls_left"] > 0 and now - op["started"] > max(self.ABANDONED_SECONDS, op["due"] - op["started"]):
            op["polls_left"], op["polled"] = 0, now
        if op["polls_left"] == 0 and now >= op["due"]:
            self._finish(op)

    def poll(self, op):
        """Count one poll of the operation, then finish it if its time has come."""
        if op["status"] == "InProgress" and op["polls_left"] > 0:
            op["polls_left"] -= 1
            if op["polls_left"] == 0:
                op["polled"] = time.monotonic()
            return
        self.settle(op)

    @staticmethod
    def seconds_left(op) -> float:
        return max(0.0, op["due"] - time.monotonic()) if op["status"] == "InProgress" else 0.0

    @staticmethod
    def _finish(op):
        """Apply the operation's effect. It is settled lazily (at the next request that looks), but
        it ended when its seconds were up and its polls were in: that is the endTime ARM reports,
        while `ended` says when it was seen."""
        op["status"] = "Succeeded"
        ended = max(op["due"], op["polled"]) - op["started"]
        op["endTime"] = _now(dt.datetime.fromisoformat(op["startTime"]) + dt.timedelta(seconds=ended))
        op["ended"] = time.monotonic()
        if "effect" in op:  # an operation on another resource than an assignment (dataconnections.py)
            op["effect"]()
            return
        table = op["cluster"].scope_table(op["database"])
        key = op["assignment"]["name"].lower()
        if op["kind"] == "create":
            if table.get(key) is op["assignment"]:
                op["assignment"]["provisioningState"] = "Succeeded"
        elif table.get(key) is op["assignment"]:
            del table[key]

    def settle_all(self) -> None:
        for op in self.items.values():
            self.settle(op)

    def history(self) -> list[dict]:
        """Every operation with its cluster and its start and end (monotonic seconds; end None while
        it runs), oldest first."""
        self.settle_all()
        ops = sorted(self.items.values(), key=lambda op: op["started"])
        return [{"id": op["id"], "kind": op["kind"], "cluster": op["cluster"].name,
                 "database": op["database"], "name": (op["assignment"] or {}).get("name"), "status": op["status"],
                 "started": op["started"], "ended": op["ended"]} for op in ops]


def cluster_id(c) -> str:
    return f"/subscriptions/{c.subscription_id}/resourceGroups/{c.resource_group}/providers/Microsoft.Kusto/Clusters/{c.name}"


def cluster_resource(c) -> dict:
    loc = c.location.replace(" ", "").lower()
    return {
        "id": cluster_id(c),
        "name": c.name,
        "type": "Microsoft.Kusto/Clusters",
        "location": c.location,
        "sku": dict(c.sku),
        "properties": {
            "state": "Running",
            "provisioningState": "Succeeded",
            "uri": f"https://{c.name}.{loc}.kusto.windows.net",
            "dataIngestionUri": f"https://ingest-{c.name}.{loc}.kusto.windows.net",
            "enableStreamingIngest": False,
            "engineType": "V3",
        },
    }


def database_resource(c, db: str) -> dict:
    return {
        "id": f"{cluster_id(c)}/Databases/{db}",
        "name": f"{c.name}/{db}",
        "type": "Microsoft.Kusto/Clusters/Databases",
        "location": c.location,
        "kind": "ReadWrite",
        "properties": {"provisioningState": "Succeeded", "softDeletePeriod": "P365D", "hotCachePeriod": "P31D",
                       "statistics": {"size": 0.0}},
    }


def assignment_resource(c, db: str | None, a: dict) -> dict:
    props = {k: a[k] for k in ("principalId", "principalType", "role", "tenantId", "tenantName", "principalName", "aadObjectId", "provisioningState")}
    if db is None:
        return {"id": f"{cluster_id(c)}/PrincipalAssignments/{a['name']}", "name": f"{c.name}/{a['name']}",
                "type": "Microsoft.Kusto/Clusters/PrincipalAssignments", "properties": props}
    return {"id": f"{cluster_id(c)}/Databases/{db}/PrincipalAssignments/{a['name']}", "name": f"{c.name}/{db}/{a['name']}",
            "type": "Microsoft.Kusto/Clusters/Databases/PrincipalAssignments", "properties": props}


def locate(state, sub, rg, cluster, db=None):
    """(cluster, database name or None), or the 404 ARM answers for what is missing."""
    c, problem = state.find_cluster(sub, rg, cluster)
    if problem == "subscription":
        raise arm_error(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
    if problem == "resourceGroup":
        raise arm_error(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
    if problem == "cluster":
        raise arm_error(404, "ResourceNotFound",
                        f"The Resource 'Microsoft.Kusto/clusters/{cluster}' under resource group '{rg}' was not found. "
                        "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
    if db is not None and db.lower() not in c.databases:
        raise arm_error(404, "ResourceNotFound",
                        f"The Resource 'Microsoft.Kusto/clusters/{c.name}/databases/{db}' under resource group '{rg}' was not found. "
                        "For more details please go to https://aka.ms/ARMResourceNotFoundFix")
    return c, (c.databases[db.lower()] if db is not None else None)


def lro_headers(app, req, c, op) -> dict:
    """Azure-AsyncOperation and Location (and Retry-After, see retry_after) for an operation started by `req`."""
    loc = c.location.replace(" ", "").lower()
    version = req.query.get("api-version", DEFAULT_API_VERSION)
    base = f"{req.base_url}/subscriptions/{c.subscription_id}/providers/Microsoft.Kusto/locations/{loc}/operationResults/{op['id']}"
    headers = {"Azure-AsyncOperation": f"{base}?api-version={version}",
               "Location": f"{base}?api-version={version}&operationResultResponseType=Location"}
    return headers | retry_after(app, op)


def retry_after(app, op) -> dict:
    """Retry-After for an operation still in progress: the fixed `--lro-retry-after` when given,
    otherwise the whole seconds it has left. ARM documents Retry-After as the number of seconds
    to wait before checking the status, and a client that gets none uses its own interval, so
    under one second left none is sent (a rounded-up 1 would make a 0.2 s operation take 1 s)."""
    if op["status"] != "InProgress":
        return {}
    if app.lro_retry_after is not None:
        return {"Retry-After": str(app.lro_retry_after)}
    left = int(Operations.seconds_left(op))
    return {"Retry-After": str(left)} if left >= 1 else {}


def routes(app):
    state = app.state

    def find(sub, rg, cluster, db=None):
        return locate(state, sub, rg, cluster, db)

    def get_cluster(req, sub, rg, cluster):
        with state.lock:
            c, _ = find(sub, rg, cluster)
            return Response(200, cluster_resource(c))

    def list_clusters(req, sub, rg=None):
        with state.lock:
            found = [c for c in state.clusters if c.subscription_id.lower() == sub.lower()]
            if not found:
                raise arm_error(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
            if rg is not None:
                found = [c for c in found if c.resource_group.lower() == rg.lower()]
                if not found:
                    raise arm_error(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
            # ARM lists only the resources the caller may read.
            readable = [c for c in found if allows(c.permissions, "Microsoft.Kusto/Clusters/read")]
            return Response(200, {"value": [cluster_resource(c) for c in readable]})

    def list_databases(req, sub, rg, cluster):
        with state.lock:
            c, _ = find(sub, rg, cluster)
            return Response(200, {"value": [database_resource(c, d) for d in c.databases.values()]})

    def get_database(req, sub, rg, cluster, db):
        with state.lock:
            c, name = find(sub, rg, cluster, db)
            return Response(200, database_resource(c, name))

    def list_assignments(req, sub, rg, cluster, db=None):
        with state.lock:
            app.operations.settle_all()
            c, dbname = find(sub, rg, cluster, db)
            return Response(200, {"value": [assignment_resource(c, dbname, a) for a in c.scope_table(dbname).values()]})

    def not_found_assignment(c, dbname, name, rg):
        kind = f"clusters/{c.name}/principalAssignments/{name}" if dbname is None else f"clusters/{c.name}/databases/{dbname}/principalAssignments/{name}"
        return arm_error(404, "ResourceNotFound",
                         f"The Resource 'Microsoft.Kusto/{kind}' under resource group '{rg}' was not found. "
                         "For more details please go to https://aka.ms/ARMResourceNotFoundFix")

    def get_assignment(req, sub, rg, cluster, name, db=None):
        with state.lock:
            app.operations.settle_all()
            c, dbname = find(sub, rg, cluster, db)
            a = c.scope_table(dbname).get(name.lower())
            if a is None:
                raise not_found_assignment(c, dbname, name, rg)
            return Response(200, assignment_resource(c, dbname, a))

    def op_urls(req, c, op):
        return lro_headers(app, req, c, op)

    def put_assignment(req, sub, rg, cluster, name, db=None):
        scope = "cluster" if db is None else "database"
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
            raise arm_error(400, "InvalidRequestContent", "The request content was invalid: the 'properties' object is required.")
        with state.lock:
            c, dbname = find(sub, rg, cluster, db)
            table = c.scope_table(dbname)
            try:
                new = build_assignment(state.directory, body["properties"], name, scope)
            except (ValueError, ResolveError) as exc:
                raise arm_error(400, "BadRequest", str(exc)) from None
            existing = table.get(name.lower())
            if existing is not None:
                same = (existing["principalType"], identity_key(existing)) == (new["principalType"], identity_key(new))
                if same and existing["provisioningState"] != "Deleting":
                    return Response(200, assignment_resource(c, dbname, existing))
                raise arm_error(400, "BadRequest",
                                f"PrincipalAssignment resource '{existing['name']}' already exists with different properties. "
                                "Principal assignments cannot be updated; delete it and create a new one.")
            for other in table.values():
                if identity_key(other) == identity_key(new):
                    raise arm_error(400, "BadRequest",
                                    f"Cannot add PrincipalAssignment resource '{name}'. A PrincipalAssignment resource "
                                    f"(name: '{other['name']}') already exists with the same role and principal id")
            op = app.operations.start("create", c, dbname, new, app.lro_polls, app.lro_seconds)
            new["provisioningState"] = "Creating"
            table[name.lower()] = new
            response = Response(201, assignment_resource(c, dbname, new), op_urls(req, c, op))
            app.operations.finish_if_instant(op)
            return response

    def delete_assignment(req, sub, rg, cluster, name, db=None):
        with state.lock:
            c, dbname = find(sub, rg, cluster, db)
            a = c.scope_table(dbname).get(name.lower())
            if a is None:
                return Response(204)
            op = app.operations.start("delete", c, dbname, a, app.lro_polls, app.lro_seconds)
            a["provisioningState"] = "Deleting"
            response = Response(202, None, op_urls(req, c, op))
            app.operations.finish_if_instant(op)
            return response

    def check_name(req, sub, rg, cluster, db=None):
        expected = "Microsoft.Kusto/clusters/principalAssignments" if db is None else "Microsoft.Kusto/clusters/databases/principalAssignments"
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise arm_error(400, "InvalidRequestContent", "The request content was invalid: 'name' is required.")
        if str(body.get("type", "")).lower() != expected.lower():
            raise arm_error(400, "BadRequest", f"The type '{body.get('type')}' is not valid. Expected '{expected}'.")
        with state.lock:
            c, dbname = find(sub, rg, cluster, db)
            name = body["name"]
            if name.lower() in c.scope_table(dbname):
                return Response(200, {"nameAvailable": False, "name": name, "reason": "AlreadyExists",
                                      "message": f"Name '{name}' is already taken. Please specify a different name"})
            return Response(200, {"nameAvailable": True, "name": name})

    def list_permissions(req, sub, rg, cluster):
        """Permissions - List For Resource: the caller's effective actions on the cluster."""
        with state.lock:
            c, _ = find(sub, rg, cluster)
            perms = c.permissions
            return Response(200, {"value": [{"actions": list(perms.get("actions", [])), "notActions": list(perms.get("notActions", [])),
                                             "dataActions": [], "notDataActions": []}]})

    def operation_result(req, sub, location, op_id):
        with state.lock:
            op = app.operations.items.get(op_id.lower()) or app.operations.items.get(op_id)
            if op is None or op["cluster"].subscription_id.lower() != sub.lower():
                raise arm_error(404, "ResourceNotFound", f"The operation '{op_id}' was not found.")
            app.operations.poll(op)
            c = op["cluster"]
            if req.query.get("operationResultResponseType", "").lower() == "location":
                if op["status"] == "InProgress":
                    return Response(202, None, {"Location": req.base_url + req.target} | retry_after(app, op))
                if op["kind"] == "delete":
                    return Response(204)
                if "result" in op:
                    return Response(200, op["result"]())
                return Response(200, assignment_resource(c, op["database"], op["assignment"]))
            loc = c.location.replace(" ", "").lower()
            body = {"id": f"/subscriptions/{c.subscription_id}/providers/Microsoft.Kusto/locations/{loc}/operationResults/{op['id']}",
                    "name": op["id"], "status": op["status"], "startTime": op["startTime"]}
            if op["endTime"]:
                body["endTime"] = op["endTime"]
                body["percentComplete"] = 100.0
            kind = op.get("operationKind") or ("PrincipalAssignmentCreate" if op["kind"] == "create" else "PrincipalAssignmentDelete")
            body["properties"] = {"operationKind": kind, "operationState": op["status"]}
            return Response(200, body, retry_after(app, op))

    from . import dataconnections  # it builds on this module's helpers

    return dataconnections.routes(app) + [
        Route(["GET"], "arm", "/subscriptions/{sub}/clusters", r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Kusto/clusters", list_clusters),
        Route(["GET"], "arm", "/resourceGroups/{rg}/clusters",
              r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Kusto/clusters", list_clusters),
        Route(["GET"], "arm", "/clusters/{cluster}", BASE, get_cluster),
        Route(["GET"], "arm", "/clusters/{cluster}/databases", BASE + "/databases", list_databases),
        Route(["GET"], "arm", "/clusters/{cluster}/databases/{db}", DB, get_database),
        Route(["GET"], "arm", "/clusters/{cluster}/principalAssignments", BASE + "/principalAssignments", list_assignments),
        Route(["GET"], "arm", "/clusters/{cluster}/principalAssignments/{name}", BASE + r"/principalAssignments/(?P<name>[^/]+)", get_assignment),
        Route(["PUT"], "arm", "/clusters/{cluster}/principalAssignments/{name}", BASE + r"/principalAssignments/(?P<name>[^/]+)", put_assignment),
        Route(["DELETE"], "arm", "/clusters/{cluster}/principalAssignments/{name}", BASE + r"/principalAssignments/(?P<name>[^/]+)", delete_assignment),
        Route(["POST"], "arm", "/clusters/{cluster}/checkPrincipalAssignmentNameAvailability", BASE + "/checkPrincipalAssignmentNameAvailability", check_name),
        Route(["GET"], "arm", "/clusters/{cluster}/databases/{db}/principalAssignments", DB + "/principalAssignments", list_assignments),
        Route(["GET"], "arm", "/clusters/{cluster}/databases/{db}/principalAssignments/{name}", DB + r"/principalAssignments/(?P<name>[^/]+)", get_assignment),
        Route(["PUT"], "arm", "/clusters/{cluster}/databases/{db}/principalAssignments/{name}", DB + r"/principalAssignments/(?P<name>[^/]+)", put_assignment),
        Route(["DELETE"], "arm", "/clusters/{cluster}/databases/{db}/principalAssignments/{name}", DB + r"/principalAssignments/(?P<name>[^/]+)", delete_assignment),
        Route(["POST"], "arm", "/clusters/{cluster}/databases/{db}/checkPrincipalAssignmentNameAvailability", DB + "/checkPrincipalAssignmentNameAvailability", check_name),
        Route(["GET"], "arm", "/clusters/{cluster}/providers/Microsoft.Authorization/permissions",
              BASE + r"/providers/Microsoft\.Authorization/permissions", list_permissions, versions=AUTHORIZATION_API_VERSIONS),
        Route(["GET"], "arm", "/locations/{location}/operationResults/{operationId}",
              r"/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.Kusto/locations/(?P<location>[^/]+)/operationResults/(?P<op_id>[^/]+)", operation_result),
    ]


def apply_cluster_change(app, body) -> list[str]:
    """Admin ``POST /_emulator/clusters``: put/delete assignments directly (no LRO), as another
    tool would have done. Body: {"put": [item], "delete": [item]} where an item names
    subscriptionId, resourceGroup, cluster, optional database, name, and for put the ARM
    properties (principalId, principalType, role, tenantId?)."""
    problems: list[str] = []
    if not isinstance(body, dict):
        return ["body: must be an object {put: [...], delete: [...]}"]
    state = app.state
    with state.lock:
        planned = []
        for op in ("put", "delete"):
            items = body.get(op, [])
            if not isinstance(items, list):
                problems.append(f"{op}: must be a list")
                continue
            for i, item in enumerate(items):
                path = f"{op}[{i}]"
                if not isinstance(item, dict):
                    problems.append(f"{path}: must be an object")
                    continue
                c, problem = state.find_cluster(str(item.get("subscriptionId", "")), str(item.get("resourceGroup", "")), str(item.get("cluster", "")))
                if problem:
                    problems.append(f"{path}: unknown {problem}")
                    continue
                db = item.get("database")
                if db is not None and str(db).lower() not in c.databases:
                    problems.append(f"{path}.database: unknown database {db!r}")
                    continue
                dbname = c.databases[db.lower()] if db is not None else None
                table = c.scope_table(dbname)
                name = item.get("name")
                if not isinstance(name, str) or not name or "/" in name:
                    problems.append(f"{path}.name: required assignment name")
                    continue
                if op == "delete":
                    if name.lower() not in table:
                        problems.append(f"{path}.name: no assignment '{name}'")
                    else:
                        planned.append(("delete", table, name, None))
                    continue
                try:
                    new = build_assignment(state.directory, item, name, "cluster" if dbname is None else "database")
                except (ValueError, ResolveError) as exc:
                    problems.append(f"{path}: {exc}")
                    continue
                clash = next((a for a in table.values() if identity_key(a) == identity_key(new) and a["name"].lower() != name.lower()), None)
                if clash:
                    problems.append(f"{path}: same role and principal as existing assignment '{clash['name']}'")
                    continue
                planned.append(("put", table, name, new))
        if problems:
            return problems
        for op, table, name, new in planned:
            if op == "delete":
                table.pop(name.lower(), None)
            else:
                table[name.lower()] = new
    return []

