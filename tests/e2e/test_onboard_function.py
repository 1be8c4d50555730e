"""The `onboard` queue function end to end: messages on a real Azurite queue (base64, as Functions
expects), the real SDKs against the emulator, the ledger, audit and lease in Azurite."""
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

import function_app
from conftest import ADX_PROD, ONE_MAPPING
from shared import app as wiring
from shared.adapters import audit as audit_module
from shared.engine import delta as delta_module
from shared.adapters import ledger as ledger_module
from shared.handlers import notifications, onboarding
from shared.adapters.queues import ONBOARDING, ONBOARDING_REJECTED

HOME = "11111111-0000-4000-8000-000000000001"
ANALYSTS = "b0000000-0000-4000-8000-000000000002"
SALES = {"cluster": ADX_PROD, "database": "Sales"}
TELEMETRY = {"cluster": ADX_PROD, "database": "Telemetry"}
SANDBOX = {"cluster": ADX_PROD.replace("0001/resourceGroups/rg-data", "0002/resourceGroups/rg-dev").replace("adx-prod", "adx-dev"),
           "database": "Sandbox"}
PARTNERS = ["home", "fabrikam.com"]
CONFIG = ONE_MAPPING | {
    "profiles": {
        "analyst": {"tenants": PARTNERS, "targets": [SALES | {"role": "Viewer"}]},
        "telemetry-ingest": {"tenants": PARTNERS, "targets": [TELEMETRY | {"role": "Ingestor"}]},
        "sandbox": {"tenants": PARTNERS, "targets": [SANDBOX | {"role": "Viewer"}]},
        "home-viewer": {"targets": [TELEMETRY | {"role": "Viewer"}]},
        "sales-admin": {"admin": True, "maxDuration": "P7D", "approval": True, "targets": [SALES | {"role": "Admin"}]},
    },
    "onboarding": {"allowDirectTargets": True, "directTargets": [TELEMETRY | {"role": "Viewer"}],
                   "maxNewIdentityRetries": 3},
}


class Queues:
    """The onboarding queues in Azurite, and the `onboard` function fed as the host feeds it."""

    def __init__(self, connection_string: str):
        self.clients = {}
        for name in (ONBOARDING, ONBOARDING_REJECTED):
            client = QueueClient.from_connection_string(
                connection_string, name, message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy())
            try:
                client.create_queue()
            except ResourceExistsError:
                client.clear_messages()
            self.clients[name] = client

    def enqueue(self, body) -> None:
        self.clients[ONBOARDING].send_message(body if isinstance(body, str) else json.dumps(body))

    def receive(self, name=ONBOARDING, visibility_timeout=30):
        return list(self.clients[name].receive_messages(max_messages=32, visibility_timeout=visibility_timeout))

    def deliver(self, message) -> None:
        onboard(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=message.dequeue_count))
        self.clients[ONBOARDING].delete_message(message)

    def deliver_all(self) -> None:
        while batch := self.receive():
            for message in batch:
                self.deliver(message)

    def rejected(self) -> dict[str, dict]:
        found = {}
        while batch := self.receive(ONBOARDING_REJECTED):
            for message in batch:
                body = json.loads(message.content)
                found[body["messageId"]] = body
                self.clients[ONBOARDING_REJECTED].delete_message(message)
        return found


def onboard(message: QueueMessage) -> None:
    function_app.onboard.build().get_user_function()(message)


def run_timer() -> None:
    function_app.engine().sync(trigger="timer")


def assignments(emu, database="Sales") -> dict[str, str]:
    """Name -> the UPN of the user each assignment names, whether written by object ID or by UPN."""
    state = emu.state()
    upns = {u["id"]: u["userPrincipalName"] for u in state["users"]}
    cluster = next(c for c in state["clusters"] if database in c["databases"])
    return {a["name"]: upns.get(a["principalId"], a["principalId"]) for a in cluster["databasePrincipalAssignments"][database]}


def arm_writes(emu) -> int:
    return sum(r["api"] == "arm" and r["method"] in ("PUT", "DELETE") for r in emu.requests()["requests"])


