"""Scenario suite: each scenario plans, applies and re-plans against the emulator with the real
SDKs; the re-plan must be empty (only the scenario's own skips and holds may remain)."""
import json

import pytest

from conftest import ADX_PROD
from emulator.testing import DEMO_TENANT
from shared.app import build
from shared.core.config import parse_config
from shared.core.plan import Action, assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope
from shared.core.settings import Settings

HOME = "11111111-0000-4000-8000-000000000001"
SALES = Scope(ADX_PROD, "Sales")
ANALYSTS, ANALYSTS_EU, FINANCE = ("b0000000-0000-4000-8000-000000000002",
                                  "b0000000-0000-4000-8000-000000000003",
                                  "b0000000-0000-4000-8000-000000000006")
BOB, GRACE = "a0000000-0000-4000-8000-000000000002", "a0000000-0000-4000-8000-000000000010"


def mapping(name, group, role="Viewer", **extra):
    return {"name": name, "group": group, **extra,
            "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": role}]}


def engine_for(*mappings, guards=None, **top):
    config = parse_config({"guards": guards or {},
                           "mappings": list(mappings), **top})
    return build(Settings.from_env(), config=config)


UPNS = {u["id"]: u["userPrincipalName"] for u in json.loads(DEMO_TENANT.read_text(encoding="utf-8"))["users"]}


def who(principal):
    """A user's UPN (users are written by object ID), else the principal's identifier."""
    return principal.upn or UPNS.get(principal.object_id) or principal.identifier


def actions(the_plan):
    return sorted((c.action.value, c.role, who(c.principal) if c.principal else None) for c in the_plan.changes)


def converge(engine, **run):
    report = engine.run(trigger="test", **run)
    assert report.status == "succeeded", [r.error for r in report.results if r.error]
    return report


def arm_writes(emu):
    return [r for r in emu.requests()["requests"] if r["api"] == "arm" and r["method"] in ("PUT", "DELETE")]


@pytest.fixture
def emu(app_env):
    return app_env


def test_join(emu):
    engine = engine_for(mapping("analysts", "Analysts"))
    converge(engine)
    emu.directory(upsert={"users": [{"id": "a0000000-0000-4000-8000-000000000099", "userPrincipalName": "zoe@contoso.com"}]},
                  addMembers={ANALYSTS: ["a0000000-0000-4000-8000-000000000099"]})
    assert actions(engine.plan()) == [("add", "Viewer", "zoe@contoso.com")]
    assert engine.plan().changes[0].principal.fqn == f"aaduser=a0000000-0000-4000-8000-000000000099;{HOME}"
    converge(engine)
    assert engine.plan().changes == ()


def test_leave(emu):
    engine = engine_for(mapping("analysts", "Analysts"))
    converge(engine)
    emu.directory(removeMembers={ANALYSTS_EU: [BOB]})
    assert actions(engine.plan()) == [("remove", "Viewer", "bob@contoso.com")]
    converge(engine)
    assert engine.plan().changes == ()


def test_a_nested_add_and_a_nested_removal(emu):
    engine = engine_for(mapping("analysts", "Analysts"))
    converge(engine)
    nested = "b0000000-0000-4000-8000-000000000099"
    emu.directory(upsert={"groups": [{"id": nested, "displayName": "Analysts-APAC", "mailEnabled": False,
                                      "securityEnabled": True, "groupTypes": [], "members": [GRACE]}]},
                  addMembers={ANALYSTS_EU: [nested]})
    assert actions(engine.plan()) == [("add", "Viewer", "grace@contoso.com")]
    converge(engine)
    emu.directory(removeMembers={ANALYSTS_EU: [nested]})
    assert actions(engine.plan()) == [("remove", "Viewer", "grace@contoso.com")]
    converge(engine)
    assert engine.plan().changes == ()


def test_a_move_between_groups_changes_the_role(emu):
    engine = engine_for(mapping("analysts", "Analysts", "Viewer"), mapping("finance", "Finance Readers", "Ingestor"))
    converge(engine)
    emu.directory(removeMembers={ANALYSTS_EU: [BOB]}, addMembers={FINANCE: [BOB]})
    assert actions(engine.plan()) == [("add", "Ingestor", "bob@contoso.com"), ("remove", "Viewer", "bob@contoso.com")]
    converge(engine)
    assert engine.plan().changes == ()


def test_a_deleted_group_skips_its_scope_and_removes_nothing(emu):
    engine = engine_for(mapping("analysts", "Analysts"))
    converge(engine)
    emu.directory(delete={"groups": [ANALYSTS]})
    emu.clear_requests()
    the_plan = engine.plan()
    assert [c.action for c in the_plan.changes] == [Action.SKIP]
    engine.run(trigger="test")
    assert arm_writes(emu) == []


def test_a_distribution_group_is_refused_with_its_reason(emu):
    the_plan = engine_for(mapping("dl", "Sales-DL")).plan()
    assert [c.action for c in the_plan.changes] == [Action.SKIP]
    assert "distribution group (mailEnabled, not securityEnabled)" in the_plan.changes[0].reason


def test_a_guest_is_granted_as_its_guest_object_by_default(emu):
    engine = engine_for(mapping("analysts", "Analysts"))
    converge(engine)
    fqns = {a.principal.fqn for a in engine.assignments.list_assignments(SALES)}
    assert f"aaduser=a0000000-0000-4000-8000-000000000007;{HOME}" in fqns  # alice of fabrikam
    assert f"aaduser=a0000000-0000-4000-8000-000000000009;{HOME}" in fqns  # carol of outlook.com
    assert engine.plan().changes == ()


