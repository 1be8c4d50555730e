"""The `graph_subscription` timer end to end: the real Graph SDK transport against the emulator's
`subscriptions`, and the onboarding queue for the lifecycle events it answers."""
from datetime import datetime, timedelta, timezone

import pytest
from azure.functions.timer import TimerRequest
from azure.storage.queue import QueueSasPermissions, generate_queue_sas

import function_app
from azurite import ACCOUNT, KEY
from shared import app as wiring
from shared.adapters.queues import ONBOARDING
from test_onboard_function import ANALYSTS, HOME, env  # noqa: F401 (the fixture: Azurite queues and tables)

TARGET = ("EventGrid:?azuresubscriptionid=5b000000-0000-4000-8000-000000000001&resourcegroup=rg-events"
          "&partnertopic=kusto-sync-groups&location=westeurope")
SECRET = "a-client-state-secret"


@pytest.fixture(autouse=True)
def fresh_wiring(monkeypatch):
    """Engines built here (their quick-cycle state included) stay here."""
    monkeypatch.setattr(wiring, "_cache", {})


def run_timer() -> None:
    function_app.graph_subscription.build().get_user_function()(TimerRequest(past_due=False))


def subscription_calls(emu) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in emu.requests()["requests"] if "/subscriptions" in r["path"].lower()
            and r["api"] == "graph"]


def expires(sub) -> datetime:
    return datetime.fromisoformat(sub["expires"])


def configure(monkeypatch):
    monkeypatch.setenv("GRAPH_EVENTS_TARGET", TARGET)
    monkeypatch.setenv("GRAPH_EVENTS_CLIENT_STATE", SECRET)


def test_the_first_run_creates_the_subscription_and_the_next_leaves_it(app_env, monkeypatch):
    configure(monkeypatch)
    run_timer()
    [sub] = app_env.subscriptions()
    assert (sub["resource"], sub["changeType"], sub["clientState"]) == ("groups", "updated,deleted", SECRET)
    assert sub["notificationUrl"] == sub["lifecycleNotificationUrl"] == TARGET
    assert expires(sub) - datetime.now(timezone.utc) > timedelta(days=28)
    app_env.clear_requests()
    run_timer()
    assert subscription_calls(app_env) == ["GET /v1.0/subscriptions"]


def test_a_run_near_expiry_renews_it_to_the_maximum(app_env, monkeypatch):
    configure(monkeypatch)
    run_timer()
    app_env.expire_subscription(6 * 3600)
    run_timer()
    [sub] = app_env.subscriptions()
    assert expires(sub) - datetime.now(timezone.utc) > timedelta(days=28)
    assert "PATCH graph /subscriptions/{id}" in app_env.requests()["counts"]


def test_a_subscription_graph_dropped_silently_is_back_on_the_next_run(app_env, monkeypatch):
    configure(monkeypatch)
    run_timer()
    first = app_env.subscriptions()[0]["id"]
    app_env.expire_subscription(0)
    run_timer()
    live = [s for s in app_env.subscriptions() if expires(s) > datetime.now(timezone.utc)]
    assert len(live) == 1 and live[0]["id"] != first


