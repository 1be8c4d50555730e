"""Data connections: config validation, the pure plan per kind, and the engine over fakes."""
import pytest

from fakes import FakeAssignments, FakeConnections, FakeDirectory
from shared.core.config import parse_config
from shared.core.connections import (
    DataConnection, RECREATE_FIELDS, PATCH_FIELDS, connection_name, is_owned, plan_connections,
)
from shared.core.errors import ConfigError
from shared.core.plan import Action, Policy
from shared.core.scopes import Scope
from shared.adapters.ledger import MemoryLedger
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine

HOME = "11111111-1111-1111-1111-111111111111"
CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
DB = Scope(CLUSTER, "Telemetry")
RG = "/subscriptions/s1/resourceGroups/rg-ingest/providers/"
HUB = RG + "Microsoft.EventHub/namespaces/ns/eventhubs/device-events"
OTHER_HUB = RG + "Microsoft.EventHub/namespaces/ns/eventhubs/app-logs"
STORAGE = RG + "Microsoft.Storage/storageAccounts/landing"
IOT = RG + "Microsoft.Devices/IotHubs/things"

KINDS = {
    "EventHub": {"eventHubResourceId": HUB, "consumerGroup": "adx"},
    "EventGrid": {"storageAccountResourceId": STORAGE, "eventHubResourceId": HUB, "consumerGroup": "adx"},
    "IotHub": {"iotHubResourceId": IOT, "consumerGroup": "adx", "sharedAccessPolicyName": "iothubowner"},
}
TARGET = {"tableName": "Events", "mappingRuleName": "EventsMapping", "dataFormat": "JSON"}


def declared(kind, name="events", **fields):
    return DataConnection(DB, name, kind, tuple(sorted((KINDS[kind] | TARGET | fields).items())))


def existing(kind, name, **fields):
    return DataConnection(DB, name, kind, tuple(sorted((KINDS[kind] | TARGET | fields).items())))


def ours(kind, name="events", **fields):
    return existing(kind, connection_name("ks-", DB, name), **fields)


def only(plan):
    assert len(plan.changes) == 1, plan.changes
    return plan.changes[0]


# --- config ---------------------------------------------------------------------------------------

def entry(kind="EventHub", **fields):
    return {"name": "events", "cluster": CLUSTER, "database": "Telemetry", "kind": kind} | KINDS[kind] | fields


def test_each_kind_is_read_from_the_config_with_its_fields_canonical():
    config = parse_config({"mappings": [], "dataConnections": [
        entry("EventHub", name="hub", dataFormat="multijson", compression="gzip", tableName="Events"),
        entry("EventGrid", name="grid", consumerGroup="grid", blobStorageEventType="Microsoft.Storage.BlobCreated",
              ignoreFirstRecord=True, databaseRouting="multi"),
        entry("IotHub", name="iot", retrievalStartDate="2026-01-01T00:00:00Z"),
    ]})
    hub, grid, iot = config.data_connections
    assert (hub.kind, hub.get("dataFormat"), hub.get("compression")) == ("EventHub", "MULTIJSON", "GZip")
    assert (grid.get("databaseRouting"), grid.get("ignoreFirstRecord")) == ("Multi", True)
    assert iot.source == IOT and iot.scope == DB
    assert config.connection_scopes() == (DB,)
    assert parse_config(config.to_dict()).data_connections == config.data_connections


