"""Tenant resolution: consumer and home domains, guests, caching and single-flight lookups."""
import threading
import time

import pytest

from shared.core.errors import ConfigError, PrincipalError, TransientError, UnknownDomainError
from shared.core.principals import MSA_TENANT_ID
from shared.core.tenants import (CONSUMER_DOMAINS, TenantInfo, TenantResolver, guest_home_address,
                            is_consumer_domain, normalize_domain, split_upn)

HOME_ID = "11111111-1111-1111-1111-111111111111"
FABRIKAM = TenantInfo("22222222-2222-2222-2222-222222222222", "Fabrikam", "fabrikam.com")
BUECHER = TenantInfo("33333333-3333-3333-3333-333333333333", "Bücher", "xn--bcher-kva.example")


class FakeDirectory:
    """An in-memory TenantLookup that records every domain it is asked about."""

    def __init__(self, tenants=(), *, delay=0.0, error=None):
        self.tenants = {info.default_domain: info for info in tenants}
        self.delay, self.error = delay, error
        self.calls = []

    def find_tenant_by_domain(self, domain):
        self.calls.append(domain)
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.tenants.get(domain)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def resolver(directory=None, **options):
    options.setdefault("home_domains", ["contoso.com", "Contoso.OnMicrosoft.com"])
    return TenantResolver(directory or FakeDirectory([FABRIKAM, BUECHER]), home_tenant_id=HOME_ID, **options)


@pytest.mark.parametrize("domain", ["outlook.com", "hotmail.com", "live.com", "msn.com", "passport.com",
                                    "HOTMAIL.CO.UK", "live.fr", "outlook.de", "Hotmail.com.br", "live.com.mx.",
                                    "outlook.co.th", " OUTLOOK.COM "])
def test_consumer_domains_resolve_to_the_msa_tenant_without_a_lookup(domain):
    tenants = resolver()
    info = tenants.resolve_tenant(domain)
    assert info == TenantInfo(MSA_TENANT_ID, "Microsoft Account", normalize_domain(domain), is_msa=True)
    assert tenants.lookups == 0


def test_consumer_domains_are_matched_exactly_not_by_suffix():
    assert is_consumer_domain("Outlook.com")
    assert not any(map(is_consumer_domain, ["contoso.com", "outlook.contoso.com", "outlook.office365.com"]))
    assert all(normalize_domain(domain) == domain for domain in CONSUMER_DOMAINS)


def test_home_domains_resolve_to_the_home_tenant_without_a_lookup():
    tenants = resolver()
    assert tenants.resolve_tenant("CONTOSO.com").tenant_id == HOME_ID
    assert tenants.resolve_tenant("contoso.onmicrosoft.com.").tenant_id == HOME_ID
    assert tenants.lookups == 0


def test_a_foreign_domain_is_looked_up_once_and_cached():
    directory = FakeDirectory([FABRIKAM])
    tenants = resolver(directory)
    assert {tenants.resolve_tenant(d) for d in ["Fabrikam.com", "fabrikam.com."] * 50} == {FABRIKAM}
    assert tenants.lookups == 1
    assert directory.calls == ["fabrikam.com"]


def test_a_cached_tenant_expires_after_its_ttl():
    clock, directory = FakeClock(), FakeDirectory([FABRIKAM])
    tenants = resolver(directory, ttl_seconds=3600, clock=clock)
    tenants.resolve_tenant("fabrikam.com")
    clock.now += 3599
    tenants.resolve_tenant("fabrikam.com")
    assert tenants.lookups == 1
    clock.now += 1
    tenants.resolve_tenant("fabrikam.com")
    assert tenants.lookups == 2


def test_an_unknown_domain_is_refused_and_cached_for_the_negative_ttl():
    clock = FakeClock()
    tenants = resolver(ttl_seconds=3600, negative_ttl_seconds=300, clock=clock)
    for _ in range(3):
        with pytest.raises(UnknownDomainError) as raised:
            tenants.resolve_tenant("Example.org")
        assert str(raised.value) == "domain example.org belongs to no Entra tenant"
    assert tenants.lookups == 1
    clock.now += 300
    with pytest.raises(UnknownDomainError):
        tenants.resolve_tenant("example.org")
    assert tenants.lookups == 2


def test_lookup_errors_are_passed_on_and_not_cached():
    directory = FakeDirectory([FABRIKAM], error=TransientError("throttled", retry_after=5))
    tenants = resolver(directory)
    with pytest.raises(TransientError, match="throttled"):
        tenants.resolve_tenant("fabrikam.com")
    directory.error = None
    assert tenants.resolve_tenant("fabrikam.com") == FABRIKAM
    assert tenants.lookups == 2


def test_unicode_and_idna_spellings_of_a_domain_are_the_same_domain():
    directory = FakeDirectory([BUECHER])
    tenants = resolver(directory, home_domains=["HÖME.example"])
    assert tenants.resolve_tenant("BÜCHER.example") == tenants.resolve_tenant("xn--bcher-kva.example") == BUECHER
    assert directory.calls == ["xn--bcher-kva.example"]
    assert tenants.resolve_tenant("xn--hme-sna.example").tenant_id == HOME_ID


