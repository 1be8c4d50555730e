"""A permission taken away from the identity, end to end (real SDKs against the emulator): the
plan holds no removal, what cannot be read is skipped with the permission named, and `doctor`
names the missing role or action."""
import base64
import json
from pathlib import Path

import pytest

import function_app
from conftest import ADX_PROD
from shared import app as wiring
from shared.app import build
from shared.core.permissions import arm_action_names, graph_role_names
from shared.core.plan import Action
from shared.core.settings import Settings
from shared.handlers.doctor import diagnose

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "emulator" / "tenants" / "demo-config.yaml"
ADX_DEV = "/subscriptions/5b000000-0000-4000-8000-000000000002/resourceGroups/rg-dev/providers/Microsoft.Kusto/clusters/adx-dev"
ANALYSTS, OPS_A = "b0000000-0000-4000-8000-000000000002", "b0000000-0000-4000-8000-000000000008"
GRACE = "a0000000-0000-4000-8000-000000000010"
DB_WRITE = "Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write"


@pytest.fixture
def demo(app_env, monkeypatch):
    """The demo config applied with the default (documented) permissions."""
    monkeypatch.setenv("SYNC_CONFIG", str(DEMO_CONFIG))
    report = build(Settings.from_env()).run(trigger="test")
    assert not [r for r in report.results if r.status == "failed"]  # only the demo's Sales-DL is skipped
    return app_env


def without(*roles):
    return [r for r in graph_role_names() if r not in roles]


def removals(the_plan):
    return [c for c in the_plan.changes if c.action in (Action.REMOVE, Action.HOLD)]


def skipped_naming(the_plan, permission):
    return [c for c in the_plan.changes if c.action is Action.SKIP and permission in c.reason]


def doctor_names(permission):
    report = diagnose(build(Settings.from_env()), Settings.from_env())
    missing = [c for c in report.checks if c.status == "missing"]
    return not report.ok and any(permission in c.subject or permission in c.detail for c in missing)


def test_doctor_is_ok_on_the_demo_tenant_with_the_default_permissions(demo):
    report = diagnose(build(Settings.from_env()), Settings.from_env())
    assert report.ok, report.lines()
    assert {c.subject for c in report.checks if c.area == "graph"} == set(graph_role_names()) - {"Member.Read.Hidden", "Group.Read.All"}
    assert {c.subject for c in report.checks if c.area == "arm"} == {"adx-prod", "adx-dev"}


def test_revoking_user_read_all_removes_nothing_and_is_named(demo):
    demo.permissions(graph=without("User.Read.All"))
    the_plan = build(Settings.from_env()).plan()
    assert removals(the_plan) == []
    assert skipped_naming(the_plan, "User.Read.All")
    assert doctor_names("User.Read.All")


def test_revoking_application_read_all_leaves_app_members_unknown(demo):
    demo.permissions(graph=without("Application.Read.All"))
    the_plan = build(Settings.from_env()).plan()
    assert removals(the_plan) == []
    (skip,) = skipped_naming(the_plan, "Application.Read.All")
    assert "etl-telemetry" in skip.reason and "limited information" in skip.reason
    assert doctor_names("Application.Read.All")


def test_revoking_cross_tenant_information_with_guests_at_home_removes_no_guest(demo):
    demo.permissions(graph=without("CrossTenantInformation.ReadBasic.All"))
    the_plan = build(Settings.from_env()).plan()
    assert removals(the_plan) == []
    assert skipped_naming(the_plan, "CrossTenantInformation.ReadBasic.All")
    assert doctor_names("CrossTenantInformation.ReadBasic.All")


def test_a_write_taken_away_on_one_cluster_skips_it_and_the_others_proceed(demo):
    demo.directory(addMembers={ANALYSTS: [GRACE], OPS_A: [GRACE]})  # one add on each cluster
    demo.permissions(arm={ADX_PROD: {"actions": [a for a in arm_action_names() if a != DB_WRITE]}})
    report = build(Settings.from_env()).run(trigger="test")
    assert removals(report.plan) == []
    assert [c.scope.cluster for c in skipped_naming(report.plan, DB_WRITE)] == [ADX_PROD, ADX_PROD]  # Sales, Telemetry
    added = [r for r in report.results if r.change.action is Action.ADD]
    assert added and all(r.change.scope.cluster == ADX_DEV and r.status == "succeeded" for r in added)
    assert doctor_names(DB_WRITE)


def test_deep_health_runs_the_doctor_for_an_authorised_caller(demo, monkeypatch):
    monkeypatch.setattr(wiring, "_cache", {})

    def health(**headers):
        import azure.functions as func

        req = func.HttpRequest(method="GET", url="/api/health", params={"deep": "true"}, headers=headers, body=b"")
        return function_app.health.build().get_user_function()(req)

    claims = [{"typ": "roles", "val": "Sync.Operator"}]
    caller = {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps({"claims": claims}).encode()).decode()}
    assert health().status_code == 403  # no HTTP_REQUIRED_ROLE: an anonymous route never reports permissions
    monkeypatch.setenv("HTTP_REQUIRED_ROLE", "Sync.Operator")
    assert health(**caller).status_code == 503  # App Service authentication off: the header proves nothing
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    assert health().status_code == 401
    ok = health(**caller)
    assert ok.status_code == 200 and json.loads(ok.get_body())["ok"] is True
    demo.permissions(graph=without("User.Read.All"))
    bad = health(**caller)
    body = json.loads(bad.get_body())
    assert bad.status_code == 503 and [c["subject"] for c in body["checks"] if c["status"] == "missing"] == ["User.Read.All"]


def test_a_hidden_membership_group_raises_the_need_for_member_read_hidden(demo, monkeypatch):
    secret = "c0000000-0000-4000-8000-00000000000a"
    demo.directory(upsert={"groups": [{"id": secret, "displayName": "Secret", "mailEnabled": True, "mail": "secret@contoso.com",
                                       "securityEnabled": True, "groupTypes": ["Unified"], "visibility": "HiddenMembership",
                                       "members": [GRACE]}]})
    config = {"mappings": [{"name": "secret", "group": "Secret", "targets": [{"cluster": ADX_DEV, "database": "Sandbox", "role": "Viewer"}]}]}
    monkeypatch.setenv("SYNC_CONFIG", json.dumps(config))
    report = diagnose(build(Settings.from_env()), Settings.from_env())
    assert report.ok and "Member.Read.Hidden" in {c.subject for c in report.checks}
    demo.permissions(graph=without("Member.Read.Hidden"))
    the_plan = build(Settings.from_env()).plan()
    # Unknown only what the mapping could want (Viewer on Sandbox); the demo's other roles there
    # left the config with this one, and go.
    assert [c for c in removals(the_plan) if c.role == "Viewer"] == [] and skipped_naming(the_plan, "Member.Read.Hidden")
    assert doctor_names("Member.Read.Hidden")
