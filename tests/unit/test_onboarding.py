"""Onboarding messages and Graph notifications over in-memory fakes: schema, policy, idempotency,
rejection with the reason, delayed retries of new identities, and revoke next to group mappings."""
import base64
import json
from datetime import datetime, timedelta, timezone

import pytest

from fakes import FakeAssignments, FakeDirectory, group, user
from shared.handlers import notifications, onboarding
from shared.adapters.audit import MemoryAudit
from shared.core.config import parse_config
from shared.core.errors import NotFoundError, PermanentError, TransientError
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
    "guards": {"maxDeletes": 10},
    "mappings": [{"name": "analysts", "group": "Analysts",
                  "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}],
    "profiles": {
        "analyst": {"tenants": ["home", "fabrikam.com"],
                    "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        "ingest": {"tenants": ["home", FABRIKAM],
                   "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Ingestor"},
                               {"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        "sales-admin": {"admin": True, "maxDuration": "P7D", "approval": True,
                        "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Admin"}]},
        "home-only": {"maxDuration": "P30D", "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Viewer"}]},
        "robots": {"principalKinds": ["app", "group"], "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Ingestor"}]},
        "consumers": {"allowConsumerAccounts": True, "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Viewer"}]},
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
                       "bob@contoso.com": user("00000002-0000-0000-0000-000000000000", "bob@contoso.com"),
                       "newbie@contoso.com": user("00000004-0000-0000-0000-000000000000", "newbie@contoso.com")}
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
    assert [(g.principal.fqn, g.principal.upn) for g in eng.ledger.grants([SALES])] == [
        (f"aaduser=00000004-0000-0000-0000-000000000000;{HOME}", "newbie@contoso.com")]


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


# --- who a profile may grant --------------------------------------------------------------------

def test_a_default_profile_refuses_a_foreign_tenant_user_naming_the_rule_and_the_profile(eng):
    outcome = send(eng, {"principal": "alice@fabrikam.com", "profile": "home-only"})
    assert outcome.status == "rejected" and eng.assignments.writes == []
    assert f"is in tenant {FABRIKAM}: profile 'home-only' grants only to home (tenants)" in outcome.detail


def test_a_profile_that_lists_the_tenant_by_domain_or_id_accepts_its_users(eng):
    assert send(eng, {"principal": "alice@fabrikam.com", "profile": "analyst"}).status == "granted"
    assert send(eng, {"principal": "alice@fabrikam.com", "profile": "ingest"}).status == "granted"


def test_a_consumer_account_is_refused_unless_the_profile_allows_consumer_accounts(eng):
    refused = send(eng, {"principal": "carol@outlook.com", "profile": "home-only"})
    assert refused.status == "rejected" and "allowConsumerAccounts is false" in refused.detail
    assert "profile 'home-only'" in refused.detail
    assert send(eng, {"principal": "carol@outlook.com", "profile": "consumers"}, qid="q2").status == "granted"


def test_groups_and_apps_only_where_principal_kinds_lists_them(eng):
    refused = send(eng, {"principal": "Analysts", "profile": "home-only"})
    assert "is a group: profile 'home-only' grants only user (principalKinds)" in refused.detail
    assert send(eng, {"principal": "Analysts", "profile": "robots"}, qid="q2").status == "granted"
    assert "is a user: profile 'robots' grants only app, group" in send(eng, {"principal": "ann@contoso.com", "profile": "robots"}, qid="q3").detail


def test_a_revoke_is_never_refused_by_the_policy(eng):
    send(eng, {"principal": "alice@fabrikam.com", "profile": "analyst"})
    eng.config = parse_config(CONFIG | {"profiles": CONFIG["profiles"] | {"analyst": {
        "targets": CONFIG["profiles"]["analyst"]["targets"]}}})
    assert send(eng, {"action": "revoke", "principal": "alice@fabrikam.com", "profile": "analyst"}).status == "revoked"


# --- for how long -------------------------------------------------------------------------------

def test_a_grant_without_expiry_gets_the_profiles_maximum(eng):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    send(eng, {"principal": "ann@contoso.com", "profile": "home-only"}, now=now)
    [grant] = eng.ledger.grants([TELEMETRY])
    assert grant.expires_at == "2030-01-31T00:00:00+00:00"


