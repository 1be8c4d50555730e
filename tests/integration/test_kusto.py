"""The ARM adapter (azure-mgmt-kusto over TLS) against the emulator: no SDK class is patched."""
import pytest
from azure.identity import ManagedIdentityCredential

from shared.core.errors import NotFoundError, PermanentError, TransientError
from shared.adapters.kusto import KustoAssignments, PrincipalNotYetKnownError
from shared.core.plan import assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope

HOME = "11111111-0000-4000-8000-000000000001"
FABRIKAM = "22222222-0000-4000-8000-000000000002"
PROD = "/subscriptions/5b000000-0000-4000-8000-000000000001/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
SALES = Scope(PROD, "Sales")
CLUSTER = Scope(PROD)
BOB = Principal(PrincipalKind.USER, "bob@contoso.com", HOME)


@pytest.fixture
def arm(emulator_env):
    adapter = KustoAssignments(
        ManagedIdentityCredential(), endpoint=emulator_env["ARM_ENDPOINT"],
        scope="https://management.azure.com/.default", polling_interval=0,
    )
    yield adapter
    adapter.close()


def names(arm, scope):
    return {a.name: a for a in arm.list_assignments(scope)}


def test_listing_maps_arm_assignments_to_principals(arm):
    cluster = names(arm, CLUSTER)
    assert cluster["terraform-admins"].role == "AllDatabasesAdmin"
    assert cluster["terraform-admins"].principal.kind is PrincipalKind.GROUP
    assert cluster["portal-added-1"].principal.fqn == f"aaduser=henry@contoso.onmicrosoft.com;{HOME}"
    assert cluster["portal-added-1"].principal.object_id  # ARM's aadObjectId is read back
    assert names(arm, SALES)["portal-added-2"].principal.identifier == "diego@contoso.com"


def test_create_is_a_long_running_operation_and_is_idempotent(arm, emu):
    name = assignment_name("ks-", SALES, "Viewer", BOB)
    arm.create_assignment(SALES, name, "Viewer", BOB)
    arm.create_assignment(SALES, name, "Viewer", BOB)  # a retried message: no error, no duplicate
    created = names(arm, SALES)[name]
    assert created.role == "Viewer" and created.principal.key == BOB.key
    routes = emu.requests()["counts"]
    assert any("operationResults" in route for route in routes)


def test_the_same_role_and_principal_under_another_name_counts_as_done(arm):
    diego = Principal(PrincipalKind.USER, "diego@contoso.com", HOME)
    arm.create_assignment(SALES, "ks-other-name", "Viewer", diego)  # exists as portal-added-2
    assert "ks-other-name" not in names(arm, SALES)


def test_guest_msa_and_app_principals_are_written_in_their_tenants(arm):
    people = [
        Principal(PrincipalKind.USER, "alice@fabrikam.com", FABRIKAM),
        Principal(PrincipalKind.MSA, "carol@outlook.com"),
        Principal(PrincipalKind.APP, "e0000000-0000-4000-8000-000000000002", HOME),
    ]
    for principal in people:
        arm.create_assignment(SALES, assignment_name("ks-", SALES, "Ingestor", principal), "Ingestor", principal)
    read_back = {a.principal.key for a in arm.list_assignments(SALES) if a.role == "Ingestor"}
    assert {p.key for p in people} <= read_back


def test_delete_removes_and_a_second_delete_is_success(arm):
    name = assignment_name("ks-", CLUSTER, "AllDatabasesViewer", BOB)
    arm.create_assignment(CLUSTER, name, "AllDatabasesViewer", BOB)
    arm.delete_assignment(CLUSTER, name)
    arm.delete_assignment(CLUSTER, name)
    assert name not in names(arm, CLUSTER)


def test_a_role_invalid_for_the_scope_is_a_permanent_error(arm):
    with pytest.raises(PermanentError, match="AllDatabasesViewer"):
        arm.create_assignment(SALES, "ks-bad-role", "AllDatabasesViewer", BOB)


def test_an_unknown_principal_is_reported_as_not_yet_known(arm):
    ghost = Principal(PrincipalKind.USER, "ghost@contoso.com", HOME)
    with pytest.raises(PrincipalNotYetKnownError):
        arm.create_assignment(SALES, "ks-ghost", "Viewer", ghost)