def test_every_data_connection_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        parse_config({"mappings": [], "dataConnections": [
            {"name": "a", "cluster": CLUSTER, "database": "Telemetry", "kind": "EventHub"},  # required fields
            entry("EventHub", name="b", eventHubResourceId=STORAGE),  # wrong resource type
            entry("EventGrid", name="c", storageAccountResourceId="not-an-id", consumerGroup="c"),  # bad ID shape
            entry("EventHub", name="d", consumerGroup="d", dataFormat="XML"),  # unknown format
            entry("EventHub", name="e"),
            entry("IotHub", name="f", compression="GZip"),  # not a field of this kind
            entry("EventHub", name="g", consumerGroup="g") | {"kind": "CosmosDb"},  # not supported
            entry("EventHub", name="h", consumerGroup="h", retrievalStartDate="yesterday"),
            entry("EventGrid", name="i"),  # the event hub and consumer group of [4] again
        ]})
    problems = "\n".join(caught.value.problems)
    assert "dataConnections[0].eventHubResourceId: is required for kind EventHub" in problems
    assert "dataConnections[0].consumerGroup: is required for kind EventHub" in problems
    assert "dataConnections[1].eventHubResourceId:" in problems and "not the resource ID of an event hub" in problems
    assert "dataConnections[2].storageAccountResourceId: 'not-an-id' is not the resource ID of a storage account" in problems
    assert "dataConnections[3].dataFormat: 'XML' is not one of MULTIJSON" in problems
    assert "dataConnections[8].consumerGroup: consumer group 'adx' of " + HUB + " is already used by dataConnections[4]" in problems
    assert "dataConnections[5].compression: does not apply to kind IotHub" in problems
    assert "dataConnections[6].kind: 'CosmosDb' is not one of EventHub, EventGrid, IotHub" in problems
    assert "dataConnections[7].retrievalStartDate: 'yesterday' is not an ISO 8601 date and time" in problems


def test_a_consumer_group_is_shared_across_databases_never():
    other_db = entry("EventHub", name="events2", database="Sales")
    with pytest.raises(ConfigError, match="already used by dataConnections\\[0\\]"):
        parse_config({"mappings": [], "dataConnections": [entry("EventHub"), other_db]})


# --- pure plan, per kind --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(KINDS))
def test_a_declared_connection_that_is_missing_is_added_under_the_apps_name(kind):
    change = only(plan_connections({DB: [declared(kind)]}, {DB: []}))
    assert change.action is Action.ADD and change.name == connection_name("ks-", DB, "events")
    assert is_owned(change.connection, "ks-") and change.connection.body()["kind"] == kind
    assert change.describe().startswith(f"+ adx-prod/Telemetry dataConnection {change.name} {kind} ")


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_declared_connection_in_place_is_nothing_to_do(kind):
    # ARM fills in defaults (compression, databaseRouting) the declaration leaves out: not a difference.
    plan = plan_connections({DB: [declared(kind)]}, {DB: [ours(kind, databaseRouting="Single")]})
    assert plan.changes == () and plan.drift == ()


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_changed_table_is_patched_in_place(kind):
    change = only(plan_connections({DB: [declared(kind, tableName="Events2")]}, {DB: [ours(kind)]}))
    assert (change.action, change.changed, change.recreate) == (Action.UPDATE, ("tableName",), False)
    assert change.connection.get("tableName") == "Events2" and change.describe().startswith("* ")


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_changed_consumer_group_recreates_the_connection(kind):
    change = only(plan_connections({DB: [declared(kind, consumerGroup="adx2")]}, {DB: [ours(kind)]}))
    assert (change.action, change.changed, change.recreate) == (Action.UPDATE, ("consumerGroup",), True)
    assert "recreate" in change.reason


