"""ARM Microsoft.Kusto data connections of a database: list, get, create or update (PUT), update
(PATCH), delete (all long-running), `dataConnectionValidation` and `checkNameAvailability`.

Shapes follow the REST reference (api-version 2025-02-14) and its examples
(Azure/azure-rest-api-specs, specification/azure-kusto/.../examples/2024-04-13/KustoDataConnections*.json).
What Kusto checks before it connects (the table and mapping exist, the source exists, its consumer
group is not used by another connection) is answered from the tenant file: `ingestionSources`,
`clusters[].tables` and `clusters[].dataConnections`.
"""
from __future__ import annotations

import re
import uuid

from .wire import Response, Route, arm_error

KINDS = ("EventHub", "EventGrid", "IotHub", "CosmosDb")
_READ_ONLY = {"provisioningState", "managedIdentityObjectId"}
PROPERTIES = {  # per kind: (required, optional), from the 2025-02-14 models
    "EventHub": ({"eventHubResourceId", "consumerGroup"},
                 {"tableName", "mappingRuleName", "dataFormat", "eventSystemProperties", "compression",
                  "managedIdentityResourceId", "databaseRouting", "retrievalStartDate"}),
    "EventGrid": ({"storageAccountResourceId", "eventHubResourceId", "consumerGroup"},
                  {"eventGridResourceId", "tableName", "mappingRuleName", "dataFormat", "ignoreFirstRecord",
                   "blobStorageEventType", "managedIdentityResourceId", "databaseRouting"}),
    "IotHub": ({"iotHubResourceId", "consumerGroup", "sharedAccessPolicyName"},
               {"tableName", "mappingRuleName", "dataFormat", "eventSystemProperties", "databaseRouting",
                "retrievalStartDate"}),
    "CosmosDb": ({"tableName", "managedIdentityResourceId", "cosmosDbAccountResourceId", "cosmosDbDatabase",
                  "cosmosDbContainer"}, {"mappingRuleName", "retrievalStartDate"}),
}
SOURCE = {"EventHub": "eventHubResourceId", "EventGrid": "eventHubResourceId", "IotHub": "iotHubResourceId",
          "CosmosDb": "cosmosDbAccountResourceId"}
IMMUTABLE = {"eventHubResourceId", "storageAccountResourceId", "eventGridResourceId", "iotHubResourceId",
             "consumerGroup", "sharedAccessPolicyName", "compression", "databaseRouting", "cosmosDbAccountResourceId",
             "cosmosDbDatabase", "cosmosDbContainer"}
_RG = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
RESOURCE_IDS = {
    "eventHubResourceId": re.compile(_RG + r"Microsoft\.EventHub/namespaces/[^/]+/eventhubs/[^/]+$", re.I),
    "storageAccountResourceId": re.compile(_RG + r"Microsoft\.Storage/storageAccounts/[^/]+$", re.I),
    "eventGridResourceId": re.compile(_RG + r".+/providers/Microsoft\.EventGrid/eventSubscriptions/[^/]+$", re.I),
    "iotHubResourceId": re.compile(_RG + r"Microsoft\.Devices/IotHubs/[^/]+$", re.I),
    "managedIdentityResourceId": re.compile(
        _RG + r"(Microsoft\.ManagedIdentity/userAssignedIdentities|Microsoft\.Kusto/clusters)/[^/]+$", re.I),
    "cosmosDbAccountResourceId": re.compile(_RG + r"Microsoft\.DocumentDb/databaseAccounts/[^/]+$", re.I),
}
_MISSING_SOURCE = {
    "eventHubResourceId": "Event hub's namespace does not exist",
    "storageAccountResourceId": "Storage account does not exist",
    "iotHubResourceId": "IoT hub does not exist",
    "cosmosDbAccountResourceId": "Cosmos DB account does not exist",
}
CONSUMER_GROUP_TAKEN = "event hub resource id and consumer group tuple provided are already used"


# ---------------------------------------------------------------- shape checks

