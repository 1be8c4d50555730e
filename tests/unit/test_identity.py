"""Identity and unknowns with the default config (default guard, default guests), over the fakes:
renames, reused UPNs, every exclude spelling, guests, members that can't become principals,
mappings that can't be read, and onboarding grants next to them."""
import json
from pathlib import Path

import pytest

from fakes import FakeAssignments, FakeDirectory, group, user
from shared.adapters.directory import DirectoryObject
from shared.adapters.ledger import Grant
from shared.core.config import load_config, parse_config, reference_warnings
from shared.core.errors import ConfigError, TransientError
from shared.core.plan import Action, Assignment, assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine
from shared.handlers.onboarding import handle

HOME = "11111111-1111-1111-1111-111111111111"
FABRIKAM = "22222222-2222-2222-2222-222222222222"
CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
SALES = Scope(CLUSTER, "Sales")
ANALYSTS = "00000008-0000-0000-0000-000000000000"
BILLING_DL = "00000009-0000-0000-0000-000000000000"
PEOPLE = ["ann", "bob", "cid", "dee", "eve"]


def oid(n: int) -> str:
    return f"{n:08d}-0000-0000-0000-000000000000"


def config(**overrides):
    data = {"mappings": [{"name": "analysts", "group": ANALYSTS,
                          "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}],
            "profiles": {"analyst": {"targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
                         "sales-admin": {"admin": True, "maxDuration": "P7D", "approval": True,
                                         "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Admin"}]},
                         "sales-ingest": {"targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Ingestor"}]}}}
    return parse_config(data | overrides)


@pytest.fixture
def directory():
    directory = FakeDirectory(tenants={"fabrikam.com": FABRIKAM})
    directory.add_group(group(ANALYSTS, "Analysts"),
                        [user(oid(i + 1), f"{name}@contoso.com") for i, name in enumerate(PEOPLE)])
    directory.add_group(group(BILLING_DL, "Billing-DL", security=False, mail_enabled=True, mail="billing@contoso.com"), [])
    directory.add_object(user(oid(20), "zed@contoso.com"))
    return directory


def engine(directory, cfg=None, arm=None):
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com", "contoso.onmicrosoft.com"])
    return Engine(cfg or config(), directory, arm or FakeAssignments(), tenants, HOME, sleep=lambda s: None)


def held(eng, scope=SALES):
    return sorted(a.principal.label for a in eng.assignments.state[scope].values())


def members(directory):
    return directory.members[ANALYSTS]


def by_upn(upn: str) -> Principal:
    return Principal(PrincipalKind.USER, upn, HOME)


# --- renames and reused UPNs -------------------------------------------------------------------

def test_a_renamed_user_causes_no_churn(directory):
    eng = engine(directory)
    eng.run(trigger="test")
    directory.rename(oid(1), "ann.smith@contoso.com")
    eng.assignments.writes.clear()
    assert eng.run(trigger="test").results == [] and eng.assignments.writes == []


def test_assignments_the_app_wrote_by_upn_are_kept_and_still_owned(directory):
    arm = FakeAssignments()
    for i, name in enumerate(PEOPLE):  # as the app wrote them before identities, listed with aadObjectId
        legacy = Principal(PrincipalKind.USER, f"{name}@contoso.com", HOME, object_id=oid(i + 1))
        arm.seed(Assignment(SALES, "Viewer", legacy, assignment_name("ks-", SALES, "Viewer", by_upn(f"{name}@contoso.com"))))
    eng = engine(directory, arm=arm)
    assert eng.plan().changes == ()
    directory.rename(oid(1), "ann.smith@contoso.com")
    members(directory).pop()  # eve leaves: her assignment, written by UPN, is still the app's
    assert [(c.action, c.principal.identifier) for c in eng.plan().changes] == [(Action.REMOVE, "eve@contoso.com")]


def test_a_reused_upn_inherits_nothing(directory):
    eng = engine(directory)
    eng.run(trigger="test")
    directory.rename(oid(2), "bob.old@contoso.com")
    members(directory).remove(directory.objects[oid(2)])
    newcomer = user(oid(30), "bob@contoso.com")
    directory.add_object(newcomer)
    members(directory).append(newcomer)
    report = eng.run(trigger="test")
    assert sorted((r.change.action.value, r.change.principal.object_id) for r in report.results) == [
        ("add", oid(30)), ("remove", oid(2))]


# --- exclude: every documented spelling, resolved once -----------------------------------------

