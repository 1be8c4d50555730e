"""The pure planning core, tested with literals only."""
from shared.core.plan import Action, Assignment, Desired, Policy, assignment_name, is_owned, plan
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope

TENANT = "11111111-1111-1111-1111-111111111111"
CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
SALES = Scope(CLUSTER, "Sales")
CLUSTER_SCOPE = Scope(CLUSTER)
POLICY = Policy(prefix="ks-", max_deletes=10)


def user(name: str, object_id: str | None = None) -> Principal:
    return Principal(PrincipalKind.USER, f"{name}@contoso.com", TENANT, object_id=object_id)


def owned(scope: Scope, role: str, principal: Principal) -> Assignment:
    return Assignment(scope, role, principal, name=assignment_name("ks-", scope, role, principal))


def foreign(scope: Scope, role: str, principal: Principal, name: str = "portal-added") -> Assignment:
    return Assignment(scope, role, principal, name=name)


def wants(*grants: tuple[str, Principal], unknown: tuple[str, ...] = ()) -> Desired:
    return Desired(grants={g: "member of Analysts" for g in grants}, unknown=unknown)


def actions(result) -> list[tuple[str, str | None, str | None]]:
    return [(c.action.value, c.role, c.principal.identifier if c.principal else None) for c in result.changes]


def test_when_nothing_is_wanted_and_nothing_exists_the_plan_is_empty():
    result = plan({SALES: Desired()}, {SALES: []}, POLICY)
    assert result.changes == () and not result.pending


def test_a_missing_assignment_is_added_under_its_deterministic_name():
    bob = user("bob")
    result = plan({SALES: wants(("Viewer", bob))}, {SALES: []}, POLICY)
    assert actions(result) == [("add", "Viewer", "bob@contoso.com")]
    assert result.changes[0].name == assignment_name("ks-", SALES, "Viewer", bob)
    assert result.changes[0].name.startswith("ks-")


def test_the_name_is_stable_and_depends_on_scope_role_and_principal():
    bob = user("bob")
    name = assignment_name("ks-", SALES, "Viewer", bob)
    assert name == assignment_name("ks-", Scope(CLUSTER.upper().replace("MICROSOFT.KUSTO", "Microsoft.Kusto"), "sales"), "viewer", user("BOB"))
    assert name != assignment_name("ks-", SALES, "Admin", bob)
    assert name != assignment_name("ks-", CLUSTER_SCOPE, "Viewer", bob)


def test_an_existing_assignment_under_another_name_satisfies_the_wish_and_stays_unowned():
    bob = user("bob")
    result = plan({SALES: wants(("Viewer", bob))}, {SALES: [foreign(SALES, "Viewer", user("BOB"))]}, POLICY)
    assert result.changes == () and result.drift == () and result.adopted == ()


def test_an_existing_assignment_matches_by_object_id_when_its_principal_id_differs():
    by_upn = user("bob", object_id="aaaaaaaa-0000-0000-0000-000000000001")
    by_oid = Principal(PrincipalKind.USER, "aaaaaaaa-0000-0000-0000-000000000001", TENANT,
                       object_id="aaaaaaaa-0000-0000-0000-000000000001")
    result = plan({SALES: wants(("Viewer", by_upn))}, {SALES: [foreign(SALES, "Viewer", by_oid)]}, POLICY)
    assert result.changes == ()


def test_adoption_records_matching_unowned_assignments_as_owned():
    bob = user("bob")
    existing = foreign(SALES, "Viewer", bob)
    result = plan({SALES: wants(("Viewer", bob))}, {SALES: [existing]}, Policy(adopt=True))
    assert result.adopted == (existing,) and result.changes == ()


def test_an_owned_assignment_no_longer_wanted_is_removed():
    result = plan({SALES: Desired()}, {SALES: [owned(SALES, "Viewer", user("bob"))]}, POLICY)
    assert actions(result) == [("remove", "Viewer", "bob@contoso.com")]


def test_an_unowned_assignment_not_wanted_is_drift_and_never_removed():
    stray = foreign(SALES, "Admin", user("eve"))
    result = plan({SALES: Desired()}, {SALES: [stray]}, POLICY)
    assert result.changes == () and result.drift == (stray,)


def test_a_name_with_the_prefix_but_not_the_apps_hash_is_not_owned():
    lookalike = Assignment(SALES, "Viewer", user("eve"), name="ks-made-by-hand")
    assert not is_owned(lookalike, "ks-")
    result = plan({SALES: Desired()}, {SALES: [lookalike]}, POLICY)
    assert result.changes == () and result.drift == (lookalike,)


