"""The emulator over raw HTTPS: auth, ARM and Graph semantics, faults, request log, admin routes."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from emulator.testing import EmulatorProcess, write_tenant

ROOT = Path(__file__).resolve().parents[2]
SUB = "5b000000-0000-4000-8000-000000000001"
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
API = "api-version=2025-02-14"
TENANT = "11111111-0000-4000-8000-000000000001"
FABRIKAM = "22222222-0000-4000-8000-000000000002"
DATA_PLATFORM = "b0000000-0000-4000-8000-000000000001"
ANALYSTS = "b0000000-0000-4000-8000-000000000002"
ANALYSTS_EU = "b0000000-0000-4000-8000-000000000003"
SALES_DL = "b0000000-0000-4000-8000-000000000005"
OPS_A = "b0000000-0000-4000-8000-000000000008"
OPS_B = "b0000000-0000-4000-8000-000000000009"
EMMA = "a0000000-0000-4000-8000-000000000005"


def user(n: int) -> str:
    return f"a0000000-0000-4000-8000-{n:012d}"


@pytest.fixture
def arm(emu):
    token = emu.token("https://management.azure.com")

    def call(method, path, body=None, token=token):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return emu.call(method, path, body, headers)

    return call


@pytest.fixture
def graph(emu):
    token = emu.token("https://graph.microsoft.com")

    def call(path, token=token):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return emu.call("GET", "/v1.0" + path, None, headers)

    return call


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def assignment(principal_id, principal_type, role, tenant_id=None):
    props = {"principalId": principal_id, "principalType": principal_type, "role": role}
    if tenant_id:
        props["tenantId"] = tenant_id
    return {"properties": props}


# ------------------------------------------------------------------ managed identity

def test_token_endpoint_refuses_missing_or_wrong_header(emu):
    path = "/msi/token?api-version=2019-08-01&resource=https://management.azure.com"
    status, _, body = emu.call("GET", path)
    assert status == 400 and "X-IDENTITY-HEADER" in body["message"] and body["statusCode"] == 400
    status, _, body = emu.call("GET", path, headers={"X-IDENTITY-HEADER": "wrong"})
    assert status == 401 and body["statusCode"] == 401
    status, _, body = emu.call("GET", "/msi/token?api-version=2019-08-01", headers={"X-IDENTITY-HEADER": emu.env["IDENTITY_HEADER"]})
    assert status == 400 and "resource" in body["message"]


def test_token_has_the_documented_claims(emu):
    status, _, body = emu.call("GET", "/msi/token?api-version=2019-08-01&resource=https://management.azure.com",
                               headers={"X-IDENTITY-HEADER": emu.env["IDENTITY_HEADER"]})
    assert status == 200 and body["token_type"] == "Bearer" and body["resource"] == "https://management.azure.com"
    c = claims(body["access_token"])
    assert c["aud"] == "https://management.azure.com" and c["tid"] == TENANT
    assert c["iss"] == f"https://sts.windows.net/{TENANT}/" and c["idtyp"] == "app"
    assert c["oid"] == "d0000000-0000-4000-8000-000000000001" and c["appid"] == "e0000000-0000-4000-8000-000000000001"
    assert c["exp"] - c["iat"] == 3600 and int(body["expires_on"]) == c["exp"]


# ------------------------------------------------------------------ auth on ARM and Graph

def test_arm_refuses_missing_foreign_and_garbage_tokens(emu, arm):
    status, headers, body = arm("GET", f"{CLUSTER}?{API}", token=None)
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    status, _, body = arm("GET", f"{CLUSTER}?{API}", token=emu.token("https://graph.microsoft.com"))
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationTokenAudience"
    assert "https://graph.microsoft.com" in body["error"]["message"]
    status, _, body = arm("GET", f"{CLUSTER}?{API}", token="not.a.token")
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
    assert arm("GET", f"{CLUSTER}?{API}", token=emu.token("https://management.azure.com/"))[0] == 200


def test_arm_refuses_an_expired_token(emu, arm):
    status, _, tok = emu.call("POST", "/_emulator/token", {"aud": "https://management.azure.com", "expiresIn": -60})
    status, _, body = arm("GET", f"{CLUSTER}?{API}", token=tok["access_token"])
    assert status == 401 and body["error"]["code"] == "ExpiredAuthenticationToken"


def test_graph_refuses_missing_token_and_wrong_audience(emu, graph):
    status, headers, body = graph(f"/groups/{ANALYSTS}", token=None)
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
    assert set(body["error"]["innerError"]) >= {"date", "request-id", "client-request-id"}
    status, _, body = graph(f"/groups/{ANALYSTS}", token=emu.token("https://management.azure.com"))
    assert status == 401 and body["error"]["code"] == "InvalidAuthenticationToken"
    assert "audience" in body["error"]["message"].lower()


# ------------------------------------------------------------------ ARM semantics

def test_missing_and_unsupported_api_version(arm):
    status, _, body = arm("GET", CLUSTER)
    assert status == 400 and body["error"]["code"] == "MissingApiVersionParameter"
    status, _, body = arm("GET", f"{CLUSTER}?api-version=2001-01-01")
    assert status == 400 and body["error"]["code"] == "InvalidApiVersionParameter"
    assert arm("GET", f"{CLUSTER}?api-version=2023-08-15")[0] == 200


def test_unknown_resources_answer_arm_404s(arm):
    other_sub = "/subscriptions/00000000-0000-4000-8000-0000000000ff/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
    assert arm("GET", f"{other_sub}?{API}")[2]["error"]["code"] == "SubscriptionNotFound"
    no_rg = CLUSTER.replace("rg-data", "rg-nope")
    assert arm("GET", f"{no_rg}?{API}")[2]["error"]["code"] == "ResourceGroupNotFound"
    status, _, body = arm("GET", f"{CLUSTER.replace('adx-prod', 'adx-nope')}?{API}")
    assert status == 404 and body["error"]["code"] == "ResourceNotFound" and "adx-nope" in body["error"]["message"]
    status, _, body = arm("GET", f"{CLUSTER}/databases/Nope/principalAssignments?{API}")
    assert status == 404 and "Nope" in body["error"]["message"]
    status, _, body = arm("GET", f"{CLUSTER}/principalAssignments/nope?{API}")
    assert status == 404 and body["error"]["code"] == "ResourceNotFound"
    assert arm("PATCH", f"{CLUSTER}/principalAssignments/terraform-admins?{API}", {})[0] == 405


def test_paths_are_case_insensitive_and_echo_stored_casing(arm):
    status, headers, body = arm("GET", f"{CLUSTER.upper().replace('SUBSCRIPTIONS', 'subscriptions')}/PRINCIPALASSIGNMENTS/Terraform-Admins?{API}")
    assert status == 200 and body["name"] == "adx-prod/terraform-admins"
    assert headers["x-ms-request-id"] and headers["x-ms-correlation-request-id"]


def test_invalid_role_for_the_scope_is_refused(arm):
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/x?{API}", assignment("bob@contoso.com", "User", "Viewer"))
    assert status == 400 and "Viewer" in body["error"]["message"] and "AllDatabasesViewer" in body["error"]["message"]
    status, _, body = arm("PUT", f"{CLUSTER}/databases/Sales/principalAssignments/x?{API}",
                          assignment("bob@contoso.com", "User", "AllDatabasesAdmin"))
    assert status == 400 and "UnrestrictedViewer" in body["error"]["message"]


def test_unknown_principal_and_distribution_group_are_refused(arm):
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/x?{API}", assignment("nobody@contoso.com", "User", "AllDatabasesViewer"))
    assert status == 400 and "was not found" in body["error"]["message"]
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/x?{API}", assignment(SALES_DL, "Group", "AllDatabasesViewer"))
    assert status == 400 and "security group" in body["error"]["message"]
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/x?{API}", assignment("Sales-DL", "Group", "AllDatabasesViewer"))
    assert status == 400 and "security group" in body["error"]["message"]


def test_foreign_and_msa_principals_resolve(arm):
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/f1?{API}", assignment("alice@fabrikam.com", "User", "AllDatabasesViewer", "fabrikam.com"))
    assert status == 201 and body["properties"]["tenantId"] == FABRIKAM and body["properties"]["tenantName"] == "Fabrikam"
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/m1?{API}", assignment("carol@outlook.com", "User", "AllDatabasesViewer"))
    assert status == 201 and body["properties"]["tenantName"] == "MSA"
    status, _, body = arm("PUT", f"{CLUSTER}/principalAssignments/f2?{API}", assignment("bob@contoso.com", "User", "AllDatabasesViewer", FABRIKAM))
    assert status == 400 and "was not found" in body["error"]["message"]


def test_duplicate_role_and_principal_is_refused_under_another_name(arm):
    body = assignment("bob@contoso.com", "User", "AllDatabasesViewer")
    assert arm("PUT", f"{CLUSTER}/principalAssignments/first?{API}", body)[0] == 201
    same_by_object_id = assignment(user(2), "User", "AllDatabasesViewer", TENANT)
    status, _, err = arm("PUT", f"{CLUSTER}/principalAssignments/second?{API}", same_by_object_id)
    assert status == 400 and "already exists with the same role and principal id" in err["error"]["message"]
    assert "first" in err["error"]["message"]


def test_put_is_idempotent_and_assignments_are_not_updatable(arm):
    body = assignment("bob@contoso.com", "User", "AllDatabasesViewer")
    status, headers, created = arm("PUT", f"{CLUSTER}/principalAssignments/ks-bob?{API}", body)
    assert status == 201 and created["properties"]["provisioningState"] == "Creating"
    assert "operationResults" in headers["Azure-AsyncOperation"] and "operationResultResponseType=Location" in headers["Location"]
    status, _, again = arm("PUT", f"{CLUSTER}/principalAssignments/ks-bob?{API}", body)
    assert status == 200 and again["name"] == "adx-prod/ks-bob"
    status, _, err = arm("PUT", f"{CLUSTER}/principalAssignments/ks-bob?{API}", assignment("bob@contoso.com", "User", "AllDatabasesAdmin"))
    assert status == 400 and "cannot be updated" in err["error"]["message"]


def test_create_and_delete_run_as_long_running_operations(emu, arm):
    status, headers, _ = arm("PUT", f"{CLUSTER}/databases/Sales/principalAssignments/ks-lro?{API}", assignment("Analysts", "Group", "Viewer"))
    assert status == 201
    op = headers["Azure-AsyncOperation"].replace(emu.url, "")
    status, _, body = arm("GET", op)
    assert status == 200 and body["status"] == "Succeeded" and body["endTime"]
    status, _, got = arm("GET", f"{CLUSTER}/databases/Sales/principalAssignments/ks-lro?{API}")
    assert got["properties"]["provisioningState"] == "Succeeded" and got["properties"]["aadObjectId"] == ANALYSTS
    status, headers, body = arm("DELETE", f"{CLUSTER}/databases/Sales/principalAssignments/ks-lro?{API}")
    assert status == 202 and body is None and "Retry-After" not in headers
    location = headers["Location"].replace(emu.url, "")
    assert arm("GET", location)[0] == 204
    assert arm("GET", f"{CLUSTER}/databases/Sales/principalAssignments/ks-lro?{API}")[0] == 404


def test_delete_of_an_unknown_name_is_204(arm):
    assert arm("DELETE", f"{CLUSTER}/principalAssignments/never-was?{API}")[0] == 204


def test_check_name_availability(arm):
    status, _, body = arm("POST", f"{CLUSTER}/checkPrincipalAssignmentNameAvailability?{API}",
                          {"name": "terraform-admins", "type": "Microsoft.Kusto/clusters/principalAssignments"})
    assert status == 200 and body["nameAvailable"] is False and body["reason"] == "AlreadyExists"
    status, _, body = arm("POST", f"{CLUSTER}/databases/Sales/checkPrincipalAssignmentNameAvailability?{API}",
                          {"name": "free", "type": "Microsoft.Kusto/clusters/databases/principalAssignments"})
    assert body["nameAvailable"] is True


def test_lro_polls_report_in_progress_first(tmp_path):
    with EmulatorProcess(ROOT / "emulator/tenants/demo.json", "--lro-polls", "2", "--lro-retry-after", "0") as emu:
        token = emu.token()
        auth = {"Authorization": f"Bearer {token}"}
        status, headers, _ = emu.call("PUT", f"{CLUSTER}/principalAssignments/slow?{API}", assignment("Analysts", "Group", "AllDatabasesViewer"), auth)
        assert status == 201 and headers["Retry-After"] == "0"
        op = headers["Azure-AsyncOperation"].replace(emu.url, "")
        assert [emu.call("GET", op, headers=auth)[2]["status"] for _ in range(3)] == ["InProgress", "InProgress", "Succeeded"]


def test_lro_seconds_keep_an_operation_in_progress_and_its_cluster_busy_for_that_long(emu, arm):
    import time
    from datetime import datetime

    assert emu.lro(seconds=1.5) == {"seconds": 1.5, "polls": 0, "retryAfter": None}
    started = time.monotonic()
    status, headers, _ = arm("PUT", f"{CLUSTER}/principalAssignments/slow?{API}", assignment("Analysts", "Group", "AllDatabasesViewer"))
    assert status == 201 and headers["Retry-After"] == "1"  # whole seconds left, rounded down
    op = headers["Azure-AsyncOperation"].replace(emu.url, "")
    other = arm("PUT", f"{CLUSTER}/databases/Sales/principalAssignments/other?{API}", assignment("Analysts", "Group", "Viewer"))
    assert other[0] == 409 and other[2]["error"]["code"] == "ServiceIsInMaintenance"
    while (polled := arm("GET", op))[2]["status"] == "InProgress":
        assert "Retry-After" not in polled[1] or polled[1]["Retry-After"] == "1"
        time.sleep(0.1)
    assert time.monotonic() - started >= 1.5
    assert "Retry-After" not in polled[1]
    # It ended when its time was up, whenever a poll came to see it: that is the endTime reported.
    took = datetime.fromisoformat(polled[2]["endTime"]) - datetime.fromisoformat(polled[2]["startTime"])
    assert 1.5 <= took.total_seconds() < 1.55
    (history,) = emu.operations()
    assert history["cluster"] == "adx-prod" and history["ended"] - history["started"] >= 1.5
    emu.reset()  # back to the options it started with
    assert emu.lro() == {"seconds": 0.0, "polls": 0, "retryAfter": None}


# ------------------------------------------------------------------ Graph

def test_graph_404_body_shape(graph):
    status, headers, body = graph("/groups/00000000-0000-4000-8000-000000000000")
    assert status == 404
    err = body["error"]
    assert err["code"] == "Request_ResourceNotFound"
    assert err["message"] == ("Resource '00000000-0000-4000-8000-000000000000' does not exist or one of its "
                              "queried reference-property objects are not present.")
    assert set(err["innerError"]) == {"date", "request-id", "client-request-id"}
    assert headers["request-id"]


def test_group_select_returns_only_selected_properties(graph):
    status, _, body = graph(f"/groups/{ANALYSTS}?$select=displayName,securityEnabled")
    assert status == 200
    assert set(body) == {"@odata.context", "id", "displayName", "securityEnabled"}


def test_top_above_999_is_refused(graph):
    status, _, body = graph(f"/groups/{ANALYSTS}/transitiveMembers?$top=1000")
    assert status == 400 and body["error"]["code"] == "Request_BadRequest" and "999" in body["error"]["message"]


def test_transitive_members_flatten_nesting_and_cycles(graph):
    _, _, body = graph(f"/groups/{DATA_PLATFORM}/transitiveMembers?$select=id")
    ids = [m["id"] for m in body["value"]]
    assert len(ids) == len(set(ids))
    assert {ANALYSTS, ANALYSTS_EU, user(1), user(2), user(3), user(7), user(8), user(9), user(11)} == set(ids)
    types = {m["id"]: m["@odata.type"] for m in body["value"]}
    assert types[ANALYSTS] == "#microsoft.graph.group" and types[user(2)] == "#microsoft.graph.user"
    _, _, direct = graph(f"/groups/{DATA_PLATFORM}/members")
    assert {m["id"] for m in direct["value"]} == {ANALYSTS, user(11)}
    _, _, cyc = graph(f"/groups/{OPS_A}/transitiveMembers")
    assert {m["id"] for m in cyc["value"]} == {OPS_B, user(4), user(6)}
    _, _, users_only = graph(f"/groups/{DATA_PLATFORM}/transitiveMembers/microsoft.graph.user")
    assert all(m["@odata.type"] == "#microsoft.graph.user" for m in users_only["value"]) and len(users_only["value"]) == 7


def test_paging_over_many_pages_returns_every_member_once(tmp_path):
    tenant = json.loads((ROOT / "emulator/tenants/demo.json").read_text())
    big = [{"id": f"f0000000-0000-4000-8000-{n:012d}", "userPrincipalName": f"u{n}@contoso.com"} for n in range(2500)]
    tenant["users"] += big
    tenant["groups"].append({"id": "b0000000-0000-4000-8000-000000009999", "displayName": "Big", "mailEnabled": False,
                             "securityEnabled": True, "groupTypes": [], "members": [u["id"] for u in big]})
    with EmulatorProcess(write_tenant(tmp_path, tenant)) as emu:
        auth = {"Authorization": f"Bearer {emu.token('https://graph.microsoft.com')}"}
        url = "/v1.0/groups/b0000000-0000-4000-8000-000000009999/transitiveMembers?$select=id,userPrincipalName&$top=999"
        seen, pages = [], 0
        while url:
            status, _, body = emu.call("GET", url, headers=auth)
            assert status == 200
            pages += 1
            seen += [m["id"] for m in body["value"]]
            next_link = body.get("@odata.nextLink")
            if next_link:
                assert next_link.startswith(emu.url + "/v1.0/groups/") and "$skiptoken=" in next_link
                assert "$select=id,userPrincipalName" in urllib.parse.unquote(next_link)
            url = next_link.replace(emu.url, "") if next_link else None
        assert pages == 3 and len(seen) == 2500 and set(seen) == {u["id"] for u in big}
        default_page = emu.call("GET", "/v1.0/groups/b0000000-0000-4000-8000-000000009999/members", headers=auth)[2]
        assert len(default_page["value"]) == 100


def test_filters_lookups_and_tenant_information(graph):
    _, _, body = graph("/groups?$filter=" + urllib.parse.quote("displayName eq 'analysts'"))
    assert [g["id"] for g in body["value"]] == [ANALYSTS]
    _, _, body = graph("/groups?$filter=" + urllib.parse.quote("mail eq 'SALES@contoso.com' and securityEnabled eq false"))
    assert [g["id"] for g in body["value"]] == [SALES_DL]
    _, _, body = graph("/groups?$filter=" + urllib.parse.quote("displayName eq 'O''Brien'"))
    assert body["value"] == []
    status, _, body = graph("/groups?$filter=" + urllib.parse.quote("startswith(displayName,'A')"))
    assert status == 400 and body["error"]["code"] == "Request_UnsupportedQuery"
    status, _, body = graph("/users/" + urllib.parse.quote("alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", safe="@") + "?$select=id,userType,mail")
    assert status == 200 and body["userType"] == "Guest" and body["mail"] == "alice@fabrikam.com"
    _, _, body = graph("/users?$filter=" + urllib.parse.quote("mail eq 'carol@outlook.com'"))
    assert [u["id"] for u in body["value"]] == [user(9)]
    status, _, body = graph("/servicePrincipals(appId='e0000000-0000-4000-8000-000000000002')")
    assert status == 200 and body["displayName"] == "etl-loader"
    status, _, body = graph("/tenantRelationships/findTenantInformationByDomainName(domainName='FABRIKAM.com')")
    assert status == 200 and body["tenantId"] == FABRIKAM and body["federationBrandName"] is None
    status, _, body = graph("/tenantRelationships/findTenantInformationByDomainName(domainName='unknown.example')")
    assert status == 404


# ------------------------------------------------------------------ faults, log, admin

def test_fault_429_with_retry_after_is_served_n_times_then_normal(emu, graph):
    emu.faults(method="GET", path="transitiveMembers", status=429, count=2, retryAfter=3)
    results = [graph(f"/groups/{ANALYSTS}/transitiveMembers") for _ in range(3)]
    assert [r[0] for r in results] == [429, 429, 200]
    assert results[0][1]["Retry-After"] == "3" and results[0][2]["error"]["code"] == "TooManyRequests"
    log = emu.requests()
    assert log["counts"]["GET graph /groups/{id}/transitiveMembers"] == 3
    assert [r["status"] for r in log["requests"] if r["route"].endswith("transitiveMembers")] == [429, 429, 200]
    assert emu.list_faults() == []


def test_arm_fault_gets_an_arm_body_and_latency_only_faults_delay(emu, arm):
    emu.faults({"method": "*", "path": "principalAssignments", "status": 409, "count": 1},
               {"method": "GET", "path": "/clusters/adx-prod\\?", "status": None, "latencyMs": 50, "count": 1})
    status, _, body = arm("GET", f"{CLUSTER}/principalAssignments?{API}")
    assert status == 409 and body["error"]["code"] == "ServiceIsInMaintenance"
    assert arm("GET", f"{CLUSTER}?{API}")[0] == 200


def test_request_log_counts_and_clear(emu, arm, graph):
    emu.clear_requests()
    arm("GET", f"{CLUSTER}/principalAssignments?{API}")
    arm("GET", f"{CLUSTER}/principalAssignments?{API}")
    graph(f"/groups/{ANALYSTS}")
    log = emu.requests()
    assert log["counts"] == {"GET arm /clusters/{cluster}/principalAssignments": 2, "GET graph /groups/{id}": 1}
    assert log["total"] == 3 and log["requests"][0]["api"] == "arm" and log["requests"][0]["query"] == API
    emu.clear_requests()
    assert emu.requests()["total"] == 0


def test_directory_mutation_changes_membership(emu, graph):
    emu.directory(upsert={"users": [{"id": "a0000000-0000-4000-8000-000000000099", "userPrincipalName": "zoe@contoso.com",
                                     "displayName": "Zoe"}]},
                  addMembers={ANALYSTS_EU: ["a0000000-0000-4000-8000-000000000099"]},
                  removeMembers={ANALYSTS: [user(1)]})
    _, _, body = graph(f"/groups/{DATA_PLATFORM}/transitiveMembers")
    ids = {m["id"] for m in body["value"]}
    assert "a0000000-0000-4000-8000-000000000099" in ids and user(1) not in ids
    emu.directory(delete={"users": [user(2)]})
    _, _, body = graph(f"/groups/{ANALYSTS_EU}/members")
    assert user(2) not in {m["id"] for m in body["value"]}
    assert graph(f"/users/{user(2)}")[0] == 404


def test_bad_directory_mutation_lists_every_problem(emu):
    with pytest.raises(Exception) as info:
        emu.directory(upsert={"users": [{"id": "nope", "userPrincipalName": "x"}]},
                      addMembers={"b0000000-0000-4000-8000-00000000dead": [user(1)]})
    problems = info.value.body["problems"]
    assert any(p.startswith("upsert.users[0].id") for p in problems)
    assert any("addMembers.b0000000-0000-4000-8000-00000000dead" in p for p in problems)


def test_state_and_reset(emu, arm):
    assert arm("PUT", f"{CLUSTER}/principalAssignments/tmp?{API}", assignment("emma@contoso.com", "User", "AllDatabasesViewer"))[0] == 201
    state = emu.state()
    prod = next(c for c in state["clusters"] if c["name"] == "adx-prod")
    assert "tmp" in {a["name"] for a in prod["principalAssignments"]}
    emu.faults(method="GET", path="nothing-matches", status=500, count=-1)
    emu.reset()
    prod = next(c for c in emu.state()["clusters"] if c["name"] == "adx-prod")
    assert "tmp" not in {a["name"] for a in prod["principalAssignments"]}
    assert emu.list_faults() == [] and emu.requests()["total"] == 0


def test_cluster_admin_route_puts_assignments_directly(emu, arm):
    emu.clusters(put=[{"subscriptionId": SUB, "resourceGroup": "rg-data", "cluster": "adx-prod", "database": "Sales",
                       "name": "other-tool", "principalId": EMMA, "principalType": "User", "role": "Viewer"}])
    status, _, body = arm("GET", f"{CLUSTER}/databases/Sales/principalAssignments/other-tool?{API}")
    assert status == 200 and body["properties"]["provisioningState"] == "Succeeded"


def test_bad_tenant_file_exits_2_listing_every_problem(tmp_path):
    tenant = json.loads((ROOT / "emulator/tenants/demo.json").read_text())
    tenant["groups"][3]["members"].append("99999999-0000-4000-8000-000000000000")
    tenant["users"][0]["id"] = "not-a-guid"
    tenant["clusters"][0]["principalAssignments"][0]["role"] = "Viewer"
    tenant["extra"] = 1
    path = write_tenant(tmp_path, tenant)
    proc = subprocess.run([sys.executable, "-m", "emulator", "--tenant", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "ready" not in proc.stdout
    err = proc.stderr
    assert "groups[3].members[1]: unknown object id '99999999-0000-4000-8000-000000000000'" in err
    assert "users[0].id: must be a GUID" in err
    assert "extra: unknown top-level key" in err
    # cluster problems are reported once the directory is valid
    tenant = json.loads((ROOT / "emulator/tenants/demo.json").read_text())
    tenant["clusters"][0]["principalAssignments"][0]["role"] = "Viewer"
    tenant["clusters"][0]["databasePrincipalAssignments"]["Sales"][0]["principalId"] = "ghost@contoso.com"
    proc = subprocess.run([sys.executable, "-m", "emulator", "--tenant", str(write_tenant(tmp_path, tenant))], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "clusters[0].principalAssignments[0]: Role 'Viewer'" in proc.stderr
    assert "clusters[0].databasePrincipalAssignments.Sales[0]:" in proc.stderr and "ghost@contoso.com" in proc.stderr


def test_process_exits_cleanly_on_sigterm_and_removes_its_temp_dir():
    emu = EmulatorProcess(ROOT / "emulator/tenants/demo.json").start()
    ca_dir = Path(emu.ca_file).parent
    assert ca_dir.exists()
    assert emu.stop() == 0
    assert not ca_dir.exists()
