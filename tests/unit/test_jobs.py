"""Cluster jobs and queue messages as requests: the queue functions over fakes, as the host calls them."""
import json

from azure.functions.queue import QueueMessage

import function_app
from test_http_api import ANALYSTS, PROD, SALES, TEST, deliver, get_run, post, seed_owned, world  # noqa: F401
from shared.adapters.queues import CLUSTER_JOBS, RECONCILE_REQUESTS
from shared.core.scopes import Scope
from shared.engine.reconcile import Engine
from shared.handlers.runs import rolled_up


def queue_function(name, body, dequeue_count=1):
    msg = QueueMessage(id="m1", body=(body if isinstance(body, bytes) else json.dumps(body).encode()),
                       dequeue_count=dequeue_count)
    getattr(function_app, name).build().get_user_function()(msg)


def run_jobs(engine: Engine) -> list[str]:
    """Deliver every queued cluster-jobs message, continuations included, in order; their job IDs."""
    ran = []
    sent = engine.queues.sent.setdefault(CLUSTER_JOBS, [])
    while len(ran) < len(sent):
        body, _ = sent[len(ran)]
        queue_function("apply_cluster_job", body)
        ran.append(body["jobId"])
    return ran


def refused(engine) -> list[str]:
    return [r["error"] for r in engine.audit.runs.values() if r["trigger"].startswith("refused:")]


def test_a_run_with_jobs_queues_one_job_per_cluster_and_rolls_them_up(world):
    report = world.run(trigger="timer", jobs=True)
    assert report.status == "queued" and world.assignments.writes == []
    assert [b for b, _ in world.queues.sent[CLUSTER_JOBS]] == [{"jobId": j} for j in report.jobs]
    assert len(report.jobs) == 2  # adx-prod and adx-test, 3 writes each
    assert json.loads(get_run(report.run_id).get_body())["status"] == "running"
    run_jobs(world)
    done = json.loads(get_run(report.run_id).get_body())
    assert done["status"] == "succeeded" and done["counts"] == {"succeeded": 6}
    assert sorted(j["cluster"] for j in done["clusterJobs"]) == sorted([PROD, TEST])
    assert world.plan().changes == ()


def test_a_job_out_of_time_continues_itself_and_nothing_is_lost(world):
    world.assignments.write_seconds = 0.05
    world.run_seconds = 0.08  # about one write per part
    report = world.run(trigger="timer", jobs=True)
    ran = run_jobs(world)
    assert len(ran) > 2  # continuations
    parts = [world.audit.runs[j] for j in ran]
    assert any(p["status"] == "incomplete" for p in parts)
    assert all(p["parentRunId"] == report.run_id for p in parts)
    done = json.loads(get_run(report.run_id).get_body())
    assert done["status"] == "succeeded" and done["counts"] == {"succeeded": 6}, done
    summary = rolled_up(world.audit, world.audit.get_run(report.run_id), changes=False)  # what lists show
    assert (summary["status"], summary["counts"]) == ("succeeded", {"succeeded": 6}) and "changes" not in summary
    world.run_seconds = None
    assert world.plan().changes == ()


def test_a_job_message_naming_no_queued_job_writes_nothing_and_is_audited(world):
    queue_function("apply_cluster_job", {"jobId": "20261201T000000Z-forged-j01.1"})
    queue_function("apply_cluster_job", b"not json")
    assert world.assignments.writes == []
    assert refused(world) == ["refused a cluster-jobs message: no job 20261201T000000Z-forged-j01.1 was queued",
                              "refused a cluster-jobs message: malformed: Expecting value: line 1 column 1 (char 0)"]


def test_a_forged_run_message_with_an_unknown_run_id_writes_nothing_and_is_audited(world):
    queue_function("run_reconcile", {"runId": "20261201T000000Z-forged", "approveDeletes": True})
    assert world.assignments.writes == []
    assert refused(world) == ["refused a reconcile-requests message: no run 20261201T000000Z-forged was queued"]


def test_a_run_message_with_approve_deletes_flipped_writes_nothing_and_is_audited(world):
    seed_owned(world, "old1", "old2")  # two removals: over maxDeletes 1
    run_id = json.loads(post({"scope": "adx-prod", "mode": "apply"}).get_body())["runId"]
    (body, _), = world.queues.sent[RECONCILE_REQUESTS]
    queue_function("run_reconcile", body | {"approveDeletes": True, "requestedBy": "someone-else"})
    assert world.assignments.writes == []
    (error,) = refused(world)
    assert "does not match queued run" in error and world.audit.runs[run_id]["status"] == "queued"
    deliver(world)  # the genuine message: the removals stay held, as queued
    run = json.loads(get_run(run_id).get_body())
    assert len(run["heldDeletes"]) == 2 and len(world.assignments.writes) == 3  # the adds only


def test_a_run_id_that_exists_is_never_overwritten(world):
    from shared.handlers import runs

    first = json.loads(post({"scope": "adx-prod", "mode": "apply"}).get_body())["runId"]
    try:
        runs.enqueue(world, runs.RunRequest(first, "adx-test", True, "mallory"))
    except ValueError as error:
        assert "already exists" in str(error)
    else:
        raise AssertionError("an existing run ID was accepted")
    assert world.audit.runs[first]["scope"] == "adx-prod" and not world.audit.runs[first]["approveDeletes"]


def test_of_two_applies_claiming_one_cluster_only_the_first_starts(world):
    from shared.handlers import runs

    assert runs.claim(world, "adx-prod", "run-a") is None
    world.audit.create_run({"runId": "run-a", "status": "queued", "startedMs": 0, "trigger": "http"} |
                           {"startedMs": __import__("time").time_ns() // 10**6})
    assert runs.claim(world, None, "run-b") == "run-a"  # every cluster overlaps adx-prod
    assert runs.claim(world, "adx-test", "run-c") is None  # another cluster is free


def test_scopes_that_left_the_config_are_forgotten_once_nothing_is_left_to_do_there(world):
    from shared.core.config import parse_config

    world.run(trigger="timer", jobs=True)
    run_jobs(world)
    sandbox, empty = Scope(TEST, "Sandbox"), Scope(TEST, "Empty")
    world.ledger.record_managed([empty])  # a scope the app once managed and owns nothing in
    world.config = parse_config({"mappings": [
        {"name": "prod", "group": "Analysts", "targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}]}]})
    report = world.run(trigger="timer", jobs=True, approve_deletes=True)
    assert len(report.jobs) == 1  # the removals in Sandbox
    assert world.ledger.managed_scopes() == {SALES, sandbox}  # Empty is done; Sandbox waits for its job
    run_jobs(world)
    assert world.ledger.managed_scopes() == {SALES} and world.assignments.state[sandbox] == {}