@pytest.fixture
def env(app_env, azurite, monkeypatch):
    """app_env with host storage in Azurite (fresh tables, empty queues) and profiles in the config."""
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("SYNC_CONFIG", json.dumps(CONFIG))
    suffix = uuid.uuid4().hex[:8]
    for module, name in ((audit_module, "RUNS_TABLE"), (audit_module, "CHANGES_TABLE"),
                         (ledger_module, "TABLE"), (delta_module, "TABLE")):
        monkeypatch.setattr(module, name, f"{name.replace('_', '').lower()}{suffix}")
    monkeypatch.setattr(wiring, "_cache", {})
    monkeypatch.setattr(onboarding, "NEW_IDENTITY_DELAY_SECONDS", 1)
    notifications._last_run.clear()
    app_env.queues = Queues(azurite.connection_string)
    return app_env


def test_every_bad_message_kind_ends_in_the_rejected_queue_with_its_reason(env):
    bad = {
        "not-json": "this is not JSON",
        "schema": {"id": "schema", "principal": "grace@contoso.com", "profile": "analyst", "role": "Admin"},
        "unknown-profile": {"id": "unknown-profile", "principal": "grace@contoso.com", "profile": "god-mode"},
        "admin-direct": {"id": "admin-direct", "principal": "grace@contoso.com", "targets": [TELEMETRY | {"role": "Admin"}]},
        "unlisted-db": {"id": "unlisted-db", "principal": "grace@contoso.com", "targets": [SALES | {"role": "Viewer"}]},
        "distribution-group": {"id": "distribution-group", "principal": "sales@contoso.com", "profile": "analyst"},
        "unknown-domain": {"id": "unknown-domain", "principal": "zoe@nowhere.invalid", "profile": "analyst"},
        "type-mismatch": {"id": "type-mismatch", "principal": "grace@contoso.com", "principalType": "Group", "profile": "analyst"},
    }
    for body in bad.values():
        env.queues.enqueue(body)
    env.clear_requests()
    env.queues.deliver_all()
    rejected = env.queues.rejected()
    not_json = next(k for k, v in rejected.items() if v["original"] == "this is not JSON")
    rejected["not-json"] = rejected.pop(not_json)
    expected = {
        "not-json": "not JSON", "schema": "unknown field(s) 'role'", "unknown-profile": "unknown profile 'god-mode'",
        "admin-direct": "admin role", "unlisted-db": "not in the config's onboarding.directTargets",
        "distribution-group": "distribution group", "unknown-domain": "belongs to no Entra tenant",
        "type-mismatch": "resolves to User",
    }
    assert {k: expected[k] in v["reason"] for k, v in rejected.items()} == dict.fromkeys(expected, True)
    assert all(v["time"] and v["original"] for v in rejected.values())
    assert arm_writes(env) == 0
    runs = function_app.engine().audit.list_runs(limit=50)
    assert sum(r["trigger"] == "onboarding" and "rejected" in (r["error"] or "") for r in runs) == len(bad)


def test_a_policy_escalation_attempt_is_refused_and_writes_nothing(env):
    env.queues.enqueue({"id": "e1", "principal": "grace@contoso.com", "targets": [TELEMETRY | {"role": "Admin"}]})
    env.queues.enqueue({"id": "e2", "principal": "grace@contoso.com", "targets": [{"cluster": ADX_PROD, "database": "Payroll", "role": "Viewer"}]})
    env.queues.enqueue({"id": "e3", "principal": "grace@contoso.com", "targets": [{"cluster": ADX_PROD, "role": "AllDatabasesAdmin"}]})
    env.clear_requests()
    env.queues.deliver_all()
    assert sorted(env.queues.rejected()) == ["e1", "e2", "e3"] and arm_writes(env) == 0


