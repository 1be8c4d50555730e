"""The emulator enforces the managed identity's permissions as Graph and ARM do: Graph app roles
(limited information, basic profiles, 403 Authorization_RequestDenied, hidden memberships) and
ARM RBAC per cluster (403 AuthorizationFailed, Permissions - List For Resource)."""
from __future__ import annotations

import base64
import json

import pytest

from emulator.state import State, TenantFileError
from emulator.testing import DEMO_TENANT
from shared.core.permissions import arm_action_names, graph_role_names

SUB = "5b000000-0000-4000-8000-000000000001"
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
DEV = "/subscriptions/5b000000-0000-4000-8000-000000000002/resourceGroups/rg-dev/providers/Microsoft.Kusto/clusters/adx-dev"
API = "api-version=2025-02-14"
ANALYSTS = "b0000000-0000-4000-8000-000000000002"
ETL_APPS = "b0000000-0000-4000-8000-000000000004"
ADELE = "a0000000-0000-4000-8000-000000000001"
ETL_APP_ID = "e0000000-0000-4000-8000-000000000002"
EVERYTHING_BUT = lambda *gone: [r for r in graph_role_names() if r not in gone]  # noqa: E731
SECRET = "c0000000-0000-4000-8000-00000000000a"
DENIED = {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}


@pytest.fixture
def graph(emu):
    token = emu.token("https://graph.microsoft.com")

    def call(path):
        return emu.call("GET", "/v1.0" + path, None, {"Authorization": f"Bearer {token}"})

    return call


@pytest.fixture
def arm(emu):
    token = emu.token("https://management.azure.com")

    def call(method, path, body=None):
        return emu.call(method, path, body, {"Authorization": f"Bearer {token}"})

    return call


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def members(graph, group, select="id,displayName,userPrincipalName,accountEnabled,userType,appId"):
    status, _, body = graph(f"/groups/{group}/transitiveMembers?$select={select}")
    assert status == 200, body
    return {m["id"]: m for m in body["value"]}


def denied(response):
    status, _, body = response
    return status == 403 and {k: body["error"][k] for k in ("code", "message")} == DENIED


# ------------------------------------------------------------------ Graph app roles

def test_by_default_the_identity_holds_the_apps_documented_roles_and_its_graph_token_says_so(emu):
    assert emu.permissions()["graph"] == list(graph_role_names())
    assert claims(emu.token("https://graph.microsoft.com"))["roles"] == list(graph_role_names())
    assert "roles" not in claims(emu.token("https://management.azure.com"))


def test_without_user_read_all_users_come_back_with_limited_information_from_the_next_request_on(emu, graph):
    before = members(graph, ANALYSTS)  # the token used below was issued before the change
    assert before[ADELE]["userPrincipalName"] == "adele@contoso.com"
    emu.permissions(graph=EVERYTHING_BUT("User.Read.All"))
    after = members(graph, ANALYSTS)
    assert after[ADELE] == {"@odata.type": "#microsoft.graph.user", "id": ADELE, "displayName": None,
                            "userPrincipalName": None, "accountEnabled": None, "userType": None}
    nested = [m for m in after.values() if m["@odata.type"] == "#microsoft.graph.group"]
    assert nested and all(m["displayName"] for m in nested)  # groups stay readable
    assert claims(emu.token("https://graph.microsoft.com"))["roles"] == EVERYTHING_BUT("User.Read.All")


def test_user_readbasic_all_shows_the_basic_profile_and_refuses_more(emu, graph):
    emu.permissions(graph=EVERYTHING_BUT("User.Read.All") + ["User.ReadBasic.All"])
    adele = members(graph, ANALYSTS)[ADELE]
    assert adele["userPrincipalName"] == "adele@contoso.com" and adele["displayName"] == "Adele Vance"
    assert adele["accountEnabled"] is None and adele["userType"] is None
    assert denied(graph("/users?$filter=mail%20eq%20'adele@contoso.com'"))
    assert graph(f"/users/{ADELE}?$select=id,userPrincipalName,mail")[0] == 200
    assert denied(graph(f"/users/{ADELE}?$select=id,userPrincipalName,accountEnabled"))


def test_without_application_read_all_apps_are_limited_and_not_readable(emu, graph):
    emu.permissions(graph=EVERYTHING_BUT("Application.Read.All"))
    (app,) = members(graph, ETL_APPS).values()
    assert app["@odata.type"] == "#microsoft.graph.servicePrincipal" and app["appId"] is None and app["displayName"] is None
    assert denied(graph(f"/servicePrincipals(appId='{ETL_APP_ID}')"))


def test_without_a_group_role_groups_are_refused(emu, graph):
    emu.permissions(graph=EVERYTHING_BUT("GroupMember.Read.All", "Group.Read.All"))  # the latter includes the former
    assert denied(graph(f"/groups/{ANALYSTS}"))
    assert denied(graph(f"/groups/{ANALYSTS}/transitiveMembers"))
    assert denied(graph("/groups/delta?$select=members"))
    emu.permissions(graph=["Directory.Read.All"])  # a broader role includes it
    assert graph(f"/groups/{ANALYSTS}")[0] == 200


