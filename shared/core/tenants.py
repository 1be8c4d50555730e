"""Tenants: which Entra tenant a user's domain belongs to, and how Kusto must name the user.

A member's UPN names its domain; a guest's UPN (``alice_fabrikam.com#EXT#@contoso.onmicrosoft.com``)
holds the address it was invited with, ``alice@fabrikam.com`` (often, not always, its home UPN),
which is unwrapped once and only once. Consumer domains (outlook.com, hotmail.co.uk, ...)
belong to Microsoft accounts, which Kusto names ``msauser=<UPN>`` with no tenant. Every other
domain is resolved to its tenant through `TenantLookup` (Graph's
findTenantInformationByDomainName), which `TenantResolver` caches and de-duplicates.
Pure apart from that Protocol: no I/O, no SDK.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from shared.core.errors import ConfigError, PrincipalError, UnknownDomainError
from shared.core.principals import (MSA_TENANT_ID, Principal, PrincipalKind, is_guid, normalize_domain,
                               split_upn)

__all__ = ["CONSUMER_DOMAINS", "TenantInfo", "TenantLookup", "TenantResolver", "guest_home_address",
           "is_consumer_domain", "normalize_domain", "split_upn"]

# Mailbox domains of Microsoft (consumer) accounts. Sources, merged:
# - Mozilla Thunderbird's ISPDB, thunderbird/autoconfig ispdb/hotmail.com.xml (the domains served by
#   Outlook.com; its MX host olc.protection.outlook.com is left out, being no mailbox domain);
# - validator.js, src/lib/normalizeEmail.js `outlookdotcom_domains` (after Microsoft's 2013
#   announcement of Outlook.com's international domains), which adds passport.com and a few more.
# Incomplete by nature: a consumer domain missing here is looked up in Graph, finds no tenant
# and raises UnknownDomainError, so the gap shows rather than granting the wrong principal.
CONSUMER_DOMAINS: frozenset[str] = frozenset("""
    hotmail.com live.com msn.com outlook.com passport.com windowslive.com livemail.tw
    hotmail.at hotmail.be hotmail.ca hotmail.cl hotmail.cz hotmail.de hotmail.dk hotmail.es
    hotmail.fi hotmail.fr hotmail.gr hotmail.hu hotmail.id hotmail.ie hotmail.in hotmail.it
    hotmail.jp hotmail.kr hotmail.lt hotmail.lv hotmail.my hotmail.nl hotmail.no hotmail.ph
    hotmail.pt hotmail.rs hotmail.sa hotmail.se hotmail.sg hotmail.sk
    hotmail.co.id hotmail.co.il hotmail.co.in hotmail.co.jp hotmail.co.kr hotmail.co.nz
    hotmail.co.th hotmail.co.uk hotmail.co.za
    hotmail.com.ar hotmail.com.au hotmail.com.br hotmail.com.gr hotmail.com.hk hotmail.com.mx
    hotmail.com.pe hotmail.com.tr hotmail.com.tw hotmail.com.vn
    live.at live.be live.ca live.cl live.cn live.de live.dk live.es live.eu live.fi live.fr
    live.hk live.ie live.in live.it live.jp live.nl live.no live.ru live.se
    live.co.jp live.co.kr live.co.uk live.co.za
    live.com.ar live.com.au live.com.mx live.com.my live.com.ph live.com.pt live.com.sg
    outlook.at outlook.be outlook.cl outlook.cz outlook.de outlook.dk outlook.es outlook.fr
    outlook.hu outlook.id outlook.ie outlook.in outlook.it outlook.jp outlook.kr outlook.lv
    outlook.my outlook.ph outlook.pt outlook.sa outlook.sg outlook.sk
    outlook.co.id outlook.co.il outlook.co.nz outlook.co.th
    outlook.com.ar outlook.com.au outlook.com.br outlook.com.gr outlook.com.pe outlook.com.tr
    outlook.com.vn
