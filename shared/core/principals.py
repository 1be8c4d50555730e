"""Principals: who a Kusto grant names, in Kusto's reference syntax and in ARM's triple.

Kusto names a principal with a reference such as ``aaduser=bob@fabrikam.com;<tenant>``,
``aadgroup=<object id>;<tenant>``, ``aadapp=<app id>;<tenant>`` or ``msauser=carol@outlook.com``.
ARM stores the same grant as (principalId, principalType, tenantId). `Principal` holds one
principal in a canonical form, so that two spellings of the same reference compare equal:

- prefixes and GUIDs are lower-case;
- tenant names and the domain of a UPN or group email are lower-case IDNA (A-label) names;
- the local part of a UPN is kept as given (`Principal.key` casefolds it for comparisons).

Kusto accepts only security-enabled groups, so this module also classifies Graph groups.
Everything here is pure: no I/O, no SDK.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import idna

from shared.core.errors import DistributionGroupError, PrincipalError

MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
"""The tenant that Entra ID and ARM use for Microsoft (consumer) accounts."""

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
# Whitespace and control characters never belong in a UPN; ';' would break the reference.
_BAD_LOCAL_CHAR = re.compile(r"[\s\x00-\x1f\x7f;]")
_SYNTAX = "<prefix>=<identifier>[;<tenant>]"


class PrincipalKind(str, Enum):
    """The kind of a principal, named after its Kusto prefix without 'aad'/'msa'."""

    USER = "user"
    GROUP = "group"
    APP = "app"
    MSA = "msa"

    @property
    def prefix(self) -> str:
        """The Kusto reference prefix: aaduser, aadgroup, aadapp or msauser."""
        return "msauser" if self is PrincipalKind.MSA else f"aad{self.value}"


_KIND_BY_PREFIX = {kind.prefix: kind for kind in PrincipalKind}
_ARM_TYPE = {PrincipalKind.USER: "User", PrincipalKind.GROUP: "Group", PrincipalKind.APP: "App",
             PrincipalKind.MSA: "User"}
_KIND_BY_ARM_TYPE = {"user": PrincipalKind.USER, "group": PrincipalKind.GROUP, "app": PrincipalKind.APP}
# Why a tenant is needed, and the syntax that supplies one.
_NEEDS_TENANT = {
    PrincipalKind.USER: (", since Kusto cannot infer one from an object id",
                         "aaduser=<ObjectId>;<TenantId|TenantName>"),
    PrincipalKind.GROUP: (", since Kusto infers one only from a group email",
                          "aadgroup=<GroupEmail> or aadgroup=<DisplayName|ObjectId>;<TenantId|TenantName>"),
    PrincipalKind.APP: ("", "aadapp=<AppId|DisplayName>;<TenantId|TenantName>"),
}


def is_guid(text: str) -> bool:
    """True if `text` is a GUID in its usual 8-4-4-4-12 hexadecimal form (any case)."""
    return isinstance(text, str) and _GUID.fullmatch(text) is not None


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Return `domain` stripped, without its trailing dot, lower-case, in IDNA (A-label) form.

    Uses IDNA 2008 with the UTS #46 mapping, so 'BÜCHER.example' gives 'xn--bcher-kva.example'
    and 'straße.de' stays distinct from 'strasse.de'. A domain needs at least two labels and a
    non-numeric top label. Raises PrincipalError for anything else.
    """
    if not isinstance(domain, str):
        raise PrincipalError(f"{domain!r} is not a domain name")
    text = domain.strip()
    name = text[:-1] if text.endswith(".") else text
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except (UnicodeError, ValueError) as error:
        raise PrincipalError(f"{text!r} is not a domain name: {error}") from None
    labels = ascii_name.split(".")
    if len(labels) < 2 or not all(labels) or labels[-1].isdigit():
        raise PrincipalError(f"{text!r} is not a domain name: it needs at least two labels, "
                             "like contoso.com")
    return ascii_name