def test_hidden_membership_needs_member_read_hidden(emu, graph):
    emu.directory(upsert={"groups": [{"id": SECRET, "displayName": "Secret", "mailEnabled": True, "mail": "secret@contoso.com",
                                      "securityEnabled": True, "groupTypes": ["Unified"], "visibility": "HiddenMembership",
                                      "members": [ADELE]}]},
                  addMembers={ANALYSTS: [SECRET]})
    assert graph(f"/groups/{SECRET}?$select=visibility")[2]["visibility"] == "HiddenMembership"
    assert list(members(graph, SECRET)) == [ADELE]
    emu.permissions(graph=EVERYTHING_BUT("Member.Read.Hidden"))
    assert denied(graph(f"/groups/{SECRET}/members"))
    assert denied(graph(f"/groups/{ANALYSTS}/transitiveMembers"))  # it is nested there
    status, _, body = graph(f"/groups/delta?$select=members&$filter=id%20eq%20'{SECRET}'")
    assert status == 200 and "members@delta" not in body["value"][0]


def test_tenant_lookup_needs_cross_tenant_information(emu, graph):
    path = "/tenantRelationships/findTenantInformationByDomainName(domainName='fabrikam.com')"
    assert graph(path)[0] == 200
    emu.permissions(graph=EVERYTHING_BUT("CrossTenantInformation.ReadBasic.All"))
    assert denied(graph(path))


# ------------------------------------------------------------------ ARM RBAC

def test_by_default_each_cluster_grants_the_apps_custom_role_and_lists_it(emu, arm):
    status, _, body = arm("GET", f"{CLUSTER}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01")
    assert status == 200
    assert body == {"value": [{"actions": list(arm_action_names()), "notActions": [], "dataActions": [], "notDataActions": []}]}
    assert arm("GET", f"{CLUSTER}/providers/Microsoft.Authorization/permissions?{API}")[0] == 400  # Authorization's own versions


def test_a_missing_action_is_arms_authorization_failed_on_that_cluster_only(emu, arm):
    actions = [a for a in arm_action_names() if a != "Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write"]
    emu.permissions(arm={CLUSTER: {"actions": actions}})
    path = f"{CLUSTER}/databases/Sales/principalAssignments/ks-new?{API}"
    body = {"properties": {"principalId": "adele@contoso.com", "principalType": "User", "role": "Viewer"}}
    status, _, error = arm("PUT", path, body)
    assert status == 403 and error["error"]["code"] == "AuthorizationFailed"
    message = error["error"]["message"]
    assert "'Microsoft.Kusto/clusters/databases/principalAssignments/write'" in message
    assert f"over scope '{CLUSTER}/databases/Sales/principalAssignments/ks-new'" in message
    assert "does not have authorization to perform action" in message
    assert arm("GET", f"{CLUSTER}/databases/Sales/principalAssignments?{API}")[0] == 200
    assert arm("PUT", f"{DEV}/databases/Sandbox/principalAssignments/ks-new?{API}", body)[0] in (200, 201)
    _, _, listed = arm("GET", f"{CLUSTER}/providers/Microsoft.Authorization/permissions?api-version=2022-04-01")
    assert listed["value"][0]["actions"] == actions


def test_wildcards_and_not_actions(emu, arm):
    emu.permissions(arm={"adx-prod": {"actions": ["Microsoft.Kusto/*"], "notActions": ["Microsoft.Kusto/clusters/*/delete"]}})
    assert arm("GET", f"{CLUSTER}?{API}")[0] == 200
    assert arm("DELETE", f"{CLUSTER}/principalAssignments/terraform-admins?{API}")[0] == 403
    emu.permissions(arm={"adx-prod": {"actions": []}})
    assert arm("GET", f"{CLUSTER}?{API}")[0] == 403
    status, _, listed = arm("GET", f"/subscriptions/{SUB}/providers/Microsoft.Kusto/clusters?{API}")
    assert status == 200 and listed["value"] == []  # ARM lists only what the caller may read


def test_permission_changes_are_validated_and_reset_restores_the_tenant_file(emu):
    with pytest.raises(Exception) as refused:
        emu.permissions(graph="User.Read.All", arm={"nope": {"actions": []}})
    assert len(refused.value.body["problems"]) == 2
    emu.permissions(graph=[])
    emu.reset()
    assert emu.permissions()["graph"] == list(graph_role_names())


def test_the_tenant_file_sets_graph_roles_and_cluster_permissions():
    data = json.loads(DEMO_TENANT.read_text())
    data["managedIdentity"]["graphRoles"] = ["Directory.Read.All"]
    data["clusters"][0]["permissions"] = {"actions": ["Microsoft.Kusto/Clusters/read"]}
    state = State(data)
    assert state.permissions()["graph"] == ["Directory.Read.All"]
    assert state.permissions()["arm"][CLUSTER]["actions"] == ["Microsoft.Kusto/Clusters/read"]
    assert state.to_data()["managedIdentity"]["graphRoles"] == ["Directory.Read.All"]
    data["clusters"][0]["permissions"] = {"actions": "x", "other": 1}
    with pytest.raises(TenantFileError) as invalid:
        State(data)
    assert invalid.value.problems == ["clusters[0].permissions: unknown key 'other'",
                                      'clusters[0].permissions.actions: must be a list of ARM actions (e.g. "Microsoft.Kusto/Clusters/read")']
    data["managedIdentity"]["graphRoles"] = "Directory.Read.All"
    with pytest.raises(TenantFileError) as invalid:
        State(data)
    assert invalid.value.problems[0].startswith("managedIdentity.graphRoles: must be a list")
