"""Data connections through the real SDK (azure-mgmt-kusto) against the emulator: the engine with
the ARM adapter for each kind, and a replay of the REST reference's example requests."""
import json

import pytest
from azure.identity import ManagedIdentityCredential

from emulator.testing import EmulatorProcess, write_tenant
from fakes import FakeDirectory
from shared.adapters.kusto import KustoAssignments
from shared.core.config import parse_config
from shared.core.connections import connection_name
from shared.core.plan import Action
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine

HOME = "11111111-0000-4000-8000-000000000001"
PROD = "/subscriptions/5b000000-0000-4000-8000-000000000001/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
TELEMETRY = Scope(PROD, "Telemetry")
INGEST = "/subscriptions/5b000000-0000-4000-8000-000000000001/resourceGroups/rg-ingest/providers/"
HUB = INGEST + "Microsoft.EventHub/namespaces/contoso-telemetry/eventhubs/device-events"
BLOB_HUB = INGEST + "Microsoft.EventHub/namespaces/contoso-telemetry/eventhubs/blob-events"
KINDS = {
    "EventHub": {"eventHubResourceId": HUB, "consumerGroup": "adx-sync", "tableName": "DeviceEvents",
                 "mappingRuleName": "DeviceEventsMapping", "dataFormat": "JSON"},
    "EventGrid": {"storageAccountResourceId": INGEST + "Microsoft.Storage/storageAccounts/contosolanding",
                  "eventHubResourceId": BLOB_HUB, "consumerGroup": "adx-sync", "tableName": "LandedFiles",
                  "mappingRuleName": "LandedFilesMapping", "dataFormat": "MULTIJSON"},
    "IotHub": {"iotHubResourceId": INGEST + "Microsoft.Devices/IotHubs/contoso-iot", "consumerGroup": "adx-sync",
               "sharedAccessPolicyName": "iothubowner", "tableName": "IotReadings",
               "mappingRuleName": "IotReadingsMapping", "dataFormat": "JSON"},
}
PATCHED = {"EventHub": {"dataFormat": "MULTIJSON"}, "EventGrid": {"dataFormat": "JSON"}, "IotHub": {"dataFormat": "CSV"}}


@pytest.fixture
def arm(emulator_env):
    adapter = KustoAssignments(ManagedIdentityCredential(), endpoint=emulator_env["ARM_ENDPOINT"],
                               scope="https://management.azure.com/.default", polling_interval=0)
    yield adapter
    adapter.close()


def engine(arm, kind, name="ingest", **fields):
    declared = {"name": name, "cluster": PROD, "database": "Telemetry", "kind": kind} | KINDS[kind] | fields
    config = parse_config({"mappings": [], "dataConnections": [declared]})
    directory = FakeDirectory()
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(config, directory, arm, tenants, HOME, sleep=lambda s: None)


