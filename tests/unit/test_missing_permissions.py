"""The engine without a permission: what it cannot read is unknown, never empty, and the reason
names the Graph role or ARM action to grant."""
import pytest

from fakes import FakeAssignments, FakeDirectory, app, group, user
from shared.adapters.directory import DirectoryObject
from shared.core.config import parse_config
from shared.core.errors import PermissionDeniedError
from shared.core.plan import Action
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
TEST = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-test"
ANALYSTS = "00000008-0000-0000-0000-000000000000"
ANN, BOB = "00000001-0000-0000-0000-000000000000", "00000002-0000-0000-0000-000000000000"
ETL = "00000007-0000-0000-0000-000000000000"


def config(**mapping):
    return parse_config({"mappings": [{"name": "analysts", "group": "Analysts", "include": "both", **mapping, "targets": [
        {"cluster": PROD, "database": "Sales", "role": "Viewer"}, {"cluster": TEST, "database": "Sales", "role": "Viewer"}]}]})


def world(*members):
    directory = FakeDirectory()
    directory.add_group(group(ANALYSTS, "Analysts"), list(members))
    return directory, FakeAssignments()


def engine(directory, arm, cfg=None):
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(cfg or config(), directory, arm, tenants, HOME, sleep=lambda s: None)


def seeded(directory, arm, cfg=None):
    """Ann and Bob granted by a first run with every permission."""
    eng = engine(directory, arm, cfg)
    assert eng.run(trigger="test").status == "succeeded"
    return eng


def limited(kind, oid):
    return DirectoryObject.from_json({"@odata.type": f"#microsoft.graph.{kind}", "id": oid, "displayName": None})


def only(changes, action):
    return [c for c in changes if c.action is action]


def test_graph_limited_information_is_recognised():
    assert limited("user", ANN).limited and not user(ANN, "ann@contoso.com").limited
    assert not DirectoryObject.from_json({"@odata.type": "#microsoft.graph.group", "id": ANALYSTS, "displayName": "A"}).limited


@pytest.mark.parametrize("member, role", [(limited("user", BOB), "User.Read.All"),
                                          (limited("servicePrincipal", ETL), "Application.Read.All")])
def test_members_with_limited_information_are_unknown_each_and_remove_nothing(member, role):
    directory, arm = world(user(ANN, "ann@contoso.com"), user(BOB, "bob@contoso.com"), app(ETL, "e71a0000-0000-0000-0000-000000000000", "etl"))
    eng = seeded(directory, arm)
    directory.members[ANALYSTS] = [m for m in directory.members[ANALYSTS] if m.id != member.id] + [member]
    changes = eng.plan().changes
    assert not only(changes, Action.REMOVE) and not only(changes, Action.HOLD) and not only(changes, Action.ADD)
    skips = only(changes, Action.SKIP)
    assert len(skips) == 2 and all(role in c.reason and "limited information" in c.reason for c in skips)


def test_skip_disabled_accounts_without_account_enabled_says_so_instead_of_granting_that_member():
    basic = DirectoryObject("user", BOB, display_name="Bob", user_principal_name="bob@contoso.com")  # no accountEnabled
    directory, arm = world(user(ANN, "ann@contoso.com"), basic)
    changes = engine(directory, arm).plan().changes
    assert {(c.action, c.principal.object_id) for c in changes} == {(Action.SKIP, BOB), (Action.ADD, ANN)}
    assert all("skipDisabledAccounts needs accountEnabled" in c.reason and "User.Read.All" in c.reason
               for c in only(changes, Action.SKIP))
    unguarded = engine(directory, arm, config(skipDisabledAccounts=False)).plan().changes
    assert len(only(unguarded, Action.ADD)) == 4


def test_a_refused_hidden_membership_names_member_read_hidden():
    directory, arm = world(user(ANN, "ann@contoso.com"))
    eng = seeded(directory, arm)
    directory.failing[ANALYSTS] = PermissionDeniedError("403 Authorization_RequestDenied", permission="GroupMember.Read.All")
    changes = eng.plan().changes
    assert {c.action for c in changes} == {Action.SKIP} and all("Member.Read.Hidden" in c.reason for c in changes)


def test_a_cluster_whose_role_lacks_a_write_is_skipped_with_the_action_named_and_the_others_proceed():
    directory, arm = world(user(ANN, "ann@contoso.com"))
    arm.permissions[PROD] = [{"actions": ["Microsoft.Kusto/*"], "notActions": ["Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write"]}]
    report = engine(directory, arm).run(trigger="test")
    (skip,) = only(report.plan.changes, Action.SKIP)
    assert skip.scope == Scope(PROD, "Sales") and "Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write" in skip.reason
    assert [c.scope for c in only(report.plan.changes, Action.ADD)] == [Scope(TEST, "Sales")]
    assert arm.writes == [("create", Scope(TEST, "Sales"), arm.writes[0][2])]


def test_a_refused_listing_skips_the_scope_with_the_reason():
    directory, arm = world(user(ANN, "ann@contoso.com"))
    eng = seeded(directory, arm)
    directory.members[ANALYSTS] = []

    def refuse(scope):
        if scope.cluster == PROD:
            raise PermissionDeniedError("list failed: 403 AuthorizationFailed", permission="Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/read")
        return FakeAssignments.list_assignments(arm, scope)

    arm.list_assignments = refuse
    changes = eng.plan().changes
    (skip,) = only(changes, Action.SKIP)
    assert skip.scope.cluster == PROD and "403 AuthorizationFailed" in skip.reason
    assert [c.scope.cluster for c in only(changes, Action.REMOVE) + only(changes, Action.HOLD)] == [TEST]  # the readable one goes on
