"""Resolution of what a person types, through the real Graph adapter against the emulator's demo tenant.

Tenant look-ups are counted in the emulator's request log, so the caching figures are what went
over the wire, not what the resolver believes it did.
"""
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.identity import ManagedIdentityCredential

from shared.adapters.directory import GraphDirectory
from shared.core.errors import DistributionGroupError, NotFoundError, PermanentError, TransientError, UnknownDomainError
from shared.core.principals import MSA_TENANT_ID, PrincipalKind
from shared.engine.resolve import resolve_principal
from shared.core.tenants import TenantResolver

HOME = "11111111-0000-4000-8000-000000000001"
FABRIKAM = "22222222-0000-4000-8000-000000000002"
NORTHWIND = "33333333-0000-4000-8000-000000000003"
TENANT_LOOKUP = "GET graph /tenantRelationships/findTenantInformationByDomainName"
ETL_APP_ID = "e0000000-0000-4000-8000-000000000002"


@pytest.fixture
def graph(emulator_env):
    directory = GraphDirectory(ManagedIdentityCredential(), endpoint=emulator_env["GRAPH_ENDPOINT"],
                               scope="https://graph.microsoft.com/.default")
    yield directory
    directory.close()


@pytest.fixture
def resolve(graph):
    """resolve(text) with one TenantResolver (and so one cache) per test; no home domains are
    configured, so even the home domain is looked up in Graph."""
    tenants = TenantResolver(graph, home_tenant_id=HOME)

    def run(text, guests="host"):
        return resolve_principal(text, graph, tenants, HOME, guests=guests)

    run.tenants = tenants
    return run


def tenant_lookups(emu) -> int:
    return emu.requests()["counts"].get(TENANT_LOOKUP, 0)


def as_json(principal):
    principal_id, principal_type, tenant_id = principal.to_arm()
    return {"fqn": principal.fqn, "principalType": principal_type, "principalId": principal_id, "tenantId": tenant_id}


# -- users ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "adele@contoso.com", "ADELE@Contoso.COM", "a0000000-0000-4000-8000-000000000001",
    "aaduser=adele@contoso.com", f"aaduser=a0000000-0000-4000-8000-000000000001;{HOME}",
    "aaduser=A0000000-0000-4000-8000-000000000001;contoso.com",
])
def test_a_home_user_resolves_to_its_object_id_in_the_home_tenant(resolve, text):
    principal = resolve(text)
    assert principal.fqn == f"aaduser=a0000000-0000-4000-8000-000000000001;{HOME}"
    assert principal.object_id == "a0000000-0000-4000-8000-000000000001"
    assert (principal.upn, principal.display_name) == ("adele@contoso.com", "Adele Vance")


def test_a_home_user_found_by_mail_only(resolve, emu):
    emu.directory(upsert={"users": [{"id": "a0000000-0000-4000-8000-000000000099",
                                     "userPrincipalName": "ivan@contoso.onmicrosoft.com",
                                     "displayName": "Ivan", "mail": "ivan.petrov@contoso.com"}]})
    ivan = resolve("ivan.petrov@contoso.com")
    assert (ivan.fqn, ivan.upn) == (f"aaduser=a0000000-0000-4000-8000-000000000099;{HOME}", "ivan@contoso.onmicrosoft.com")


@pytest.mark.parametrize("text, expected", [
    ("alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", f"aaduser=alice@fabrikam.com;{FABRIKAM}"),
    ("a0000000-0000-4000-8000-000000000007", f"aaduser=alice@fabrikam.com;{FABRIKAM}"),
    ("alice@fabrikam.com", f"aaduser=alice@fabrikam.com;{FABRIKAM}"),
    ("nina_northwindtraders.com#EXT#@contoso.onmicrosoft.com", f"aaduser=nina@northwindtraders.com;{NORTHWIND}"),
    ("a0000000-0000-4000-8000-000000000008", f"aaduser=nina@northwindtraders.com;{NORTHWIND}"),
    ("aaduser=Nina@NorthwindTraders.com", f"aaduser=Nina@northwindtraders.com;{NORTHWIND}"),
    ("aaduser=nina@northwindtraders.com;northwindtraders.com", f"aaduser=nina@northwindtraders.com;{NORTHWIND}"),
])
def test_guests_from_two_foreign_tenants_resolve_in_their_home_tenants_with_guests_home(resolve, text, expected):
    principal = resolve(text, guests="home")
    assert principal.fqn == expected
    assert as_json(principal)["tenantId"] == expected.rpartition(";")[2]  # a GUID, never a domain