def test_an_expiry_beyond_the_maximum_is_refused_with_the_limit(eng):
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    outcome = send(eng, {"principal": "ann@contoso.com", "profile": "home-only", "expiresAt": "2030-03-01T00:00:00Z"}, now=now)
    assert outcome.status == "rejected" and "beyond the maxDuration P30D of profile 'home-only'" in outcome.detail
    assert eng.ledger.grants([TELEMETRY]) == [] and eng.assignments.writes == []


def test_two_grants_of_one_profile_keep_the_later_expiry_explicitly(eng):
    later = (datetime.now(timezone.utc) + timedelta(days=20)).isoformat()
    sooner = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    send(eng, {"id": "long", "principal": "ann@contoso.com", "profile": "home-only", "expiresAt": later})
    outcome = send(eng, {"id": "short", "principal": "ann@contoso.com", "profile": "home-only", "expiresAt": sooner})
    [grant] = eng.ledger.grants([TELEMETRY])
    assert datetime.fromisoformat(grant.expires_at) == datetime.fromisoformat(later)
    assert "expiry kept at" in outcome.detail and "a grant with a later expiry" in outcome.detail


def test_a_grant_that_fails_restores_the_other_grants_ledger_row(eng):
    send(eng, {"id": "first", "principal": "ann@contoso.com", "profile": "home-only"})
    eng.assignments.state.clear()  # someone removed the assignment: the second grant must write again
    eng.assignments.fail = [("create", PermanentError("403 from ARM"))]
    assert send(eng, {"id": "second", "principal": "ann@contoso.com", "profile": "home-only"}).status == "rejected"
    assert [g.message_id for g in eng.ledger.grants([TELEMETRY])] == ["first"]


# --- approval -----------------------------------------------------------------------------------

ADMIN_GRANT = {"id": "a1", "principal": "ann@contoso.com", "profile": "sales-admin", "requestedBy": "hr-bot"}


def pending_of(eng):
    [pending] = onboarding.list_pending(eng)
    return pending


def test_an_approval_profile_records_a_pending_grant_and_writes_nothing(eng):
    outcome = send(eng, ADMIN_GRANT)
    assert outcome.status == "pending" and eng.assignments.writes == [] and eng.ledger.grants([SALES]) == []
    pending = pending_of(eng)
    assert (pending.principal.object_id, pending.profile, pending.requested_by) == (
        "00000001-0000-0000-0000-000000000000", "sales-admin", "hr-bot")
    assert send(eng, ADMIN_GRANT, dequeue_count=2).status == "pending" and len(onboarding.list_pending(eng)) == 1
    [run, _] = eng.audit.runs.values()
    assert run["status"] == "succeeded_with_holds" and run["counts"] == {"held": 1}


def test_approval_by_another_person_releases_the_grant_through_the_queue(eng):
    send(eng, ADMIN_GRANT)
    approved = onboarding.approve(eng, pending_of(eng).id, approver="dba@contoso.com")
    assert approved.status == "approved" and eng.assignments.writes == []
    released, _ = eng.queues.sent[ONBOARDING][-1]
    assert send(eng, json.dumps(released), qid="q2").status == "granted"
    [grant] = eng.ledger.grants([SALES])
    assert grant.profile == "sales-admin" and grant.expires_at is not None
    assert onboarding.list_pending(eng, None)[0].status == "granted"
    assert any(r["trigger"] == "approval" and "approve" in r["scope"] for r in eng.audit.runs.values())


def test_the_requester_may_not_approve_their_own_grant(eng):
    send(eng, ADMIN_GRANT)
    with pytest.raises(onboarding.ApprovalError, match="the requester may not approve it") as error:
        onboarding.approve(eng, pending_of(eng).id, approver="someone", approver_ids=frozenset({"HR-BOT"}))
    assert error.value.kind == "self-approval" and pending_of(eng).status == "pending"


def test_a_queue_message_alone_cannot_release_a_pending_grant(eng):
    send(eng, ADMIN_GRANT)
    assert send(eng, ADMIN_GRANT | {"_attempt": 1}, qid="q2").status == "pending" and eng.assignments.writes == []


def test_a_denied_grant_is_rejected_with_the_reason_and_stays_denied(eng):
    send(eng, ADMIN_GRANT)
    onboarding.deny(eng, pending_of(eng).id, approver="dba@contoso.com", reason="not on the DBA rota")
    [sent] = rejected(eng)
    assert "denied by dba@contoso.com: not on the DBA rota" in sent["reason"] and sent["messageId"] == "a1"
    assert send(eng, ADMIN_GRANT).status == "rejected" and eng.assignments.writes == []
    with pytest.raises(onboarding.ApprovalError, match="already denied"):
        onboarding.approve(eng, onboarding.list_pending(eng, None)[0].id, approver="other")