def split_upn(upn: str) -> tuple[str, str]:
    """Split a user principal name into (local part as given, normalized domain).

    Raises PrincipalError when `upn` is not of the form name@domain.
    """
    text = upn.strip() if isinstance(upn, str) else repr(upn)
    local, _, domain = text.partition("@")
    if text.count("@") != 1 or not local or _BAD_LOCAL_CHAR.search(local):
        raise PrincipalError(f"{text!r} is not a user principal name (name@domain)")
    try:
        return local, normalize_domain(domain)
    except PrincipalError as error:
        raise PrincipalError(f"{text!r} is not a user principal name (name@domain): {error}") from None


def _try_upn(text: str) -> str | None:
    """The canonical form of `text` if it is a UPN or email address, else None."""
    try:
        local, domain = split_upn(text)
    except PrincipalError:
        return None
    return f"{local}@{domain}"


def _canonical_tenant(tenant: str) -> str:
    if is_guid(tenant):
        return tenant.lower()
    try:
        return normalize_domain(tenant)
    except PrincipalError:
        raise PrincipalError(f"tenant {tenant!r} is neither a GUID nor a domain name") from None


def _canonical(kind: PrincipalKind, identifier: str, tenant: str | None,
               reference: str) -> tuple[str, str | None]:
    """Validate one principal and return its canonical (identifier, tenant).

    `reference` is the text quoted in error messages.
    """
    if not isinstance(identifier, str) or not isinstance(tenant, (str, type(None))):
        raise PrincipalError(f"identifier and tenant of {reference!r} must be strings")
    identifier = identifier.strip()
    if not identifier:
        raise PrincipalError(f"empty identifier in {reference!r}")
    if ";" in identifier:
        raise PrincipalError(f"identifier {identifier!r} must not contain ';'")
    if tenant is not None:
        tenant = tenant.strip()
        if not tenant:
            raise PrincipalError(f"empty tenant in {reference!r}")
        if kind is PrincipalKind.MSA:
            raise PrincipalError(f"msauser reference {reference!r} takes no tenant: msauser=<UPN>")
        tenant = _canonical_tenant(tenant)

    # An app is named by id or display name only; the others may be named by UPN or email.
    email = None if kind is PrincipalKind.APP else _try_upn(identifier)
    if email is not None:
        identifier = email
    elif is_guid(identifier) and kind is not PrincipalKind.MSA:
        identifier = identifier.lower()
    elif kind is PrincipalKind.MSA or (kind is PrincipalKind.USER and tenant is None):
        split_upn(identifier)  # raises with the precise reason
    elif kind is PrincipalKind.USER:
        raise PrincipalError(f"{identifier!r} is neither a user principal name (name@domain) "
                             "nor an object id (GUID)")

    # Kusto infers the tenant from a UPN or group email only.
    if tenant is None and email is None and kind is not PrincipalKind.MSA:
        why, syntax = _NEEDS_TENANT[kind]
        raise PrincipalError(f"{kind.prefix} reference {reference!r} needs a tenant{why}: {syntax}")
    return identifier, tenant


def _coerce_kind(kind: PrincipalKind | str) -> PrincipalKind:
    try:
        return PrincipalKind(kind)
    except ValueError:
        expected = ", ".join(k.value for k in PrincipalKind)
        raise PrincipalError(f"unknown principal kind {kind!r}; expected one of {expected}") from None


