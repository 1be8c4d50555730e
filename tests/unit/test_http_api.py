"""The HTTP routes and the run_reconcile queue function, through azure.functions objects, over fakes."""
import base64
import json

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

import function_app
from fakes import FakeAssignments, FakeDirectory, group, user
from shared import app as wiring
from shared.handlers import runs
from shared.adapters.audit import now_ms
from shared.core.config import parse_config
from shared.core.errors import TransientError
from shared.core.plan import Assignment, assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.adapters.queues import ONBOARDING, RECONCILE_REQUESTS
from shared.engine.reconcile import Engine
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
TEST = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-test"
SALES = Scope(PROD, "Sales")
ANALYSTS = "00000008-0000-0000-0000-000000000000"


@pytest.fixture
def world(monkeypatch):
    """An engine over fakes (two clusters, three analysts), served to the functions as `engine()`."""
    directory = FakeDirectory()
    directory.add_group(group(ANALYSTS, "Analysts"), [
        user(f"0000000{i}-0000-0000-0000-000000000000", f"{name}@contoso.com")
        for i, name in enumerate(("ann", "bob", "cid"))
    ])
    cfg = parse_config({
        "guards": {"maxDeletes": 1},
        "mappings": [
            {"name": "prod", "group": "Analysts",
             "targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}]},
            {"name": "test", "group": "Analysts",
             "targets": [{"cluster": TEST, "database": "Sandbox", "role": "Viewer"}]},
        ],
    })
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    engine = Engine(cfg, directory, FakeAssignments(), tenants, HOME, sleep=lambda s: None)
    monkeypatch.setattr(wiring, "engine", lambda environ=None: engine)
    for key in ("HTTP_REQUIRED_ROLE", "HTTP_APPROVER_ROLE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")  # what App Service sets when Easy Auth is on
    return engine


def call(fn, method="GET", url="/api/x", body=None, headers=None, **kw):
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = func.HttpRequest(method=method, url=url, headers=headers, body=body or b"", **kw)
    return getattr(function_app, fn).build().get_user_function()(req)


def post(body=None, **kw):
    return call("reconcile", "POST", "/api/reconcile", body, **kw)


def get_run(run_id, **kw):
    return call("get_run", url=f"/api/runs/{run_id}", route_params={"id": run_id}, **kw)


def deliver(engine, index=-1, dequeue_count=1):
    body, _ = engine.queues.sent[RECONCILE_REQUESTS][index]
    msg = QueueMessage(id="m1", body=json.dumps(body).encode(), dequeue_count=dequeue_count)
    function_app.run_reconcile.build().get_user_function()(msg)


def principal(roles=(), name="ops@contoso.com", oid=None):
    claims = [{"typ": "name", "val": name}] + [{"typ": "roles", "val": r} for r in roles]
    claims += [{"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": oid}] if oid else []
    return base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims}).encode()).decode()


def problem(resp, status):
    assert resp.status_code == status, resp.get_body()
    assert resp.mimetype == "application/problem+json"
    body = json.loads(resp.get_body())
    assert body["status"] == status and body["type"] and body["title"] and body["detail"]
    assert "Traceback" not in resp.get_body().decode()
    return body


def failing_once(fn, error):
    errors = [error]

    def call_through(*args, **kwargs):
        if errors:
            raise errors.pop()
        return fn(*args, **kwargs)
    return call_through


def seed_owned(engine, *names):
    for name in names:
        who = Principal(PrincipalKind.USER, f"{name}@contoso.com", HOME)
        engine.assignments.seed(Assignment(SALES, "Viewer", who, assignment_name("ks-", SALES, "Viewer", who)))


# --- plan ---------------------------------------------------------------------------------------

def test_plan_answers_the_cli_json_schema_and_writes_nothing(world):
    resp = post({"mode": "plan"})
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert json.loads(resp.get_body()) == world.plan().as_json()
    assert json.loads(resp.get_body())["summary"]["add"] == 6
    assert world.assignments.writes == [] and world.audit.runs == {} and world.queues.sent == {}


