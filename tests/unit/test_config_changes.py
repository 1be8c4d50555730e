"""Config changes converge (default config): scopes that leave the config give up what the app
owned there, under the guard; grants of a removed profile can be listed and revoked."""
import json

import pytest

from fakes import FakeAssignments, FakeDirectory, group, user
from shared.adapters.ledger import Grant, MemoryLedger
from shared.core.config import parse_config
from shared.core.errors import NotFoundError, TransientError
from shared.core.plan import Action
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine
from shared.handlers.onboarding import handle

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
GONE = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-gone"
SALES, OPS, OLD = Scope(PROD, "Sales"), Scope(PROD, "Ops"), Scope(GONE, "Old")
ANALYSTS = "00000008-0000-0000-0000-000000000000"
ZED = Principal(PrincipalKind.USER, "zed@contoso.com", HOME)


def target(scope, role="Viewer"):
    return {"cluster": scope.cluster, "database": scope.database, "role": role}


def config(*scopes, **extra):
    return parse_config({"mappings": [{"name": "analysts", "group": "Analysts", "targets": [target(s) for s in scopes]}],
                         **extra})


class Assignments(FakeAssignments):
    """Kusto assignments; a cluster in `unreachable` answers an error, one in `gone` 404."""

    def __init__(self):
        super().__init__()
        self.unreachable, self.gone = set(), set()

    def list_assignments(self, scope):
        if scope.cluster in self.unreachable:
            raise TransientError("connection reset")
        if scope.cluster in self.gone:
            raise NotFoundError(f"cluster {scope.cluster_name} not found")
        return super().list_assignments(scope)


@pytest.fixture
def eng():
    directory = FakeDirectory()
    directory.add_group(group(ANALYSTS, "Analysts"),
                        [user(f"{i:08d}-0000-0000-0000-000000000000", f"u{i}@contoso.com") for i in range(1, 4)])
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    eng = Engine(config(SALES, OPS), directory, Assignments(), tenants, HOME, ledger=MemoryLedger(),
                 sleep=lambda s: None, retry_budget_seconds=0)
    assert eng.run(trigger="test").status == "succeeded"
    return eng


def count(eng, scope):
    return len(eng.assignments.state[scope])


def test_a_target_removed_from_the_config_gives_up_its_assignments_and_is_then_forgotten(eng):
    eng.config = config(SALES)
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and count(eng, OPS) == 0 and count(eng, SALES) == 3
    assert [(r.change.action, r.change.scope) for r in report.results] == [(Action.REMOVE, OPS)] * 3
    assert eng.ledger.managed_scopes() == {SALES}
    assert eng.run(trigger="test").results == []


def test_a_dry_run_shows_the_departed_scope_and_forgets_nothing(eng):
    eng.config = config(SALES)
    report = eng.run(trigger="test", dry_run=True)
    assert [(r.change.action, r.change.scope) for r in report.results] == [(Action.REMOVE, OPS)] * 3
    assert count(eng, OPS) == 3 and OPS in eng.ledger.managed_scopes()


def test_a_departed_scope_is_under_the_guard(eng):
    eng.directory.members[ANALYSTS] = [user(f"{i:08d}-0000-0000-0000-000000000000", f"u{i}@contoso.com")
                                       for i in range(1, 31)]
    eng.run(trigger="test")
    eng.config = config(SALES)
    report = eng.run(trigger="test")
    assert report.status == "succeeded_with_holds" and count(eng, OPS) == 30
    assert OPS in eng.ledger.managed_scopes()  # still to do: planned again next run
    assert eng.run(trigger="test", approve_deletes=True).status == "succeeded" and count(eng, OPS) == 0
    assert eng.ledger.managed_scopes() == {SALES}


def test_a_departed_scope_on_an_unreachable_cluster_is_not_a_skip_but_a_warning(eng):
    eng.config = config(SALES, OLD)
    eng.run(trigger="test")
    eng.config = config(SALES)
    eng.assignments.unreachable.add(GONE)
    report = eng.run(trigger="test")
    assert report.status == "succeeded" and report.results == []
    assert any("adx-gone/Old left the config" in w for w in report.plan.warnings)
    assert OLD in eng.ledger.managed_scopes()
    eng.assignments.unreachable.clear()
    eng.assignments.gone.add(GONE)  # deleted meanwhile: nothing is left there
    assert eng.run(trigger="test").status == "succeeded" and OLD not in eng.ledger.managed_scopes()


def test_a_departed_scope_that_could_not_be_listed_is_planned_by_the_next_quick_cycle(eng):
    eng.config = config(SALES, OLD)
    eng.sync(trigger="timer")
    assert count(eng, OLD) == 3
    eng.config = config(SALES)
    eng.assignments.unreachable.add(GONE)
    report = eng.sync(trigger="timer")  # the config changed: a full read, which cannot list OLD
    assert report.trigger == "timer:full" and report.plan.deferred == (OLD,) and not report.converged
    eng.assignments.unreachable.clear()
    report = eng.sync(trigger="timer")  # no group changed, yet OLD is not left for the next full read
    assert report.trigger == "timer:delta" and report.status == "succeeded"
    assert count(eng, OLD) == 0 and eng.ledger.managed_scopes() == {SALES}
    assert eng.sync(trigger="timer").results == []


def test_a_departed_scope_is_remembered_while_an_excluded_principal_keeps_an_owned_assignment_there(eng):
    eng.config = config(SALES, exclude=["aaduser=u1@contoso.com"])
    eng.run(trigger="test")
    assert count(eng, OPS) == 1 and OPS in eng.ledger.managed_scopes()  # u1's stays: excluded
    eng.config = config(SALES)  # the exclusion ends: u1's assignment there is no longer wanted
    assert eng.run(trigger="test").status == "succeeded" and count(eng, OPS) == 0
    assert eng.ledger.managed_scopes() == {SALES}


def test_a_selector_run_plans_only_what_it_names(eng):
    eng.config = config(SALES)
    assert eng.run("analysts", trigger="test").results == [] and count(eng, OPS) == 3


def message(action, profile, principal="zed@contoso.com"):
    return json.dumps({"action": action, "principal": principal, "profile": profile})


def test_a_grant_of_a_removed_profile_can_be_revoked(eng):
    eng.directory.find_user = lambda ref: user("00000099-0000-0000-0000-000000000000", "zed@contoso.com")
    eng.config = config(SALES, OPS, profiles={"ops-ingest": {"targets": [target(OPS, "Ingestor")]}})
    assert handle(eng, message("grant", "ops-ingest"), message_id="m-1").status == "granted"
    eng.config = config(SALES, OPS, profiles={"other": {"targets": [target(SALES)]}})
    (grant,) = eng.ledger.all_grants()
    assert grant.profile == "ops-ingest" and not eng.config.offers(grant.profile, grant.scope, grant.role)
    outcome = handle(eng, message("revoke", "ops-ingest"), message_id="m-2")
    assert outcome.status == "revoked" and eng.ledger.all_grants() == []
    assert all(a.role != "Ingestor" for a in eng.assignments.state[OPS].values())
    refused = handle(eng, message("revoke", "ops-ingest"), message_id="m-3")
    assert refused.status == "rejected" and "no grant of it" in refused.detail