@dataclass(frozen=True)
class Principal:
    """One principal in canonical form; the constructor normalizes and validates its fields.

    `identifier` is a UPN or email, an object id, an app id, or a group or app display name.
    `tenant` is a tenant GUID or tenant domain name; None means Kusto resolves it from the UPN
    (or, for MSA, that there is none). Invalid combinations raise PrincipalError.
    """

    kind: PrincipalKind
    identifier: str
    tenant: str | None = None
    display_name: str | None = field(default=None, compare=False)
    object_id: str | None = field(default=None, compare=False)
    upn: str | None = field(default=None, compare=False)
    """The user principal name the directory showed for a user written by object ID: reports
    name the person by it, and an assignment listed without an object ID is matched by it."""
    key: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    """The reference as written, for comparisons and assignment names: (kind, casefolded
    identifier, casefolded tenant or ''); computed once, because planning compares hundreds of
    thousands of principals."""
    identity: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    """Who this is in the directory: (kind, object ID, tenant) for a user or group whose object ID
    is known, else `key` (an app's key names its app ID). UPNs change and get reused; object IDs
    and app IDs do not, so this is what the plan matches on."""

    def __post_init__(self) -> None:
        kind = _coerce_kind(self.kind)
        raw = f"{kind.prefix}={self.identifier}" + ("" if self.tenant is None else f";{self.tenant}")
        identifier, tenant = _canonical(kind, self.identifier, self.tenant, raw)
        object_id = self.object_id
        if object_id is None and kind in (PrincipalKind.USER, PrincipalKind.GROUP) and is_guid(identifier):
            object_id = identifier
        if object_id is not None:
            if not is_guid(object_id):
                raise PrincipalError(f"object id {object_id!r} of {raw!r} is not a GUID")
            object_id = object_id.lower()
        key = (kind.value, identifier.casefold(), (tenant or "").casefold())
        identity = key
        if object_id is not None and kind in (PrincipalKind.USER, PrincipalKind.GROUP):
            identity = (kind.value, object_id, key[2])
        upn = self.upn.strip() if isinstance(self.upn, str) and self.upn.strip() else None
        for name, value in (("kind", kind), ("identifier", identifier), ("tenant", tenant),
                            ("object_id", object_id), ("upn", upn), ("key", key), ("identity", identity)):
            object.__setattr__(self, name, value)

    @property
    def match_keys(self) -> frozenset[tuple[str, str, str]]:
        """Every (kind, identifier, tenant) that names this principal: as written, by object ID,
        and by UPN. Used where matching more is the safe side (exclusions, unknowns)."""
        keys = {self.key, self.identity}
        if self.object_id is not None:
            keys.add((self.kind.value, self.object_id, self.key[2]))
        if self.upn is not None:
            keys.add((self.kind.value, self.upn.casefold(), self.key[2]))
        return frozenset(keys)

    @property
    def label(self) -> str:
        """The reference, followed by the UPN or name of a principal written by ID: what a person reads."""
        name = self.upn or (self.display_name if is_guid(self.identifier) else None)
        return f"{self.fqn} ({name})" if name and name != self.identifier else self.fqn

    @property
    def fqn(self) -> str:
        """The canonical Kusto reference, e.g. 'aaduser=bob@fabrikam.com;<tenant>'."""
        tenant = "" if self.tenant is None else f";{self.tenant}"
        return f"{self.kind.prefix}={self.identifier}{tenant}"

    @property
    def principal_type(self) -> str:
        """ARM's principalType: 'User', 'Group' or 'App' (a Microsoft account is a 'User')."""
        return _ARM_TYPE[self.kind]

    def to_arm(self) -> tuple[str, str, str | None]:
        """(principalId, principalType, tenantId) for an ARM principal assignment.

        A Microsoft account gets MSA_TENANT_ID. Otherwise the tenant is passed as held, which
        may be a domain name or None: resolve it first where ARM needs a GUID.
        """
        tenant = MSA_TENANT_ID if self.kind is PrincipalKind.MSA else self.tenant
        return self.identifier, self.principal_type, tenant

    @classmethod
    def from_arm(cls, principal_id: str, principal_type: str, tenant_id: str | None, *,
                 principal_name: str | None = None, aad_object_id: str | None = None) -> Principal:
        """Read back the principal of an ARM assignment (the inverse of `to_arm`).

        principalType is matched case-insensitively; a 'User' in MSA_TENANT_ID is a Microsoft
        account. An empty tenantId counts as none. Raises PrincipalError for an unknown
        principalType or an invalid principal.
        """
        kind = _KIND_BY_ARM_TYPE.get(principal_type.casefold()) if isinstance(principal_type, str) else None
        if kind is None:
            raise PrincipalError(f"unknown principalType {principal_type!r} for principal "
                                 f"{principal_id!r}; expected App, Group or User")
        tenant = tenant_id
        if isinstance(tenant, str) and not tenant.strip():
            tenant = None
        if kind is PrincipalKind.USER and tenant is not None and tenant.lower() == MSA_TENANT_ID:
            kind, tenant = PrincipalKind.MSA, None
        return cls(kind, principal_id, tenant, display_name=principal_name, object_id=aad_object_id or None)


