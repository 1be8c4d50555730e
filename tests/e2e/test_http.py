"""The HTTP routes end to end: real SDKs against the emulator, the audit and the queue in Azurite."""
import json
import uuid

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient, TextBase64DecodePolicy

import function_app
from conftest import ADX_PROD
from shared import app as wiring
from shared.adapters import audit as audit_module
from shared.adapters.queues import CLUSTER_JOBS, RECONCILE_REQUESTS


@pytest.fixture
def http_env(app_env, azurite, monkeypatch):
    """app_env with host storage in Azurite: fresh audit tables and a freshly wired engine."""
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setattr(audit_module, "RUNS_TABLE", f"runs{suffix}")
    monkeypatch.setattr(audit_module, "CHANGES_TABLE", f"changes{suffix}")
    monkeypatch.setattr(wiring, "_cache", {})
    client = QueueClient.from_connection_string(azurite.connection_string, CLUSTER_JOBS)
    try:
        client.clear_messages()  # jobs other tests' timer runs queued and nobody ran
    except Exception:
        pass  # the queue does not exist yet
    return app_env


def http(fn, method="GET", url="/api/x", body=None, **kw):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    req = func.HttpRequest(method=method, url=url, headers=headers | kw.pop("headers", {}),
                           body=json.dumps(body).encode() if body is not None else b"", **kw)
    return getattr(function_app, fn).build().get_user_function()(req)


def arm_writes(emu) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in emu.requests()["requests"]
            if r["api"] == "arm" and r["method"] in ("PUT", "PATCH", "DELETE")]


def sales_owned(emu) -> list[str]:
    cluster = next(c for c in emu.state()["clusters"] if c["name"] == "adx-prod")
    sales = cluster["databasePrincipalAssignments"]["Sales"]
    return sorted(a["principalId"] for a in sales if a["name"].startswith("ks-"))


def receive(connection_string: str, run_id: str) -> QueueMessage:
    """Take the run's message off the real queue, decoded as the Functions host decodes it."""
    client = QueueClient.from_connection_string(connection_string, RECONCILE_REQUESTS,
                                                message_decode_policy=TextBase64DecodePolicy())
    for message in client.receive_messages(max_messages=32):
        client.delete_message(message)
        if json.loads(message.content)["runId"] == run_id:
            return QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1)
    raise AssertionError(f"no message for run {run_id} in {RECONCILE_REQUESTS}")


def run_cluster_jobs(connection_string: str) -> int:
    """Run every message on cluster-jobs through the queue function, as the host would; how many."""
    client = QueueClient.from_connection_string(connection_string, CLUSTER_JOBS,
                                                message_decode_policy=TextBase64DecodePolicy())
    ran = 0
    while messages := list(client.receive_messages(max_messages=32)):
        for message in messages:
            client.delete_message(message)
            function_app.apply_cluster_job.build().get_user_function()(
                QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1))
            ran += 1
    return ran


def test_apply_is_queued_run_by_the_queue_function_and_visible_in_the_history(http_env, azurite):
    resp = http("reconcile", "POST", "/api/reconcile", {"scope": f"{ADX_PROD}/Sales", "mode": "apply"})
    assert resp.status_code == 202, resp.get_body()
    run_id = json.loads(resp.get_body())["runId"]
    location = resp.headers["Location"]
    assert location == f"/api/runs/{run_id}"
    assert json.loads(http("get_run", url=location, route_params={"id": run_id}).get_body())["status"] == "queued"
    assert sales_owned(http_env) == []

    function_app.run_reconcile.build().get_user_function()(receive(azurite.connection_string, run_id))
    assert sales_owned(http_env) == []  # planned, its writes queued as one job per cluster
    assert json.loads(http("get_run", url=location, route_params={"id": run_id}).get_body())["status"] == "running"
    assert run_cluster_jobs(azurite.connection_string) == 1

    # adele, bob, christie, and the guests alice, nina and carol: users by object ID
    assert sales_owned(http_env) == [f"a0000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3, 7, 8, 9)]
    run = json.loads(http("get_run", url=location, route_params={"id": run_id}).get_body())
    assert run["status"] == "succeeded" and run["counts"] == {"succeeded": 6}
    assert sorted(c["principal"].split("=")[1].split(";")[0] for c in run["changes"]) == sales_owned(http_env)
    assert {(c["action"], c["result"]) for c in run["changes"]} == {("add", "succeeded")}
    listed = json.loads(http("list_runs", params={"limit": "5"}).get_body())["runs"]
    assert [(r["runId"], r["status"]) for r in listed] == [(run_id, "succeeded")]


def test_plan_is_read_only(http_env):
    http_env.clear_requests()
    resp = http("reconcile", "POST", "/api/reconcile", {"scope": "adx-prod", "mode": "plan"},
                headers={"Accept": "text/plain"})
    assert resp.status_code == 200
    assert resp.get_body().decode().splitlines()[-1] == "plan: 6 add, 0 remove, 0 hold, 0 skip; 1 unowned drift"
    assert any(r["api"] == "arm" for r in http_env.requests()["requests"])
    assert arm_writes(http_env) == []


def test_a_second_apply_while_the_first_is_queued_is_409(http_env, azurite):
    first = json.loads(http("reconcile", "POST", "/api/reconcile", {"mode": "apply"}).get_body())["runId"]
    resp = http("reconcile", "POST", "/api/reconcile", {"scope": "analysts-sales", "mode": "apply"})
    assert resp.status_code == 409 and json.loads(resp.get_body())["runId"] == first
    receive(azurite.connection_string, first)


def test_two_simultaneous_applies_exactly_one_starts(http_env, azurite):
    import threading

    barrier, answers = threading.Barrier(2), []

    def apply(scope):
        barrier.wait()
        answers.append(http("reconcile", "POST", "/api/reconcile", {"scope": scope, "mode": "apply"}))

    threads = [threading.Thread(target=apply, args=(s,)) for s in ("adx-prod", "analysts-sales")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [202, 409]
    started = next(json.loads(a.get_body()) for a in answers if a.status_code == 202)
    refused = next(json.loads(a.get_body()) for a in answers if a.status_code == 409)
    assert refused["runId"] == started["runId"] and refused["location"] == f"/api/runs/{started['runId']}"
    receive(azurite.connection_string, started["runId"])