def test_grant_sync_revoke_sync_is_right_at_every_step(env):
    run_timer()
    before = assignments(env)
    env.queues.enqueue({"id": "g1", "principal": "grace@contoso.com", "profile": "analyst"})
    env.queues.enqueue({"id": "g2", "principal": "bob@contoso.com", "profile": "analyst"})  # also a member
    env.queues.deliver_all()
    granted = assignments(env)
    assert set(granted.values()) - set(before.values()) == {"grace@contoso.com"}
    run_timer()
    assert assignments(env) == granted
    env.queues.enqueue({"id": "r1", "action": "revoke", "principal": "grace@contoso.com", "profile": "analyst"})
    env.queues.enqueue({"id": "r2", "action": "revoke", "principal": "bob@contoso.com", "profile": "analyst"})
    env.queues.deliver_all()
    assert assignments(env) == before
    run_timer()
    assert assignments(env) == before
    runs = {r["scope"]: r for r in function_app.engine().audit.list_runs(limit=50) if r["trigger"] == "onboarding"}
    kept = function_app.engine().audit.get_run(next(r["runId"] for s, r in runs.items() if "(message r2)" in s))
    assert "still granted" in kept["changes"][0]["reason"]


def arm_does_not_know_yet(env, upn="newhire@contoso.com"):
    """Graph shows the new user; ARM answers its next PUT as it does while the identity replicates."""
    env.directory(upsert={"users": [{"id": "a0000000-0000-4000-8000-0000000000ff", "userPrincipalName": upn}]})
    env.faults(method="PUT", path="principalAssignments", status=400, count=1, body={"error": {
        "code": "BadRequest", "message": f"AAD principal '{upn}' of type User was not found in tenant '{HOME}'."}})


def test_a_new_identity_is_retried_with_a_delay_until_arm_knows_it(env):
    arm_does_not_know_yet(env)
    env.queues.enqueue({"id": "n1", "principal": "newhire@contoso.com", "principalType": "User", "profile": "analyst"})
    env.clear_requests()
    env.queues.deliver_all()
    puts = [r["status"] for r in env.requests()["requests"] if r["api"] == "arm" and r["method"] == "PUT"]
    assert puts == [400] and "newhire@contoso.com" not in assignments(env).values()
    assert env.queues.receive() == []  # re-enqueued, invisible for its delay
    time.sleep(1.2)
    [again] = env.queues.receive()
    assert json.loads(again.content)["_attempt"] == 1
    env.queues.deliver(again)
    assert "newhire@contoso.com" in assignments(env).values()
    assert env.queues.rejected() == {}


def test_a_misspelt_home_upn_is_rejected_at_once_naming_the_tenant(env):
    env.queues.enqueue({"id": "typo", "principal": "gracee@contoso.com", "profile": "analyst"})
    env.clear_requests()
    env.queues.deliver_all()
    assert HOME in env.queues.rejected()["typo"]["reason"] and arm_writes(env) == 0
    assert env.queues.receive() == []  # no delayed retry


def test_a_revoke_that_arrives_during_the_new_identity_delay_stays_revoked(env, monkeypatch):
    monkeypatch.setattr(onboarding, "NEW_IDENTITY_DELAY_SECONDS", 3)
    arm_does_not_know_yet(env)
    env.queues.enqueue({"id": "n1", "principal": "newhire@contoso.com", "profile": "analyst"})
    env.queues.deliver_all()  # deferred: invisible for its delay
    time.sleep(1.1)  # the queue's insertion times have whole seconds
    env.queues.enqueue({"id": "r1", "action": "revoke", "principal": "newhire@contoso.com", "profile": "analyst"})
    env.queues.deliver_all()
    time.sleep(2.2)
    env.queues.deliver_all()  # the grant comes back after the revoke
    assert "stale grant" in env.queues.rejected()["n1"]["reason"]
    assert "newhire@contoso.com" not in assignments(env).values()


def test_an_old_grant_replayed_after_a_revoke_is_refused_as_stale(env):
    grant = {"id": "g1", "principal": "grace@contoso.com", "profile": "analyst"}
    env.queues.enqueue(grant)
    env.queues.deliver_all()
    env.queues.enqueue({"id": "r1", "action": "revoke", "principal": "grace@contoso.com", "profile": "analyst"})
    env.queues.deliver_all()
    env.clear_requests()
    env.queues.enqueue(grant)  # replayed from the poison queue
    env.queues.deliver_all()
    assert "a replay" in env.queues.rejected()["g1"]["reason"] and arm_writes(env) == 0
    assert "grace@contoso.com" not in assignments(env).values()


