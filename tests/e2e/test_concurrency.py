"""Two runs writing to one cluster at once never interleave: the blob lease (in Azurite) serializes them."""
import threading

from conftest import ADX_PROD
from shared.app import build
from shared.core.config import parse_config
from shared.engine.reconcile import RunReport
from shared.core.settings import Settings


def engine_with_prefix(prefix: str):
    config = parse_config({
        "ownership": {"prefix": prefix},
        "mappings": [
            {"name": "analysts", "group": "Analysts",
             "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": "Viewer"}]},
            {"name": "finance", "group": "Finance Readers",
             "targets": [{"cluster": ADX_PROD, "role": "AllDatabasesViewer"}]},
        ],
    })
    return build(Settings.from_env(), config=config)


def test_two_concurrent_applies_on_one_cluster_never_interleave(app_env, azurite, monkeypatch):
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    # Different prefixes tell the two runs' writes apart in the emulator's request log.
    first, second = engine_with_prefix("ka-"), engine_with_prefix("kb-")
    plans = [first.plan(), second.plan()]
    assert all(len(p.changes) == 8 for p in plans)
    app_env.clear_requests()
    threads = [threading.Thread(target=e.apply, args=(p, RunReport(f"r{i}", "test")))
               for i, (e, p) in enumerate(zip((first, second), plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writers = [r["path"].rsplit("/", 1)[-1][:3] for r in app_env.requests()["requests"] if r["method"] == "PUT"]
    assert sorted(set(writers)) == ["ka-", "kb-"]
    switches = sum(1 for a, b in zip(writers, writers[1:]) if a != b)
    assert switches == 1, writers


def test_kusto_refuses_interleaved_operations_and_the_lease_prevents_them(monkeypatch, azurite):
    import time

    from emulator.testing import DEMO_TENANT, EmulatorProcess

    with EmulatorProcess(DEMO_TENANT, "--lro-seconds", "0.2") as emu:  # operations take a while, as in Azure
        for key, value in emu.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("ARM_POLLING_INTERVAL", "0")
        monkeypatch.setenv("SYNC_CONFIG", "set per engine below")

        def race(storage: str | None) -> list[int]:
            emu.reset()
            if storage:
                monkeypatch.setenv("AzureWebJobsStorage", storage)
            else:
                monkeypatch.delenv("AzureWebJobsStorage", raising=False)
            engines = [engine_with_prefix(prefix) for prefix in ("ka-", "kb-")]
            for engine in engines:
                engine.sleep = lambda seconds: time.sleep(0.05)  # retry the 409s quickly
            plans = [engine.plan() for engine in engines]
            emu.clear_requests()
            reports = [RunReport(f"r{i}", "test") for i in range(2)]
            threads = [threading.Thread(target=e.apply, args=(p, r)) for e, p, r in zip(engines, plans, reports)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert all(r.status == "succeeded" for r in [*reports[0].results, *reports[1].results]), \
                [r.error for r in [*reports[0].results, *reports[1].results] if r.error]
            return [r["status"] for r in emu.requests()["requests"] if r["method"] == "PUT"]

        without_lease = race(None)
        assert 409 in without_lease  # ServiceIsInMaintenance, retried until each write went through
        assert 409 not in race(azurite.connection_string)