def test_a_role_change_is_an_add_then_a_remove():
    bob = user("bob")
    result = plan({SALES: wants(("Admin", bob))}, {SALES: [owned(SALES, "Viewer", bob)]}, POLICY)
    assert actions(result) == [("add", "Admin", "bob@contoso.com"), ("remove", "Viewer", "bob@contoso.com")]


def test_the_same_principal_may_hold_several_roles():
    bob = user("bob")
    result = plan({SALES: wants(("Viewer", bob), ("Ingestor", bob))}, {SALES: [owned(SALES, "Viewer", bob)]}, POLICY)
    assert actions(result) == [("add", "Ingestor", "bob@contoso.com")]


def test_an_unreadable_group_skips_removals_in_its_scope_but_not_additions():
    result = plan(
        {SALES: wants(("Viewer", user("ann")), unknown=("mapping analysts: group not found",))},
        {SALES: [owned(SALES, "Viewer", user("bob"))]},
        POLICY,
    )
    assert actions(result) == [("skip", None, None), ("add", "Viewer", "ann@contoso.com")]
    assert "no removal" in result.changes[0].reason


def test_a_scope_that_cannot_be_listed_is_skipped_whole():
    result = plan({SALES: wants(("Viewer", user("ann")))}, {SALES: None}, POLICY)
    assert actions(result) == [("skip", None, None)]


def test_removals_over_the_count_guard_are_held_and_additions_still_go_ahead():
    existing = [owned(SALES, "Viewer", user(f"u{i}")) for i in range(5)]
    result = plan({SALES: wants(("Viewer", user("new")))}, {SALES: existing}, Policy(max_deletes=3))
    assert result.count(Action.ADD) == 1 and result.count(Action.HOLD) == 5 and result.count(Action.REMOVE) == 0
    assert "maxDeletes=3" in next(c for c in result.changes if c.action is Action.HOLD).reason


def test_removals_over_the_percent_guard_are_held():
    existing = [owned(SALES, "Viewer", user(f"u{i}")) for i in range(10)]
    keep = wants(*[("Viewer", user(f"u{i}")) for i in range(7)])
    floorless = dict(max_deletes=50, delete_floor=0)
    assert plan({SALES: keep}, {SALES: existing}, Policy(max_delete_percent=25, **floorless)).count(Action.HOLD) == 3
    assert plan({SALES: keep}, {SALES: existing}, Policy(max_delete_percent=30, **floorless)).count(Action.REMOVE) == 3


def test_approval_releases_held_removals():
    existing = [owned(SALES, "Viewer", user(f"u{i}")) for i in range(5)]
    result = plan({SALES: Desired()}, {SALES: existing}, Policy(max_deletes=3, approve_deletes=True))
    assert result.count(Action.REMOVE) == 5 and result.count(Action.HOLD) == 0


def test_excluded_principals_are_never_added_nor_removed():
    bob, eve = user("bob"), user("eve")
    policy = Policy(exclude=frozenset({bob.key, eve.key}))
    result = plan({SALES: wants(("Viewer", bob))}, {SALES: [owned(SALES, "Admin", eve)]}, policy)
    assert result.changes == ()


def test_the_apps_own_identity_is_never_removed():
    me = Principal(PrincipalKind.APP, "22222222-0000-0000-0000-000000000000", TENANT)
    policy = Policy(self_ids=frozenset({"22222222-0000-0000-0000-000000000000"}))
    result = plan({CLUSTER_SCOPE: Desired()}, {CLUSTER_SCOPE: [owned(CLUSTER_SCOPE, "AllDatabasesAdmin", me)]}, policy)
    assert result.changes == ()


def test_the_plan_is_deterministic_and_ordered_by_scope_then_action():
    bob, ann = user("bob"), user("ann")
    desired = {SALES: wants(("Viewer", bob), ("Viewer", ann)), CLUSTER_SCOPE: wants(("AllDatabasesViewer", bob))}
    current = {SALES: [owned(SALES, "Admin", ann)], CLUSTER_SCOPE: []}
    first = plan(desired, current, POLICY)
    second = plan(dict(reversed(list(desired.items()))), current, POLICY)
    assert first == second
    assert [(str(c.scope), c.action.value) for c in first.changes] == [
        ("adx-prod", "add"), ("adx-prod/Sales", "add"), ("adx-prod/Sales", "add"), ("adx-prod/Sales", "remove"),
    ]


