"""The deletion guard with the default config: it stops accidents, not offboarding, and never holds
an explicit instruction (an ended onboarding grant)."""
import pytest

from shared.core.config import Guards, parse_config
from shared.core.plan import Action, Assignment, Desired, Policy, assignment_name, plan
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope

HOME = "11111111-1111-1111-1111-111111111111"
SALES = Scope("/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod", "Sales")
MAPPING = {"name": "analysts", "group": "Analysts", "targets": [{"cluster": SALES.cluster, "database": "Sales", "role": "Viewer"}]}
DEFAULTS = parse_config({"mappings": [MAPPING]}).guards


def user(name: str) -> Principal:
    return Principal(PrincipalKind.USER, f"{name}@contoso.com", HOME)


def owned(name: str) -> Assignment:
    return Assignment(SALES, "Viewer", user(name), assignment_name("ks-", SALES, "Viewer", user(name)))


def default_policy(**overrides) -> Policy:
    return Policy(max_deletes=DEFAULTS.max_deletes, max_delete_percent=DEFAULTS.max_delete_percent,
                  delete_floor=DEFAULTS.delete_floor, **overrides)


def leavers(total: int, leaving: int, **desired) -> list:
    existing = [owned(f"u{i}") for i in range(total)]
    staying = Desired({("Viewer", user(f"u{i}")): "member" for i in range(leaving, total)}, **desired)
    return plan({SALES: staying}, {SALES: existing}, default_policy()).changes


def test_the_policy_defaults_are_the_config_defaults():
    assert (Policy().max_deletes, Policy().max_delete_percent, Policy().delete_floor) == \
        (Guards().max_deletes, Guards().max_delete_percent, Guards().delete_floor) == (20, 25.0, 10)


@pytest.mark.parametrize("total, leaving, removed", [
    (2, 1, True),        # one leaver of two is offboarding, not an accident
    (12, 10, True),      # ten of twelve: still under the floor
    (100, 50, False),    # half of a large scope: held by maxDeletePercent
    (10_000, 21, False),  # 21 of 10,000: held by maxDeletes
    (10_000, 20, True),
    (40, 11, False),     # above the floor and above 25 %
])
def test_the_default_guard_removes_ordinary_leavers_and_holds_accidents(total, leaving, removed):
    changes = leavers(total, leaving)
    assert len(changes) == leaving
    assert {c.action for c in changes} == {Action.REMOVE if removed else Action.HOLD}


def test_a_held_removal_says_which_limits_it_exceeds():
    (reason,) = {c.reason for c in leavers(100, 50)}
    assert "50 removals of 100 owned" in reason and "deleteFloor=10" in reason and "approve" in reason


def test_ended_grants_are_removed_even_beyond_every_limit_and_do_not_count_against_the_guard():
    ended = {("viewer", user(f"u{i}").key): f"onboarding grant expired (u{i})" for i in range(30)}
    changes = leavers(40, 30, ended=ended)
    assert [c.action for c in changes] == [Action.REMOVE] * 30
    assert all("expired" in c.reason for c in changes)
    # Three ordinary leavers next to them are judged on their own: 3 of 40, removed.
    mixed = leavers(40, 33, ended={k: v for k, v in list(ended.items())})
    assert [c.action for c in mixed] == [Action.REMOVE] * 33


def test_ended_grants_do_not_release_ordinary_removals_beyond_the_guard():
    ended = {("viewer", user("u0").key): "onboarding grant revoked"}
    changes = leavers(100, 50, ended=ended)
    assert [(c.action, c.principal.identifier) for c in changes if c.action is Action.REMOVE] == \
        [(Action.REMOVE, "u0@contoso.com")]
    assert sum(c.action is Action.HOLD for c in changes) == 49


def test_an_ended_grant_still_wanted_by_a_mapping_stays():
    existing = [owned("u0")]
    wanted = Desired({("Viewer", user("u0")): "member of Analysts"}, ended={("viewer", user("u0").key): "expired"})
    assert plan({SALES: wanted}, {SALES: existing}, default_policy()).changes == ()


def test_the_floor_is_a_config_setting():
    config = parse_config({"guards": {"deleteFloor": 0}, "mappings": [MAPPING]})
    assert config.guards.delete_floor == 0 and config.to_dict()["guards"]["deleteFloor"] == 0
    from shared.core.errors import ConfigError
    with pytest.raises(ConfigError, match="guards.deleteFloor"):
        parse_config({"guards": {"deleteFloor": -1}, "mappings": [MAPPING]})