def parse_principal(text: str) -> Principal:
    """Parse a Kusto principal reference into a canonical Principal.

    Accepts every documented form, with case-insensitive prefixes and whitespace around the
    text and its parts ignored:
    aaduser=UPN[;Tenant], aaduser=ObjectId;Tenant, aadgroup=GroupEmail[;Tenant],
    aadgroup=DisplayName|ObjectId;Tenant, aadapp=AppId|DisplayName;Tenant, msauser=UPN,
    where Tenant is a tenant id (GUID) or a tenant domain name.
    Raises PrincipalError, and nothing else, on any other text.
    """
    if not isinstance(text, str):
        raise PrincipalError(f"a principal reference must be a string, not {type(text).__name__}")
    reference = text.strip()
    if not reference:
        raise PrincipalError("empty principal reference")
    prefix, equals, rest = reference.partition("=")
    if not equals:
        raise PrincipalError(f"missing '=' in {reference!r}: expected {_SYNTAX}, "
                             "e.g. aaduser=bob@contoso.com")
    kind = _KIND_BY_PREFIX.get(prefix.strip().lower())
    if kind is None:
        raise PrincipalError(f"unknown principal prefix {prefix.strip()!r} in {reference!r}; "
                             f"expected one of {', '.join(_KIND_BY_PREFIX)}")
    parts = rest.split(";")
    if len(parts) > 2:
        raise PrincipalError(f"more than one ';' in {reference!r}: expected {_SYNTAX}")
    identifier, tenant = parts[0], (parts[1] if len(parts) == 2 else None)
    identifier, tenant = _canonical(kind, identifier, tenant, reference)
    return Principal(kind, identifier, tenant)


class GroupKind(str, Enum):
    """The Entra group types, told apart by mailEnabled, securityEnabled and groupTypes."""

    SECURITY = "security"
    MAIL_ENABLED_SECURITY = "mail-enabled security"
    M365_SECURITY = "Microsoft 365 (security-enabled)"
    M365 = "Microsoft 365"
    DISTRIBUTION = "distribution"


def classify_group(*, mail_enabled: bool, security_enabled: bool, group_types: Sequence[str]) -> GroupKind:
    """Classify a group by Graph's flags.

    'Unified' in groupTypes makes a Microsoft 365 group (security-enabled or not); otherwise
    security-enabled groups are security or mail-enabled security groups, and a mail-enabled
    group that is not security-enabled is a distribution group. A group with neither flag fits
    no Entra group type and raises PrincipalError.
    """
    if any(t.casefold() == "unified" for t in group_types):
        return GroupKind.M365_SECURITY if security_enabled else GroupKind.M365
    if security_enabled:
        return GroupKind.MAIL_ENABLED_SECURITY if mail_enabled else GroupKind.SECURITY
    if mail_enabled:
        return GroupKind.DISTRIBUTION
    raise PrincipalError("a group that is neither mail-enabled nor security-enabled, and not "
                         "a Microsoft 365 group, fits no Entra group type")


_REJECTED = {
    GroupKind.DISTRIBUTION: "is a distribution group (mailEnabled, not securityEnabled)",
    GroupKind.M365: "is a Microsoft 365 group that is not security-enabled",
}


def ensure_security_group(group: Mapping[str, Any]) -> GroupKind:
    """Return the kind of a Graph group, or raise DistributionGroupError if Kusto refuses it.

    `group` is Graph group JSON (id, displayName, mail, mailEnabled, securityEnabled,
    groupTypes). Kusto accepts only security-enabled groups.
    """
    name = group.get("displayName") or group.get("id") or "<unnamed>"
    if group.get("mail"):
        name = f"{name} (mail {group['mail']})"
    elif group.get("displayName") and group.get("id"):
        name = f"{name} (id {group['id']})"
    try:
        kind = classify_group(mail_enabled=bool(group.get("mailEnabled")),
                              security_enabled=bool(group.get("securityEnabled")),
                              group_types=group.get("groupTypes") or ())
    except PrincipalError:
        rule = "is neither mail-enabled nor security-enabled"
    else:
        if kind not in _REJECTED:
            return kind
        rule = _REJECTED[kind]
    raise DistributionGroupError(f"group {name} {rule}; Kusto accepts only security groups")
