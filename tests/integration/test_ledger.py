"""The ownership ledger in Table storage (Azurite)."""
import uuid

from azure.data.tables import TableServiceClient

from shared.adapters.ledger import TableLedger
from shared.core.plan import Assignment
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope

CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"


def test_adopted_names_are_remembered_per_scope(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    ledger = TableLedger(service.get_table_client(f"own{uuid.uuid4().hex[:8]}"))
    sales, telemetry = Scope(CLUSTER, "Sales"), Scope(CLUSTER, "Telemetry")
    eve = Principal(PrincipalKind.USER, "eve@contoso.com", "11111111-1111-1111-1111-111111111111")
    ledger.record_adopted([Assignment(sales, "Viewer", eve, "Terraform-Eve")])
    assert ledger.adopted([sales, telemetry]) == frozenset({(sales.key, "terraform-eve")})
    assert ledger.adopted([telemetry]) == frozenset()


def test_grants_round_trip_and_can_be_removed(azurite):
    from shared.adapters.ledger import Grant
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    ledger = TableLedger(service.get_table_client(f"own{uuid.uuid4().hex[:8]}"))
    sales = Scope(CLUSTER, "Sales")
    bob = Principal(PrincipalKind.USER, "bob@fabrikam.com", "22222222-2222-2222-2222-222222222222")
    grant = Grant(sales, "Viewer", bob, "analyst", "msg-1", "2030-01-01T00:00:00+00:00")
    ledger.record_grant(grant)
    ledger.record_grant(grant)  # a redelivered message writes the same row
    ledger.record_adopted([Assignment(sales, "Admin", bob, "tf-bob")])
    assert ledger.grants([sales]) == [grant]
    ledger.remove_grant(grant)
    assert ledger.grants([sales]) == []
    assert ledger.adopted([sales]) == frozenset({(sales.key, "tf-bob")})


def test_managed_scopes_missing_groups_and_revoked_grants_round_trip(azurite):
    from shared.adapters.ledger import Grant
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    ledger = TableLedger(service.get_table_client(f"own{uuid.uuid4().hex[:8]}"))
    sales, cluster = Scope(CLUSTER, "Sales"), Scope(CLUSTER)
    bob = Principal(PrincipalKind.USER, "bob@fabrikam.com", "22222222-2222-2222-2222-222222222222")
    revoked = Grant(sales, "Viewer", bob, "gone-profile", "msg-1", None, "2026-01-01T00:00:00+00:00")
    ledger.record_grant(revoked)
    assert ledger.all_grants() == [revoked] and ledger.grants([sales]) == [revoked]
    ledger.record_managed([sales, cluster])
    assert ledger.managed_scopes() == {sales, cluster}
    ledger.forget_managed([cluster, cluster])  # forgetting twice is harmless
    assert ledger.managed_scopes() == {sales}
    ledger.record_missing(["AAAA-1"], [])
    ledger.record_missing(["bbbb-2"], ["aaaa-1", "never-missing"])
    assert ledger.missing_groups() == {"bbbb-2"}
    ledger.remove_grant(revoked)
    ledger.remove_grant(revoked)
    assert ledger.all_grants() == [] and ledger.managed_scopes() == {sales}


def test_pending_grants_revocations_and_single_grants_round_trip(azurite):
    from shared.adapters.ledger import Grant, PendingGrant, Revocation
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    ledger = TableLedger(service.get_table_client(f"own{uuid.uuid4().hex[:8]}"))
    sales = Scope(CLUSTER, "Sales")
    ann = Principal(PrincipalKind.USER, "ann@contoso.com", "11111111-1111-1111-1111-111111111111",
                    object_id="00000001-0000-0000-0000-000000000000")
    grant = Grant(sales, "Admin", ann, "sales-admin", "m1", "2030-01-08T00:00:00+00:00")
    assert ledger.get_grant(grant) is None
    ledger.record_grant(grant)
    assert ledger.get_grant(grant) == grant

    body = {"principal": "ann@contoso.com", "profile": "sales-admin", "requestedBy": "hr", "reason": "été \u2603"}
    pending = PendingGrant(PendingGrant.id_for("m1", ann, "sales-admin"), ann, "sales-admin", "m1", body, "hr",
                           "2030-01-01T00:00:00+00:00", "2030-01-08T00:00:00+00:00")
    ledger.save_pending(pending)
    [read] = ledger.pending()
    assert read == pending and read.body == body and read.principal.object_id == ann.object_id
    ledger.save_pending(pending.decided("approved", "dba", None))
    assert ledger.get_pending(pending.id).status == "approved" and ledger.get_pending("p" + "0" * 24) is None
    assert ledger.grants([sales]) == [grant]  # pending rows are never grants the sync sees

    assert ledger.revocation(ann, "sales-admin") is None
    revoked = Revocation(ann, "sales-admin", "2030-01-02T00:00:00+00:00", 2**62, ("m1", "m0"))
    ledger.record_revocation(revoked)
    assert ledger.revocation(ann, "sales-admin") == revoked and ledger.revocation(ann, "analyst") is None


def test_onboarded_data_connections_and_adopted_ones_round_trip(azurite):
    from shared.adapters.ledger import OnboardedConnection
    from shared.core.connections import DataConnection, Unowned

    service = TableServiceClient.from_connection_string(azurite.connection_string)
    ledger = TableLedger(service.get_table_client(f"own{uuid.uuid4().hex[:8]}"))
    telemetry = Scope(CLUSTER, "Telemetry")
    hub = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.EventHub/namespaces/ns/eventhubs/e"
    made = DataConnection(telemetry, "team-events-1a2b3c", "EventHub",
                          (("consumerGroup", "team"), ("eventHubResourceId", hub), ("ignoreFirstRecord", False)))
    onboarded = OnboardedConnection(made, "team", "aaduser=bob@contoso.com;t", "msg-1")
    ledger.record_connection(onboarded)
    ledger.record_adopted([Unowned(DataConnection(telemetry, "tf-logs", "EventHub"), adopted=True)])
    assert ledger.connections([telemetry]) == [onboarded]
    assert ledger.grants([telemetry]) == [] and ledger.adopted([telemetry]) == frozenset({(telemetry.key, "tf-logs")})
    ledger.remove_connection(onboarded)
    assert ledger.connections([telemetry]) == []


def test_exclusions_are_remembered_per_entry_with_their_directory_identity(azurite):
    from shared.adapters.ledger import MemoryLedger

    service = TableServiceClient.from_connection_string(azurite.connection_string)
    table = TableLedger(service.get_table_client(f"own{uuid.uuid4().hex[:8]}"))
    home = "11111111-1111-1111-1111-111111111111"
    ann = Principal(PrincipalKind.USER, "00000001-0000-0000-0000-000000000000", home,
                    object_id="00000001-0000-0000-0000-000000000000", upn="ann@contoso.com", display_name="Ann")
    terraform = Principal(PrincipalKind.APP, "11111111-2222-3333-4444-555555555555", home,
                          object_id="00000041-0000-0000-0000-000000000000")
    for ledger in (table, MemoryLedger()):
        assert ledger.exclusions() == {}
        ledger.remember_exclusion("aaduser=ann@contoso.com", [ann])
        ledger.remember_exclusion("aaduser=ann@contoso.com", [ann])  # every plan remembers it again: one row
        ledger.remember_exclusion("aadapp=terraform", [terraform])
        found = ledger.exclusions()
        assert found == {"aaduser=ann@contoso.com": [ann], "aadapp=terraform": [terraform]}
        (remembered,) = found["aaduser=ann@contoso.com"]
        assert remembered.match_keys == ann.match_keys and remembered.upn == "ann@contoso.com"
