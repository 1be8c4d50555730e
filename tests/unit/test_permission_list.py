"""The one list of permissions, and everything that must agree with it: docs/permissions.md, the
custom role in infra/, the README and the emulator's defaults; and the rules read from it."""
import json
import re
from pathlib import Path

from emulator.permissions import DEFAULT_ARM_PERMISSIONS, DEFAULT_GRAPH_ROLES
from shared.core.permissions import (
    ARM_ACTIONS, FEATURES, GRAPH_ROLES, arm_action_names, arm_allows, graph_role_for, graph_role_names,
    missing_arm_actions, missing_graph_roles, required, role_definition, role_revealing, scope_actions,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "permissions.md").read_text()


def test_the_docs_graph_table_is_the_list_in_order_with_when_each_is_needed():
    section = DOC.split("## Microsoft Graph")[1].split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    assert [name.strip().strip("`") for name, _ in rows] == list(graph_role_names())
    for (_, needed), role in zip(rows, GRAPH_ROLES):
        assert (needed.strip() == "always") == (role.needed_for is None)


def test_the_custom_role_in_infra_and_in_the_docs_is_the_arm_list():
    shipped = json.loads((ROOT / "infra" / "kusto-sync-role.json").read_text())
    documented = json.loads(re.search(r"```json\n(.*?)```", DOC, re.DOTALL).group(1))
    assert shipped == documented == role_definition()
    assert shipped["Actions"] == list(arm_action_names())


def test_the_readme_asks_for_the_listed_graph_roles_and_not_user_readbasic():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Permissions")[1].split("\n## ")[0]
    assert all(f"`{name}`" in section for name in graph_role_names())
    assert "`User.ReadBasic.All` is not enough" in section


def test_the_emulator_defaults_to_the_apps_documented_set():
    assert list(DEFAULT_GRAPH_ROLES) == list(graph_role_names())
    assert DEFAULT_ARM_PERMISSIONS == {"actions": list(arm_action_names()), "notActions": []}


def test_every_feature_that_raises_a_need_is_explained():
    assert {p.needed_for for p in GRAPH_ROLES + ARM_ACTIONS} - {None} <= set(FEATURES)


def test_broader_graph_roles_cover_narrower_ones_and_features_raise_the_need():
    base = [p.name for p in required(GRAPH_ROLES, ())]
    assert missing_graph_roles(base) == ()
    assert [p.name for p in missing_graph_roles(base, {"guests-home"})] == ["CrossTenantInformation.ReadBasic.All"]
    assert [p.name for p in missing_graph_roles(["Directory.Read.All"])] == []
    user_basic = [r for r in base if r != "User.Read.All"] + ["User.ReadBasic.All"]
    assert [p.name for p in missing_graph_roles(user_basic)] == ["User.Read.All"]


def test_arm_actions_match_with_wildcards_any_case_and_not_actions():
    perms = {"actions": ["Microsoft.Kusto/*"], "notActions": ["Microsoft.Kusto/clusters/*/delete"]}
    assert arm_allows(perms, "microsoft.kusto/Clusters/PrincipalAssignments/write")
    assert not arm_allows(perms, "Microsoft.Kusto/Clusters/PrincipalAssignments/delete")
    assert not arm_allows({"actions": []}, "Microsoft.Kusto/Clusters/read")
    split = [{"actions": ["Microsoft.Kusto/Clusters/read"]}, {"actions": ["*"], "notActions": ["*/write"]}]
    assert missing_arm_actions(split, scope_actions(database=True)) == ("Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write",)


def test_a_scope_needs_its_own_assignment_actions_and_polling():
    assert scope_actions(database=False) == (
        "Microsoft.Kusto/Clusters/PrincipalAssignments/read", "Microsoft.Kusto/Clusters/PrincipalAssignments/write",
        "Microsoft.Kusto/Clusters/PrincipalAssignments/delete", "Microsoft.Kusto/locations/operationresults/read")
    assert all("/Databases/PrincipalAssignments/" in a or "operationresults" in a for a in scope_actions(database=True))


def test_a_refused_graph_request_and_a_limited_member_name_the_role_to_grant():
    assert graph_role_for("/v1.0/groups/g/transitiveMembers?$select=id") == "GroupMember.Read.All"
    assert graph_role_for("/v1.0/users/u") == "User.Read.All"
    assert graph_role_for("/v1.0/servicePrincipals(appId='x')") == "Application.Read.All"
    assert graph_role_for("/v1.0/tenantRelationships/findTenantInformationByDomainName(domainName='x')") == \
        "CrossTenantInformation.ReadBasic.All"
    assert (role_revealing("user"), role_revealing("servicePrincipal")) == ("User.Read.All", "Application.Read.All")
    assert {graph_role_for(p) for p in ("/groups", "/users", "/servicePrincipals", "/tenantRelationships")} <= set(graph_role_names())