""".split())

# Local parts may contain '_', domains may not: the last '_' before #EXT# splits the address.
_GUEST_LOCAL = re.compile(r"(?P<local>.+)_(?P<domain>[^_]+)#EXT#", re.IGNORECASE)


def is_consumer_domain(domain: str) -> bool:
    """True if `domain` (any case, Unicode or IDNA form) is a Microsoft consumer account domain."""
    return normalize_domain(domain) in CONSUMER_DOMAINS


def guest_home_address(upn: str) -> str | None:
    """The home address of a B2B guest UPN, or None if `upn` is not a guest's.

    'alice_fabrikam.com#EXT#@contoso.onmicrosoft.com' gives 'alice@fabrikam.com'. Raises
    PrincipalError if `upn` is no UPN, or is marked #EXT# but hides no address.
    """
    local, _ = split_upn(upn)
    if "#ext#" not in local.lower():
        return None
    match = _GUEST_LOCAL.fullmatch(local)
    if match is None:
        raise PrincipalError(f"guest UPN {upn.strip()!r} hides no home address: "
                             "no <name>_<domain> before #EXT#")
    try:
        domain = normalize_domain(match["domain"])
    except PrincipalError as error:
        raise PrincipalError(f"guest UPN {upn.strip()!r} hides no home address: {error}") from None
    return f"{match['local']}@{domain}"


@dataclass(frozen=True)
class TenantInfo:
    """An Entra tenant as Graph describes it; MSA_TENANT_ID with is_msa for consumer accounts."""

    tenant_id: str
    display_name: str | None = None
    default_domain: str | None = None
    is_msa: bool = False


class TenantLookup(Protocol):
    """The directory query behind TenantResolver (Graph findTenantInformationByDomainName)."""

    def find_tenant_by_domain(self, domain: str) -> TenantInfo | None:
        """The tenant that owns `domain` (normalized), or None if none does.

        Raises TransientError when throttled or when the service fails.
        """
        ...


@dataclass
class _Flight:
    """One lookup in progress; callers asking for the same domain wait for its outcome."""

    done: threading.Event = field(default_factory=threading.Event)
    info: TenantInfo | None = None
    error: BaseException | None = None


class TenantResolver:
    """Resolves domains to tenants, and people of other tenants to Kusto principals.

    Consumer and home domains are answered without a lookup. Other domains are looked up once
    and cached for `ttl_seconds`; a domain that belongs to no tenant is cached for
    `negative_ttl_seconds` (shorter, so a newly verified domain is picked up soon). Errors are
    not cached. Thread-safe: concurrent callers for the same uncached domain share one lookup.
    """

    def __init__(self, lookup: TenantLookup, *, home_tenant_id: str, home_domains: Iterable[str] = (),
                 ttl_seconds: float = 3600.0, negative_ttl_seconds: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        problems = [] if is_guid(home_tenant_id) else [f"home_tenant_id: {home_tenant_id!r} is not a GUID"]
        domains = []
        for index, domain in enumerate(home_domains):
            try:
                domains.append(normalize_domain(domain))
            except PrincipalError as error:
                problems.append(f"home_domains[{index}]: {error}")
        if problems:
            raise ConfigError(problems, source="tenant resolver")
        self._lookup = lookup
        self._home = TenantInfo(home_tenant_id.lower(), default_domain=domains[0] if domains else None)
        self._home_domains = frozenset(domains)
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, TenantInfo | None]] = {}  # domain -> (expires at, tenant)
        self._flights: dict[str, _Flight] = {}
        self._lookups = 0

    @property
    def lookups(self) -> int:
        """How many times the lookup has been called."""
        return self._lookups

    def resolve_tenant(self, domain: str) -> TenantInfo:
        """The tenant that owns `domain`.

        Raises PrincipalError for an invalid domain, UnknownDomainError when no tenant owns it,
        and whatever the lookup raises (TransientError) when it fails.
        """
        name = normalize_domain(domain)
        if name in CONSUMER_DOMAINS:
            return TenantInfo(MSA_TENANT_ID, "Microsoft Account", name, is_msa=True)
        if name in self._home_domains:
            return self._home
        info = self._cached_lookup(name)
        if info is None:
            raise UnknownDomainError(f"domain {name} belongs to no Entra tenant")
        return info

    def _cached_lookup(self, domain: str) -> TenantInfo | None:
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None and cached[0] > self._clock():
                return cached[1]
            flight = self._flights.get(domain)
            leader = flight is None
            if leader:
                flight = self._flights[domain] = _Flight()
                self._lookups += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.info
        try:
            flight.info = self._lookup.find_tenant_by_domain(domain)
            ttl = self._ttl if flight.info is not None else self._negative_ttl
            with self._lock:
                self._cache[domain] = (self._clock() + ttl, flight.info)
            return flight.info
        except BaseException as error:  # the waiting callers see the same failure
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[domain]
            flight.done.set()

    def principal_for_address(self, address: str, *, display_name: str | None = None) -> Principal:
        """The Kusto principal of a person in its own tenant: aaduser=<address>;<tenant id>, or
        msauser=<address> for a Microsoft account.

        `address` is used as given, never unwrapped: a guest's invitation address has been
        unwrapped from its #EXT# UPN once already. An address that still holds #EXT#, or whose
        domain is the home tenant's, names no person elsewhere and raises PrincipalError;
        UnknownDomainError when no Entra tenant owns the domain (an email one-time-passcode guest).
        """
        local, domain = split_upn(address)
        if "#ext#" in local.lower():
            raise PrincipalError(f"address {address.strip()!r} still holds #EXT# after one unwrapping: "
                                 "it names no home identity")
        tenant = self.resolve_tenant(domain)
        canonical = f"{local}@{domain}"
        if tenant.is_msa:
            return Principal(PrincipalKind.MSA, canonical, display_name=display_name)
        if tenant.tenant_id.lower() == self._home.tenant_id:
            raise PrincipalError(f"address {canonical} is in the home tenant's domain {domain}: a guest's "
                                 "home identity is in another tenant")
        return Principal(PrincipalKind.USER, canonical, tenant.tenant_id, display_name=display_name)