def test_an_unknown_cluster_is_not_found(arm):
    with pytest.raises(NotFoundError):
        arm.list_assignments(Scope(PROD.replace("adx-prod", "adx-nowhere")))


def test_a_cluster_in_maintenance_is_transient(arm, emu):
    emu.faults(method="PUT", path="principalAssignments", status=409, count=1)
    with pytest.raises(TransientError, match="409 ServiceIsInMaintenance"):
        arm.create_assignment(SALES, "ks-busy", "Viewer", BOB)


def test_a_conflict_with_retry_after_is_retried_by_the_sdk_itself(arm, emu):
    emu.faults(method="PUT", path="principalAssignments", status=409, count=1, retryAfter=1)
    arm.create_assignment(SALES, "ks-busy", "Viewer", BOB)
    puts = [r["status"] for r in emu.requests()["requests"] if r["method"] == "PUT"]
    assert puts == [409, 201]


def test_throttling_is_retried_by_the_sdk_after_retry_after(arm, emu):
    emu.faults(method="GET", path="principalAssignments", status=429, count=1, retryAfter=0)
    assert "portal-added-2" in names(arm, SALES)
    statuses = [r["status"] for r in emu.requests()["requests"] if r["method"] == "GET" and r["api"] == "arm"]
    assert statuses[:2] == [429, 200]


def test_effective_permissions_and_a_refused_write_name_the_action(arm, emu):
    from shared.core.errors import PermissionDeniedError
    from shared.core.permissions import arm_action_names

    assert arm.effective_permissions(PROD)[0]["actions"] == list(arm_action_names())
    write = "Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write"
    emu.permissions(arm={PROD: {"actions": ["*"], "notActions": [write]}})
    with pytest.raises(PermissionDeniedError) as refused:
        arm.create_assignment(SALES, assignment_name("ks-", SALES, "Viewer", BOB), "Viewer", BOB)
    assert refused.value.permission.casefold() == write.casefold() and "AuthorizationFailed" in str(refused.value)


def test_an_operation_is_polled_at_its_expected_end_rather_than_an_interval_later(emulator_env, emu):
    """Without Retry-After, a poll waits the interval, but no longer than the end the operation is
    expected at: ARM's duration of the last operation on the cluster."""
    import time

    emu.lro(seconds=0.3)
    adapter = KustoAssignments(ManagedIdentityCredential(), endpoint=emulator_env["ARM_ENDPOINT"],
                               scope="https://management.azure.com/.default", polling_interval=2)
    people = [Principal(PrincipalKind.USER, f"{name}@contoso.com", HOME) for name in ("bob", "adele", "emma")]
    took = []
    try:
        for principal in people:
            started = time.monotonic()
            adapter.create_assignment(SALES, assignment_name("ks-", SALES, "Admin", principal), "Admin", principal)
            took.append(time.monotonic() - started)
        started = time.monotonic()
        adapter.delete_assignment(SALES, assignment_name("ks-", SALES, "Admin", people[0]))
        took.append(time.monotonic() - started)
    finally:
        adapter.close()
    polls = [r for r in emu.requests()["requests"] if "operationResults" in r["path"]]
    assert 2 <= took[0] < 2.5  # nothing known yet: one interval
    assert all(0.3 <= t < 0.6 for t in took[1:]), took  # then at the expected end, deletes as well
    assert len(polls) == 4  # one poll per write, and no GET of the resource after it


def test_retry_after_comes_before_the_expected_end(emulator_env, emu):
    import time

    emu.lro(seconds=0.3, retryAfter=1)
    adapter = KustoAssignments(ManagedIdentityCredential(), endpoint=emulator_env["ARM_ENDPOINT"],
                               scope="https://management.azure.com/.default", polling_interval=0)
    try:
        for name in ("bob", "adele"):
            principal = Principal(PrincipalKind.USER, f"{name}@contoso.com", HOME)
            started = time.monotonic()
            adapter.create_assignment(SALES, assignment_name("ks-", SALES, "Admin", principal), "Admin", principal)
    finally:
        adapter.close()
    assert time.monotonic() - started >= 1  # ARM asked for a second between polls: it gets it