def test_a_pending_grant_expires_after_the_approval_timeout_with_a_reason(eng):
    send(eng, ADMIN_GRANT, now=datetime.now(timezone.utc) - timedelta(days=8))
    [expired] = onboarding.expire_pending(eng)
    assert expired.status == "expired" and onboarding.list_pending(eng) == []
    assert "was not approved by" in rejected(eng)[0]["reason"] and "approvalTimeout P7D" in rejected(eng)[0]["reason"]


def test_an_approval_profile_needs_a_named_requester(eng):
    outcome = send(eng, {k: v for k, v in ADMIN_GRANT.items() if k != "requestedBy"})
    assert outcome.status == "rejected" and "requestedBy must name the requester" in outcome.detail


# --- rejections always arrive -------------------------------------------------------------------

@pytest.mark.parametrize("original", [
    b"x" * 49_000, ("\u00e9" * 24_000).encode(), ("\U0001f600" * 12_000).encode(), bytes(range(256)) * 190,
    ("\u2028\x00" * 10_000), "\ud800" * 1000,
])
def test_a_rejection_fits_a_queue_message_whatever_the_original(original):
    from shared.adapters.queues import encode

    body = onboarding.rejection(original, "q1", "too big " * 2000)
    assert len(encode(body).encode()) <= 49_152
    raw = original.encode("utf-8", "surrogatepass") if isinstance(original, str) else original
    assert body["size"] == len(raw) and body["originalSha256"] == __import__("hashlib").sha256(raw).hexdigest()
    assert body["originalTruncated"] is (len(body["original"]) < len(raw.decode("utf-8", "replace")))


def test_a_small_rejection_keeps_the_whole_original(eng):
    send(eng, {"principal": "ann@contoso.com", "profile": "ghost"})
    [sent] = rejected(eng)
    assert sent["originalTruncated"] is False and json.loads(sent["original"])["profile"] == "ghost"
    assert set(sent) == {"reason", "messageId", "time", "original", "originalTruncated", "originalSha256", "size"}


def test_an_oversized_message_is_rejected_and_delivered(eng):
    outcome = send(eng, json.dumps({"principal": "ann@contoso.com", "profile": "analyst", "reason": "\u00e9" * 20_000}))
    [sent] = rejected(eng)
    assert outcome.status == "rejected" and "at most 8192" in sent["reason"] and sent["originalTruncated"] is True


# --- hostile fields -----------------------------------------------------------------------------

@pytest.mark.parametrize("body, reason", [
    ({"principal": "ann@contoso.com\nINFO granted everything", "profile": "analyst"}, "principal: must not contain control"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "reason": "ok\r\nforged"}, "reason: must not contain"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "id": "m\u2028x"}, "id: must not contain"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "requestedBy": "\u202eevil"}, "requestedBy: must not contain"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "expiresAt": "9999-12-31T23:30:00-01:00"}, "between the years 1 and 9999"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "issuedAt": "2999-01-01T00:00:00Z"}, "issuedAt: is in the future"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "sequence": -1}, "sequence: must be an integer"),
    ({"principal": "ann@contoso.com", "profile": "analyst", "bad\nfield": 1}, "unknown field(s) 'bad\\nfield'"),
])
def test_hostile_fields_are_rejected_with_a_reason(eng, body, reason):
    outcome = send(eng, body)
    assert outcome.status == "rejected" and reason in outcome.detail
    assert "\n" not in rejected(eng)[0]["reason"] and eng.assignments.writes == []


def test_deeply_nested_json_is_rejected_not_raised(eng):
    outcome = send(eng, "[" * 5000 + "]" * 5000)
    assert outcome.status == "rejected" and rejected(eng)


def test_a_direct_target_is_written_as_configured_never_in_the_messages_spelling(eng):
    eng.config = parse_config(CONFIG | {"onboarding": {"allowDirectTargets": True, "directTargets": [
        {"cluster": CLUSTER, "database": "finance-strasse", "role": "Viewer"}]}})
    lookalike = send(eng, {"principal": "ann@contoso.com", "targets": [
        {"cluster": CLUSTER, "database": "\ufb01nance-stra\u00dfe", "role": "Viewer"}]})
    assert lookalike.status == "rejected" and eng.assignments.writes == []
    assert send(eng, {"principal": "ann@contoso.com", "targets": [
        {"cluster": CLUSTER.upper().replace("MICROSOFT.KUSTO", "microsoft.kusto"), "database": "FINANCE-STRASSE",
         "role": "viewer"}]}, qid="q2").status == "granted"
    [(_, scope, _)] = eng.assignments.writes
    assert scope.cluster == Scope(CLUSTER).cluster and scope.database == "finance-strasse"