def test_json_items_carry_the_contract_fields():
    result = plan({SALES: wants(("Viewer", user("bob")))}, {SALES: []}, POLICY)
    item = result.as_json()["changes"][0]
    assert item["action"] == "add" and item["role"] == "Viewer"
    assert item["scope"] == {"cluster": CLUSTER, "database": "Sales"}
    assert item["principal"] == f"aaduser=bob@contoso.com;{TENANT}"
    assert item["principalType"] == "User" and item["tenantId"] == TENANT and item["reason"]


def test_an_assignment_adopted_by_an_earlier_run_is_owned():
    stray = foreign(SALES, "Viewer", user("eve"))
    policy = Policy(adopted=frozenset({(SALES.key, "portal-added")}))
    assert actions(plan({SALES: Desired()}, {SALES: [stray]}, policy)) == [("remove", "Viewer", "eve@contoso.com")]


# --- identity: matched by object ID, never by UPN text (default policy) ---------------------------

OID = "aaaaaaaa-0000-0000-0000-000000000001"
OTHER_OID = "aaaaaaaa-0000-0000-0000-000000000002"


def member(object_id: str, upn: str) -> Principal:
    """A user as the sync writes it: by object ID, its UPN kept for reports."""
    return Principal(PrincipalKind.USER, object_id, TENANT, object_id=object_id, upn=upn)


def listed(upn: str, object_id: str | None, name: str | None = None) -> Assignment:
    """An assignment the app wrote by UPN (before identities), as ARM lists it (aadObjectId filled by Kusto)."""
    by_upn = user(upn.split("@")[0])
    principal = Principal(PrincipalKind.USER, by_upn.identifier, TENANT, object_id=object_id)
    return Assignment(SALES, "Viewer", principal, name=name or assignment_name("ks-", SALES, "Viewer", by_upn))


def others(count: int = 4) -> tuple[list[Assignment], list[tuple[str, Principal]]]:
    """Owned assignments that stay wanted, so that one removal stays under the default guard."""
    people = [member(f"bbbbbbbb-0000-0000-0000-00000000000{i}", f"u{i}@contoso.com") for i in range(count)]
    return [owned(SALES, "Viewer", p) for p in people], [("Viewer", p) for p in people]


def test_a_user_renamed_since_the_app_wrote_its_assignment_by_upn_is_still_satisfied_and_owned():
    legacy = listed("ann@contoso.com", OID)
    assert is_owned(legacy, "ks-")
    result = plan({SALES: wants(("Viewer", member(OID, "ann.smith@contoso.com")))}, {SALES: [legacy]})
    assert result.changes == () and result.drift == ()


def test_an_assignment_listed_without_an_object_id_is_matched_by_the_upn_the_app_wrote():
    result = plan({SALES: wants(("Viewer", member(OID, "ann@contoso.com")))}, {SALES: [listed("ann@contoso.com", None)]})
    assert result.changes == ()


def test_a_reused_upn_inherits_nothing_and_the_old_owner_loses_the_assignment():
    kept, keep = others()
    old = listed("bob@contoso.com", OID)
    newcomer = member(OTHER_OID, "bob@contoso.com")
    result = plan({SALES: wants(("Viewer", newcomer), *keep)}, {SALES: [old, *kept]})
    assert [(c.action, c.principal.identity[1]) for c in result.changes] == [(Action.ADD, OTHER_OID), (Action.REMOVE, OID)]
    assert result.changes[1].name == old.name


def test_an_app_listed_under_its_display_name_is_matched_by_its_object_id():
    wanted = Principal(PrincipalKind.APP, "cccccccc-0000-0000-0000-000000000001", TENANT, object_id=OID)
    by_name = Principal(PrincipalKind.APP, "etl-loader", TENANT, object_id=OID)
    result = plan({SALES: wants(("Ingestor", wanted))}, {SALES: [foreign(SALES, "Ingestor", by_name)]})
    assert result.changes == ()


def test_an_exclusion_matches_the_principal_however_its_assignment_was_written():
    from shared.core.plan import exclusion_keys
    breakglass = member(OID, "breakglass@contoso.com")
    by_upn, by_oid = listed("breakglass@contoso.com", OID), owned(SALES, "Admin", breakglass)
    result = plan({SALES: Desired()}, {SALES: [by_upn, by_oid]}, Policy(exclude=exclusion_keys([breakglass])))
    assert result.changes == ()