@pytest.fixture
def events(env, azurite, monkeypatch):
    """The feature on, and the partner topic's event subscription delivering to Azurite's onboarding queue."""
    configure(monkeypatch)
    sas = generate_queue_sas(ACCOUNT, ONBOARDING, KEY, permission=QueueSasPermissions(add=True),
                             expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    env.event_grid(f"{azurite.endpoints['Queue']}/{ACCOUNT}/{ONBOARDING}?{sas}")
    run_timer()
    return env


def runs(emu):
    return [r["trigger"] for r in function_app.engine().audit.list_runs()]


def test_subscription_removed_is_answered_by_a_new_subscription(events):
    [old] = events.subscriptions()
    assert events.lifecycle("subscriptionRemoved")["delivered"] is True
    events.queues.deliver_all()
    [new] = events.subscriptions()
    assert new["id"] != old["id"] and new["lifecycleNotificationUrl"] == TARGET
    assert events.queues.rejected() == {}


def test_reauthorization_required_is_answered_by_reauthorize(events):
    [sub] = events.subscriptions()
    events.lifecycle("reauthorizationRequired")
    assert events.subscriptions()[0]["needsReauthorization"] is True
    events.clear_requests()
    events.queues.deliver_all()
    assert events.subscriptions()[0]["needsReauthorization"] is False
    assert subscription_calls(events) == [f"POST /v1.0/subscriptions/{sub['id']}/reauthorize"]


def test_missed_is_answered_by_a_full_read_of_the_mappings(events):
    events.lifecycle("missed")
    events.clear_requests()
    events.queues.deliver_all()
    assert runs(events) == ["graph-lifecycle:full"]
    reads = [r["path"] for r in events.requests()["requests"] if r["path"].endswith("/transitiveMembers")]
    assert reads == [f"/v1.0/groups/{ANALYSTS}/transitiveMembers"]


def test_an_event_with_another_client_state_is_rejected_with_the_reason(events):
    events.queues.enqueue({
        "id": "forged", "type": "Microsoft.Graph.GroupUpdated", "specversion": "1.0",
        "source": f"/tenants/{HOME}/applications/app", "subject": f"Groups/{ANALYSTS}",
        "data": {"changeType": "updated", "resource": f"Groups/{ANALYSTS}", "tenantId": HOME, "clientState": "guess",
                 "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "id": ANALYSTS, "organizationId": HOME}},
    })
    events.queues.deliver_all()
    [reason] = [r["reason"] for r in events.queues.rejected().values()]
    assert "clientState does not match GRAPH_EVENTS_CLIENT_STATE" in reason and SECRET not in reason
    assert "graph-notification" not in runs(events)  # audited as a rejected message only


def test_with_the_setting_unset_no_graph_subscription_call_is_made(env):
    run_timer()
    wiring.engine().sync(trigger="timer")  # a sync (writes made here, not queued as cluster jobs)
    env.queues.enqueue({"id": "l1", "type": "Microsoft.Graph.SubscriptionReauthorizationRequired", "specversion": "1.0",
                        "data": {"lifecycleEvent": "reauthorizationRequired", "subscriptionId": "s1", "tenantId": HOME}})
    env.queues.deliver_all()
    assert env.requests()["total"] > 0  # the sync itself did call Graph and ARM
    assert subscription_calls(env) == []


def test_doctor_reports_the_subscriptions_id_expiry_and_health(app_env, monkeypatch):
    from shared.core.settings import Settings
    from shared.handlers.doctor import diagnose

    configure(monkeypatch)

    def check():
        report = diagnose(wiring.engine(), Settings.from_env())
        [found] = [c for c in report.checks if c.subject == "subscription"]
        return found, report

    assert check()[0].status == "missing"
    run_timer()
    found, report = check()
    [sub] = app_env.subscriptions()
    assert found.status == "ok" and found.detail.startswith(f"id {sub['id']}, expires 20")
    assert "ok graph Group.Read.All" in report.lines()
    app_env.expire_subscription(3 * 3600)
    found, _ = check()
    assert found.status == "missing" and "within a day" in found.detail
    assert deep_health(monkeypatch) == ("missing", found.detail)


def deep_health(monkeypatch):
    """GET /api/health?deep=true as an authorised caller: the subscription check's (status, detail)."""
    import base64
    import json

    import azure.functions as func

    monkeypatch.setenv("HTTP_REQUIRED_ROLE", "Sync.Operator")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    principal = base64.b64encode(json.dumps({"claims": [{"typ": "roles", "val": "Sync.Operator"}]}).encode()).decode()
    req = func.HttpRequest(method="GET", url="/api/health", params={"deep": "true"},
                           headers={"X-MS-CLIENT-PRINCIPAL": principal}, body=b"")
    body = json.loads(function_app.health.build().get_user_function()(req).get_body())
    [check] = [c for c in body["checks"] if c["subject"] == "subscription"]
    return check["status"], check["detail"]


def test_without_group_read_all_the_timer_fails_loudly_and_doctor_names_the_role(app_env, monkeypatch):
    from shared.core.errors import PermanentError
    from shared.core.permissions import graph_role_names
    from shared.core.settings import Settings
    from shared.handlers.doctor import diagnose

    configure(monkeypatch)
    app_env.permissions(graph=[r for r in graph_role_names() if r != "Group.Read.All"])
    with pytest.raises(PermanentError, match="403"):
        run_timer()
    report = diagnose(wiring.engine(), Settings.from_env())
    assert any(line.startswith("missing: graph Group.Read.All") for line in report.lines())
