"""Resolve what a person types, and what Graph returns, into the one Principal the app writes.

Every path ends in `principal_of`, so a config reference, an onboarding message and a group member
that name the same directory object become the same principal: a home-tenant user as
``aaduser=<object ID>;<tenant>`` (its UPN kept for reports), a group as
``aadgroup=<object ID>;<tenant>``, an app as ``aadapp=<app ID>;<tenant>``. A B2B guest is its
guest object in the home tenant (`guests: host`, the default); with `guests: home` it is the
address it was invited with (unwrapped once from its #EXT# UPN) in that address's tenant.

Accepted input, tried in this order:

- a Kusto reference (``aaduser=``, ``aadgroup=``, ``aadapp=``, ``msauser=``; any text that starts
  with ``<word>=`` is read as one, so a malformed reference is reported as such); a tenant given
  by domain name or GUID, or none (a UPN's domain decides), all name the same tenant;
- a GUID: a home-tenant user, group or service principal by object ID, or an application by app ID;
- an address: a UPN or email of a user, or the mail of a group. A guest UPN (``…#EXT#@…``) is the
  guest object of the home tenant; an address in a foreign tenant names the person in their home
  tenant; an address in a Microsoft consumer domain is a Microsoft account; a home-tenant
  address must exist in the directory;
- anything else: the display name of a group or of an application; a name that matches more
  than one object is refused with the candidates.

Used by the CLI's `resolve`, by onboarding, by the config's `exclude` and by the sync for group
members. Groups are checked before anything is written: a distribution group, or a Microsoft 365
group that is not security-enabled, is refused with the rule it breaks. Every failure is a
PermanentError subclass whose message says why (TransientError passes through when Graph is
throttled or down). The result always carries a tenant GUID (or no tenant, for a Microsoft
account), never a tenant domain name, since ARM needs the GUID.
"""
from __future__ import annotations

import re

from shared.adapters.directory import Directory, DirectoryObject
from shared.core.errors import NotFoundError, PermanentError, PermissionDeniedError, PrincipalError
from shared.core.permissions import role_revealing
from shared.core.principals import (Principal, PrincipalKind, ensure_security_group, is_guid,
                               parse_principal)
from shared.core.tenants import TenantResolver, guest_home_address, split_upn

__all__ = ["LimitedInformationError", "principal_of", "resolve_principal", "resolve_reference"]

_REFERENCE = re.compile(r"\s*[A-Za-z]+\s*=")


class LimitedInformationError(PermissionDeniedError):
    """Graph returned a member with only its type and ID: the app may not read that kind of object."""

    def __init__(self, member: DirectoryObject):
        role = role_revealing(member.kind)
        super().__init__(f"{member.kind} {member.id} came back from Graph with limited information (id only), so "
                         f"it is unknown: grant the app role {role} (docs/permissions.md)", permission=role)


def principal_of(obj: DirectoryObject, home_tenant_id: str, tenants: TenantResolver, *,
                 guests: str = "host") -> Principal:
    """The principal the app writes for a user, group or service principal of the home tenant.

    Raises LimitedInformationError for a member Graph showed with limited information,
    UnknownDomainError or PrincipalError for a guest with no usable home identity (`guests: home`),
    PrincipalError for any other kind of object.
    """
    home = home_tenant_id.lower()
    if obj.kind == "group":
        return Principal(PrincipalKind.GROUP, obj.id, home, display_name=obj.display_name, object_id=obj.id)
    if obj.limited or (obj.kind == "servicePrincipal" and not obj.app_id) or (
            obj.kind == "user" and not obj.user_principal_name):
        raise LimitedInformationError(obj)
    if obj.kind == "servicePrincipal":
        return Principal(PrincipalKind.APP, obj.app_id, home, display_name=obj.display_name, object_id=obj.id)
    if obj.kind != "user":
        raise PrincipalError(f"{obj.kind} {obj.id} cannot be a Kusto principal")
    if obj.is_guest and guests == "home":
        return tenants.principal_for_address(obj.home_address(), display_name=obj.display_name)
    return Principal(PrincipalKind.USER, obj.id, home, display_name=obj.display_name, object_id=obj.id,
                     upn=obj.user_principal_name)


def resolve_principal(text: str, directory: Directory, tenants: TenantResolver, home_tenant_id: str, *,
                      guests: str = "host") -> Principal:
    """The Principal that `text` names; a PermanentError subclass says why when it names none."""
    if not isinstance(text, str) or not text.strip():
        raise PrincipalError("nothing to resolve: expected a UPN, email, object ID, app ID, "
                             "group or application name, or a Kusto reference such as aaduser=bob@contoso.com")
    text = text.strip()
    resolver = _Resolver(directory, tenants, home_tenant_id.strip().lower(), guests)
    if _REFERENCE.match(text):
        return resolver.reference(parse_principal(text))
    if is_guid(text):
        return resolver.object_id(text)
    if "@" in text:
        return resolver.address(text, users=True, groups=True)
    return resolver.display_name(text)


def names_by_display_name(text: str) -> bool:
    """Whether `text` names its principal by display name, which anyone allowed to create a group
    can copy: plain text that is no GUID and no address, or a Kusto reference naming a group or
    an app by name."""
    text = text.strip() if isinstance(text, str) else ""
    if _REFERENCE.match(text):
        try:
            reference = parse_principal(text)
        except PrincipalError:
            return False
        return reference.kind in (PrincipalKind.GROUP, PrincipalKind.APP) and not (
            is_guid(reference.identifier) or "@" in reference.identifier)
    return not is_guid(text) and "@" not in text


