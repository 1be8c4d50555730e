"""Runs over in-memory fakes with the default config (default guard): honest run statuses, ended
onboarding grants, the ledger row lifecycle, and an audit that keeps every write made."""
import json
import time

import pytest

from fakes import FakeAssignments, FakeDirectory, FakeLocks, Killed, MortalAudit, group, user
from shared.adapters.audit import LAPSE_MS, MemoryAudit, seen
from shared.adapters.kusto import PrincipalNotYetKnownError
from shared.adapters.ledger import Grant, MemoryLedger
from shared.core.config import parse_config
from shared.core.errors import PermanentError, TransientError
from shared.core.plan import Action, Assignment, assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine
from shared.handlers.onboarding import handle

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
TEST = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-test"
SALES, TEST_SALES = Scope(PROD, "Sales"), Scope(TEST, "Sales")
ANALYSTS = "00000008-0000-0000-0000-000000000000"
ZED = Principal(PrincipalKind.USER, "zed@contoso.com", HOME)


def config(**extra):
    """The default guard: nothing here raises maxDeletePercent."""
    return parse_config({
        "mappings": [{"name": "analysts", "group": "Analysts", "targets": [
            {"cluster": PROD, "database": "Sales", "role": "Viewer"},
            {"cluster": TEST, "database": "Sales", "role": "Viewer"}]}],
        "profiles": {"analyst": {"targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}]}},
        **extra,
    })


def members(n: int):
    return [user(f"{i:08d}-0000-0000-0000-000000000000", f"u{i}@contoso.com") for i in range(1, n + 1)]


@pytest.fixture
def eng():
    directory = FakeDirectory()
    directory.add_group(group(ANALYSTS, "Analysts"), members(2))
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(config(), directory, FakeAssignments(), tenants, HOME, audit=MemoryAudit(), ledger=MemoryLedger(),
                  sleep=lambda s: None, retry_budget_seconds=0)


def fqns(eng, scope=SALES):
    """Who holds an assignment: the UPN of a user written by object ID, else the identifier."""
    return sorted(a.principal.upn or a.principal.identifier for a in eng.assignments.state[scope].values())


def owned(scope, principal, role="Viewer"):
    return Assignment(scope, role, principal, assignment_name("ks-", scope, role, principal))


# --- run statuses ---------------------------------------------------------------------------

def test_a_clean_run_succeeds_and_one_leaver_of_two_is_removed(eng):
    assert eng.run(trigger="test").status == "succeeded"
    eng.directory.members[ANALYSTS] = members(1)
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and fqns(eng) == ["u1@contoso.com"]


def test_held_removals_make_the_run_succeeded_with_holds(eng):
    eng.directory.members[ANALYSTS] = members(100)
    eng.run(trigger="test")
    eng.directory.members[ANALYSTS] = members(50)
    report = eng.run(trigger="test")
    assert report.status == "succeeded_with_holds" and report.converged
    assert report.counts() == {"held": 100}  # 50 in each cluster
    assert eng.audit.get_run(report.run_id)["status"] == "succeeded_with_holds"


def test_skipped_scopes_make_the_run_partially_skipped_even_next_to_holds(eng):
    eng.directory.failing[ANALYSTS] = TransientError("throttled past the retry budget")
    report = eng.run(trigger="test")
    assert report.status == "partially_skipped" and not report.converged
    assert eng.run(trigger="test", dry_run=True).status == "partially_skipped"


def test_failures_still_come_first(eng):
    eng.assignments.fail = [("create", PermanentError("refused"))]
    assert eng.run(trigger="test").status == "partially failed"


# --- ended grants and their ledger rows -------------------------------------------------------

def test_an_expired_grant_in_a_small_scope_is_removed_and_its_row_goes_only_after(eng):
    eng.run(trigger="test")
    eng.ledger.record_grant(Grant(SALES, "Viewer", ZED, "analyst", "m-1", expires_at="2999-01-01T00:00:00+00:00"))
    eng.run(trigger="test")
    assert "zed@contoso.com" in fqns(eng)
    expired = Grant(SALES, "Viewer", ZED, "analyst", "m-1", expires_at="2000-01-01T00:00:00+00:00")
    eng.ledger.record_grant(expired)
    eng.assignments.fail = [("delete", TransientError("busy"))]
    report = eng.run(trigger="test")
    assert report.status == "failed" and "zed@contoso.com" in fqns(eng)
    assert eng.ledger.all_grants() == [expired]  # the removal failed: the row stays, so it stays explicit
    report = eng.run(trigger="test")
    assert [(r.change.action, r.status) for r in report.results] == [(Action.REMOVE, "succeeded")]
    assert "explicit" in report.results[0].change.reason
    assert "zed@contoso.com" not in fqns(eng) and eng.ledger.all_grants() == []


def test_an_ended_grant_is_never_held_even_in_a_scope_of_one(eng):
    eng.directory.members[ANALYSTS] = []
    eng.ledger.record_grant(Grant(SALES, "Viewer", ZED, "analyst", "m-1", revoked_at="2026-01-01T00:00:00+00:00"))
    eng.assignments.seed(owned(SALES, ZED))
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and fqns(eng) == [] and eng.ledger.all_grants() == []


def test_an_ended_grant_in_a_skipped_scope_keeps_its_row(eng):
    eng.ledger.record_grant(Grant(SALES, "Viewer", ZED, "analyst", "m-1", expires_at="2000-01-01T00:00:00+00:00"))
    eng.assignments.seed(owned(SALES, ZED))
    eng.directory.failing[ANALYSTS] = TransientError("throttled")
    eng.run(trigger="test")
    assert "zed@contoso.com" in fqns(eng) and len(eng.ledger.all_grants()) == 1


def test_a_grant_whose_profile_left_the_config_is_removed_under_the_guard(eng):
    eng.ledger.record_grant(Grant(SALES, "Viewer", ZED, "analyst", "m-1"))
    eng.run(trigger="test")
    assert "zed@contoso.com" in fqns(eng)
    eng.config = config(profiles={"other": {"targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}]}})
    report = eng.run(trigger="test")
    (removal,) = report.results
    assert removal.change.action is Action.REMOVE and removal.change.reason == "no longer granted by any mapping"
    assert "zed@contoso.com" not in fqns(eng) and eng.ledger.all_grants() == []


def message(action="grant", **extra):
    return json.dumps({"principal": "zed@contoso.com", "profile": "analyst", "action": action, **extra}).encode()


def onboarding_engine(eng):
    eng.directory.find_user = lambda ref: user("00000099-0000-0000-0000-000000000000", "zed@contoso.com")
    return eng


def test_a_failing_re_grant_keeps_the_earlier_grant(eng):
    onboarding_engine(eng)
    assert handle(eng, message(expiresAt="2999-01-01T00:00:00Z"), message_id="m-1").status == "granted"
    (earlier,) = eng.ledger.all_grants()
    eng.assignments.state[SALES].clear()  # someone removed it by hand; the re-grant adds it again, and fails
    eng.assignments.fail = [("create", PermanentError("refused by policy"))]
    assert handle(eng, message(expiresAt="2999-06-01T00:00:00Z"), message_id="m-2").status == "rejected"
    assert eng.ledger.all_grants() == [earlier]


def test_a_failing_first_grant_leaves_no_row(eng):
    onboarding_engine(eng)
    eng.assignments.fail = [("create", PrincipalNotYetKnownError("not yet"))]
    assert handle(eng, message(), message_id="m-1").status == "deferred"
    assert eng.ledger.all_grants() == []


def test_a_revoke_whose_removal_fails_is_finished_by_the_sync_never_held(eng):
    onboarding_engine(eng)
    eng.directory.members[ANALYSTS] = []
    handle(eng, message(), message_id="m-1")
    eng.assignments.fail = [("delete", TransientError("busy"))]
    with pytest.raises(TransientError):
        handle(eng, message("revoke"), message_id="m-2")
    (row,) = eng.ledger.all_grants()
    assert row.revoked_at and "zed@contoso.com" in fqns(eng)
    report = eng.run(trigger="test")
    assert [(r.change.action, r.status) for r in report.results] == [(Action.REMOVE, "succeeded")]
    assert "revoked" in report.results[0].change.reason and eng.ledger.all_grants() == []


def test_a_revoke_removes_the_row_once_the_assignment_is_gone(eng):
    onboarding_engine(eng)
    handle(eng, message(), message_id="m-1")
    assert handle(eng, message("revoke"), message_id="m-2").status == "revoked"
    assert eng.ledger.all_grants() == [] and "zed@contoso.com" not in fqns(eng)


# --- the audit keeps every write ----------------------------------------------------------------

def test_a_cluster_whose_lease_fails_does_not_drop_the_other_clusters_writes(eng):
    eng.locks = FakeLocks(busy={TEST})
    report = eng.run(trigger="test")
    assert report.status == "partially failed" and fqns(eng) == ["u1@contoso.com", "u2@contoso.com"]
    stored = eng.audit.get_run(report.run_id)
    results = sorted((c["scope"]["cluster"].rsplit("/", 1)[-1], c["result"]) for c in stored["changes"])
    assert results == [("adx-prod", "succeeded")] * 2 + [("adx-test", "failed")] * 2
    assert all("not attempted" in c["error"] for c in stored["changes"] if c["result"] == "failed")


def test_a_run_that_dies_mid_apply_keeps_the_writes_it_made(eng):
    class Killed(BaseException):
        pass

    original = eng.assignments.create_assignment
    made = []

    def create(*args):
        if made:
            raise Killed()
        original(*args)
        made.append(args)

    eng.assignments.create_assignment = create
    eng.max_parallel_clusters = 1
    with pytest.raises(Killed):
        eng.run(trigger="test")
    (run,) = eng.audit.list_runs()
    assert run["status"] == "failed"
    results = [c["result"] for c in eng.audit.get_run(run["runId"])["changes"]]
    assert results.count("succeeded") == 1 and set(results) == {"succeeded", "intended"}


def test_a_killed_process_leaves_every_write_it_made_in_the_audit(eng):
    eng.audit = MortalAudit(lambda: eng.assignments.dead)
    eng.assignments.kill_after = 1  # the second write is made, then the process dies
    with pytest.raises(Killed):
        eng.run(trigger="test")
    (run,) = eng.audit.list_runs()
    audited = {(c["name"], c["result"]) for c in eng.audit.get_run(run["runId"])["changes"]}
    assert len(eng.assignments.made) == 2
    for _, _, name in eng.assignments.made:
        assert (name, "intended") in audited, f"write {name} made but not in the audit"
    assert run["status"] == "running"  # "abandoned" once its heartbeat lapses


def test_a_running_run_beats_and_a_lapsed_one_is_abandoned(eng):
    beats = []
    eng.heartbeat_seconds = 0.01
    record_start, record_end = eng.audit.record_start, eng.audit.record_end
    eng.audit.record_start = lambda run: (beats.append(run), record_start(run))
    eng.audit.record_end = lambda run, changes: (beats.append(run) if run["status"] == "running" else None,
                                                 record_end(run, changes))
    original = eng.assignments.create_assignment
    eng.assignments.create_assignment = lambda *a: (time.sleep(0.1), original(*a))
    eng.run(trigger="test")
    assert len(beats) >= 2 and all(b["status"] == "running" and b["heartbeatMs"] for b in beats)
    assert eng.audit.get_run(beats[0]["runId"])["status"] == "succeeded"  # no beat lands after the end
    now = beats[-1]["heartbeatMs"]
    assert seen(beats[-1], now=now + LAPSE_MS)["status"] == "running"
    assert seen(beats[-1], now=now + LAPSE_MS + 1)["status"] == "abandoned"
    assert seen({"status": "succeeded", "startedMs": 0}, now=now)["status"] == "succeeded"


def test_the_heartbeat_records_the_writes_made_so_far(eng):
    """A process killed mid-apply writes no end record: the last beat's changes are what is left."""
    eng.heartbeat_seconds = 0.01
    eng.max_parallel_clusters = 1
    original = eng.assignments.create_assignment
    seen_by_beat = []

    def create(*args):
        if eng.assignments.writes:  # the first write is made: wait until a beat has recorded it
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                (run,) = eng.audit.runs.values()
                recorded = eng.audit.changes.get(run["runId"], [])
                if any(c["result"] == "succeeded" for c in recorded):
                    seen_by_beat.append((run["status"], [c["result"] for c in recorded]))
                    break
                time.sleep(0.01)
        original(*args)

    eng.assignments.create_assignment = create
    report = eng.run(trigger="test")
    assert seen_by_beat and seen_by_beat[0][0] == "running"
    assert sorted(seen_by_beat[0][1]) == ["intended"] * 3 + ["succeeded"]
    assert report.status == "succeeded" and len(eng.audit.get_run(report.run_id)["changes"]) == 4


def test_the_audit_shows_a_killed_run_as_abandoned():
    audit = MemoryAudit()
    audit.record_start({"runId": "r1", "status": "running", "startedMs": 1, "heartbeatMs": 1})
    (run,) = audit.list_runs()
    assert run["status"] == "abandoned" and "heartbeat" in run["error"]
    assert audit.get_run("r1")["status"] == "abandoned"
