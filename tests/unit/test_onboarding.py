"""Onboarding messages and Graph notifications over in-memory fakes: schema, policy, idempotency,
rejection with the reason, delayed retries of new identities, and revoke next to group mappings."""
import base64
import json
from datetime import datetime, timedelta, timezone

import pytest

from fakes import FakeAssignments, FakeDirectory, group, user
from shared.handlers import notifications
from shared.adapters.audit import MemoryAudit
from shared.core.config import parse_config
from shared.core.errors import NotFoundError, TransientError
from shared.adapters.kusto import PrincipalNotYetKnownError
from shared.adapters.ledger import MemoryLedger
from shared.handlers.onboarding import Rejected, decode, handle, parse
from shared.core.plan import Assignment, assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.adapters.queues import ONBOARDING, ONBOARDING_REJECTED, MemoryQueues
from shared.engine.reconcile import Engine
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver

HOME = "11111111-1111-1111-1111-111111111111"
FABRIKAM = "22222222-2222-2222-2222-222222222222"
CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
SALES, TELEMETRY = Scope(CLUSTER, "Sales"), Scope(CLUSTER, "Telemetry")
ANALYSTS = "00000008-0000-0000-0000-000000000000"
ANN = Principal(PrincipalKind.USER, "ann@contoso.com", HOME)
ALICE = Principal(PrincipalKind.USER, "alice@fabrikam.com", FABRIKAM)
CONFIG = {
    "guards": {"maxDeletes": 10, "maxDeletePercent": 100},
    "mappings": [{"name": "analysts", "group": "Analysts",
                  "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}],
    "profiles": {
        "analyst": {"targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        "ingest": {"targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Ingestor"},
                               {"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        "sales-admin": {"admin": True, "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Admin"}]},
    },
    "onboarding": {"allowDirectTargets": True, "maxNewIdentityRetries": 2, "directTargets": [
        {"cluster": CLUSTER, "database": "Telemetry", "role": "Viewer"},
        {"cluster": CLUSTER, "database": "Telemetry", "role": "Admin"},
    ]},
}


class Directory(FakeDirectory):
    """The fake directory, with users found by UPN."""

    users: dict

    def find_user(self, ref):
        found = self.users.get(ref.casefold())
        if found is None:
            raise NotFoundError(f"no user {ref}")
        return found


@pytest.fixture
def eng():
    directory = Directory(tenants={"fabrikam.com": FABRIKAM})
    directory.users = {"ann@contoso.com": user("00000001-0000-0000-0000-000000000000", "ann@contoso.com"),
                       "bob@contoso.com": user("00000002-0000-0000-0000-000000000000", "bob@contoso.com")}
    directory.add_group(group(ANALYSTS, "Analysts"), [user("00000002-0000-0000-0000-000000000000", "bob@contoso.com")])
    directory.add_group(group("00000009-0000-0000-0000-000000000000", "Sales-DL", security=False,
                              mail_enabled=True, mail="sales-dl@contoso.com"), [])
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(parse_config(CONFIG), directory, FakeAssignments(), tenants, HOME, audit=MemoryAudit(),
                  ledger=MemoryLedger(), queues=MemoryQueues(), sleep=lambda s: None, retry_budget_seconds=0)


def send(eng, body, *, qid="q1", **kw):
    text = body if isinstance(body, str) else json.dumps(body)
    return handle(eng, text.encode(), message_id=qid, **kw)


def names(eng, scope=SALES):
    return sorted(eng.assignments.state[scope])


def rejected(eng):
    return [body for body, _ in eng.queues.sent.get(ONBOARDING_REJECTED, [])]


# --- schema and decoding ------------------------------------------------------------------------

def test_plain_and_base64_bodies_decode_alike():
    body = {"principal": "ann@contoso.com", "profile": "analyst"}
    text = json.dumps(body)
    assert decode(text) == decode(text.encode()) == decode(base64.b64encode(text.encode())) == body


@pytest.mark.parametrize("raw, reason", [
    (b"not json at all", "not JSON"),
    ("x" * 9000, "at most 8192"),
    (b"\xff\xfe", "not JSON"),
])
def test_undecodable_bodies_are_refused(raw, reason):
    with pytest.raises(Rejected, match=reason):
        decode(raw)


@pytest.mark.parametrize("body, reason", [
    ([1, 2], "JSON object"),
    ({"principal": "a@b.com", "profile": "analyst", "role": "Admin"}, "unknown field"),
    ({"profile": "analyst"}, "principal: is required"),
    ({"principal": "a@b.com"}, "exactly one of profile and targets"),
    ({"principal": "a@b.com", "profile": "analyst", "targets": []}, "targets: must be a list"),
    ({"principal": "a@b.com", "profile": "analyst", "action": "delete"}, "action"),
    ({"principal": "a@b.com", "profile": "analyst", "version": 2}, "version"),
    ({"principal": "a@b.com", "profile": "analyst", "principalType": "Robot"}, "principalType"),
    ({"principal": "a@b.com", "profile": "analyst", "expiresAt": "tomorrow"}, "ISO 8601"),
    ({"principal": "a@b.com", "profile": "analyst", "expiresAt": "2030-01-01T00:00:00"}, "time zone"),
    ({"principal": "a@b.com", "profile": "analyst", "expiresAt": "2001-01-01T00:00:00Z"}, "already past"),
    ({"principal": "a@b.com", "action": "revoke", "profile": "analyst", "expiresAt": "2099-01-01T00:00:00Z"}, "only applies"),
    ({"principal": "a@b.com", "targets": [{"cluster": "adx-prod", "role": "Viewer"}]}, "cluster resource ID"),
    ({"principal": "a@b.com", "targets": [{"cluster": CLUSTER, "role": "Viewer"}]}, "not one of AllDatabases"),
])
def test_schema_violations_are_refused_with_their_problem(body, reason):
    with pytest.raises(Rejected, match=reason):
        parse(body, default_id="q1")


def test_defaults_fill_version_action_and_id_from_the_queue_message():
    message = parse({"principal": " bob@fabrikam.com ", "profile": "analyst", "_attempt": 2}, default_id="q9")
    assert (message.id, message.action, message.principal, message.attempt) == ("q9", "grant", "bob@fabrikam.com", 2)
    assert "_attempt" not in message.body


# --- grant --------------------------------------------------------------------------------------

def test_a_grant_writes_an_owned_assignment_records_the_ledger_and_audits(eng):
    outcome = send(eng, {"version": 1, "id": "m1", "action": "grant", "principal": "alice@fabrikam.com",
                         "principalType": "User", "profile": "analyst", "reason": "new analyst", "requestedBy": "hr"})
    assert outcome.status == "granted"
    assert names(eng) == [assignment_name("ks-", SALES, "Viewer", ALICE)]
    [grant] = eng.ledger.grants([SALES])
    assert (grant.principal, grant.profile, grant.message_id) == (ALICE, "analyst", "m1")
    [run] = eng.audit.runs.values()
    assert (run["trigger"], run["status"]) == ("onboarding", "succeeded")
    assert [c for c in eng.plan().changes if c.principal == ALICE] == []  # the sync keeps it


def test_duplicates_and_redeliveries_have_no_second_effect(eng):
    body = {"id": "m1", "principal": "alice@fabrikam.com", "profile": "ingest"}
    assert send(eng, body).status == "granted"
    writes = list(eng.assignments.writes)
    assert send(eng, body, dequeue_count=2).status == "unchanged"
    assert send(eng, body | {"id": "m2"}).status == "unchanged"
    assert eng.assignments.writes == writes and len(eng.ledger.grants([SALES, TELEMETRY])) == 2


def test_an_assignment_made_by_someone_else_satisfies_the_grant(eng):
    eng.assignments.seed(Assignment(SALES, "Viewer", ALICE, "portal-made"))
    assert send(eng, {"principal": "alice@fabrikam.com", "profile": "analyst"}).status == "unchanged"
    assert eng.assignments.writes == [] and names(eng) == ["portal-made"]


def test_an_expired_grant_is_removed_by_the_scheduled_sync(eng):
    eng.run(trigger="timer")
    then = datetime.now(timezone.utc) - timedelta(days=2)
    expires = (then + timedelta(days=1)).isoformat()
    send(eng, {"principal": "alice@fabrikam.com", "profile": "analyst", "expiresAt": expires}, now=then)
    assert len(names(eng)) == 2
    report = eng.run(trigger="timer")
    assert [(r.change.action.value, r.change.principal) for r in report.results] == [("remove", ALICE)]


# --- policy -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, reason", [
    ({"principal": "ann@contoso.com", "profile": "ghost"}, "unknown profile 'ghost'"),
    ({"principal": "ann@contoso.com", "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Admin"}]},
     "admin role"),
    ({"principal": "ann@contoso.com", "targets": [{"cluster": CLUSTER, "database": "Secrets", "role": "Viewer"}]},
     "not in the config's onboarding.directTargets"),
    ({"principal": "ann@contoso.com", "targets": [{"cluster": CLUSTER, "role": "AllDatabasesAdmin"}]}, "admin role"),
    ({"principal": "sales-dl@contoso.com", "profile": "analyst"}, "distribution group"),
    ({"principal": "zoe@nowhere.example", "profile": "analyst"}, "belongs to no Entra tenant"),
    ({"principal": "ann@contoso.com", "principalType": "App", "profile": "analyst"}, "resolves to User"),
])
def test_refusals_end_in_the_rejected_queue_with_the_reason_and_write_nothing(eng, body, reason):
    outcome = send(eng, body)
    assert outcome.status == "rejected" and reason in outcome.detail
    [sent] = rejected(eng)
    assert reason in sent["reason"] and sent["messageId"] == "q1" and json.loads(sent["original"]) == body
    assert sent["time"] and eng.assignments.writes == [] and eng.ledger.grants([SALES, TELEMETRY]) == []
    [run] = eng.audit.runs.values()
    assert run["trigger"] == "onboarding" and reason in run["error"]