def test_a_foreign_tenant_user_is_refused_by_a_default_profile_and_accepted_by_one_that_lists_the_tenant(env):
    env.queues.enqueue({"id": "home-only", "principal": "alice@fabrikam.com", "profile": "home-viewer"})
    env.queues.enqueue({"id": "listed", "principal": "alice@fabrikam.com", "profile": "analyst"})
    env.queues.deliver_all()
    rejected = env.queues.rejected()
    assert list(rejected) == ["home-only"] and "profile 'home-viewer' grants only to home (tenants)" in rejected["home-only"]["reason"]
    assert "alice@fabrikam.com" in assignments(env).values()
    assert "alice@fabrikam.com" not in assignments(env, "Telemetry").values()


def test_a_consumer_account_is_refused_by_default(env):
    env.queues.enqueue({"id": "msa", "principal": "carol@outlook.com", "profile": "home-viewer"})
    env.clear_requests()
    env.queues.deliver_all()
    assert "allowConsumerAccounts is false" in env.queues.rejected()["msa"]["reason"] and arm_writes(env) == 0


def test_check_refuses_an_admin_profile_without_max_duration(env, monkeypatch, capsys):
    from shared.handlers import cli

    profiles = CONFIG["profiles"] | {"sales-admin": {"admin": True, "approval": True, "targets": [SALES | {"role": "Admin"}]}}
    monkeypatch.setenv("SYNC_CONFIG", json.dumps(CONFIG | {"profiles": profiles}))
    assert cli.main(["check"]) == 1
    assert "profiles.sales-admin.maxDuration: is required for an admin profile (at most P30D)" in capsys.readouterr().err


def http(fn, method, url, body=None, route_params=None, caller=None):
    import base64

    import azure.functions as func

    headers = {"Content-Type": "application/json"}
    if caller:
        claims = [{"typ": "name", "val": caller}, {"typ": "roles", "val": "Sync.Approver"}]
        headers["X-MS-CLIENT-PRINCIPAL"] = base64.b64encode(json.dumps({"claims": claims}).encode()).decode()
    req = func.HttpRequest(method=method, url=url, headers=headers, body=json.dumps(body).encode() if body else b"",
                           route_params=route_params or {}, params={})
    resp = getattr(function_app, fn).build().get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body())


def test_the_approval_flow_pending_then_approved_by_another_person_then_written(env, monkeypatch):
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "True")
    monkeypatch.setenv("HTTP_APPROVER_ROLE", "Sync.Approver")
    env.clear_requests()
    for who in ("grace", "bob"):
        env.queues.enqueue({"id": f"adm-{who}", "principal": f"{who}@contoso.com", "profile": "sales-admin",
                            "requestedBy": "hr-portal"})
    env.queues.deliver_all()
    assert arm_writes(env) == 0
    status, listed = http("list_grants", "GET", "/api/grants?status=pending")
    waiting = {g["messageId"]: g["id"] for g in listed["grants"]}
    assert status == 200 and sorted(waiting) == ["adm-bob", "adm-grace"]

    status, body = http("approve_grant", "POST", "/x", route_params={"id": waiting["adm-grace"]}, caller="hr-portal")
    assert status == 403 and body["type"].endswith("self-approval")
    status, body = http("approve_grant", "POST", "/x", route_params={"id": waiting["adm-grace"]}, caller="dba@contoso.com")
    assert status == 200 and body["status"] == "approved"
    status, body = http("deny_grant", "POST", "/x", {"reason": "not a DBA"}, route_params={"id": waiting["adm-bob"]},
                        caller="dba@contoso.com")
    assert status == 200 and body["status"] == "denied"
    env.queues.deliver_all()  # the released grant
    admins = assignments(env)
    assert "grace@contoso.com" in admins.values() and arm_writes(env) == 1
    rejected = env.queues.rejected()
    assert list(rejected) == ["adm-bob"] and "denied by dba@contoso.com: not a DBA" in rejected["adm-bob"]["reason"]
    [grant] = [g for g in function_app.engine().ledger.grants([wiring.engine().config.profiles["sales-admin"].targets[0].scope])
               if g.profile == "sales-admin"]
    assert grant.expires_at is not None
    assert http("list_grants", "GET", "/api/grants")[1] == {"grants": []}