def resolve_reference(reference: Principal, directory: Directory, tenants: TenantResolver, home_tenant_id: str, *,
                      guests: str = "host") -> Principal:
    """The Principal that an already parsed Kusto reference (a config's `exclude` entry) names."""
    return _Resolver(directory, tenants, home_tenant_id.strip().lower(), guests).reference(reference)


class _Resolver:
    """One resolution: the directory, the tenant resolver, the home tenant GUID (lower-case) and
    how guests are granted."""

    def __init__(self, directory: Directory, tenants: TenantResolver, home: str, guests: str = "host"):
        self.directory = directory
        self.tenants = tenants
        self.home = home
        self.guests = guests

    def reference(self, principal: Principal) -> Principal:
        """A parsed Kusto reference, checked against the directory when it names the home tenant."""
        if principal.kind is PrincipalKind.MSA:
            return principal
        if principal.tenant is None:
            # parse_principal allows no tenant only for a UPN or group email: its domain decides.
            return self.address(principal.identifier, users=principal.kind is PrincipalKind.USER,
                                groups=principal.kind is PrincipalKind.GROUP)
        tenant_id = self.tenant_id(principal.tenant, principal.fqn)
        if tenant_id != self.home:
            return Principal(principal.kind, principal.identifier, tenant_id)
        if principal.kind is PrincipalKind.USER:
            return self.user(self.directory.find_user(principal.identifier))
        if principal.kind is PrincipalKind.GROUP:
            return self.group(self.directory.find_group(principal.identifier))
        return self.app(self.directory.find_service_principal(principal.identifier))

    def tenant_id(self, tenant: str, reference: str) -> str:
        """The GUID of a tenant named by GUID or by one of its domains."""
        if is_guid(tenant):
            return tenant.lower()
        info = self.tenants.resolve_tenant(tenant)
        if info.is_msa:
            raise PrincipalError(f"{tenant} in {reference!r} is a Microsoft account domain, not a "
                                 "tenant: name a Microsoft account as msauser=<address>")
        return info.tenant_id.lower()

    def object_id(self, guid: str) -> Principal:
        """A home-tenant object by object ID: a user, a group, then a service principal (by app ID
        or object ID)."""
        for find, make in ((self.directory.find_user, self.user),
                           (self.directory.find_group, self.group),
                           (self.directory.find_service_principal, self.app)):
            try:
                found = find(guid)
            except NotFoundError:
                continue
            return make(found)
        raise NotFoundError(f"no user, group or service principal in the home tenant has the "
                            f"object ID or app ID {guid.lower()}")

    def address(self, address: str, *, users: bool, groups: bool) -> Principal:
        """A user by UPN or email and/or a group by mail; see the module docstring for the rules."""
        if users and guest_home_address(address) is not None:
            # A guest UPN is an object of the home tenant, whatever address it was invited with.
            return self.user(self.directory.find_user(address))
        local, domain = split_upn(address)
        canonical = f"{local}@{domain}"
        tenant = self.tenants.resolve_tenant(domain)
        if tenant.is_msa:
            if not users:
                raise PrincipalError(f"{canonical} is a Microsoft account address, not a group: "
                                     "Microsoft accounts have no groups that Kusto accepts")
            return self.tenants.principal_for_address(canonical)
        if tenant.tenant_id.lower() != self.home:
            if users:
                return self.tenants.principal_for_address(canonical)
            return Principal(PrincipalKind.GROUP, canonical, tenant.tenant_id.lower())
        if users:
            try:
                return self.user(self.directory.find_user(canonical))
            except NotFoundError:
                if not groups:
                    raise NotFoundError(f"no user in the home tenant has the UPN or mail {canonical}") from None
        try:
            return self.group(self.directory.find_group(canonical))
        except NotFoundError:
            what = "user or group" if users else "group"
            raise NotFoundError(f"no {what} in the home tenant has the address {canonical}") from None

    def display_name(self, name: str) -> Principal:
        """A group or an application by display name; a name shared by both is ambiguous."""
        found: list[tuple[str, DirectoryObject]] = []
        for kind, find in (("group", self.directory.find_group),
                           ("application", self.directory.find_service_principal)):
            try:
                found.append((kind, find(name)))
            except NotFoundError:
                continue
        if not found:
            raise NotFoundError(f"'{name}' names no group or application (by display name); "
                                "give a UPN, email, object ID, app ID or Kusto reference instead")
        if len(found) > 1:
            candidates = ", ".join(
                f"{kind} {obj.display_name} ({'app ID ' + obj.app_id if obj.app_id else 'id ' + obj.id})"
                for kind, obj in found
            )
            raise PermanentError(f"display name '{name}' matches {len(found)} objects: {candidates}; "
                                 "use an object ID, app ID or Kusto reference")
        kind, obj = found[0]
        return self.group(obj) if kind == "group" else self.app(obj)

    def user(self, user: DirectoryObject) -> Principal:
        """A home-tenant user, a guest as `guests` says (see principal_of)."""
        return principal_of(user, self.home, self.tenants, guests=self.guests)

    def group(self, group: DirectoryObject) -> Principal:
        """A home-tenant group, refused unless Kusto accepts it (security-enabled)."""
        ensure_security_group(group.as_group_json())
        return principal_of(group, self.home, self.tenants)

    def app(self, app: DirectoryObject) -> Principal:
        """A home-tenant service principal, named by its app ID as Kusto expects."""
        return principal_of(app, self.home, self.tenants)
