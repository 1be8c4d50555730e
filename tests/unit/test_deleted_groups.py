"""Groups deleted in Entra (default config): a 404 confirmed by deletedItems, or a second 404 in a
row, is known-empty and gives up its owned assignments under the guard, with a warning naming it;
a group merely unreadable stays unknown."""
import json

import pytest

from fakes import FakeAssignments, FakeDirectory, group, user
from shared.adapters.ledger import MemoryLedger
from shared.core.config import parse_config
from shared.core.errors import TransientError
from shared.core.plan import Action
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
SALES = Scope(PROD, "Sales")
ANALYSTS, ADMINS = "00000008-0000-0000-0000-000000000000", "00000009-0000-0000-0000-000000000000"


def members(n):
    return [user(f"{i:08d}-0000-0000-0000-000000000000", f"u{i}@contoso.com") for i in range(1, n + 1)]


@pytest.fixture
def eng():
    directory = FakeDirectory()
    directory.add_group(group(ANALYSTS, "Analysts"), members(3))
    directory.add_group(group(ADMINS, "Sales Admins"), [])
    config = parse_config({"mappings": [
        {"name": "analysts", "group": ANALYSTS, "targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}]},
        {"name": "admins", "group": ADMINS, "mode": "group",
         "targets": [{"cluster": PROD, "database": "Sales", "role": "Admin"}]},
    ]})
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    eng = Engine(config, directory, FakeAssignments(), tenants, HOME, ledger=MemoryLedger(), sleep=lambda s: None)
    assert eng.run(trigger="test").status == "succeeded" and len(eng.assignments.state[SALES]) == 4
    return eng


def roles(eng):
    return sorted(a.role for a in eng.assignments.state[SALES].values())


def test_a_soft_deleted_group_is_known_empty_at_once_with_a_warning(eng):
    eng.directory.delete_group(ANALYSTS, soft=True)
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and roles(eng) == ["Admin"]
    assert [(r.change.action, r.change.role) for r in report.results] == [(Action.REMOVE, "Viewer")] * 3
    (warning,) = report.plan.warnings
    assert ANALYSTS in warning and "mapping analysts" in warning and "deleted in Entra" in warning


def test_a_permanently_deleted_group_is_known_empty_after_a_second_404_in_a_row(eng):
    eng.directory.delete_group(ANALYSTS)  # a security group: deleted permanently, not in deletedItems
    first = eng.run(trigger="test")
    assert first.status == "partially_skipped" and roles(eng) == ["Admin", "Viewer", "Viewer", "Viewer"]
    assert "not found" in next(c.reason for c in first.plan.changes if c.action is Action.SKIP)
    second = eng.run(trigger="test")
    assert second.status == "succeeded" and roles(eng) == ["Admin"] and second.plan.warnings


def test_a_dry_run_does_not_count_as_a_404(eng):
    eng.directory.delete_group(ANALYSTS)
    assert eng.run(trigger="test", dry_run=True).status == "partially_skipped"
    assert eng.run(trigger="test", dry_run=True).status == "partially_skipped"
    assert eng.ledger.missing_groups() == {}


def test_a_group_that_comes_back_starts_over(eng):
    eng.directory.delete_group(ANALYSTS)
    eng.run(trigger="test")
    eng.directory.add_group(group(ANALYSTS, "Analysts"), members(3))  # restored
    assert eng.run(trigger="test").results == [] and eng.ledger.missing_groups() == {}


def test_a_deleted_group_mapped_as_a_group_loses_its_own_assignment(eng):
    eng.directory.delete_group(ADMINS, soft=True)
    report = eng.run(trigger="test")
    assert [(r.change.action, r.change.role) for r in report.results] == [(Action.REMOVE, "Admin")]


def test_removals_of_a_deleted_big_group_are_held_by_the_guard(eng):
    eng.directory.set_members(ANALYSTS, members(40))
    eng.run(trigger="test")
    eng.directory.delete_group(ANALYSTS, soft=True)
    report = eng.run(trigger="test")
    assert report.status == "succeeded_with_holds" and report.counts() == {"held": 40}


def test_an_unreadable_group_stays_unknown(eng):
    eng.directory.failing[ANALYSTS] = TransientError("throttled past the retry budget")
    for _ in range(2):
        report = eng.run(trigger="test")
        assert report.status == "partially_skipped" and len(eng.assignments.state[SALES]) == 4
    assert eng.ledger.missing_groups() == {}


def test_a_run_and_its_cluster_job_are_one_run_not_two_404s_in_a_row(eng, monkeypatch):
    from shared import app as wiring
    from shared.adapters.queues import CLUSTER_JOBS
    from shared.handlers.jobs import run_cluster_job

    monkeypatch.setattr(wiring, "engine", lambda environ=None: eng)
    eng.directory.members[ANALYSTS] = members(4)  # a joiner, so the run has a job for the cluster
    eng.directory.delete_group(ADMINS)  # permanently: its first 404 is not yet proof
    parent = eng.run(trigger="timer", jobs=True)
    assert eng.ledger.missing_groups() == {ADMINS: parent.started_ms}
    (body, _), = eng.queues.sent[CLUSTER_JOBS]
    job = run_cluster_job(json.dumps(body))
    assert "Admin" in roles(eng)  # the job read it again within the same run: still unknown
    assert any(c.action is Action.SKIP for c in job.plan.changes)
    eng.run(trigger="test")  # the next run: a second 404 in a row
    assert roles(eng) == ["Viewer"] * 4