def test_a_body_the_host_left_base64_encoded_is_read_too(env, azurite):
    env.queues.enqueue({"id": "b1", "principal": "grace@contoso.com", "profile": "analyst"})
    [raw] = QueueClient.from_connection_string(azurite.connection_string, ONBOARDING).receive_messages()
    onboard(QueueMessage(id=raw.id, body=raw.content.encode(), dequeue_count=1))
    assert "grace@contoso.com" in assignments(env).values()


def test_a_graph_group_notification_reconciles_that_group(env):
    env.directory(addMembers={ANALYSTS: ["a0000000-0000-4000-8000-000000000010"]})  # grace joins
    env.queues.enqueue({
        "id": "ev1", "type": "Microsoft.Graph.GroupUpdated", "specversion": "1.0",
        "source": f"/tenants/{HOME}/applications/app", "subject": f"Groups/{ANALYSTS}", "time": "2030-01-01T00:00:00Z",
        "data": {"changeType": "updated", "resource": f"Groups/{ANALYSTS}", "tenantId": HOME,
                 "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "id": ANALYSTS, "organizationId": HOME}},
    })
    env.queues.deliver_all()
    assert "grace@contoso.com" in assignments(env).values()
    assert [r["trigger"] for r in function_app.engine().audit.list_runs()] == ["graph-notification"]


def test_a_rejection_of_a_message_near_the_queue_limit_is_delivered(env):
    huge = json.dumps({"id": "big", "principal": "grace@contoso.com", "profile": "analyst", "reason": "\u00e9" * 24_000},
                      ensure_ascii=False)  # 48 KiB of UTF-8: what the queue takes; its JSON escape is 6 times that
    env.queues.enqueue(huge)
    env.queues.deliver_all()
    [rejected] = env.queues.rejected().values()
    assert rejected["originalTruncated"] is True and rejected["size"] == len(huge.encode())
    assert rejected["originalSha256"] == __import__("hashlib").sha256(huge.encode()).hexdigest()


def test_a_thousand_messages_with_duplicates_and_redeliveries_are_all_processed_once(env):
    people = [f"user{i:03d}@fabrikam.com" for i in range(60)]
    grants = [(who, profile) for profile in ("analyst", "telemetry-ingest", "sandbox") for who in people]
    bodies = [{"id": f"m{i}", "principal": who, "profile": profile} for i, (who, profile) in enumerate(grants)]
    bodies += [body | {"id": f"dup-{body['id']}-{n}"} for n in range(4) for body in bodies[:155]]  # duplicates
    bodies += bodies[:200]  # the same message sent again
    assert len(bodies) == 1000
    client = env.queues.clients[ONBOARDING]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda b: client.send_message(json.dumps(b)), bodies))
    before = {db: assignments(env, db) for db in ("Sales", "Telemetry", "Sandbox")}

    def work(message) -> None:
        onboard(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=message.dequeue_count))
        if message.dequeue_count == 1 and message.id[-1] in "01":
            # The instance "dies" before deleting: the message comes back, as after a host crash.
            client.update_message(message, visibility_timeout=0)
        else:
            client.delete_message(message)

    started, deliveries = time.monotonic(), 0
    with ThreadPoolExecutor(8) as pool:  # as many at once as the host's batchSize
        while batch := env.queues.receive():
            list(pool.map(work, batch))
            deliveries += len(batch)
    elapsed = time.monotonic() - started
    for db in ("Sales", "Telemetry", "Sandbox"):
        added = [who for name, who in assignments(env, db).items() if name not in before[db]]
        assert sorted(added) == people, db  # none lost, none twice
    assert deliveries > len(bodies) and env.queues.rejected() == {}
    print(f"\n{deliveries} deliveries of {len(bodies)} messages in {elapsed:.1f}s")