def test_direct_targets_are_refused_unless_the_config_allows_them(eng):
    eng.config = parse_config(CONFIG | {"onboarding": {"allowDirectTargets": False}})
    outcome = send(eng, {"principal": "ann@contoso.com", "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Viewer"}]})
    assert outcome.status == "rejected" and "allowDirectTargets is false" in outcome.detail


def test_an_allowed_direct_target_is_granted(eng):
    body = {"id": "d1", "principal": "ann@contoso.com", "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "viewer"}]}
    assert send(eng, body).status == "granted"
    assert [g.profile for g in eng.ledger.grants([TELEMETRY])] == ["(direct)"]


def test_the_rejected_message_names_the_senders_id_when_it_has_one(eng):
    send(eng, {"id": "hr-42", "principal": "ann@contoso.com", "profile": "ghost"})
    assert rejected(eng)[0]["messageId"] == "hr-42"


# --- failures -----------------------------------------------------------------------------------

def test_a_transient_failure_raises_so_the_host_retries(eng):
    eng.assignments.fail = [("create", TransientError("503 from ARM"))]
    with pytest.raises(TransientError, match="503"):
        send(eng, {"principal": "alice@fabrikam.com", "profile": "analyst"})
    assert rejected(eng) == []
    assert send(eng, {"principal": "alice@fabrikam.com", "profile": "analyst"}, dequeue_count=2).status == "granted"


def test_a_new_identity_is_retried_later_with_backoff_then_rejected(eng):
    unknown = PrincipalNotYetKnownError("AAD principal 'newbie@contoso.com' of type User was not found")
    eng.assignments.fail = [("create", unknown)] * 3
    body = {"id": "n1", "principal": "newbie@contoso.com", "profile": "analyst"}
    delays = []
    for attempt in range(3):
        outcome = send(eng, body)
        if outcome.status == "deferred":
            body, delay = eng.queues.sent[ONBOARDING][-1]
            delays.append(delay)
            assert body["_attempt"] == attempt + 1 and body["id"] == "n1"
            assert eng.ledger.grants([SALES]) == []
    assert delays == [30, 60]
    assert outcome.status == "rejected" and "after 2 delayed retries" in outcome.detail
    assert "was not found" in rejected(eng)[0]["reason"]


def test_a_new_identity_succeeds_when_ARM_learns_it(eng):
    eng.assignments.fail = [("create", PrincipalNotYetKnownError("principal not found"))]
    send(eng, {"principal": "newbie@contoso.com", "profile": "analyst"})
    body, _ = eng.queues.sent[ONBOARDING][0]
    assert send(eng, json.dumps(body), qid="q2").status == "granted"
    assert [g.principal.fqn for g in eng.ledger.grants([SALES])] == [f"aaduser=newbie@contoso.com;{HOME}"]


# --- revoke -------------------------------------------------------------------------------------

def test_revoke_removes_only_what_the_profile_granted_and_keeps_what_a_mapping_wants(eng):
    eng.run(trigger="timer")  # bob through the Analysts mapping
    for who in ("alice@fabrikam.com", "bob@contoso.com"):
        send(eng, {"principal": who, "profile": "ingest"})
    assert len(names(eng, TELEMETRY)) == 2 and len(names(eng)) == 2
    alice = send(eng, {"action": "revoke", "principal": "alice@fabrikam.com", "profile": "ingest"})
    assert alice.status == "revoked" and len(names(eng, TELEMETRY)) == 1 and len(names(eng)) == 1
    bob = send(eng, {"action": "revoke", "principal": "bob@contoso.com", "profile": "ingest"})
    assert bob.status == "revoked" and "kept: still granted (member of Analysts (mapping analysts))" in bob.detail
    assert names(eng, TELEMETRY) == [] and len(names(eng)) == 1
    assert eng.plan().changes == ()
    again = send(eng, {"action": "revoke", "principal": "alice@fabrikam.com", "profile": "ingest"})
    assert again.status == "unchanged" and "nothing to remove" in again.detail


def test_revoke_never_removes_an_assignment_the_app_does_not_own(eng):
    eng.assignments.seed(Assignment(SALES, "Viewer", ALICE, "portal-made"))
    outcome = send(eng, {"action": "revoke", "principal": "alice@fabrikam.com", "profile": "analyst"})
    assert "not owned by the app" in outcome.detail and names(eng) == ["portal-made"]


# --- Graph change notifications -----------------------------------------------------------------

def event(group_id=ANALYSTS, tenant=HOME, kind="Microsoft.Graph.GroupUpdated"):
    return {"changeType": "updated", "resource": f"Groups/{group_id}", "clientState": "x",
            "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "@odata.id": f"Groups/{group_id}",
                             "id": group_id, "organizationId": tenant},
            "subscriptionId": "5c000000-0000-4000-8000-000000000001", "tenantId": tenant}


