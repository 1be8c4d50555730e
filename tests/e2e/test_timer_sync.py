"""The timer function, end to end: Graph and ARM through the real SDKs against the emulator."""
import json

from azure.functions.timer import TimerRequest

import function_app
from emulator.testing import DEMO_TENANT

ANALYSTS_EU = "b0000000-0000-4000-8000-000000000003"
BOB = "a0000000-0000-4000-8000-000000000002"


def run_timer() -> None:
    function_app.sync_schedule.build().get_user_function()(TimerRequest(past_due=False))


UPNS = {u["id"]: u["userPrincipalName"] for u in json.loads(DEMO_TENANT.read_text(encoding="utf-8"))["users"]}


def sales_assignments(emu) -> dict[str, str]:
    """Name -> the UPN of the user each Sales assignment names (by object ID or by UPN)."""
    cluster = next(c for c in emu.state()["clusters"] if c["name"] == "adx-prod")
    return {a["name"]: UPNS.get(a["principalId"], a["principalId"]) for a in cluster["databasePrincipalAssignments"]["Sales"]}


def arm_writes(emu) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in emu.requests()["requests"]
            if r["api"] == "arm" and r["method"] in ("PUT", "PATCH", "DELETE")]


def test_the_timer_grants_every_member_and_leaves_foreign_assignments_alone(app_env):
    run_timer()
    granted = sales_assignments(app_env)
    owned = {name: who for name, who in granted.items() if name.startswith("ks-")}
    assert sorted(owned.values()) == sorted([
        "adele@contoso.com", "bob@contoso.com", "christie@contoso.com",  # guests as their guest objects:
        "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", "nina_northwindtraders.com#EXT#@contoso.onmicrosoft.com",
        "carol_outlook.com#EXT#@contoso.onmicrosoft.com",
    ])
    assert granted["portal-added-2"] == "diego@contoso.com"


def test_a_second_run_makes_zero_arm_writes(app_env):
    run_timer()
    app_env.clear_requests()
    run_timer()
    assert arm_writes(app_env) == []


def test_a_member_who_leaves_loses_access_and_nothing_else_changes(app_env):
    run_timer()
    before = sales_assignments(app_env)
    app_env.directory(removeMembers={ANALYSTS_EU: [BOB]})
    app_env.clear_requests()
    run_timer()
    after = sales_assignments(app_env)
    assert set(before) - set(after) == {next(n for n, who in before.items() if who == "bob@contoso.com")}
    assert len(arm_writes(app_env)) == 1


def test_warmup_builds_the_engine_and_its_arm_clients_before_the_first_invocation(app_env):
    from azure.functions.warmup import WarmUpContext

    from shared import app as wiring

    wiring._cache.clear()
    function_app.warmup.build().get_user_function()(WarmUpContext())
    (engine,) = wiring._cache.values()
    assert engine.assignments._clients  # the config's subscription has its ARM client
    assert wiring.engine().assignments is engine.assignments  # and the first invocation reuses it


def test_a_warmup_that_cannot_build_the_engine_only_logs(app_env, monkeypatch, caplog):
    from azure.functions.warmup import WarmUpContext

    monkeypatch.setenv("SYNC_CONFIG", "/nowhere/sync.yaml")
    function_app.warmup.build().get_user_function()(WarmUpContext())
    assert "warm-up" in caplog.text and "config file not found" in caplog.text
