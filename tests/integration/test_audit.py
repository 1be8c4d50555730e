"""The audit trail in Table storage (Azurite): runs, their changes, newest first."""
import uuid

import pytest
from azure.data.tables import TableServiceClient

from shared.adapters import audit as audit_module
from shared.adapters.audit import TableAudit


@pytest.fixture
def audit(azurite, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setattr(audit_module, "RUNS_TABLE", f"runs{suffix}")
    monkeypatch.setattr(audit_module, "CHANGES_TABLE", f"changes{suffix}")
    return TableAudit(TableServiceClient.from_connection_string(azurite.connection_string))


def run(run_id: str, started_ms: int, status: str = "running") -> dict:
    return {"runId": run_id, "trigger": "timer", "status": status, "startedMs": started_ms,
            "started": "2026-11-23T18:00:00+00:00", "counts": {}, "error": None}


def test_a_run_is_visible_while_running_and_complete_after(audit):
    audit.record_start(run("r1", 1000) | {"heartbeatMs": audit_module.now_ms()})
    assert audit.get_run("r1")["status"] == "running"
    changes = [{"action": "add", "principal": f"aaduser=u{i}@contoso.com;t", "result": "succeeded",
                "scope": {"cluster": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Kusto/clusters/c", "database": "Sales"}}
               for i in range(150)]
    audit.record_end(run("r1", 1000, "succeeded") | {"counts": {"succeeded": 150}}, changes)
    stored = audit.get_run("r1")
    assert stored["status"] == "succeeded" and stored["counts"] == {"succeeded": 150}
    assert [c["principal"] for c in stored["changes"]] == [c["principal"] for c in changes]
    assert stored["changes"][0]["scope"]["database"] == "Sales"


def test_runs_are_listed_newest_first(audit):
    for index, started in enumerate((1795459343073, 1795459341000, 1795459342000)):  # real epoch ms
        audit.record_end(run(f"r{index}", started, "succeeded"), [])
    runs = audit.list_runs(limit=2)
    assert [r["runId"] for r in runs] == ["r0", "r2"] and runs[0]["startedMs"] == 1795459343073


def test_an_unknown_run_is_none(audit):
    assert audit.get_run("nope") is None


def test_long_errors_are_cut_to_fit_a_table_property(audit):
    audit.record_end(run("r9", 5, "failed") | {"error": "x" * 100_000}, [])
    assert len(audit.get_run("r9")["error"]) < 9000


def test_a_running_run_whose_heartbeat_lapsed_reads_as_abandoned(audit):
    lapsed = audit_module.now_ms() - audit_module.LAPSE_MS - 1000
    audit.record_start(run("r7", lapsed) | {"heartbeatMs": lapsed})
    assert audit.get_run("r7")["status"] == "abandoned"
    assert [r["status"] for r in audit.list_runs() if r["runId"] == "r7"] == ["abandoned"]


def test_jobs_are_read_with_or_without_their_changes_and_a_later_attempt_writes_after_an_earlier(audit):
    job = run("p1-j01.1", 2000, "queued") | {"parentRunId": "p1", "jobIndex": 1, "part": 1}
    assert audit.create_run(job)
    change = {"action": "add", "principal": "aaduser=u@contoso.com;t", "result": "intended"}
    audit.record_end(job | {"status": "running"}, [change])  # an attempt that then died
    audit.record_end(job | {"status": "succeeded", "counts": {"succeeded": 1}},
                     [change | {"result": "succeeded"}], first=1)  # the attempt delivered next
    (full,) = audit.jobs("p1")
    assert [c["result"] for c in full["changes"]] == ["intended", "succeeded"]
    (summary,) = audit.jobs("p1", changes=False)
    assert "changes" not in summary and summary["counts"] == {"succeeded": 1} and summary["status"] == "succeeded"