def test_a_guest_is_granted_in_its_home_tenant_with_guests_home(emu):
    engine = engine_for(mapping("analysts", "Analysts"), guests="home")
    converge(engine)
    fqns = {a.principal.fqn for a in engine.assignments.list_assignments(SALES)}
    assert "aaduser=alice@fabrikam.com;22222222-0000-4000-8000-000000000002" in fqns
    assert "msauser=carol@outlook.com" in fqns
    assert engine.plan().changes == ()


def test_a_service_principal_member(emu):
    engine = engine_for(mapping("etl", "ETL Apps", "Ingestor", include="apps"))
    converge(engine)
    apps = [a for a in engine.assignments.list_assignments(SALES) if a.role == "Ingestor"]
    assert [a.principal.fqn for a in apps] == [f"aadapp=e0000000-0000-4000-8000-000000000002;{HOME}"]


def test_a_pre_existing_unowned_assignment_is_reused_and_never_removed(emu):
    engine = engine_for(mapping("finance", "Finance Readers"))  # diego already has Viewer as portal-added-2
    assert actions(engine.plan()) == [("add", "Viewer", "emma@contoso.com")]
    converge(engine)
    emu.directory(removeMembers={FINANCE: ["a0000000-0000-4000-8000-000000000004"]})
    the_plan = engine.plan()
    assert the_plan.changes == () and [a.name for a in the_plan.drift] == ["portal-added-2"]


def test_a_principal_reached_through_two_groups_is_granted_once(emu):
    emu.directory(addMembers={FINANCE: [BOB]})
    engine = engine_for(mapping("analysts", "Analysts"), mapping("finance", "Finance Readers"))
    assert [a for a in actions(engine.plan()) if a[2] == "bob@contoso.com"] == [("add", "Viewer", "bob@contoso.com")]
    converge(engine)
    emu.directory(removeMembers={ANALYSTS_EU: [BOB]})
    assert engine.plan().changes == ()  # still wanted through Finance Readers


def test_a_role_change_in_the_config(emu):
    converge(engine_for(mapping("finance", "Finance Readers", "Viewer")))
    engine = engine_for(mapping("finance", FINANCE, "Admin"))  # an admin role: the group by object ID
    assert actions(engine.plan()) == [
        ("add", "Admin", "diego@contoso.com"), ("add", "Admin", "emma@contoso.com"),
        ("remove", "Viewer", "emma@contoso.com"),
    ]
    converge(engine)
    assert engine.plan().changes == ()


def test_the_guard_trips_then_approval_releases_the_held_deletes(emu):
    guards = {"maxDeletes": 2}
    engine = engine_for(mapping("analysts", "Analysts"), guards=guards)
    converge(engine)
    emu.directory(removeMembers={ANALYSTS: [ANALYSTS_EU]})  # four people leave at once
    emu.directory(upsert={"users": [{"id": "a0000000-0000-4000-8000-000000000099", "userPrincipalName": "zoe@contoso.com"}]},
                  addMembers={ANALYSTS: ["a0000000-0000-4000-8000-000000000099"]})
    report = engine.run(trigger="test")
    assert sorted(r.status for r in report.results) == ["held"] * 4 + ["succeeded"]
    assert [c.action for c in engine.plan().changes] == [Action.HOLD] * 4
    converge(engine, approve_deletes=True)
    assert engine.plan().changes == ()


def test_a_429_storm_is_ridden_out(emu):
    # Retry-After 1 s keeps the test short; both SDKs honour the header exactly.
    emu.faults(method="GET", path="transitiveMembers", status=429, count=1, retryAfter=1)
    emu.faults(method="PUT", path="principalAssignments", status=429, count=2, retryAfter=1)
    emu.faults(method="GET", path="operationResults", status=503, count=1, retryAfter=1)
    engine = engine_for(mapping("analysts", "Analysts"))
    converge(engine)
    assert engine.plan().changes == ()


def test_a_failure_half_way_through_apply_then_convergence(emu):
    engine = engine_for(mapping("analysts", "Analysts"))
    bob = Principal(PrincipalKind.USER, BOB, HOME, object_id=BOB)
    emu.faults(method="PUT", path=assignment_name("ks-", SALES, "Viewer", bob), status=400, count=-1)
    report = engine.run(trigger="test")
    assert report.status == "partially failed"
    assert [r.change.principal.upn for r in report.results if r.status == "failed"] == ["bob@contoso.com"]
    emu.clear_faults()
    assert actions(engine.plan()) == [("add", "Viewer", "bob@contoso.com")]
    converge(engine)
    assert engine.plan().changes == ()


def test_steady_state_makes_no_arm_writes_and_one_graph_page_per_999_members(emu):
    users = [{"id": f"c0000000-0000-4000-8000-{i:012d}", "userPrincipalName": f"user{i}@contoso.com"} for i in range(2500)]
    emu.directory(upsert={"users": users}, addMembers={ANALYSTS: [u["id"] for u in users]})
    engine = engine_for(mapping("analysts", "Analysts"), guards={"maxDeletes": 5000})
    # Seed what a first apply would have written, without 2,507 long-running operations.
    emu.clusters(put=[
        {"subscriptionId": SALES.subscription_id, "resourceGroup": SALES.resource_group, "cluster": SALES.cluster_name,
         "database": "Sales", "name": change.name, "principalId": change.principal.to_arm()[0],
         "principalType": change.principal.to_arm()[1], "tenantId": change.principal.to_arm()[2], "role": change.role}
        for change in engine.plan().changes
    ])
    emu.clear_requests()
    assert engine.run(trigger="test").results == []
    counts = emu.requests()["counts"]
    assert arm_writes(emu) == []
    assert counts["GET graph /groups/{id}/transitiveMembers"] == 3  # 2,507 members in pages of 999
