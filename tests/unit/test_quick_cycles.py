"""Quick cycles never lose a change (default config, the fakes' groups/delta): links advance only
past what was read and reconciled, failed groups force a full read, the cycle counter ignores write
outcomes, and links are captured before the reads they cover."""
import time

import pytest

from fakes import FakeAssignments, FakeDirectory, Killed, group, user
from shared.core.config import parse_config
from shared.core.errors import PermanentError, TransientError
from shared.core.plan import Action
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
SALES, OPS = Scope(PROD, "Sales"), Scope(PROD, "Ops")
ANALYSTS, EU, OPERATORS = ("00000008-0000-0000-0000-000000000000", "00000009-0000-0000-0000-000000000000",
                           "0000000a-0000-0000-0000-000000000000")
ANN, BOB, CID, DAN = (user(f"0000000{i}-0000-0000-0000-000000000000", f"{n}@contoso.com")
                      for i, n in enumerate(("ann", "bob", "cid", "dan"), 1))


def config(**extra):
    return parse_config({"fullSyncEvery": 4, "mappings": [
        {"name": "analysts", "group": ANALYSTS, "targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}]},
        {"name": "operators", "group": "Operators", "targets": [{"cluster": PROD, "database": "Ops", "role": "Viewer"}]},
    ], **extra})


@pytest.fixture
def eng():
    directory = FakeDirectory()
    directory.add_group(group(ANALYSTS, "Analysts"), [ANN, BOB])
    directory.add_group(group(OPERATORS, "Operators"), [CID])
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    eng = Engine(config(), directory, FakeAssignments(), tenants, HOME, sleep=lambda s: None, retry_budget_seconds=0)
    assert eng.sync().trigger == "timer:full"
    assert eng.sync().trigger == "timer:delta"  # the first run's groups were new: their mappings are read again
    return eng


def who(eng, scope=SALES):
    return sorted(a.principal.display_name for a in eng.assignments.state[scope].values())


def test_a_quiet_quick_cycle_reads_no_group(eng):
    eng.directory.calls.clear()
    report = eng.sync()
    assert report.trigger == "timer:delta" and report.results == []
    assert {c[0] for c in eng.directory.calls} == {"changed_groups"}


def test_a_quick_cycle_whose_group_read_failed_keeps_its_link_and_the_next_cycle_reads_everything(eng):
    links = eng.delta_state.load().links
    eng.directory.set_members(ANALYSTS, [ANN])
    eng.directory.failing[ANALYSTS] = TransientError("throttled past the retry budget")
    report = eng.sync()
    assert report.trigger == "timer:delta" and report.status == "partially_skipped" and who(eng) == ["ann", "bob"]
    state = eng.delta_state.load()
    assert state.links == links and state.full_next and ANALYSTS in state.group_ids.values()
    del eng.directory.failing[ANALYSTS]
    report = eng.sync()
    assert report.trigger == "timer:full" and who(eng) == ["ann"]
    assert not eng.delta_state.load().full_next


def test_a_cycle_killed_half_way_is_followed_by_a_full_read(eng):
    # The killed cycle read a config its successor no longer has (say a target added, then taken
    # back): with the same config and no group change, only a full read finds the writes it made.
    eng.directory.set_members(ANALYSTS, [ANN, BOB, DAN])
    eng.assignments.kill_after = 0
    with pytest.raises(Killed):
        eng.sync()
    eng.assignments.dead = False  # a new process
    assert eng.delta_state.load().full_next
    report = eng.sync()
    assert report.trigger == "timer:full" and not eng.delta_state.load().full_next


def test_writes_made_under_another_config_make_the_next_cycle_a_full_read(eng):
    # An HTTP apply under a config with one more target, then the config rolled back: no group
    # changed, yet the writes it made must be undone.
    before = eng.config
    eng.config = config(mappings=[*[{"name": m.name, "group": m.group, "targets": [
        {"cluster": t.scope.cluster, "database": t.scope.database, "role": t.role} for t in m.targets]}
        for m in before.mappings], {"name": "analysts-ops", "group": ANALYSTS,
                                     "targets": [{"cluster": PROD, "database": "Ops", "role": "Ingestor"}]}])
    assert eng.run(trigger="http").status == "succeeded" and eng.delta_state.full_read_requested()
    eng.config = before
    report = eng.sync()
    assert report.trigger == "timer:full" and not any(a.role == "Ingestor" for a in eng.assignments.state[OPS].values())


def test_a_full_read_requested_while_a_cycle_runs_is_not_lost_when_the_cycle_saves_its_state(eng):
    # A cluster job of an earlier cycle ends without converging while this cycle runs.
    real = eng.directory.changed_groups

    def meanwhile(link):
        time.sleep(0.002)  # requests are ordered by the millisecond: this one after the last full read
        eng.force_full_read()
        return real(link)

    eng.directory.changed_groups = meanwhile
    assert eng.sync().trigger == "timer:delta"
    eng.directory.changed_groups = real
    assert eng.sync().trigger == "timer:full"
    assert eng.sync().trigger == "timer:delta"  # the request was served


def test_a_full_read_with_a_failed_group_is_followed_by_another_full_read(eng):
    eng.delta_state.state.cycles = 3  # the scheduled full read is due
    eng.directory.failing[OPERATORS] = TransientError("throttled")
    assert eng.sync().trigger == "timer:full"
    del eng.directory.failing[OPERATORS]
    eng.directory.set_members(OPERATORS, [CID, DAN])
    assert eng.sync().trigger == "timer:full" and who(eng, OPS) == ["cid", "dan"]
    assert eng.sync().trigger == "timer:delta"


def test_a_permanent_write_failure_neither_stops_the_counter_nor_loses_the_scope(eng):
    eng.directory.set_members(ANALYSTS, [ANN, BOB, DAN])
    eng.assignments.fail = [("create", PermanentError("refused"))] * 10
    triggers = []
    for _ in range(4):
        report = eng.sync()
        triggers.append(report.trigger)
        # the failed add is planned again every cycle, though Analysts does not change again
        assert [(r.change.action, r.change.principal.display_name) for r in report.results] == [(Action.ADD, "dan")]
    assert triggers == ["timer:delta", "timer:delta", "timer:full", "timer:delta"]
    eng.assignments.fail = []
    assert eng.sync().status == "succeeded" and who(eng) == ["ann", "bob", "dan"]
    assert eng.sync().results == []


def test_a_change_made_while_a_full_read_runs_is_seen_by_the_next_cycle(eng):
    eng.delta_state.state.cycles = 3  # the scheduled full read is due
    read = eng.directory.transitive_members

    def read_then_change(group_id):
        members = read(group_id)
        if group_id == ANALYSTS and ANN in eng.directory.members[ANALYSTS]:
            eng.directory.set_members(ANALYSTS, [BOB])  # ann leaves just after her group was read
        return members

    eng.directory.transitive_members = read_then_change
    assert eng.sync().trigger == "timer:full" and who(eng) == ["ann", "bob"]
    report = eng.sync()
    assert report.trigger == "timer:delta" and who(eng) == ["bob"]


def test_a_group_newly_nested_in_a_quick_cycle_is_watched_from_then_on(eng):
    eu = group(EU, "Analysts-EU")
    eng.directory.set_members(ANALYSTS, [ANN, BOB, eu])  # EU is nested: a direct change of Analysts
    eng.directory.add_group(eu, [])
    eng.sync()
    assert EU in eng.delta_state.load().watched()
    eng.directory.set_members(ANALYSTS, [ANN, BOB, eu, DAN], changed=(EU,))  # dan joins EU, not Analysts
    report = eng.sync()
    assert report.trigger == "timer:delta" and who(eng) == ["ann", "bob", "dan"]


def test_a_dry_run_quick_cycle_consumes_nothing(eng):
    eng.directory.set_members(ANALYSTS, [ANN])
    cycles = eng.delta_state.load().cycles
    assert [r.status for r in eng.sync(dry_run=True).results] == ["planned"]
    assert eng.delta_state.load().cycles == cycles
    assert [r.status for r in eng.sync().results] == ["succeeded"] and who(eng) == ["ann"]