@pytest.mark.parametrize("text", [
    "carol@outlook.com", "carol_outlook.com#EXT#@contoso.onmicrosoft.com",
    "a0000000-0000-4000-8000-000000000009", "msauser=Carol@Outlook.com", "aaduser=carol@outlook.com",
])
def test_a_microsoft_account_user_is_an_msauser_without_a_tenant_lookup(resolve, emu, text):
    principal = resolve(text, guests="home")
    assert principal.kind is PrincipalKind.MSA
    assert principal.fqn.casefold() == "msauser=carol@outlook.com"
    assert as_json(principal)["principalType"] == "User"
    assert as_json(principal)["tenantId"] == MSA_TENANT_ID
    assert tenant_lookups(emu) == 0


@pytest.mark.parametrize("text", [
    "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", "a0000000-0000-4000-8000-000000000007",
    "aaduser=alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",
])
def test_a_guest_is_its_guest_object_by_default_without_a_tenant_lookup(resolve, emu, text):
    principal = resolve(text)
    assert principal.fqn == f"aaduser=a0000000-0000-4000-8000-000000000007;{HOME}"
    assert principal.upn == "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    assert tenant_lookups(emu) <= 1  # only the home domain, which this resolver has no list of


def test_an_unknown_domain_is_refused_and_the_answer_is_cached(resolve, emu):
    for text in ("someone@unknown.example", "other@UNKNOWN.example", "aaduser=x@unknown.example"):
        with pytest.raises(UnknownDomainError, match="unknown.example belongs to no Entra tenant"):
            resolve(text)
    assert tenant_lookups(emu) == 1


def test_an_unknown_home_user_is_not_found(resolve):
    with pytest.raises(NotFoundError, match="nobody@contoso.com"):
        resolve("nobody@contoso.com")
    with pytest.raises(NotFoundError, match="no user in the home tenant"):
        resolve("aaduser=nobody@contoso.com")


# -- groups --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, group_id", [
    ("Analysts", "b0000000-0000-4000-8000-000000000002"),
    ("b0000000-0000-4000-8000-000000000002", "b0000000-0000-4000-8000-000000000002"),
    ("aadgroup=Analysts;contoso.com", "b0000000-0000-4000-8000-000000000002"),
    (f"aadgroup=b0000000-0000-4000-8000-000000000002;{HOME}", "b0000000-0000-4000-8000-000000000002"),
    ("finance-readers@contoso.com", "b0000000-0000-4000-8000-000000000006"),
    ("Finance Readers", "b0000000-0000-4000-8000-000000000006"),
    ("aadgroup=finance-readers@contoso.com", "b0000000-0000-4000-8000-000000000006"),
])
def test_security_and_mail_enabled_security_groups_resolve_by_name_id_or_mail(resolve, text, group_id):
    principal = resolve(text)
    assert principal.kind is PrincipalKind.GROUP
    assert as_json(principal) == {"fqn": f"aadgroup={group_id};{HOME}", "principalType": "Group",
                                  "principalId": group_id, "tenantId": HOME}


@pytest.mark.parametrize("text", ["Sales-DL", "sales@contoso.com", "b0000000-0000-4000-8000-000000000005",
                                  "aadgroup=sales@contoso.com"])
def test_a_distribution_group_is_refused_with_the_reason(resolve, text):
    with pytest.raises(DistributionGroupError, match="Sales-DL .*is a distribution group"):
        resolve(text)


@pytest.mark.parametrize("text", ["Project Phoenix", "phoenix@contoso.com", "b0000000-0000-4000-8000-000000000007"])
def test_a_microsoft_365_group_that_is_not_security_enabled_is_refused(resolve, text):
    with pytest.raises(DistributionGroupError, match="Microsoft 365 group that is not security-enabled"):
        resolve(text)


def test_a_security_enabled_microsoft_365_group_is_accepted(resolve, emu):
    emu.directory(upsert={"groups": [{"id": "b0000000-0000-4000-8000-000000000099", "displayName": "Phoenix Core",
                                      "mail": "phoenix-core@contoso.com", "mailEnabled": True,
                                      "securityEnabled": True, "groupTypes": ["Unified"], "members": []}]})
    assert resolve("phoenix-core@contoso.com").fqn == f"aadgroup=b0000000-0000-4000-8000-000000000099;{HOME}"


def test_a_foreign_group_email_keeps_its_mail_in_its_tenant(resolve):
    assert resolve("aadgroup=Team@Fabrikam.com").fqn == f"aadgroup=Team@fabrikam.com;{FABRIKAM}"