def cloud_event(**kw):
    return {"id": "e1", "type": kw.pop("kind", "Microsoft.Graph.GroupUpdated"), "specversion": "1.0",
            "source": f"/tenants/{HOME}/applications/app", "subject": "Groups/x", "datacontenttype": "application/json",
            "time": datetime.now(timezone.utc).isoformat(), "data": event(**kw)}


def grid_event(**kw):
    return {"id": "e2", "eventType": kw.pop("kind", "Microsoft.Graph.GroupUpdated"), "subject": "Groups/x",
            "topic": "/partnertopics/graph", "eventTime": datetime.now(timezone.utc).isoformat(),
            "dataVersion": "1.0", "metadataVersion": "1", "data": event(**kw)}


@pytest.mark.parametrize("make", [cloud_event, grid_event])
def test_a_group_change_reconciles_that_groups_mappings(eng, make):
    notifications._last_run.clear()
    outcome = send(eng, make())
    assert outcome.status == "reconciled" and "1 mapping run" in outcome.detail
    assert [r["trigger"] for r in eng.audit.runs.values()] == ["graph-notification"]
    assert len(names(eng)) == 1


def test_a_burst_of_events_for_a_group_already_read_runs_once(eng):
    notifications._last_run.clear()
    old = grid_event()
    old["data"]["resourceData"]["eventTime"] = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    send(eng, cloud_event())
    assert send(eng, [old, old]).detail == "0 mapping run(s)"


@pytest.mark.parametrize("body", [
    cloud_event(tenant=FABRIKAM), cloud_event(group_id="0000000f-0000-0000-0000-000000000000"),
    cloud_event(kind="Microsoft.Graph.UserUpdated"),
])
def test_other_tenants_unknown_groups_and_other_events_are_ignored(eng, body):
    assert send(eng, body).detail == "0 mapping run(s)" and eng.audit.runs == {}


def test_a_malformed_group_event_is_rejected(eng):
    body = cloud_event()
    del body["data"]["resourceData"]
    assert send(eng, body).status == "rejected" and "resourceData" in rejected(eng)[0]["reason"]


def test_a_change_in_a_nested_group_reconciles_the_mapping_that_contains_it(eng):
    from shared.engine.delta import DeltaState

    notifications._last_run.clear()
    nested = "00000003-0000-0000-0000-000000000000"
    eng.delta_state.save(DeltaState(eng.config.version, [], {"analysts": ANALYSTS}, {ANALYSTS: [nested]}))
    assert send(eng, cloud_event(group_id=nested)).detail == "1 mapping run(s)"
