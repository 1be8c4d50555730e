"""Quick cycles through Graph groups/delta against the emulator: full reads only when due."""

from conftest import ONE_MAPPING
from shared.app import build
from shared.core.config import parse_config
from shared.core.settings import Settings

ANALYSTS_EU = "b0000000-0000-4000-8000-000000000003"
BOB = "a0000000-0000-4000-8000-000000000002"


def engine(**overrides):
    return build(Settings.from_env(), config=parse_config(ONE_MAPPING | overrides))


def graph_and_arm(emu) -> dict[str, int]:
    counts = {}
    for r in emu.requests()["requests"]:
        if r["api"] in ("graph", "arm"):
            counts[r["route"]] = counts.get(r["route"], 0) + 1
    return counts


def test_the_first_sync_reads_everything_and_a_quiet_quick_cycle_makes_one_delta_call(app_env):
    sync = engine()
    assert sync.sync().trigger == "timer:full"
    # The first run's groups got their links after they were read: their mappings are read once more.
    assert sync.sync().trigger == "timer:delta"
    app_env.clear_requests()
    report = sync.sync()
    assert report.trigger == "timer:delta" and report.results == []
    assert set(graph_and_arm(app_env)) == {"GET graph /groups/delta"}


def test_a_change_inside_a_nested_group_is_caught_by_a_quick_cycle(app_env):
    sync = engine()
    sync.sync()
    app_env.directory(removeMembers={ANALYSTS_EU: [BOB]})
    report = sync.sync()
    assert report.trigger == "timer:delta"
    assert [(r.change.action.value, r.change.principal.object_id, r.status) for r in report.results] == [
        ("remove", BOB, "succeeded")]


def test_a_refused_delta_link_falls_back_to_a_full_read(app_env):
    sync = engine()
    sync.sync()
    app_env.call("POST", "/_emulator/delta/expire", {})
    assert sync.sync().trigger == "timer:full"
    assert sync.sync().trigger == "timer:delta"


def test_every_n_cycles_and_after_a_config_change_everything_is_read_again(app_env):
    sync = engine(fullSyncEvery=3)
    assert [sync.sync().trigger for _ in range(4)] == ["timer:full", "timer:delta", "timer:delta", "timer:full"]
    changed = build(Settings.from_env(), config=parse_config(ONE_MAPPING | {"fullSyncEvery": 3, "guards": {"maxDeletes": 7}}),
                    delta_state=sync.delta_state)
    assert changed.sync().trigger == "timer:full"


def test_a_dry_run_does_not_consume_the_changes(app_env):
    sync = engine()
    sync.sync()
    app_env.directory(removeMembers={ANALYSTS_EU: [BOB]})
    assert [r.status for r in sync.sync(dry_run=True).results] == ["planned"]
    assert [r.status for r in sync.sync().results] == ["succeeded"]