def test_plan_of_one_database_as_a_text_table(world):
    resp = post({"scope": f"{PROD}/Sales"}, headers={"Accept": "text/plain"})
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    lines = resp.get_body().decode().splitlines()
    assert lines[0].startswith("+ adx-prod/Sales Viewer aaduser=") and lines[0].endswith(
        f";{HOME} (ann@contoso.com) (member of Analysts (mapping prod))")
    assert len(lines) == 4 and lines[-1] == "plan: 3 add, 0 remove, 0 hold, 0 skip; 0 unowned drift"


def test_an_empty_body_plans_everything(world):
    resp = call("reconcile", "POST", "/api/reconcile")
    assert resp.status_code == 200 and json.loads(resp.get_body())["summary"]["add"] == 6


def test_plan_shows_held_deletes_and_what_approval_would_release(world):
    seed_owned(world, "old1", "old2")
    held = json.loads(post({"scope": "adx-prod"}).get_body())["summary"]
    released = json.loads(post({"scope": "adx-prod", "approveDeletes": True}).get_body())["summary"]
    assert (held["hold"], held["remove"]) == (2, 0) and (released["hold"], released["remove"]) == (0, 2)


def test_an_unknown_scope_is_answered_with_the_valid_scopes(world):
    body = problem(post({"scope": "adx-nope", "mode": "apply"}), 400)
    assert body["validScopes"] == ["adx-prod", "adx-prod/Sales", "adx-test", "adx-test/Sandbox", "prod", "test"]
    assert "adx-nope" in body["detail"] and world.queues.sent == {}


@pytest.mark.parametrize("body, words", [
    (b"{not json", "not valid JSON"),
    ([1, 2], "JSON object"),
    ({"mode": "plan", "scop": "x"}, "scop: unknown field"),
    ({"scope": 7}, "scope: must be a string"),
    ({"mode": "destroy"}, "mode: must be 'plan' or 'apply'"),
    ({"approveDeletes": "yes"}, "approveDeletes: must be true or false"),
])
def test_malformed_bodies_are_400(world, body, words):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert words in problem(post(raw, headers={"Content-Type": "application/json"}), 400)["detail"]