@pytest.mark.parametrize("spelling", [
    "aaduser=ann@contoso.com",  # a UPN with no tenant
    "aaduser=ann@contoso.com;contoso.com",  # the tenant by domain name
    f"aaduser=ann@contoso.com;{HOME}",  # the tenant by GUID
    f"aaduser={oid(1)};{HOME}",  # the object ID
    f"aaduser={oid(1)};contoso.com",
])
def test_every_exclude_spelling_keeps_the_person_out_of_reach(directory, spelling):
    eng = engine(directory, config(exclude=[spelling]))
    assert oid(1) not in {c.principal.object_id for c in eng.plan().changes}
    eng.run(trigger="test")
    legacy = Principal(PrincipalKind.USER, "ann@contoso.com", HOME, object_id=oid(1))
    eng.assignments.seed(Assignment(SALES, "Admin", legacy, assignment_name("ks-", SALES, "Admin", by_upn("ann@contoso.com"))))
    assert eng.plan().changes == ()  # an owned assignment of the excluded person is never removed


def test_an_excluded_principal_is_resolved_once(directory):
    eng = engine(directory, config(exclude=["aaduser=ann@contoso.com"]))
    eng.plan()
    eng.plan()
    assert directory.calls.count(("find_user", "ann@contoso.com")) == 1


@pytest.mark.parametrize("spelling", ["aaduser=ann@contoso.com", "aaduser=ann@contoso.com;contoso.com",
                                      f"aaduser=ann@contoso.com;{HOME}"])
def test_an_exclude_by_upn_still_holds_after_a_rename_in_a_fresh_instance(directory, spelling):
    cfg = config(exclude=[spelling])
    members(directory).remove(directory.objects[oid(1)])
    first = engine(directory, cfg)
    first.run(trigger="test")  # resolves the entry to ann's object, and remembers it
    directory.rename(oid(1), "ann.smith@contoso.com")
    members(directory).append(directory.objects[oid(1)])  # ann joins a mapped group after her rename
    fresh = engine(directory, cfg)  # a cold start: nothing cached
    fresh.ledger, fresh.assignments = first.ledger, first.assignments
    the_plan = fresh.plan()
    assert oid(1) not in {c.principal.object_id for c in the_plan.changes if c.principal}
    assert any("names nobody in the directory now; still leaving alone" in w and oid(1) in w
               for w in the_plan.warnings), the_plan.warnings


def test_an_exclude_that_names_nobody_is_a_warning_and_matches_only_as_written(directory):
    the_plan = engine(directory, config(exclude=["aaduser=nobody@contoso.com"])).plan()
    assert ["exclude aaduser=nobody@contoso.com names nobody in the directory: only that exact spelling "
            "is left alone"] == list(the_plan.warnings)
    assert the_plan.count(Action.ADD) == len(PEOPLE)


def test_an_exclude_that_resolves_to_nobody_fails_the_run_when_the_ledger_cannot_say_whom_it_named(directory):
    eng = engine(directory, config(exclude=["aaduser=nobody@contoso.com"]))
    eng.ledger.exclusions = lambda: (_ for _ in ()).throw(OSError("table storage unreachable"))
    with pytest.raises(TransientError, match="exclude entries named"):
        eng.plan()


def test_an_exclude_that_cannot_be_resolved_now_fails_the_run_and_writes_nothing(directory):
    eng = engine(directory, config(exclude=["aaduser=someone@fabrikam.com"]))
    directory.find_tenant_by_domain = lambda domain: (_ for _ in ()).throw(TransientError("Graph is down"))
    with pytest.raises(TransientError):
        eng.run(trigger="test")
    assert eng.assignments.writes == [] and eng.audit.list_runs()[0]["status"] == "failed"


def test_the_example_configs_excludes_match_the_people_they_name(directory):
    cfg = load_config(str(Path(__file__).resolve().parents[2] / "config" / "sync-config.yaml"))
    directory.add_object(user(oid(40), "breakglass@contoso.com"))
    directory.add_object(DirectoryObject("servicePrincipal", oid(41), display_name="terraform",
                                         app_id="11111111-2222-3333-4444-555555555555"))
    eng = engine(directory, cfg)
    breakglass = Principal(PrincipalKind.USER, oid(40), HOME, object_id=oid(40))
    terraform = Principal(PrincipalKind.APP, "11111111-2222-3333-4444-555555555555", HOME, object_id=oid(41))
    excluded = eng.excluded()
    assert not excluded.isdisjoint(breakglass.match_keys) and not excluded.isdisjoint(terraform.match_keys)
    scope = cfg.mappings[0].targets[0].scope
    eng.assignments.seed(*(Assignment(scope, "Viewer", p, assignment_name("ks-", scope, "Viewer", p))
                           for p in (breakglass, terraform)))
    assert not [c for c in eng.plan(cfg.mappings[0].name).changes if c.action is Action.REMOVE]