# --- typos fail fast; order and replay ----------------------------------------------------------

def test_a_home_tenant_upn_graph_does_not_know_is_rejected_at_once_naming_the_tenant(eng):
    outcome = send(eng, {"principal": "anne@contoso.com", "profile": "analyst"})
    assert outcome.status == "rejected" and HOME in outcome.detail and ONBOARDING not in eng.queues.sent


def test_a_revoke_during_a_new_identity_delay_stays_revoked(eng):
    eng.assignments.fail = [("create", PrincipalNotYetKnownError("principal not found"))]
    then = datetime.now(timezone.utc) - timedelta(minutes=1)
    assert send(eng, {"id": "g1", "principal": "newbie@contoso.com", "profile": "analyst"}, enqueued=then).status == "deferred"
    retry, _ = eng.queues.sent[ONBOARDING][0]
    send(eng, {"id": "r1", "action": "revoke", "principal": "newbie@contoso.com", "profile": "analyst"}, qid="q2")
    outcome = send(eng, json.dumps(retry), qid="q3")
    assert outcome.status == "rejected" and "stale grant" in outcome.detail and eng.ledger.grants([SALES]) == []


def test_an_old_grant_replayed_after_a_revoke_is_refused_as_stale(eng):
    grant = {"id": "g1", "principal": "ann@contoso.com", "profile": "analyst"}
    send(eng, grant)
    send(eng, {"id": "r1", "action": "revoke", "principal": "ann@contoso.com", "profile": "analyst"}, qid="q2")
    outcome = send(eng, grant, qid="q3")  # replayed from the poison queue: a new queue message, the same request
    assert outcome.status == "rejected" and "a replay" in outcome.detail and names(eng) == []
    assert send(eng, grant | {"id": "g2"}, qid="q4").status == "granted"  # a new request is welcome


def test_a_producer_sequence_orders_grants_and_revokes(eng):
    send(eng, {"action": "revoke", "principal": "ann@contoso.com", "profile": "analyst", "sequence": 7})
    old = send(eng, {"id": "g6", "principal": "ann@contoso.com", "profile": "analyst", "sequence": 6}, qid="q2")
    assert old.status == "rejected" and "sequence 6 is below the revoke's 7" in old.detail
    assert send(eng, {"id": "g8", "principal": "ann@contoso.com", "profile": "analyst", "sequence": 8}, qid="q3").status == "granted"


def test_a_revoke_is_remembered_by_object_id_so_a_rename_does_not_escape_it():
    from dataclasses import replace as renamed

    from shared.adapters.ledger import Revocation

    ledger, ann = MemoryLedger(), Principal(PrincipalKind.USER, "ann@contoso.com", HOME,
                                            object_id="00000001-0000-0000-0000-000000000000")
    ledger.record_revocation(Revocation(ann, "analyst", "2030-01-01T00:00:00+00:00"))
    assert ledger.revocation(renamed(ann, identifier="ann.smith@contoso.com"), "analyst") is not None


def test_a_home_tenant_guest_is_granted_by_a_default_profile_as_its_guest_object(eng):
    guest = user("00000005-0000-0000-0000-000000000000", "alice_fabrikam.com#EXT#@contoso.com", user_type="Guest",
                 mail="alice@fabrikam.com")
    eng.directory.users["alice_fabrikam.com#ext#@contoso.com"] = guest
    assert send(eng, {"principal": "alice_fabrikam.com#EXT#@contoso.com", "profile": "home-only"}).status == "granted"
    [grant] = eng.ledger.grants([TELEMETRY])
    assert grant.principal.tenant == HOME and grant.principal.object_id == guest.id
    eng.config = parse_config(CONFIG | {"guests": "home"})  # granted in its home tenant instead: fabrikam
    outcome = send(eng, {"principal": "alice_fabrikam.com#EXT#@contoso.com", "profile": "home-only"}, qid="q2")
    assert outcome.status == "rejected" and f"is in tenant {FABRIKAM}" in outcome.detail