def test_a_wanted_principal_excluded_by_any_spelling_keeps_its_assignment_however_it_is_listed():
    from shared.core.plan import exclusion_keys
    # A grant remembered with the UPN Bob had before a rename; an exclude entry spelled with that
    # UPN; ARM lists Bob's assignment by object ID only. The exclusion is not half-applied.
    bob_then = member(OID, "bob@contoso.com")
    as_listed = Principal(PrincipalKind.USER, OID, TENANT, object_id=OID)
    exclude = exclusion_keys([Principal(PrincipalKind.USER, "bob@contoso.com", TENANT)])
    result = plan({SALES: wants(("Viewer", bob_then))}, {SALES: [owned(SALES, "Viewer", as_listed)]},
                  Policy(exclude=exclude))
    assert result.changes == ()


def test_adoption_is_only_for_what_a_group_mapping_wants_never_for_an_onboarding_grant():
    bob = member(OID, "bob@contoso.com")
    terraform = foreign(SALES, "Admin", bob, name="terraform-breakglass")
    onboarded = Desired({("Admin", bob): "onboarded with profile sales-admin"},
                        onboarded=frozenset({("admin", bob.identity)}))
    assert plan({SALES: onboarded}, {SALES: [terraform]}, Policy(adopt=True)).adopted == ()
    assert plan({SALES: wants(("Admin", bob))}, {SALES: [terraform]}, Policy(adopt=True)).adopted == (terraform,)


# --- unknowns as narrow as the facts -----------------------------------------------------------

def test_an_unknown_role_keeps_that_role_and_plans_the_others():
    from shared.core.plan import Unknown
    kept, keep = others()
    leaver_viewer, leaver_ingestor = owned(SALES, "Viewer", user("lv")), owned(SALES, "Ingestor", user("li"))
    ingestors = [owned(SALES, "Ingestor", user(f"i{i}")) for i in range(4)]
    desired = Desired({**{g: "member" for g in keep}, **{("Ingestor", a.principal): "member" for a in ingestors}},
                      unknown=(Unknown("mapping analysts: group throttled", "Viewer"),))
    result = plan({SALES: desired}, {SALES: [leaver_viewer, leaver_ingestor, *kept, *ingestors]})
    assert actions(result) == [("skip", "Viewer", None), ("remove", "Ingestor", "li@contoso.com")]
    assert "no removal of Viewer" in result.changes[0].reason


def test_an_unknown_member_keeps_only_its_own_assignment():
    from shared.core.plan import Unknown
    kept, keep = others()
    doubtful, leaver = member(OID, "otp_gmail.com#EXT#@contoso.onmicrosoft.com"), member(OTHER_OID, "gone@contoso.com")
    desired = Desired({g: "member" for g in keep}, unknown=(Unknown("member otp: no Entra tenant", "Viewer", doubtful),))
    result = plan({SALES: desired}, {SALES: [owned(SALES, "Viewer", doubtful), owned(SALES, "Viewer", leaver), *kept]})
    assert [(c.action, c.principal.object_id) for c in result.changes] == [(Action.SKIP, OID), (Action.REMOVE, OTHER_OID)]


# --- robust listing ------------------------------------------------------------------------------

def test_an_unreadable_assignment_is_drift_with_its_reason_and_the_rest_of_the_scope_is_planned():
    from shared.core.plan import Unreadable
    odd = Unreadable(SALES, "weird-one", "no principalId in properties")
    result = plan({SALES: wants(("Viewer", user("ann")))}, {SALES: [odd]})
    assert actions(result) == [("add", "Viewer", "ann@contoso.com")]
    assert result.unreadable == (odd,) and "unreadable: no principalId" in result.describe_unowned()[0]
    assert result.as_json()["drift"][0] == {"scope": SALES.as_json(), "role": None, "principal": None,
                                            "name": "weird-one", "reason": "no principalId in properties"}


def test_an_assignment_arm_lists_in_an_unexpected_shape_becomes_unreadable_not_a_failure():
    from shared.adapters.kusto import _to_assignment
    from shared.core.plan import Unreadable
    good = {"name": "adx-prod/Sales/ks-1", "properties": {"principalId": "bob@contoso.com", "principalType": "User",
                                                          "role": "Viewer", "tenantId": TENANT}}
    assert _to_assignment(SALES, good).principal.identifier == "bob@contoso.com"
    for odd, why in (({"name": "adx-prod/Sales/odd-1", "properties": {"principalType": "User", "role": "Viewer"}},
                      "no principalId"),
                     ({"name": "adx-prod/Sales/odd-2", "properties": {"principalId": "x", "principalType": "Robot",
                                                                      "role": "Viewer"}}, "unknown principalType"),
                     ({"name": "adx-prod/Sales/odd-3", "properties": None}, "no principalId, principalType, role"),
                     ("not an object", "no principalId")):
        unreadable = _to_assignment(SALES, odd)
        assert isinstance(unreadable, Unreadable) and why in unreadable.reason
