"""The engine (gather, plan, apply) over in-memory fakes of Graph and ARM."""
import pytest

from fakes import FakeAssignments, FakeDirectory, app, group, user
from shared.core.config import parse_config
from shared.core.errors import NotFoundError, TransientError
from shared.core.plan import Action
from shared.engine.reconcile import Engine, RunReport
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver

HOME = "11111111-1111-1111-1111-111111111111"
FABRIKAM = "22222222-2222-2222-2222-222222222222"
CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
SALES = Scope(CLUSTER, "Sales")


def config(**overrides):
    data = {
        "guards": {"maxDeletes": 10},
        "mappings": [{"name": "analysts", "group": "Analysts", "include": "both",
                      "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}],
    }
    data.update(overrides)
    return parse_config(data)


@pytest.fixture
def world():
    directory = FakeDirectory(tenants={"fabrikam.com": FABRIKAM})
    directory.add_group(group("00000008-0000-0000-0000-000000000000", "Analysts"), [
        user("00000001-0000-0000-0000-000000000000", "ann@contoso.com"),
        user("00000002-0000-0000-0000-000000000000", "bob@contoso.com"),
        group("00000003-0000-0000-0000-000000000000", "Analysts-EU"),
        user("00000004-0000-0000-0000-000000000000", "old@contoso.com", enabled=False),
        user("00000005-0000-0000-0000-000000000000", "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", user_type="Guest"),
        user("00000006-0000-0000-0000-000000000000", "carol_outlook.com#EXT#@contoso.onmicrosoft.com", user_type="Guest"),
        app("00000007-0000-0000-0000-000000000000", "aaaaaaaa-0000-0000-0000-00000000e71a", "etl-loader"),
    ])
    return directory, FakeAssignments()


def engine(directory, assignments, cfg=None, **kw):
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com", "contoso.onmicrosoft.com"])
    return Engine(cfg or config(), directory, assignments, tenants, HOME, sleep=lambda s: None, **kw)


def fqns(assignments, scope=SALES):
    return sorted(a.principal.fqn for a in assignments.state[scope].values())


def test_members_become_principals_by_object_id_guests_as_their_guest_object_and_apply_converges(world):
    directory, arm = world
    eng = engine(directory, arm)
    report = eng.run(trigger="test")
    assert report.status == "succeeded"
    assert fqns(arm) == sorted([
        f"aaduser=00000001-0000-0000-0000-000000000000;{HOME}", f"aaduser=00000002-0000-0000-0000-000000000000;{HOME}",
        f"aaduser=00000005-0000-0000-0000-000000000000;{HOME}", f"aaduser=00000006-0000-0000-0000-000000000000;{HOME}",
        f"aadapp=aaaaaaaa-0000-0000-0000-00000000e71a;{HOME}",
    ])
    added = {r.change.principal.upn for r in report.results}
    assert "ann@contoso.com" in added and "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com" in added
    assert eng.plan().changes == ()


def test_guests_home_mode_grants_the_invitation_address_in_its_own_tenant(world):
    directory, arm = world
    engine(directory, arm, config(guests="home")).run(trigger="test")
    assert f"aaduser=alice@fabrikam.com;{FABRIKAM}" in fqns(arm) and "msauser=carol@outlook.com" in fqns(arm)


def test_a_member_who_leaves_loses_the_grant_and_others_are_untouched(world):
    directory, arm = world
    eng = engine(directory, arm)
    eng.run(trigger="test")
    directory.members["00000008-0000-0000-0000-000000000000"] = [m for m in directory.members["00000008-0000-0000-0000-000000000000"] if m.id != "00000002-0000-0000-0000-000000000000"]
    arm.writes.clear()
    report = eng.run(trigger="test")
    assert [(r.change.action, r.status) for r in report.results] == [(Action.REMOVE, "succeeded")]
    assert f"aaduser=bob@contoso.com;{HOME}" not in fqns(arm)
    assert len(arm.writes) == 1


def test_a_steady_state_run_writes_nothing(world):
    directory, arm = world
    eng = engine(directory, arm)
    eng.run(trigger="test")
    arm.writes.clear()
    assert eng.run(trigger="test").results == [] and arm.writes == []


def test_an_unreadable_group_never_removes(world):
    directory, arm = world
    eng = engine(directory, arm)
    eng.run(trigger="test")
    before = fqns(arm)
    directory.failing["00000008-0000-0000-0000-000000000000"] = TransientError("throttled past the retry budget")
    the_plan = eng.plan()
    assert [c.action for c in the_plan.changes] == [Action.SKIP]
    assert "throttled" in the_plan.changes[0].reason
    eng.apply(the_plan, RunReport("r1", "test"))
    assert fqns(arm) == before


def test_a_missing_group_skips_its_scopes(world):
    directory, arm = world
    the_plan = engine(directory, arm, config(mappings=[{
        "name": "ghosts", "group": "No Such Group",
        "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}])).plan()
    assert [c.action for c in the_plan.changes] == [Action.SKIP]
    assert "No Such Group" in the_plan.changes[0].reason


def test_a_distribution_group_is_a_permanent_error_for_its_mapping(world):
    directory, arm = world
    directory.add_group(group("00000009-0000-0000-0000-000000000000", "Sales-DL", security=False, mail_enabled=True, mail="sales@contoso.com"), [])
    the_plan = engine(directory, arm, config(mappings=[{
        "name": "dl", "group": "Sales-DL", "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}])).plan()
    assert [c.action for c in the_plan.changes] == [Action.SKIP]
    assert "distribution group" in the_plan.changes[0].reason


def test_group_mode_grants_the_group_itself(world):
    directory, arm = world
    engine(directory, arm, config(mappings=[{
        "name": "g", "group": "Analysts", "mode": "group",
        "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}])).run(trigger="test")
    assert fqns(arm) == [f"aadgroup=00000008-0000-0000-0000-000000000000;{HOME}"]


def test_one_principal_through_two_mappings_is_added_once(world):
    directory, arm = world
    directory.add_group(group("00000010-0000-0000-0000-000000000000", "Second"), [user("00000001-0000-0000-0000-000000000000", "ann@contoso.com")])
    cfg = config(mappings=[
        {"name": "a", "group": "Analysts", "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        {"name": "b", "group": "Second", "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
    ])
    adds = [c for c in engine(directory, arm, cfg).plan().changes if c.principal.upn == "ann@contoso.com"]
    assert len(adds) == 1


def test_transient_write_failures_are_retried_after_retry_after(world):
    directory, arm = world
    waits = []
    eng = engine(directory, arm)
    eng.sleep = waits.append
    arm.fail = [("create", TransientError("429", retry_after=7)), ("create", TransientError("503"))]
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and waits == [7, 2.0]  # the same write, retried twice


def test_a_failure_half_way_is_reported_and_the_next_run_converges(world):
    directory, arm = world
    eng = engine(directory, arm, retry_budget_seconds=0)
    arm.fail = [("create", TransientError("cluster is in maintenance", retry_after=60))]
    report = eng.run(trigger="test")
    assert report.status == "partially failed"
    failed = [r for r in report.results if r.status == "failed"]
    assert len(failed) == 1 and "retry budget" in failed[0].error
    assert eng.run(trigger="test").status == "succeeded"
    assert eng.plan().changes == ()


def test_already_gone_and_unknown_clusters_do_not_stop_the_run(world):
    directory, arm = world
    eng = engine(directory, arm)
    arm.fail = [("create", NotFoundError("database Sales not found"))]
    report = eng.run(trigger="test")
    assert report.status == "partially failed"
    assert sum(r.status == "succeeded" for r in report.results) == 4


def test_dry_run_plans_exactly_what_apply_does_and_writes_nothing(world):
    directory, arm = world
    eng = engine(directory, arm)
    dry = eng.run(trigger="test", dry_run=True)
    assert arm.writes == []
    real = eng.run(trigger="test")
    assert [r.change for r in dry.results] == [r.change for r in real.results]


def test_every_run_is_audited_from_start_to_end(world):
    directory, arm = world
    eng = engine(directory, arm)
    report = eng.run(trigger="timer")
    record = eng.audit.get_run(report.run_id)
    assert record["status"] == "succeeded" and record["trigger"] == "timer"
    assert len(record["changes"]) == 5 and {c["result"] for c in record["changes"]} == {"succeeded"}


def test_a_run_that_dies_is_audited_as_failed(world):
    directory, arm = world
    eng = engine(directory, arm)
    arm.list_assignments = lambda scope: 1 / 0  # a bug, not an Azure error: it must still be recorded
    with pytest.raises(ZeroDivisionError):
        eng.run(trigger="timer")
    (record,) = eng.audit.list_runs()
    assert record["status"] == "failed" and "division by zero" in record["error"]


def test_adopted_assignments_are_recorded_and_removed_once_unwanted(world):
    directory, arm = world
    from shared.core.plan import Assignment
    from shared.core.principals import Principal, PrincipalKind
    ann = Principal(PrincipalKind.USER, "ann@contoso.com", HOME)
    arm.seed(Assignment(SALES, "Viewer", ann, "terraform-ann"))
    eng = engine(directory, arm, config(ownership={"adopt": True}))
    report = eng.run(trigger="test")
    assert [a.name for a in report.plan.adopted] == ["terraform-ann"]
    directory.members["00000008-0000-0000-0000-000000000000"] = [
        m for m in directory.members["00000008-0000-0000-0000-000000000000"] if m.id != "00000001-0000-0000-0000-000000000000"]
    assert [(c.action, c.name) for c in eng.plan().changes] == [(Action.REMOVE, "terraform-ann")]


def test_onboarding_grants_are_desired_until_they_expire(world):
    from shared.adapters.ledger import Grant
    from shared.core.principals import Principal, PrincipalKind
    directory, arm = world
    eng = engine(directory, arm, config(profiles={"analyst": {"targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}}))
    zed = Principal(PrincipalKind.USER, "zed@contoso.com", HOME)
    eng.ledger.record_grant(Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2999-01-01T00:00:00+00:00"))
    eng.run(trigger="test")
    assert f"aaduser=zed@contoso.com;{HOME}" in fqns(arm)
    eng.ledger.record_grant(Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2000-01-01T00:00:00+00:00"))
    assert [(c.action, c.principal.identifier) for c in eng.plan().changes] == [(Action.REMOVE, "zed@contoso.com")]


def test_an_unreadable_ledger_blocks_removals(world):
    directory, arm = world
    eng = engine(directory, arm)
    eng.run(trigger="test")
    directory.members["00000008-0000-0000-0000-000000000000"] = []
    eng.ledger.grants = lambda scopes: 1 / 0
    assert [c.action for c in eng.plan().changes] == [Action.SKIP]


def test_an_expired_grant_is_removed_by_the_next_quick_cycle_and_then_forgotten(world):
    from shared.engine.delta import DeltaState
    from shared.adapters.ledger import Grant
    from shared.core.principals import Principal, PrincipalKind
    directory, arm = world
    directory.latest_delta_links = lambda ids: ["link-0"]
    directory.changed_groups = lambda link: (set(), "link-1")
    cfg = config(profiles={"analyst": {"targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}})
    eng = engine(directory, arm, cfg)
    zed = Principal(PrincipalKind.USER, "zed@contoso.com", HOME)
    grant = Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2999-01-01T00:00:00+00:00")
    eng.ledger.record_grant(grant)
    assert eng.sync().trigger == "timer:full"
    assert f"aaduser=zed@contoso.com;{HOME}" in fqns(arm)
    eng.ledger.record_grant(Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2000-01-01T00:00:00+00:00"))
    report = eng.sync()
    assert report.trigger == "timer:delta"
    assert [(r.change.action, r.change.principal.identifier) for r in report.results] == [(Action.REMOVE, "zed@contoso.com")]
    assert eng.ledger.grants([SALES]) == []
    assert isinstance(eng.delta_state.load(), DeltaState)


def test_guest_home_tenants_are_looked_up_concurrently(world):
    import threading
    import time
    directory, arm = world
    partners = {f"partner{i}.com": f"{i + 30:08d}-0000-0000-0000-000000000000" for i in range(6)}
    directory.tenants.update(partners)
    directory.members["00000008-0000-0000-0000-000000000000"] += [
        user(f"{i + 40:08d}-0000-0000-0000-000000000000", f"p{i}_partner{i}.com#EXT#@contoso.onmicrosoft.com",
             user_type="Guest") for i in range(6)]
    in_flight, peak, lock = [0], [0], threading.Lock()
    lookup = directory.find_tenant_by_domain

    def slow_lookup(domain):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return lookup(domain)

    directory.find_tenant_by_domain = slow_lookup
    adds = [c for c in engine(directory, arm, config(guests="home")).plan().changes if "partner" in c.principal.identifier]
    assert len(adds) == 6 and peak[0] > 1


# -- time-boxed runs and lost leases --------------------------------------------------------------

def test_a_run_that_reaches_its_deadline_ends_incomplete_and_the_next_run_writes_the_rest(world):
    directory, arm = world
    arm.write_seconds = 0.05
    first = engine(directory, arm, run_seconds=0.12).run(trigger="test")
    assert first.status == "incomplete"
    pending = [r for r in first.results if r.status == "pending"]
    assert pending and all("deadline" in r.error for r in pending)
    assert not any(r.status == "failed" for r in first.results)
    done = {r.change for r in first.results if r.status == "succeeded"}
    arm.write_seconds = 0.0
    continuation = engine(directory, arm).run(trigger="test")
    assert continuation.status == "succeeded"
    assert {r.change for r in continuation.results} == {r.change for r in pending}
    assert not done & {r.change for r in continuation.results}  # nothing written twice
    assert engine(directory, arm).plan().changes == ()


def test_a_retry_that_would_outlast_the_deadline_is_left_pending_not_failed(world):
    directory, arm = world
    arm.fail = [("create", TransientError("409 ServiceIsInMaintenance", retry_after=60))]
    report = engine(directory, arm, run_seconds=5).run(trigger="test")
    assert report.status == "incomplete"
    (pending,) = [r for r in report.results if r.status == "pending"]
    assert "deadline came first" in pending.error


class _StolenAfter:
    """Locks whose lease is lost once `keep` writes have started (as if broken and taken)."""

    def __init__(self, keep: int):
        self.keep = keep

    def hold(self, cluster_id):
        from contextlib import contextmanager

        from shared.adapters.locks import Lease

        outer = self

        class Stolen(Lease):
            @property
            def lost(self):
                outer.keep -= 1
                if outer.keep < 0:
                    self.lose("the lease on the cluster was lost (renewal failed: 409 LeaseIdMismatchWithLeaseOperation)")
                return super().lost

        @contextmanager
        def held():
            yield Stolen()

        return held()


def test_a_lost_lease_stops_the_writes_on_that_cluster_at_once(world):
    directory, arm = world
    report = engine(directory, arm, locks=_StolenAfter(keep=2)).run(trigger="test")
    assert len(arm.writes) == 2
    assert report.status == "incomplete"
    assert {r.error for r in report.results if r.status == "pending"} == {
        "the lease on the cluster was lost (renewal failed: 409 LeaseIdMismatchWithLeaseOperation)"}
