"""Long-running writes, end to end: operations that take wall time in the emulator, leases in Azurite."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ADX_PROD, ONE_MAPPING
from shared.adapters.audit import LAPSE_MS, TableAudit, now_ms, seen
from shared.adapters.tables import table_service
from shared.app import build
from shared.core.config import parse_config
from shared.core.settings import Settings
from shared.engine.reconcile import RunReport

ROOT = Path(__file__).resolve().parents[2]


def overlaps(operations) -> int:
    """The most operations in progress at once on one cluster, from the emulator's history."""
    worst = 0
    for cluster in {op["cluster"] for op in operations}:
        events = sorted([(op["started"], 1) for op in operations if op["cluster"] == cluster]
                        + [(op["ended"], -1) for op in operations if op["cluster"] == cluster])
        level = 0
        for _, step in events:
            level += step
            worst = max(worst, level)
    return worst


def test_two_workers_never_write_one_cluster_at_once(app_env, azurite, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    app_env.lro(seconds=0.05)
    app_env.clear_requests()
    engines = [build(Settings.from_env(), config=parse_config(ONE_MAPPING | {"ownership": {"prefix": p}}))
               for p in ("ka-", "kb-")]
    plans = [engine.plan() for engine in engines]
    threads = [threading.Thread(target=e.apply, args=(p, RunReport(f"w{i}", "test")))
               for i, (e, p) in enumerate(zip(engines, plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    operations = app_env.operations()
    puts = {r["path"].rsplit("/", 1)[-1][:3] for r in app_env.requests()["requests"] if r["method"] == "PUT"}
    assert puts == {"ka-", "kb-"}  # both wrote (the later one finds each assignment made: no operation)
    assert len(operations) == 6 and all(op["ended"] for op in operations)
    assert all(op["ended"] - op["started"] >= 0.05 for op in operations)
    assert overlaps(operations) == 1


KILLED = """
import json, os, sys
from shared.app import build
from shared.core.config import parse_config
from shared.core.settings import Settings
engine = build(Settings.from_env(), config=parse_config(json.loads(os.environ["SYNC_CONFIG"])))
engine.run(trigger="test", run_id=sys.argv[1])
"""


def test_a_run_killed_mid_apply_is_abandoned_and_the_next_run_converges(app_env, azurite, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    app_env.lro(seconds=0.3)
    run_id = f"killed-{now_ms()}"
    child = subprocess.Popen([sys.executable, "-c", KILLED, run_id], cwd=ROOT, env=os.environ | {
        "PYTHONPATH": str(ROOT)})
    audit = TableAudit(table_service({"AzureWebJobsStorage": azurite.connection_string}))
    deadline = time.monotonic() + 30
    while not any(op["ended"] for op in app_env.operations()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.kill()  # mid-apply: some writes made, the rest not
    child.wait()
    made = sum(1 for op in app_env.operations() if op["ended"])
    assert 1 <= made < 6
    record = audit.get_run(run_id)
    assert record["status"] == "running"  # as the process left it
    assert seen(record, now=now_ms() + LAPSE_MS + 1)["status"] == "abandoned"  # once its heartbeat lapses

    app_env.lro(seconds=0)
    engine = build(Settings.from_env(), config=parse_config(ONE_MAPPING))
    assert engine.run(trigger="test").status == "succeeded"
    assert engine.plan().changes == ()
    sales = next(c for c in app_env.state()["clusters"] if c["name"] == "adx-prod")["databasePrincipalAssignments"]["Sales"]
    assert len([a for a in sales if a["name"].startswith("ks-")]) == 6