def test_the_fields_that_force_a_recreate_and_the_ones_patched_do_not_overlap():
    assert not RECREATE_FIELDS & PATCH_FIELDS
    assert {"consumerGroup", "eventHubResourceId", "compression"} <= RECREATE_FIELDS
    assert {"tableName", "mappingRuleName", "dataFormat"} <= PATCH_FIELDS


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_owned_connection_no_longer_declared_is_removed_within_the_guard(kind):
    others = [ours(kind, name=f"n{i}", consumerGroup=f"g{i}") for i in range(3)]
    gone = ours(kind, name="gone", consumerGroup="gone")
    declared_ = [declared(kind, name=f"n{i}", consumerGroup=f"g{i}") for i in range(3)]
    change = only(plan_connections({DB: declared_}, {DB: others + [gone]}))
    assert (change.action, change.name) == (Action.REMOVE, gone.name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_removals_beyond_the_guard_are_held_until_approved(kind):
    current = {DB: [ours(kind, name=f"n{i}", consumerGroup=f"g{i}") for i in range(12)]}
    held = plan_connections({}, current)  # the default guard: 12 of 12 is above the floor and 25 %
    assert {c.action for c in held.changes} == {Action.HOLD}
    assert "held by the deletion guard" in held.changes[0].reason
    approved = plan_connections({}, current, Policy(approve_deletes=True))
    assert {c.action for c in approved.changes} == {Action.REMOVE}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_connection_made_by_another_tool_is_drift_never_touched(kind):
    foreign = existing(kind, "made-by-terraform", tableName="Other")  # same source, other table
    unrelated = existing(kind, "someone-elses", consumerGroup="theirs")
    plan = plan_connections({DB: [declared(kind)]}, {DB: [foreign, unrelated]})
    assert plan.changes == ()  # no duplicate (Kusto would refuse it), no update, no removal
    assert [(u.name, u.differs) for u in plan.drift] == [("made-by-terraform", ("tableName",)), ("someone-elses", ())]
    assert "not owned by the app; left alone" in plan.drift[0].describe()


@pytest.mark.parametrize("kind", list(KINDS))
def test_with_adopt_a_matching_foreign_connection_is_taken_over_and_updated(kind):
    foreign = existing(kind, "made-by-terraform", tableName="Other")
    plan = plan_connections({DB: [declared(kind)]}, {DB: [foreign]}, Policy(adopt=True))
    assert [u.name for u in plan.adopted] == ["made-by-terraform"]
    change = only(plan)
    assert (change.action, change.name, change.changed) == (Action.UPDATE, "made-by-terraform", ("tableName",))
    # Adopted by an earlier run: removed once nobody declares it (within the guard).
    later = plan_connections({}, {DB: [foreign]}, Policy(adopted=frozenset({(DB.key, "made-by-terraform")}),
                                                         approve_deletes=True))
    assert only(later).action is Action.REMOVE


def test_a_database_whose_connections_cannot_be_listed_is_skipped():
    change = only(plan_connections({DB: [declared("EventHub")]}, {DB: None}))
    assert change.action is Action.SKIP and "could not be listed" in change.reason


def test_a_prefix_alone_does_not_make_a_connection_the_apps():
    assert not is_owned(existing("EventHub", "ks-events-00000000"), "ks-")
    assert is_owned(ours("EventHub"), "ks-")


# --- engine over fakes ----------------------------------------------------------------------------

def engine(connections, declared_entries, **config):
    cfg = parse_config({"mappings": [], "dataConnections": declared_entries} | config)
    directory = FakeDirectory()
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(cfg, directory, FakeAssignments(), tenants, HOME, connections=connections, sleep=lambda s: None)


def test_the_engine_validates_then_creates_and_a_second_run_writes_nothing():
    connections = FakeConnections()
    eng = engine(connections, [entry("EventHub") | TARGET])
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and connections.writes == [("create", DB, connection_name("ks-", DB, "events"))]
    assert connections.validations == 1
    assert eng.run(trigger="test").plan.changes == () and len(connections.writes) == 1


def test_a_connection_kusto_refuses_is_a_skip_with_kustos_message_in_dry_run_and_apply():
    connections = FakeConnections()
    eng = engine(connections, [entry("EventHub") | TARGET | {"tableName": "Missing"}])
    planned = eng.run(trigger="test", dry_run=True)
    applied = eng.run(trigger="test")
    for report in (planned, applied):
        (change,) = report.plan.changes
        assert change.action is Action.SKIP and "Kusto refused the data connection: table does not exist" in change.reason
    assert connections.writes == [] and applied.results[0].status == "skipped"


def test_a_recreate_deletes_then_creates_one_write_at_a_time_under_the_cluster_lock():
    connections = FakeConnections()
    name = connection_name("ks-", DB, "events")
    connections.seed(DataConnection(DB, name, "EventHub", tuple(sorted((KINDS["EventHub"] | TARGET).items()))))
    eng = engine(connections, [entry("EventHub") | TARGET | {"consumerGroup": "adx2"}])
    report = eng.run(trigger="test")
    assert report.status == "succeeded"
    assert connections.writes == [("delete", DB, name), ("create", DB, name)]
    assert connections.state[DB][name].get("consumerGroup") == "adx2"
    line = report.plan.describe()[0]
    assert line.startswith(f"* adx-prod/Telemetry dataConnection {name} EventHub") and "recreate" in line
    assert report.results[0].as_json()["dataConnection"]["kind"] == "EventHub"


# --- onboarding templates -------------------------------------------------------------------------

def with_template(**template):
    profile = {"targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Ingestor"}],
               "dataConnections": [{"name": "team-events", "cluster": CLUSTER, "database": "Telemetry",
                                    "kind": "EventHub", "tableName": "Events", "mappingRuleName": "EventsMapping",
                                    "fromMessage": ["eventHubResourceId", "consumerGroup"]} | template]}
    return parse_config({"mappings": [], "profiles": {"team": profile}})


