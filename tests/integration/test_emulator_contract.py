"""The emulator against the REAL SDKs: azure-identity's ManagedIdentityCredential (App Service
mode), azure-mgmt-kusto 4.0.0 with its LRO pollers, and msgraph models through kiota's JSON
parse nodes. No SDK class is patched."""
from __future__ import annotations

import asyncio

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ManagedIdentityCredential
from azure.mgmt.kusto import KustoManagementClient
from azure.mgmt.kusto.models import (
    ClusterPrincipalAssignment,
    ClusterPrincipalAssignmentCheckNameRequest,
    DatabasePrincipalAssignment,
    DatabasePrincipalAssignmentCheckNameRequest,
)

SUB = "5b000000-0000-4000-8000-000000000001"
RG, CLUSTER = "rg-data", "adx-prod"
ANALYSTS = "b0000000-0000-4000-8000-000000000002"
FABRIKAM = "22222222-0000-4000-8000-000000000002"
REQUIRED = ("principal_id", "role", "principal_type", "tenant_id", "tenant_name", "principal_name", "aad_object_id", "provisioning_state")


@pytest.fixture
def kusto(emulator_env):
    cred = ManagedIdentityCredential()
    client = KustoManagementClient(cred, SUB, base_url=emulator_env["ARM_ENDPOINT"], polling_interval=0)
    yield client
    client.close()


def assert_complete(model):
    missing = [f for f in REQUIRED if getattr(model, f) in (None, "")]
    assert not missing, f"{model.name}: {missing} not set"


def test_clusters_and_databases(kusto):
    cluster = kusto.clusters.get(RG, CLUSTER)
    assert cluster.name == CLUSTER and cluster.location == "westeurope" and cluster.state == "Running"
    assert cluster.uri == "https://adx-prod.westeurope.kusto.windows.net" and cluster.sku.capacity == 2
    dbs = list(kusto.databases.list_by_cluster(RG, CLUSTER))
    assert [d.name for d in dbs] == ["adx-prod/Sales", "adx-prod/Telemetry"] and all(d.kind == "ReadWrite" for d in dbs)
    db = kusto.databases.get(RG, CLUSTER, "Sales")
    assert db.soft_delete_period is not None and db.provisioning_state == "Succeeded"
    with pytest.raises(ResourceNotFoundError):
        kusto.databases.get(RG, CLUSTER, "Nope")


def test_cluster_principal_assignments_round_trip(kusto, emu):
    existing = list(kusto.cluster_principal_assignments.list(RG, CLUSTER))
    assert {a.name for a in existing} == {"adx-prod/kusto-access-sync-admin", "adx-prod/terraform-admins", "adx-prod/portal-added-1"}
    for a in existing:
        assert_complete(a)
    mi = kusto.cluster_principal_assignments.get(RG, CLUSTER, "kusto-access-sync-admin")
    assert mi.principal_type == "App" and mi.role == "AllDatabasesAdmin" and mi.principal_name == "kusto-access-sync"

    created = kusto.cluster_principal_assignments.begin_create_or_update(
        RG, CLUSTER, "ks-analysts",
        ClusterPrincipalAssignment(principal_id=ANALYSTS, principal_type="Group", role="AllDatabasesViewer"),
    ).result()
    assert_complete(created)
    assert created.provisioning_state == "Succeeded" and created.aad_object_id == ANALYSTS and created.principal_name == "Analysts"

    check = kusto.cluster_principal_assignments.check_name_availability(
        RG, CLUSTER, ClusterPrincipalAssignmentCheckNameRequest(name="ks-analysts"))
    assert check.name_available is False and check.reason == "AlreadyExists"

    with pytest.raises(HttpResponseError) as info:
        kusto.cluster_principal_assignments.begin_create_or_update(
            RG, CLUSTER, "ks-analysts-again",
            ClusterPrincipalAssignment(principal_id="Analysts", principal_type="Group", role="AllDatabasesViewer"),
        ).result()
    assert info.value.status_code == 400 and "already exists with the same role and principal id" in info.value.message

    assert kusto.cluster_principal_assignments.begin_delete(RG, CLUSTER, "ks-analysts").result() is None
    with pytest.raises(ResourceNotFoundError):
        kusto.cluster_principal_assignments.get(RG, CLUSTER, "ks-analysts")
    assert kusto.cluster_principal_assignments.begin_delete(RG, CLUSTER, "ks-analysts").result() is None
    routes = emu.requests()["counts"]
    assert routes["GET arm /locations/{location}/operationResults/{operationId}"] >= 2