# --- guests --------------------------------------------------------------------------------------

def guest(n: int, upn: str) -> DirectoryObject:
    return user(oid(n), upn, user_type="Guest")


def test_a_guest_is_granted_as_its_guest_object_by_default(directory):
    members(directory).append(guest(50, "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"))
    eng = engine(directory)
    eng.run(trigger="test")
    assert f"aaduser={oid(50)};{HOME} (alice_fabrikam.com#EXT#@contoso.onmicrosoft.com)" in held(eng)


def test_a_guest_address_is_unwrapped_once_and_one_still_wrapped_is_refused(directory):
    members(directory).append(guest(51, "admin_contoso.com#EXT#_fabrikam.com#EXT#@contoso.onmicrosoft.com"))
    the_plan = engine(directory, config(guests="home")).plan()
    assert not any(c.action is Action.ADD and "admin@contoso.com" in c.principal.fqn for c in the_plan.changes)
    (skip,) = [c for c in the_plan.changes if c.action is Action.SKIP]
    assert skip.principal.object_id == oid(51) and "still holds #EXT#" in skip.reason
    assert the_plan.count(Action.ADD) == len(PEOPLE)


def test_a_guest_invited_with_a_home_tenant_address_is_refused_in_home_mode(directory):
    members(directory).append(guest(52, "boss_contoso.com#EXT#@contoso.onmicrosoft.com"))
    (skip,) = [c for c in engine(directory, config(guests="home")).plan().changes if c.action is Action.SKIP]
    assert "home tenant's domain" in skip.reason


# --- per-member unknowns -------------------------------------------------------------------------

def test_a_one_time_passcode_guest_is_skipped_alone_and_the_rest_of_the_mapping_is_reconciled(directory):
    eng = engine(directory, config(guests="home"))
    eng.run(trigger="test")
    otp = guest(60, "x_gmail.com#EXT#@contoso.onmicrosoft.com")
    members(directory).append(otp)
    members(directory).remove(directory.objects[oid(5)])  # eve leaves
    members(directory).append(user(oid(61), "joy@contoso.com"))  # joy joins
    report = eng.run(trigger="test")
    lines = sorted((r.change.action.value, r.status, r.change.principal.object_id) for r in report.results)
    assert lines == [("add", "succeeded", oid(61)), ("remove", "succeeded", oid(5)), ("skip", "skipped", oid(60))]
    skip = next(r for r in report.results if r.status == "skipped")
    assert "gmail.com belongs to no Entra tenant" in skip.error


def test_a_member_with_limited_information_is_unknown_and_its_assignment_kept(directory):
    eng = engine(directory)
    eng.run(trigger="test")
    members(directory)[0] = DirectoryObject("user", oid(1))  # Graph without User.Read.All: id and type only
    the_plan = eng.plan()
    assert [(c.action, c.principal.object_id) for c in the_plan.changes] == [(Action.SKIP, oid(1))]
    assert "User.Read.All" in the_plan.changes[0].reason


# --- unknown mappings: only what they could have wanted ---------------------------------------

def test_an_unreadable_members_mapping_keeps_its_role_and_other_roles_are_planned(directory):
    cfg = config(mappings=[
        {"name": "analysts", "group": ANALYSTS, "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        {"name": "loaders", "group": "00000010-0000-0000-0000-000000000000",
         "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Ingestor"}]}])
    directory.add_group(group("00000010-0000-0000-0000-000000000000", "Loaders"),
                        [user(oid(i + 1), f"{name}@contoso.com") for i, name in enumerate(PEOPLE)])
    eng = engine(directory, cfg)
    eng.run(trigger="test")
    directory.failing[ANALYSTS] = TransientError("throttled past the retry budget")
    directory.members["00000010-0000-0000-0000-000000000000"].pop()  # eve stops loading
    changes = [(c.action, c.role, c.principal.object_id if c.principal else None) for c in eng.plan().changes]
    assert changes == [(Action.SKIP, "Viewer", None), (Action.REMOVE, "Ingestor", oid(5))]