def test_an_ambiguous_group_name_lists_the_candidates(resolve, emu):
    emu.directory(upsert={"groups": [{"id": "b0000000-0000-4000-8000-000000000098", "displayName": "Analysts",
                                      "mailEnabled": False, "securityEnabled": True, "groupTypes": [],
                                      "members": []}]})
    with pytest.raises(PermanentError) as caught:
        resolve("Analysts")
    message = str(caught.value)
    assert "b0000000-0000-4000-8000-000000000002" in message and "b0000000-0000-4000-8000-000000000098" in message
    assert resolve("b0000000-0000-4000-8000-000000000098").object_id == "b0000000-0000-4000-8000-000000000098"


def test_a_name_shared_by_a_group_and_an_application_is_ambiguous(resolve, emu):
    emu.directory(upsert={"groups": [{"id": "b0000000-0000-4000-8000-000000000097", "displayName": "etl-loader",
                                      "mailEnabled": False, "securityEnabled": True, "groupTypes": [],
                                      "members": []}]})
    with pytest.raises(PermanentError, match="matches 2 objects") as caught:
        resolve("etl-loader")
    assert "b0000000-0000-4000-8000-000000000097" in str(caught.value) and ETL_APP_ID in str(caught.value)


# -- applications --------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [ETL_APP_ID, "d0000000-0000-4000-8000-000000000002", "etl-loader",
                                  f"aadapp={ETL_APP_ID};{HOME}", "aadapp=etl-loader;contoso.com"])
def test_a_service_principal_resolves_to_its_app_id(resolve, text):
    principal = resolve(text)
    assert as_json(principal) == {"fqn": f"aadapp={ETL_APP_ID};{HOME}", "principalType": "App",
                                  "principalId": ETL_APP_ID, "tenantId": HOME}
    assert principal.object_id == "d0000000-0000-4000-8000-000000000002"


def test_a_foreign_app_is_taken_as_written_with_its_tenant_id(resolve):
    assert resolve("aadapp=f0000000-0000-4000-8000-000000000001;fabrikam.com").fqn == \
        f"aadapp=f0000000-0000-4000-8000-000000000001;{FABRIKAM}"


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, reason", [
    ("", "nothing to resolve"),
    ("aadfoo=bob@contoso.com", "unknown principal prefix"),
    ("aaduser=bob@contoso.com;a;b", "more than one ';'"),
    ("aadgroup=Analysts", "needs a tenant"),
    ("msauser=carol@outlook.com;contoso.com", "takes no tenant"),
    ("bob@", "not a user principal name"),
    ("aadgroup=team@outlook.com", "Microsoft account address, not a group"),
    ("aaduser=a0000000-0000-4000-8000-000000000001;outlook.com", "Microsoft account domain, not a tenant"),
    ("No Such Thing", "names no group or application"),
    ("c0000000-0000-4000-8000-00000000dead", "no user, group or service principal"),
])
def test_what_names_no_principal_is_refused_with_the_reason(resolve, text, reason):
    with pytest.raises(PermanentError, match=reason):
        resolve(text)


def test_a_throttled_tenant_lookup_is_transient_and_not_cached(resolve, emu):
    # 500 is not retried by the SDK, so the failure reaches the resolver at once.
    emu.faults(method="GET", path="findTenantInformationByDomainName", status=500, count=1)
    with pytest.raises(TransientError):
        resolve("bob@fabrikam.com")
    assert resolve("bob@fabrikam.com").tenant == FABRIKAM
    assert tenant_lookups(emu) == 2


# -- caching -------------------------------------------------------------------------------------

def test_100_resolutions_in_one_domain_make_one_tenant_lookup(resolve, emu):
    emu.clear_requests()
    principals = [resolve(f"user{i}@fabrikam.com") for i in range(100)]
    assert {p.tenant for p in principals} == {FABRIKAM}
    assert len({p.fqn for p in principals}) == 100
    assert tenant_lookups(emu) == 1
    assert resolve.tenants.lookups == 1


def test_100_concurrent_resolutions_in_one_domain_make_one_tenant_lookup(resolve, emu):
    emu.clear_requests()
    # Latency keeps the first look-up in flight while the other 99 callers arrive.
    emu.faults(method="GET", path="findTenantInformationByDomainName", latencyMs=300, count=-1)
    with ThreadPoolExecutor(max_workers=20) as pool:
        principals = list(pool.map(resolve, [f"user{i}@northwindtraders.com" for i in range(100)]))
    assert {p.tenant for p in principals} == {NORTHWIND}
    assert tenant_lookups(emu) == 1