def test_a_profile_template_names_the_fields_a_message_supplies():
    config = with_template()
    (template,) = config.connection_templates["team"]
    assert template.from_message == ("eventHubResourceId", "consumerGroup") and config.connection_scopes() == (DB,)
    assert parse_config(config.to_dict()) == config
    made = template.instantiate({"eventHubResourceId": HUB, "consumerGroup": "team"}, ("user", "bob", "t"))
    assert made.get("tableName") == "Events" and made.source == HUB and made.name.startswith("team-events-")
    other = template.instantiate({"eventHubResourceId": HUB, "consumerGroup": "team"}, ("user", "ann", "t"))
    assert other.name != made.name  # one connection per onboarded principal


def test_a_message_may_set_only_the_templates_fields_and_its_values_are_checked_like_the_config():
    (template,) = with_template().connection_templates["team"]
    with pytest.raises(ValueError) as caught:
        template.instantiate({"eventHubResourceId": STORAGE, "tableName": "Secrets"}, ("user", "bob", "t"))
    problems = caught.value.args[0]
    assert "dataConnections.team-events.tableName: the profile team does not let a message set it " \
           "(allowed: eventHubResourceId, consumerGroup)" in problems
    assert any("eventHubResourceId" in p and "not the resource ID of an event hub" in p for p in problems)
    assert "dataConnections.team-events.consumerGroup: is required for kind EventHub" in problems


def test_template_mistakes_are_config_errors():
    with pytest.raises(ConfigError) as caught:
        with_template(fromMessage=["iotHubResourceId", "tableName"])
    problems = "\n".join(caught.value.problems)
    assert "fromMessage[0]: 'iotHubResourceId' is not a field of kind EventHub" in problems
    assert "fromMessage[1]: 'tableName' is set by the config too; pick one" in problems
    assert "profiles.team.dataConnections[0].eventHubResourceId: is required for kind EventHub" in problems


def test_onboarded_connections_in_the_ledger_are_declared_until_their_row_goes():
    from shared.adapters.ledger import OnboardedConnection

    connections = FakeConnections()
    cfg = with_template()
    (template,) = cfg.connection_templates["team"]
    made = template.instantiate({"eventHubResourceId": HUB, "consumerGroup": "team"}, ("user", "bob", "t"))
    directory = FakeDirectory()
    eng = Engine(cfg, directory, FakeAssignments(), TenantResolver(directory, home_tenant_id=HOME), HOME,
                 connections=connections, sleep=lambda s: None)
    assert eng.plan().changes == ()
    onboarded = OnboardedConnection(made, "team", "aaduser=bob@contoso.com;t", "m1")
    eng.ledger.record_connection(onboarded)
    assert eng.run(trigger="test").status == "succeeded"
    assert list(connections.state[DB]) == [connection_name("ks-", DB, made.name)]
    eng.ledger.remove_connection(onboarded)
    (change,) = eng.plan().changes
    assert change.action is Action.REMOVE