@pytest.mark.parametrize("domain, normalized", [
    ("Contoso.COM", "contoso.com"), (" contoso.com. ", "contoso.com"),
    ("BÜCHER.example", "xn--bcher-kva.example"), ("straße.de", "xn--strae-oqa.de"),
])
def test_normalize_domain(domain, normalized):
    assert normalize_domain(domain) == normalized


@pytest.mark.parametrize("domain", ["", "contoso", "a..b", "-a.com", "a_b.com", "not a domain", "1.2.3.4", "😀.com"])
def test_normalize_domain_refuses_what_is_no_domain_name(domain):
    with pytest.raises(PrincipalError, match="is not a domain name"):
        normalize_domain(domain)


def test_split_upn_keeps_the_local_part_and_normalizes_the_domain():
    assert split_upn(" Bob.Smith@FABRIKAM.com ") == ("Bob.Smith", "fabrikam.com")
    with pytest.raises(PrincipalError, match=r"^'bob' is not a user principal name \(name@domain\)$"):
        split_upn("bob")


@pytest.mark.parametrize("upn, home", [
    ("alice_fabrikam.com#EXT#@contoso.onmicrosoft.com", "alice@fabrikam.com"),
    ("first_last_fabrikam.com#EXT#@contoso.onmicrosoft.com", "first_last@fabrikam.com"),
    ("Alice_Fabrikam.COM#ext#@contoso.onmicrosoft.com", "Alice@fabrikam.com"),
    ("hans_bücher.example#EXT#@contoso.onmicrosoft.com", "hans@xn--bcher-kva.example"),
    ("carol_outlook.com#EXT#@contoso.onmicrosoft.com", "carol@outlook.com"),
    ("bob@contoso.com", None),
    ("bob_smith@contoso.com", None),
])
def test_guest_home_address(upn, home):
    assert guest_home_address(upn) == home


@pytest.mark.parametrize("upn, message", [
    ("alice#EXT#@contoso.onmicrosoft.com", "guest UPN 'alice#EXT#@contoso.onmicrosoft.com' hides no home "
                                           "address: no <name>_<domain> before #EXT#"),
    ("alice_localhost#EXT#@contoso.onmicrosoft.com", "guest UPN 'alice_localhost#EXT#@contoso.onmicrosoft.com' "
                                                     "hides no home address: 'localhost' is not a domain name: "
                                                     "it needs at least two labels, like contoso.com"),
    ("not a upn", "'not a upn' is not a user principal name (name@domain)"),
])
def test_a_malformed_guest_upn_is_refused(upn, message):
    with pytest.raises(PrincipalError) as raised:
        guest_home_address(upn)
    assert str(raised.value) == message


def test_an_address_becomes_the_principal_of_its_own_tenant_as_given():
    tenants = resolver()
    guest = tenants.principal_for_address("alice@fabrikam.com", display_name="Alice")
    assert guest.fqn == f"aaduser=alice@fabrikam.com;{FABRIKAM.tenant_id}" and guest.display_name == "Alice"
    consumer = tenants.principal_for_address("carol@outlook.com")
    assert consumer.fqn == "msauser=carol@outlook.com"
    assert consumer.to_arm() == ("carol@outlook.com", "User", MSA_TENANT_ID)
    assert tenants.lookups == 1
    with pytest.raises(UnknownDomainError, match="^domain nowhere.example belongs to no Entra tenant$"):
        tenants.principal_for_address("dan@nowhere.example")


@pytest.mark.parametrize("address, reason", [
    ("admin_contoso.com#EXT#@fabrikam.com", "still holds #EXT# after one unwrapping"),
    ("admin@contoso.com", "is in the home tenant's domain contoso.com"),
])
def test_an_address_that_is_still_wrapped_or_in_the_home_tenant_is_refused(address, reason):
    with pytest.raises(PrincipalError, match=reason):
        resolver().principal_for_address(address)


def test_concurrent_callers_for_one_domain_share_one_lookup():
    directory = FakeDirectory([FABRIKAM], delay=0.2)
    tenants = resolver(directory)
    start, results = threading.Barrier(20), []

    def resolve():
        start.wait()
        results.append(tenants.resolve_tenant("fabrikam.com"))

    threads = [threading.Thread(target=resolve) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [FABRIKAM] * 20
    assert tenants.lookups == 1 and directory.calls == ["fabrikam.com"]


def test_concurrent_callers_share_the_failure_of_their_lookup():
    directory = FakeDirectory(error=TransientError("throttled"), delay=0.2)
    tenants = resolver(directory)
    start, errors = threading.Barrier(10), []

    def resolve():
        start.wait()
        try:
            tenants.resolve_tenant("fabrikam.com")
        except TransientError as error:
            errors.append(error)

    threads = [threading.Thread(target=resolve) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 10 and tenants.lookups == 1


def test_a_bad_home_tenant_configuration_lists_every_problem():
    with pytest.raises(ConfigError) as raised:
        TenantResolver(FakeDirectory(), home_tenant_id="contoso", home_domains=["contoso.com", "bad domain"])
    assert raised.value.problems == [
        "home_tenant_id: 'contoso' is not a GUID",
        "home_domains[1]: 'bad domain' is not a domain name: Codepoint U+0020 at position 4 of 'bad domain' not allowed",
    ]