def test_a_body_that_is_not_json_content_is_415(world):
    body = problem(post(b"mode=apply", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert "application/x-www-form-urlencoded" in body["detail"]


@pytest.mark.parametrize("fn, kw", [
    ("reconcile", {"method": "POST", "body": b"{}"}),
    ("list_runs", {}),
    ("get_run", {"route_params": {"id": "r1"}}),
])
def test_an_accept_neither_json_nor_text_is_406(world, fn, kw):
    problem(call(fn, headers={"Accept": "application/xml", "Content-Type": "application/json"}, **kw), 406)


def test_accept_with_quality_values_picks_the_preferred(world):
    resp = post({}, headers={"Accept": "application/json;q=0.5, text/*"})
    assert resp.mimetype == "text/plain"
    assert post({}, headers={"Accept": "*/*"}).mimetype == "application/json"


def test_invalid_settings_are_503_without_values(monkeypatch):
    monkeypatch.delenv("SYNC_CONFIG", raising=False)
    monkeypatch.setenv("AZURE_TENANT_ID", "not-a-guid")
    body = problem(post({"mode": "plan"}), 503)
    assert body["source"] == "app settings" and any("SYNC_CONFIG" in p for p in body["problems"])


def test_a_transient_failure_is_503_with_retry_after(world, monkeypatch):
    def throttled(*a, **kw):
        raise TransientError("Graph throttled", retry_after=12)
    monkeypatch.setattr(world.directory, "find_group", throttled)
    monkeypatch.setattr(world, "plan", throttled)
    resp = post({})
    problem(resp, 503)
    assert resp.headers["Retry-After"] == "12"


def test_an_unexpected_error_is_500_without_a_trace(world, monkeypatch):
    monkeypatch.setattr(world, "plan", lambda *a, **kw: 1 / 0)
    assert "division" not in problem(post({}), 500)["detail"]


# --- apply, the queued run and its history ------------------------------------------------------

def test_apply_queues_a_run_that_the_queue_function_completes(world):
    resp = post({"scope": "adx-prod", "mode": "apply"}, headers={"X-MS-CLIENT-PRINCIPAL": principal()})
    assert resp.status_code == 202
    run_id = json.loads(resp.get_body())["runId"]
    assert resp.headers["Location"] == f"/api/runs/{run_id}"
    ((message, delay),) = world.queues.sent[RECONCILE_REQUESTS]
    assert message == {"runId": run_id, "scope": "adx-prod", "approveDeletes": False, "requestedBy": "ops@contoso.com"}
    assert world.assignments.writes == []
    queued = json.loads(get_run(run_id).get_body())
    assert (queued["status"], queued["changes"], queued["requestedBy"]) == ("queued", [], "ops@contoso.com")

    deliver(world)
    done = json.loads(get_run(run_id).get_body())
    assert done["status"] == "succeeded" and done["counts"] == {"succeeded": 3} and done["trigger"] == "http"
    assert {c["result"] for c in done["changes"]} == {"succeeded"} and done["heldDeletes"] == []
    assert done["startedMs"] == queued["startedMs"] and done["requestedBy"] == "ops@contoso.com"
    assert len(world.assignments.state[SALES]) == 3 and not world.assignments.state[Scope(TEST, "Sandbox")]


def test_a_redelivered_finished_run_does_nothing(world):
    post({"mode": "apply"})
    deliver(world)
    writes = list(world.assignments.writes)
    deliver(world, dequeue_count=2)
    assert world.assignments.writes == writes


def test_a_transient_failure_requeues_the_run_and_the_retry_completes_it(world, monkeypatch):
    run_id = json.loads(post({"mode": "apply"}).get_body())["runId"]
    monkeypatch.setattr(world.audit, "record_end", failing_once(world.audit.record_end, TransientError("table busy")))
    with pytest.raises(TransientError):
        deliver(world)
    requeued = world.audit.get_run(run_id)
    assert requeued["status"] == "queued" and "attempt 1 of 5" in requeued["error"]
    deliver(world, dequeue_count=2)
    assert json.loads(get_run(run_id).get_body())["status"] == "succeeded"


def test_a_malformed_message_is_dropped(world, caplog):
    function_app.run_reconcile.build().get_user_function()(QueueMessage(id="m", body=b"[]", dequeue_count=1))
    assert "malformed" in caplog.text


def test_held_deletes_are_reported_and_released_by_an_approved_apply(world):
    seed_owned(world, "old1", "old2")
    post({"scope": "adx-prod", "mode": "apply"})
    deliver(world)
    held = json.loads(call("list_runs").get_body())["runs"][0]
    run = json.loads(get_run(held["runId"]).get_body())
    assert run["counts"] == {"succeeded": 3, "held": 2} and len(run["heldDeletes"]) == 2
    assert {c["action"] for c in run["heldDeletes"]} == {"hold"}
    post({"scope": "adx-prod", "mode": "apply", "approveDeletes": True})
    deliver(world)
    assert len(world.assignments.state[SALES]) == 3


def test_a_run_in_progress_on_an_overlapping_cluster_is_409(world):
    first = json.loads(post({"scope": "prod", "mode": "apply"}).get_body())["runId"]
    body = problem(post({"scope": f"{PROD}/Sales", "mode": "apply"}), 409)
    assert body["runId"] == first and body["location"] == f"/api/runs/{first}"
    assert problem(post({"mode": "apply"}), 409)["runId"] == first  # everything overlaps
    assert post({"scope": "adx-test", "mode": "apply"}).status_code == 202
    assert post({"scope": "adx-prod", "mode": "plan"}).status_code == 200  # planning never conflicts


def test_a_stale_or_finished_run_does_not_block(world):
    post({"scope": "adx-prod", "mode": "apply"})
    assert runs.in_progress(world, "adx-prod", now=now_ms() + runs.STALE_AFTER_MS + 1) is None
    deliver(world)
    assert post({"scope": "adx-prod", "mode": "apply"}).status_code == 202


def test_a_failed_send_marks_the_run_failed(world, monkeypatch):
    monkeypatch.setattr(world.queues, "send", failing_once(world.queues.send, TransientError("queue down")))
    problem(post({"mode": "apply"}), 503)
    (record,) = world.audit.list_runs()
    assert record["status"] == "failed" and "could not queue" in record["error"]
    assert post({"mode": "apply"}).status_code == 202


def test_runs_are_listed_with_a_limit(world):
    ids = []
    for scope in ("adx-prod", "adx-test"):
        ids.append(json.loads(post({"scope": scope, "mode": "apply"}).get_body())["runId"])
        deliver(world)
    resp = call("list_runs", params={"limit": "1"})
    assert resp.status_code == 200 and len(json.loads(resp.get_body())["runs"]) == 1
    listed = json.loads(call("list_runs").get_body())["runs"]
    assert sorted(r["runId"] for r in listed) == sorted(ids) and {r["status"] for r in listed} == {"succeeded"}


@pytest.mark.parametrize("limit", ["0", "101", "ten", "-1"])
def test_a_bad_limit_is_400(world, limit):
    assert "limit" in problem(call("list_runs", params={"limit": limit}), 400)["detail"]


@pytest.mark.parametrize("run_id", ["no-such-run", "a#b"])
def test_an_unknown_run_is_404(world, run_id):
    assert problem(get_run(run_id), 404)["runId"] == run_id


# --- auth ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, kw", [
    ("reconcile", {"method": "POST", "body": {}}),
    ("list_runs", {}),
    ("get_run", {"route_params": {"id": "r1"}}),
])
def test_a_required_role_refuses_anonymous_and_unentitled_callers(world, monkeypatch, fn, kw):
    monkeypatch.setenv("HTTP_REQUIRED_ROLE", "Sync.Operator")
    anonymous = call(fn, **kw)
    assert problem(anonymous, 401)["requiredRole"] == "Sync.Operator"
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    problem(call(fn, headers={"X-MS-CLIENT-PRINCIPAL": "not base64 json"}, **kw), 401)
    problem(call(fn, headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Reader"])}, **kw), 403)
    assert call(fn, headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Operator"])}, **kw).status_code in (200, 404)


def test_approving_deletes_needs_the_approver_role(world, monkeypatch):
    monkeypatch.setenv("HTTP_APPROVER_ROLE", "Sync.Approver")
    apply = {"mode": "apply", "approveDeletes": True}
    problem(post(apply), 401)
    problem(post(apply, headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Operator"])}), 403)
    assert post({"mode": "plan", "approveDeletes": True}).status_code == 200  # a plan releases nothing
    assert post({"mode": "apply"}).status_code == 202
    deliver(world)
    assert post(apply, headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Approver"])}).status_code == 202
    assert world.queues.sent[RECONCILE_REQUESTS][-1][0]["approveDeletes"] is True


def test_health_stays_anonymous(world, monkeypatch):
    monkeypatch.setenv("HTTP_REQUIRED_ROLE", "Sync.Operator")
    monkeypatch.setenv("SYNC_CONFIG", json.dumps(world.config.to_dict()))
    monkeypatch.setenv("SYNC_SCHEDULE", "0 */30 * * * *")
    resp = call("health", url="/api/health")
    assert resp.status_code == 200 and json.loads(resp.get_body())["configVersion"] == world.config.version


def test_without_app_service_authentication_the_principal_header_is_not_trusted(world, monkeypatch):
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "false")
    forged = {"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Approver"], name="mallory")}
    assert post({"mode": "apply"}, headers=forged).status_code == 202
    assert world.queues.sent[RECONCILE_REQUESTS][-1][0]["requestedBy"] is None
    monkeypatch.setenv("HTTP_APPROVER_ROLE", "Sync.Approver")
    body = problem(post({"mode": "apply", "approveDeletes": True}, headers=forged), 503)
    assert body["type"].endswith("authentication-disabled") and "WEBSITE_AUTH_ENABLED" in body["detail"]


def test_health_warns_when_roles_are_set_without_app_service_authentication(world, monkeypatch):
    monkeypatch.setenv("SYNC_CONFIG", json.dumps(world.config.to_dict()))
    monkeypatch.setenv("SYNC_SCHEDULE", "0 */30 * * * *")
    monkeypatch.setenv("HTTP_APPROVER_ROLE", "Sync.Approver")
    assert "warnings" not in json.loads(call("health", url="/api/health").get_body())
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")
    health = json.loads(call("health", url="/api/health").get_body())
    assert "HTTP_APPROVER_ROLE set, but App Service authentication is off" in health["warnings"][0]
    from shared.handlers.doctor import http_checks

    [check] = http_checks()
    assert (check.area, check.status) == ("http", "missing") and "WEBSITE_AUTH_ENABLED" in check.detail


# --- grants waiting for approval ----------------------------------------------------------------

@pytest.fixture
def approvals(world, monkeypatch):
    """The world with an admin profile that needs approval, and one grant of it waiting."""
    from shared.handlers import onboarding

    world.config = parse_config(world.config.to_dict() | {"profiles": {"sales-admin": {
        "admin": True, "maxDuration": "P1D", "approval": True, "principalKinds": ["group"],
        "targets": [{"cluster": PROD, "database": "Sales", "role": "Admin"}]}}})
    monkeypatch.setenv("HTTP_APPROVER_ROLE", "Sync.Approver")
    body = {"id": "m1", "principal": ANALYSTS, "profile": "sales-admin", "requestedBy": "req@contoso.com"}
    assert onboarding.handle(world, json.dumps(body), message_id="q1").status == "pending"
    return world


def grants(status="pending", **kw):
    return call("list_grants", url="/api/grants", params={"status": status}, **kw)


def decide(verb, grant_id, body=None, **kw):
    return call(f"{verb}_grant", "POST", f"/api/grants/{grant_id}/{verb}", body, route_params={"id": grant_id}, **kw)


def test_pending_grants_are_listed_and_an_approver_releases_one(approvals):
    [waiting] = json.loads(grants().get_body())["grants"]
    assert (waiting["status"], waiting["profile"], waiting["requestedBy"]) == ("pending", "sales-admin", "req@contoso.com")
    resp = decide("approve", waiting["id"], headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Approver"])})
    assert resp.status_code == 200 and json.loads(resp.get_body())["decidedBy"] == "ops@contoso.com"
    assert json.loads(grants().get_body())["grants"] == [] and approvals.assignments.writes == []
    again = decide("approve", waiting["id"], headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Approver"])})
    assert again.status_code == 200  # the release is sent again (harmless): a lost send is never final
    assert len(approvals.queues.sent[ONBOARDING]) == 2 and approvals.assignments.writes == []
    assert problem(decide("deny", waiting["id"], {"reason": "late"}, headers={"X-MS-CLIENT-PRINCIPAL": principal(
        ["Sync.Approver"])}), 409)["type"].endswith("grant-decided")


def test_approving_needs_the_approver_role_and_someone_other_than_the_requester(approvals):
    grant_id = json.loads(grants().get_body())["grants"][0]["id"]
    problem(decide("approve", grant_id), 401)
    problem(decide("approve", grant_id, headers={"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Operator"])}), 403)
    own = principal(["Sync.Approver"], name="someone", oid="req@contoso.com")
    assert problem(decide("approve", grant_id, headers={"X-MS-CLIENT-PRINCIPAL": own}), 403)["type"].endswith("self-approval")
    own = principal(["Sync.Approver"], name="REQ@contoso.com")
    problem(decide("approve", grant_id, headers={"X-MS-CLIENT-PRINCIPAL": own}), 403)


def test_a_denial_needs_a_reason_and_rejects_the_grant(approvals):
    from shared.adapters.queues import ONBOARDING_REJECTED

    grant_id = json.loads(grants().get_body())["grants"][0]["id"]
    approver = {"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Approver"])}
    problem(decide("deny", grant_id, headers=approver), 400)
    problem(decide("deny", grant_id, {"reason": "no\nway"}, headers=approver), 400)
    assert decide("deny", grant_id, {"reason": "not on call"}, headers=approver).status_code == 200
    [(sent, _)] = approvals.queues.sent[ONBOARDING_REJECTED]
    assert "denied by ops@contoso.com: not on call" in sent["reason"]
    assert [g["status"] for g in json.loads(grants("denied").get_body())["grants"]] == ["denied"]


def test_unknown_grants_bad_statuses_and_unconfigured_approval(approvals, monkeypatch):
    approver = {"X-MS-CLIENT-PRINCIPAL": principal(["Sync.Approver"])}
    problem(decide("approve", "p" + "0" * 24, headers=approver), 404)
    problem(decide("approve", "../../x", headers=approver), 404)
    problem(grants("maybe"), 400)
    monkeypatch.delenv("HTTP_APPROVER_ROLE")
    grant_id = json.loads(grants().get_body())["grants"][0]["id"]
    assert problem(decide("approve", grant_id, headers=approver), 403)["type"].endswith("approval-not-configured")