def test_database_principal_assignments_round_trip(kusto):
    created = kusto.database_principal_assignments.begin_create_or_update(
        RG, CLUSTER, "Sales", "ks-alice",
        DatabasePrincipalAssignment(principal_id="alice@fabrikam.com", principal_type="User", role="Viewer", tenant_id="fabrikam.com"),
    ).result()
    assert_complete(created)
    assert created.tenant_id == FABRIKAM and created.tenant_name == "Fabrikam"
    assert [a.name for a in kusto.database_principal_assignments.list(RG, CLUSTER, "Sales")] == ["adx-prod/Sales/portal-added-2", "adx-prod/Sales/ks-alice"]
    got = kusto.database_principal_assignments.get(RG, CLUSTER, "Sales", "ks-alice")
    assert_complete(got)
    check = kusto.database_principal_assignments.check_name_availability(
        RG, CLUSTER, "Sales", DatabasePrincipalAssignmentCheckNameRequest(name="free-name"))
    assert check.name_available is True
    with pytest.raises(HttpResponseError) as info:
        kusto.database_principal_assignments.begin_create_or_update(
            RG, CLUSTER, "Sales", "ks-dl",
            DatabasePrincipalAssignment(principal_id="Sales-DL", principal_type="Group", role="Viewer"),
        ).result()
    assert info.value.status_code == 400 and "security group" in info.value.message
    kusto.database_principal_assignments.begin_delete(RG, CLUSTER, "Sales", "ks-alice").result()
    assert [a.name for a in kusto.database_principal_assignments.list(RG, CLUSTER, "Sales")] == ["adx-prod/Sales/portal-added-2"]


def test_sdk_retries_a_throttled_read(kusto, emu):
    emu.faults(method="GET", path="principalAssignments", status=429, count=1, retryAfter=0)
    assert len(list(kusto.cluster_principal_assignments.list(RG, CLUSTER))) == 3
    statuses = [r["status"] for r in emu.requests()["requests"] if r["route"] == "GET arm /clusters/{cluster}/principalAssignments"]
    assert statuses == [429, 200]


# ------------------------------------------------------------------ Graph models via kiota

def _parse(body: bytes, model):
    """kiota 1.16 wants the model class (it calls model.create_from_discriminator_value itself)."""
    from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory

    return JsonParseNodeFactory().get_root_parse_node("application/json", body).get_object_value(model)


def _graph_bytes(emu, path: str) -> bytes:
    import urllib.request

    req = urllib.request.Request(emu.url + "/v1.0" + path, headers={"Authorization": f"Bearer {emu.token('https://graph.microsoft.com')}"})
    with urllib.request.urlopen(req, context=emu.ssl_context) as resp:
        return resp.read()


def test_graph_json_deserializes_into_msgraph_models(emu):
    from msgraph.generated.models.directory_object_collection_response import DirectoryObjectCollectionResponse
    from msgraph.generated.models.group import Group
    from msgraph.generated.models.service_principal import ServicePrincipal
    from msgraph.generated.models.tenant_information import TenantInformation
    from msgraph.generated.models.user import User

    group = _parse(_graph_bytes(emu, f"/groups/{ANALYSTS}?$select=id,displayName,securityEnabled,groupTypes,mailEnabled"), Group)
    assert group.id == ANALYSTS and group.display_name == "Analysts" and group.security_enabled is True and group.group_types == []

    guest = _parse(_graph_bytes(emu, "/users/alice_fabrikam.com%23EXT%23@contoso.onmicrosoft.com?$select=id,userType,mail,accountEnabled"),
                   User)
    assert guest.user_type == "Guest" and guest.mail == "alice@fabrikam.com" and guest.account_enabled is True

    sp = _parse(_graph_bytes(emu, "/servicePrincipals(appId='e0000000-0000-4000-8000-000000000002')"), ServicePrincipal)
    assert sp.app_id == "e0000000-0000-4000-8000-000000000002" and sp.display_name == "etl-loader"

    page = _parse(_graph_bytes(emu, "/groups/b0000000-0000-4000-8000-000000000001/transitiveMembers?$top=3&$select=id,displayName"),
                  DirectoryObjectCollectionResponse)
    assert len(page.value) == 3 and page.odata_next_link
    kinds = {type(m).__name__ for m in page.value}
    assert kinds <= {"User", "Group", "ServicePrincipal"} and "Group" in kinds

    info = _parse(_graph_bytes(emu, "/tenantRelationships/findTenantInformationByDomainName(domainName='fabrikam.com')"),
                  TenantInformation)
    assert info.tenant_id == FABRIKAM and info.default_domain_name == "fabrikam.com"


def test_graph_service_client_reads_through_the_emulator(emulator_env, emu):
    from msgraph import GraphServiceClient

    # The sync credential (requests) honours REQUESTS_CA_BUNDLE; azure.identity.aio goes through
    # aiohttp, whose default SSL context is built once at import, before this test sets SSL_CERT_FILE.
    cred = ManagedIdentityCredential()

    async def run():
        client = GraphServiceClient(credentials=cred, scopes=["https://graph.microsoft.com/.default"])
        client.request_adapter.base_url = emulator_env["GRAPH_ENDPOINT"] + "/v1.0"
        group = await client.groups.by_group_id(ANALYSTS).get()
        info = await client.tenant_relationships.find_tenant_information_by_domain_name_with_domain_name("northwindtraders.com").get()
        return group, info

    group, info = asyncio.run(run())
    assert group.display_name == "Analysts"
    assert info.tenant_id == "33333333-0000-4000-8000-000000000003"