def test_a_distribution_group_in_group_mode_does_not_freeze_the_scope_and_an_expired_grant_goes(directory):
    cfg = config(mappings=[
        {"name": "analysts", "group": ANALYSTS, "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]},
        {"name": "billing", "group": "Billing-DL", "mode": "group",
         "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}])
    eng = engine(directory, cfg)
    zed = Principal(PrincipalKind.USER, oid(20), HOME, object_id=oid(20), upn="zed@contoso.com")
    eng.ledger.record_grant(Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2999-01-01T00:00:00+00:00"))
    eng.run(trigger="test")
    eng.ledger.record_grant(Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2000-01-01T00:00:00+00:00"))
    changes = eng.plan().changes
    assert [(c.action, c.principal.object_id) for c in changes] == [(Action.SKIP, BILLING_DL), (Action.REMOVE, oid(20))]
    assert "distribution group" in changes[0].reason


# --- onboarding by identity ----------------------------------------------------------------------

def send(eng, body):
    return handle(eng, json.dumps(body).encode(), message_id="q1")


def test_a_grant_is_revoked_after_a_rename_by_the_new_upn_or_by_object_id(directory):
    for revoke_with in ("zed.new@contoso.com", oid(20)):
        eng = engine(directory)
        directory.rename(oid(20), "zed@contoso.com")
        assert send(eng, {"principal": "zed@contoso.com", "profile": "sales-ingest"}).status == "granted"
        directory.rename(oid(20), "zed.new@contoso.com")
        outcome = send(eng, {"action": "revoke", "principal": revoke_with, "profile": "sales-ingest"})
        assert outcome.status == "revoked" and eng.ledger.grants([SALES]) == []
        assert not [a for a in eng.assignments.state[SALES].values() if a.role == "Ingestor"]


def test_an_admin_profile_is_never_granted_to_a_display_name(directory):
    outcome = send(engine(directory), {"principal": "Analysts", "profile": "sales-admin"})
    assert outcome.status == "rejected" and "display name" in outcome.detail


def test_an_onboarding_grant_never_adopts_so_its_revoke_leaves_a_manual_assignment_alone(directory):
    eng = engine(directory, config(ownership={"adopt": True}))
    zed = Principal(PrincipalKind.USER, "zed@contoso.com", HOME, object_id=oid(20))
    eng.assignments.seed(Assignment(SALES, "Ingestor", zed, "terraform-breakglass"))
    send(eng, {"principal": "zed@contoso.com", "profile": "sales-ingest"})
    assert eng.run(trigger="test").plan.adopted == ()
    send(eng, {"action": "revoke", "principal": "zed@contoso.com", "profile": "sales-ingest"})
    eng.run(trigger="test")
    assert "terraform-breakglass" in eng.assignments.state[SALES]


# --- references by object ID --------------------------------------------------------------------

def test_an_admin_mapping_must_name_its_group_by_object_id_and_check_warns_about_display_names():
    admin = {"name": "dbas", "group": "DBAs", "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Admin"}]}
    with pytest.raises(ConfigError, match="mappings\\[0\\].group: 'DBAs' is a display name"):
        parse_config({"mappings": [admin]})
    parse_config({"mappings": [admin | {"group": ANALYSTS}]})
    assert reference_warnings(parse_config({"mappings": [admin | {"targets": [
        {"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}]})) == [
        "mappings[0].group: 'DBAs' is a display name; name the group by object ID (a look-alike group "
        "would make the mapping ambiguous, or inherit its roles after a rename)"]


def test_an_ended_grant_keeps_its_row_while_its_assignment_written_by_upn_is_not_yet_removed(directory):
    from shared.core.errors import PermanentError
    eng = engine(directory)
    zed = Principal(PrincipalKind.USER, oid(20), HOME, object_id=oid(20), upn="zed@contoso.com")
    legacy = Principal(PrincipalKind.USER, "zed@contoso.com", HOME, object_id=oid(20))
    eng.assignments.seed(Assignment(SALES, "Viewer", legacy, assignment_name("ks-", SALES, "Viewer", by_upn("zed@contoso.com"))))
    eng.ledger.record_grant(Grant(SALES, "Viewer", zed, "analyst", "m-1", expires_at="2000-01-01T00:00:00+00:00"))
    eng.assignments.fail = [("delete", PermanentError("the cluster refused"))]
    eng.run(trigger="test")
    assert [g.principal.object_id for g in eng.ledger.grants([SALES])] == [oid(20)]
    eng.run(trigger="test")
    assert eng.ledger.grants([SALES]) == [] and "zed@contoso.com" not in " ".join(held(eng))