def writes(emu):
    counts = emu.requests()["counts"]
    return {route.split(" ")[0]: n for route, n in counts.items() if "dataConnections/{name}" in route
            and not route.startswith("GET")} | {
        "validate": sum(n for route, n in counts.items() if "dataConnectionValidation" in route)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_is_validated_created_patched_recreated_and_removed(arm, emu, kind):
    name = connection_name("ks-", TELEMETRY, "ingest")
    report = engine(arm, kind).run(trigger="test")
    assert report.status == "succeeded", report.results
    assert writes(emu) == {"PUT": 1, "validate": 1}
    assert engine(arm, kind).run(trigger="test").plan.changes == ()  # converged: nothing to write

    emu.clear_requests()
    report = engine(arm, kind, **PATCHED[kind]).run(trigger="test")
    (change,) = report.plan.changes
    assert (change.action, change.recreate, report.status) == (Action.UPDATE, False, "succeeded")
    assert writes(emu) == {"PATCH": 1, "validate": 1}

    emu.clear_requests()
    report = engine(arm, kind, consumerGroup="adx-sync-2").run(trigger="test")
    (change,) = report.plan.changes
    assert (change.action, change.recreate, report.status) == (Action.UPDATE, True, "succeeded")
    assert writes(emu) == {"DELETE": 1, "PUT": 1, "validate": 1}
    listed = {c.name: c for c in arm.list_connections(TELEMETRY)}
    assert listed[name].get("consumerGroup") == "adx-sync-2" and "tf-app-logs" in listed

    emu.clear_requests()
    undeclared = engine(arm, kind, name="other", consumerGroup="x")  # `ingest` is no longer declared
    report = undeclared.run(trigger="test")  # 1 of 1, below the guard's floor: ordinary removal
    assert [r.status for r in report.results if r.change.name == name] == ["succeeded"]
    assert writes(emu)["DELETE"] == 1
    assert name not in {c.name for c in arm.list_connections(TELEMETRY)}
    assert "tf-app-logs" in {c.name for c in arm.list_connections(TELEMETRY)}  # made by another tool: left alone


def test_a_connection_made_by_another_tool_is_drift_and_never_written(arm, emu):
    # The demo's Terraform connection reads app-logs with consumer group adx into AppLogs.
    eng = engine(arm, "EventHub", eventHubResourceId=INGEST + "Microsoft.EventHub/namespaces/contoso-telemetry/eventhubs/app-logs",
                 consumerGroup="adx", tableName="AppLogs", mappingRuleName="AppLogsMapping", dataFormat="MULTIJSON")
    report = eng.run(trigger="test")
    assert report.plan.changes == ()
    (drift,) = report.plan.connections.drift
    assert (drift.name, drift.differs) == ("tf-app-logs", ("dataFormat",))
    assert writes(emu) == {"validate": 0}


def test_kustos_validation_refusal_is_a_skip_with_its_message_and_nothing_is_written(arm, emu):
    report = engine(arm, "EventHub", tableName="NoSuchTable").run(trigger="test")
    (change,) = report.plan.changes
    assert change.action is Action.SKIP and report.results[0].status == "skipped"
    assert change.reason == "Kusto refused the data connection: table does not exist"
    report = engine(arm, "EventHub", mappingRuleName="NoSuchMapping").run(trigger="test")
    assert "BadRequest_MappingReferenceWasNotFound" in report.plan.changes[0].reason
    assert writes(emu) == {"validate": 2}


def test_the_sdk_bug_a_body_without_kind_is_refused_as_arm_refuses_it(arm):
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.kusto.models import EventHubDataConnection

    client = arm.client(TELEMETRY.subscription_id)
    body = EventHubDataConnection(event_hub_resource_id=HUB, consumer_group="x", location="westeurope")
    with pytest.raises(HttpResponseError, match="Required property 'kind' not found"):
        client.data_connections.begin_create_or_update("rg-data", "adx-prod", "Telemetry", "bug", body).result()


# --- the REST reference's examples, replayed -----------------------------------------------------
# Requests and responses of Azure/azure-rest-api-specs,
# specification/azure-kusto/Azure-kusto.Management/examples/2024-04-13/ (file names below).

SUB, RG = "12345678-1234-1234-1234-123456789098", "kustorptest"
EX = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
EX_HUB1 = EX + "Microsoft.EventHub/namespaces/eventhubTestns1/eventhubs/eventhubTest1"
EX_HUB2 = EX + "Microsoft.EventHub/namespaces/eventhubTestns1/eventhubs/eventhubTest2"
EX_STORAGE = EX + "Microsoft.Storage/storageAccounts/teststorageaccount"
EX_IDENTITY = EX + "Microsoft.ManagedIdentity/userAssignedIdentities/managedidentityTest1"
EX_GRID = EX_STORAGE + "/providers/Microsoft.EventGrid/eventSubscriptions/eventSubscriptionTest"
DC = f"{EX}Microsoft.Kusto/clusters/kustoCluster/databases/KustoDatabase8"
EXAMPLE_TENANT = {
    "tenant": {"id": HOME, "domains": ["contoso.com"]},
    "ingestionSources": [EX_HUB1, EX_HUB2, EX_STORAGE],
    "clusters": [{"subscriptionId": SUB, "resourceGroup": RG, "name": "kustoCluster", "location": "westus",
                  "databases": ["KustoDatabase8"], "tables": {"KustoDatabase8": {"TestTable": ["TestMapping"]}}}],
}
EVENT_HUB = {"kind": "EventHub", "location": "westus", "properties": {
    "consumerGroup": "testConsumerGroup1", "eventHubResourceId": EX_HUB1, "managedIdentityResourceId": EX_IDENTITY}}
EVENT_GRID = {"kind": "EventGrid", "location": "westus", "properties": {
    "blobStorageEventType": "Microsoft.Storage.BlobCreated", "consumerGroup": "$Default", "dataFormat": "MULTIJSON",
    "databaseRouting": "Single", "eventGridResourceId": EX_GRID, "eventHubResourceId": EX_HUB2,
    "ignoreFirstRecord": False, "managedIdentityResourceId": EX_IDENTITY, "mappingRuleName": "TestMapping",
    "storageAccountResourceId": EX_STORAGE, "tableName": "TestTable"}}
RESOURCE_KEYS = {"id", "name", "type", "kind", "location", "properties"}


@pytest.fixture(scope="module")
def example_emu(tmp_path_factory):
    with EmulatorProcess(write_tenant(tmp_path_factory.mktemp("examples"), EXAMPLE_TENANT)) as emu:
        yield emu


def call(emu, method, path, body=None):
    auth = {"Authorization": f"Bearer {emu.token()}"}
    status, _, payload = emu.call(method, f"{path}?api-version=2025-02-14", body, headers=auth)
    return status, payload


def assert_example_resource(ours, example, name):
    """Our body has the example's shape: its keys, its values (ours may add read-only fields)."""
    assert RESOURCE_KEYS <= set(ours) and set(example) <= set(ours)
    assert ours["name"] == f"kustoCluster/KustoDatabase8/{name}"
    assert ours["type"] == example["type"] and ours["kind"] == example["kind"]
    assert ours["id"].lower() == f"{DC}/dataConnections/{name}".lower()
    for key, value in example["properties"].items():
        if key != "managedIdentityObjectId":  # the identity's object ID: ours is made up
            assert ours["properties"][key] == value, key


def test_the_reference_examples_replay_with_the_same_shapes(example_emu):
    emu = example_emu
    # KustoDataConnectionsCreateOrUpdate.json: 201 created with the resource (compression filled in).
    status, body = call(emu, "PUT", f"{DC}/dataConnections/dataConnectionTest", EVENT_HUB)
    assert status in (200, 201)
    assert_example_resource(body, {"type": "Microsoft.Kusto/Clusters/Databases/DataConnections", "kind": "EventHub",
                                   "location": "westus", "properties": EVENT_HUB["properties"] | {"compression": "None"}},
                            "dataConnectionTest")
    # KustoDataConnectionsEventGridCreateOrUpdate.json
    status, body = call(emu, "PUT", f"{DC}/dataConnections/gridConnection", EVENT_GRID)
    assert status in (200, 201)
    assert_example_resource(body, {"type": "Microsoft.Kusto/Clusters/Databases/DataConnections", "kind": "EventGrid",
                                   "location": "westus", "properties": EVENT_GRID["properties"]}, "gridConnection")
    # KustoDataConnectionsGet.json / ListByDatabase.json: provisioningState and databaseRouting are read back.
    status, body = call(emu, "GET", f"{DC}/dataConnections/dataConnectionTest")
    assert status == 200 and body["properties"]["provisioningState"] == "Succeeded"
    assert body["properties"]["databaseRouting"] == "Single" and body["properties"]["eventSystemProperties"] == []
    status, listed = call(emu, "GET", f"{DC}/dataConnections")
    assert status == 200 and sorted(i["kind"] for i in listed["value"]) == ["EventGrid", "EventHub"]
    # KustoDataConnectionsUpdate.json: PATCH with the same body answers the resource.
    status, body = call(emu, "PATCH", f"{DC}/dataConnections/dataConnectionTest", EVENT_HUB)
    assert status in (200, 201, 202) and body["kind"] == "EventHub"
    # KustoDataConnectionValidationAsync.json: the example's body lists the results bare; the
    # schema (DataConnectionValidationListResult, what the SDK reads) wraps them in `value`.
    status, body = call(emu, "POST", f"{DC}/dataConnectionValidation", {
        "dataConnectionName": "dataConnectionTest2", "properties": {"kind": "EventHub", "properties": {
            "compression": "None", "consumerGroup": "testConsumerGroup1", "dataFormat": "MULTIJSON",
            "eventHubResourceId": EX_HUB1, "managedIdentityResourceId": EX_IDENTITY,
            "mappingRuleName": "TestMapping", "tableName": "TestTable"}}})
    assert status == 200 and set(body) == {"value"} and all(set(v) == {"errorMessage"} for v in body["value"])
    assert [v["errorMessage"] for v in body["value"]] == [
        "event hub resource id and consumer group tuple provided are already used"]
    # KustoDataConnectionsCheckNameAvailability.json
    status, body = call(emu, "POST", f"{DC}/checkNameAvailability",
                        {"name": "dataConnectionTest", "type": "Microsoft.Kusto/clusters/databases/dataConnections"})
    assert status == 200 and body == {"name": "dataConnectionTest", "nameAvailable": False, "reason": "AlreadyExists",
                                      "message": "Name 'dataConnectionTest' is already taken. Please specify a different name."}
    # KustoDataConnectionsDelete.json: 200/202/204, then gone.
    status, _ = call(emu, "DELETE", f"{DC}/dataConnections/dataConnectionTest")
    assert status in (200, 202, 204)
    assert call(emu, "GET", f"{DC}/dataConnections/dataConnectionTest")[0] == 404
    # Kusto's errors: a missing kind, a bad resource ID, a missing table or mapping.
    status, body = call(emu, "PUT", f"{DC}/dataConnections/x", {"location": "westus", "properties": EVENT_HUB["properties"]})
    assert status == 400 and "'kind'" in body["error"]["message"]
    bad = {"kind": "EventHub", "properties": {"eventHubResourceId": "/not/an/id", "consumerGroup": "c"}}
    status, body = call(emu, "PUT", f"{DC}/dataConnections/x", bad)
    assert status == 400 and "Invalid resource id" in body["error"]["message"]
    missing = {"kind": "EventHub", "properties": {"eventHubResourceId": EX_HUB1, "consumerGroup": "c",
                                                  "tableName": "TestTable", "mappingRuleName": "Nope"}}
    status, body = call(emu, "PUT", f"{DC}/dataConnections/x", missing)
    assert status == 400 and "MappingReferenceWasNotFound" in body["error"]["message"]
    assert json.dumps(body).count("Validation Errors found") == 1