def test_an_unreadable_ledger_makes_no_connection_change():
    class BrokenLedger(MemoryLedger):
        def connections(self, scopes):
            raise OSError("storage down")

    connections = FakeConnections()
    connections.seed(ours("EventHub", name="team-events-abcdef"))
    cfg = with_template()
    directory = FakeDirectory()
    eng = Engine(cfg, directory, FakeAssignments(), TenantResolver(directory, home_tenant_id=HOME), HOME,
                 connections=connections, ledger=BrokenLedger(), sleep=lambda s: None)
    (change,) = eng.plan().changes
    assert change.action is Action.SKIP and "onboarding ledger could not be read" in change.reason


# --- onboarding messages --------------------------------------------------------------------------

def onboarding_engine(connections):
    from fakes import user
    from shared.adapters.audit import MemoryAudit
    from shared.adapters.queues import MemoryQueues

    class Directory(FakeDirectory):
        def find_user(self, ref):
            if ref.casefold() == "bob@contoso.com":
                return user("00000002-0000-0000-0000-000000000000", "bob@contoso.com")
            return super().find_user(ref)

    directory = Directory()
    cfg = parse_config({"mappings": [], "profiles": {"team": {
        "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Ingestor"}],
        "dataConnections": [{"name": "team-events", "cluster": CLUSTER, "database": "Telemetry", "kind": "EventHub",
                             "tableName": "Events", "mappingRuleName": "EventsMapping",
                             "fromMessage": ["eventHubResourceId", "consumerGroup"]}]}}})
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(cfg, directory, FakeAssignments(), tenants, HOME, connections=connections, audit=MemoryAudit(),
                  ledger=MemoryLedger(), queues=MemoryQueues(), sleep=lambda s: None, retry_budget_seconds=0)


def onboard(eng, **body):
    import json
    from shared.handlers.onboarding import handle

    return handle(eng, json.dumps({"principal": "bob@contoso.com", "profile": "team"} | body).encode(), message_id="m1")


def test_an_onboarding_message_fills_in_the_template_and_a_revoke_removes_the_connection():
    connections = FakeConnections()
    eng = onboarding_engine(connections)
    outcome = onboard(eng, dataConnections={"team-events": {"eventHubResourceId": HUB, "consumerGroup": "bob"}})
    assert outcome.status == "granted", outcome.detail
    (made,) = connections.state[DB].values()
    assert (made.source, made.get("consumerGroup"), made.get("tableName")) == (HUB, "bob", "Events")
    assert [o.connection.name for o in eng.ledger.connections([DB])] == [made.name.removeprefix("ks-")[:-9]]
    assert eng.plan().changes == ()  # the sync keeps it: declared through the ledger
    outcome = onboard(eng, action="revoke")
    assert outcome.status == "revoked" and "data connection" in outcome.detail
    assert connections.state[DB] == {} and eng.ledger.connections([DB]) == []


def test_a_message_setting_a_field_the_profile_does_not_allow_is_rejected_with_the_reason():
    from shared.adapters.queues import ONBOARDING_REJECTED

    connections = FakeConnections()
    eng = onboarding_engine(connections)
    outcome = onboard(eng, dataConnections={"team-events": {"eventHubResourceId": HUB, "consumerGroup": "bob",
                                                            "tableName": "Secrets"}})
    assert outcome.status == "rejected"
    assert "dataConnections.team-events.tableName: the profile team does not let a message set it" in outcome.detail
    (sent, _), = eng.queues.sent[ONBOARDING_REJECTED]
    assert "tableName" in sent["reason"] and connections.writes == [] and eng.ledger.connections([DB]) == []
    assert eng.assignments.writes == []  # nothing of the grant is made either