def check_body(body, *, path: str = "") -> tuple[str, dict]:
    """(kind, properties) of a data connection body, or ARM's 400 for a body of another shape.

    A body without `kind` is refused: that is what azure-mgmt-kusto 4.0.0 sends from a subclass
    model it was not given `kind=` (the discriminator is not set by the constructor).
    """
    if not isinstance(body, dict):
        raise arm_error(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.")
    kind = body.get("kind")
    if kind is None:
        raise arm_error(400, "InvalidRequestContent",
                        f"The request content was invalid and could not be deserialized: Required property '{path}kind' "
                        "not found in JSON. The data connection kind (EventHub, EventGrid, IotHub, CosmosDb) is required.")
    canonical = next((k for k in KINDS if isinstance(kind, str) and k.lower() == kind.lower()), None)
    if canonical is None:
        raise arm_error(400, "InvalidRequestContent",
                        f"The request content was invalid: '{kind}' is not a data connection kind ({', '.join(KINDS)}).")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise arm_error(400, "InvalidRequestContent", f"The request content was invalid: '{path}properties' is required.")
    required, optional = PROPERTIES[canonical]
    unknown = sorted(set(props) - required - optional - _READ_ONLY)
    if unknown:
        raise arm_error(400, "InvalidRequestContent",
                        f"The request content was invalid: {', '.join(unknown)} is not a property of a {canonical} "
                        "data connection.")
    missing = sorted(k for k in required if not props.get(k))
    if missing:
        raise arm_error(400, "BadRequest", f"The {canonical} data connection is missing the required property "
                                           f"'{missing[0]}'.")
    return canonical, {k: v for k, v in props.items() if k not in _READ_ONLY}


def problems(state, cluster, database: str, name: str, kind: str, props: dict) -> list[str]:
    """What Kusto's validation reports for this connection: each a message, as in `errorMessage`."""
    found = []
    for key, pattern in RESOURCE_IDS.items():
        value = props.get(key)
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            found.append(f"Invalid resource id '{value}' for {key}")
    if found:
        return found
    for key, message in _MISSING_SOURCE.items():
        value = props.get(key)
        if value and value.lower() not in state.ingestion_sources:
            found.append(message)
    table = props.get("tableName")
    tables = cluster.tables.get(database.lower(), {})
    if table and table.lower() not in tables:
        found.append("table does not exist")
    elif table and props.get("mappingRuleName") and props["mappingRuleName"].lower() not in tables[table.lower()][1]:
        found.append(f"BadRequest_MappingReferenceWasNotFound: Mapping reference '{props['mappingRuleName']}' of "
                     f"table '{tables[table.lower()][0]}' in database '{database}' could not be found.")
    source = (str(props.get(SOURCE[kind], "")).lower(), str(props.get("consumerGroup", "")).lower())
    if kind != "CosmosDb":
        for c in state.clusters:
            for db, connections in c.data_connections.items():
                for other in connections.values():
                    same = c is cluster and db == database.lower() and other["name"].lower() == name.lower()
                    if not same and _source(other) == source:
                        found.append(CONSUMER_GROUP_TAKEN)
    return found


def _source(connection: dict) -> tuple[str, str]:
    props = connection["properties"]
    return str(props.get(SOURCE[connection["kind"]], "")).lower(), str(props.get("consumerGroup", "")).lower()


# ---------------------------------------------------------------- resources

def resource(cluster, database: str, connection: dict) -> dict:
    from .arm import cluster_id

    props = {"databaseRouting": "Single"} | dict(connection["properties"])
    if connection["kind"] == "EventHub":
        props.setdefault("compression", "None")
    if connection["kind"] in ("EventHub", "IotHub"):
        props.setdefault("eventSystemProperties", [])
    if connection["kind"] == "EventGrid":
        props.setdefault("ignoreFirstRecord", False)
    if props.get("managedIdentityResourceId"):
        props["managedIdentityObjectId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, props["managedIdentityResourceId"].lower()))
    props["provisioningState"] = connection.get("provisioningState", "Succeeded")
    name = connection["name"]
    return {
        "id": f"{cluster_id(cluster)}/Databases/{database}/DataConnections/{name}",
        "name": f"{cluster.name}/{database}/{name}",
        "type": "Microsoft.Kusto/Clusters/Databases/DataConnections",
        "kind": connection["kind"],
        "location": connection.get("location") or cluster.location,
        "properties": props,
    }


def load(state_problems: list[str], cluster, spec: dict, path: str) -> None:
    """The tenant file's `tables` and `dataConnections` of one cluster, checked like a PUT."""
    from .wire import HttpError

    tables = spec.get("tables", {})
    if not isinstance(tables, dict):
        state_problems.append(f"{path}.tables: must be an object {{database: {{table: [mapping names]}}}}")
        tables = {}
    for db, items in tables.items():
        if db.lower() not in cluster.databases:
            state_problems.append(f"{path}.tables.{db}: unknown database '{db}'")
            continue
        if not isinstance(items, dict) or not all(isinstance(m, list) for m in items.values()):
            state_problems.append(f"{path}.tables.{db}: must be an object {{table: [mapping names]}}")
            continue
        cluster.tables[db.lower()] = {t.lower(): (t, {str(m).lower() for m in ms}) for t, ms in items.items()}
    connections = spec.get("dataConnections", {})
    if not isinstance(connections, dict):
        state_problems.append(f"{path}.dataConnections: must be an object {{database: [data connections]}}")
        return
    for db, items in connections.items():
        if db.lower() not in cluster.databases:
            state_problems.append(f"{path}.dataConnections.{db}: unknown database '{db}'")
            continue
        table = cluster.data_connections.setdefault(db.lower(), {})
        for j, item in enumerate(items if isinstance(items, list) else [None]):
            where = f"{path}.dataConnections.{db}[{j}]"
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name or "/" in name:
                state_problems.append(f"{where}.name: required name without '/'")
                continue
            try:
                kind, props = check_body(item)
            except HttpError as error:
                state_problems.append(f"{where}: {error.response.body['error']['message']}")
                continue
            table[name.lower()] = {"name": name, "kind": kind, "location": item.get("location"), "properties": props}


def to_data(cluster) -> dict:
    return {
        "tables": {cluster.databases[db]: {name: sorted(maps) for name, maps in tables.values()}
                   for db, tables in cluster.tables.items()},
        "dataConnections": {cluster.databases[db]: [dict(c) for c in items.values()]
                            for db, items in cluster.data_connections.items() if items},
    }


# ---------------------------------------------------------------- routes

def routes(app):
    from .arm import DB, json_body, locate, lro_headers

    state = app.state

    def table_of(c, dbname):
        return c.data_connections.setdefault(dbname.lower(), {})

    def not_found(c, dbname, name, rg):
        return arm_error(404, "ResourceNotFound",
                         f"The Resource 'Microsoft.Kusto/clusters/{c.name}/databases/{dbname}/dataConnections/{name}' "
                         f"under resource group '{rg}' was not found. For more details please go to "
                         "https://aka.ms/ARMResourceNotFoundFix")

    def refuse_invalid(found):
        if found:
            raise arm_error(400, "EventHubValidationErorFound", "[BadRequest] Validation Errors found: " + "; ".join(found))

    def start(req, c, dbname, kind, effect, result, status, body):
        op = app.operations.start("create" if kind != "DataConnectionDelete" else "delete", c, dbname, None, app.lro_polls)
        op.update(effect=effect, result=result, operationKind=kind)
        response = Response(status, body, lro_headers(app, req, c, op))
        app.operations.finish_if_instant(op)
        return response

    def list_connections(req, sub, rg, cluster, db):
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            return Response(200, {"value": [resource(c, dbname, x) for x in table_of(c, dbname).values()]})

    def get_connection(req, sub, rg, cluster, db, name):
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            found = table_of(c, dbname).get(name.lower())
            if found is None:
                raise not_found(c, dbname, name, rg)
            return Response(200, resource(c, dbname, found))

    def put_connection(req, sub, rg, cluster, db, name):
        kind, props = check_body(json_body(req))
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            table = table_of(c, dbname)
            existing = table.get(name.lower())
            if existing is not None and existing["kind"] != kind:
                raise arm_error(400, "BadRequest", f"Data connection '{name}' is of kind {existing['kind']}; "
                                                   "its kind cannot be changed.")
            refuse_invalid(problems(state, c, dbname, name, kind, props))
            body = json_body(req)
            new = {"name": existing["name"] if existing else name, "kind": kind,
                   "location": body.get("location") or (existing or {}).get("location"), "properties": props,
                   "provisioningState": "Creating" if existing is None else "Updating"}
            if existing is None:
                table[name.lower()] = new

            def effect():
                new.pop("provisioningState", None)
                table[name.lower()] = new

            return start(req, c, dbname, "DataConnectionCreateOrUpdate", effect, lambda: resource(c, dbname, new),
                         200 if existing else 201, resource(c, dbname, new))

    def patch_connection(req, sub, rg, cluster, db, name):
        kind, props = check_body(json_body(req))
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            table = table_of(c, dbname)
            existing = table.get(name.lower())
            if existing is None:
                raise not_found(c, dbname, name, rg)
            if existing["kind"] != kind:
                raise arm_error(400, "BadRequest", f"Data connection '{name}' is of kind {existing['kind']}; "
                                                   "its kind cannot be changed.")
            changed = sorted(k for k in IMMUTABLE if k in props and str(props[k]).lower()
                             != str(existing["properties"].get(k, "")).lower())
            if changed:
                raise arm_error(400, "BadRequest", f"Data connection '{name}': {', '.join(changed)} cannot be updated; "
                                                   "delete the data connection and create it again.")
            merged = dict(existing["properties"]) | props
            refuse_invalid(problems(state, c, dbname, name, kind, merged))
            new = dict(existing, properties=merged)

            def effect():
                table[name.lower()] = new

            return start(req, c, dbname, "DataConnectionUpdate", effect, lambda: resource(c, dbname, new), 200,
                         resource(c, dbname, dict(new, provisioningState="Updating")))

    def delete_connection(req, sub, rg, cluster, db, name):
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            table = table_of(c, dbname)
            existing = table.get(name.lower())
            if existing is None:
                return Response(204)
            existing["provisioningState"] = "Deleting"

            def effect():
                if table.get(name.lower()) is existing:
                    del table[name.lower()]

            return start(req, c, dbname, "DataConnectionDelete", effect, lambda: None, 202, None)

    def validate(req, sub, rg, cluster, db):
        body = json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("dataConnectionName"), str):
            raise arm_error(400, "InvalidRequestContent", "The request content was invalid: 'dataConnectionName' is required.")
        kind, props = check_body(body.get("properties"), path="properties.")
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            found = problems(state, c, dbname, body["dataConnectionName"], kind, props)
            return Response(200, {"value": [{"errorMessage": m} for m in found]})

    def check_name(req, sub, rg, cluster, db):
        body = json_body(req)
        expected = "Microsoft.Kusto/clusters/databases/dataConnections"
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise arm_error(400, "InvalidRequestContent", "The request content was invalid: 'name' is required.")
        if str(body.get("type", "")).lower() != expected.lower():
            raise arm_error(400, "BadRequest", f"The type '{body.get('type')}' is not valid. Expected '{expected}'.")
        with state.lock:
            c, dbname = locate(state, sub, rg, cluster, db)
            name = body["name"]
            if name.lower() in table_of(c, dbname):
                return Response(200, {"name": name, "nameAvailable": False, "reason": "AlreadyExists",
                                      "message": f"Name '{name}' is already taken. Please specify a different name."})
            return Response(200, {"name": name, "nameAvailable": True})

    one = DB + r"/dataConnections/(?P<name>[^/]+)"
    template = "/clusters/{cluster}/databases/{db}/dataConnections"
    return [
        Route(["GET"], "arm", template, DB + "/dataConnections", list_connections),
        Route(["GET"], "arm", template + "/{name}", one, get_connection),
        Route(["PUT"], "arm", template + "/{name}", one, put_connection),
        Route(["PATCH"], "arm", template + "/{name}", one, patch_connection),
        Route(["DELETE"], "arm", template + "/{name}", one, delete_connection),
        Route(["POST"], "arm", "/clusters/{cluster}/databases/{db}/dataConnectionValidation",
              DB + "/dataConnectionValidation", validate),
        Route(["POST"], "arm", "/clusters/{cluster}/databases/{db}/checkNameAvailability",
              DB + "/checkNameAvailability", check_name),
    ]
