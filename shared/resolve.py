"""Resolve what a person types (UPN, email, object ID, app ID, group name or mail, Kusto FQN)
into a full Principal, through the directory and the tenant resolver.

Used by the CLI's `resolve` and by onboarding. Groups are checked before anything is written:
a distribution group is refused here with the rule it breaks.
"""
from __future__ import annotations

from shared.directory import Directory, DirectoryObject
from shared.errors import NotFoundError, PrincipalError
from shared.principals import Principal, PrincipalKind, ensure_security_group, is_guid, parse_principal
from shared.tenants import TenantResolver, guest_home_address, is_consumer_domain, split_upn

_PREFIXES = ("aaduser=", "aadgroup=", "aadapp=", "msauser=")


def resolve_principal(text: str, directory: Directory, tenants: TenantResolver, home_tenant_id: str) -> Principal:
    """The Principal that `text` names; PermanentError subclasses say why when it names none."""
    text = text.strip()
    if text.lower().startswith(_PREFIXES):
        return _resolve_reference(parse_principal(text), directory, tenants, home_tenant_id)
    if is_guid(text):
        return _resolve_object_id(text, directory, tenants, home_tenant_id)
    if "@" in text:
        return _resolve_address(text, directory, tenants, home_tenant_id)
    try:
        return _group(directory.find_group(text), home_tenant_id)
    except NotFoundError:
        pass
    try:
        return _app(directory.find_service_principal(text), home_tenant_id)
    except NotFoundError:
        raise NotFoundError(f"'{text}' names no group or application (by display name)") from None


def _resolve_reference(principal: Principal, directory, tenants, home_tenant_id) -> Principal:
    tenant = principal.tenant
    in_home = tenant in (None, home_tenant_id) or (
        not is_guid(tenant) and tenants.resolve_tenant(tenant).tenant_id == home_tenant_id
    )
    if principal.kind is PrincipalKind.USER and principal.tenant is None:
        return tenants.principal_for_user(principal.identifier)
    if principal.kind is PrincipalKind.GROUP and in_home:
        return _group(directory.find_group(principal.identifier), home_tenant_id)
    if principal.kind is PrincipalKind.APP and in_home:
        return _app(directory.find_service_principal(principal.identifier), home_tenant_id)
    if principal.kind is PrincipalKind.USER and in_home:
        return _user(directory.find_user(principal.identifier), tenants, home_tenant_id)
    return principal


def _resolve_object_id(object_id: str, directory, tenants: TenantResolver, home_tenant_id: str) -> Principal:
    candidates = (
        (directory.find_user, lambda user: _user(user, tenants, home_tenant_id)),
        (directory.find_group, lambda group: _group(group, home_tenant_id)),
        (directory.find_service_principal, lambda app: _app(app, home_tenant_id)),
    )
    for find, make in candidates:
        try:
            found = find(object_id)
        except NotFoundError:
            continue
        return make(found)
    raise NotFoundError(f"no user, group or application has the ID {object_id}")


def _resolve_address(address: str, directory, tenants: TenantResolver, home_tenant_id: str) -> Principal:
    if guest_home_address(address):
        return tenants.principal_for_user(address)
    _, domain = split_upn(address)
    if is_consumer_domain(domain):
        return tenants.principal_for_user(address)
    info = tenants.resolve_tenant(domain)
    if info.tenant_id != home_tenant_id:
        return tenants.principal_for_user(address)
    try:
        return _user(directory.find_user(address), tenants, home_tenant_id)
    except NotFoundError:
        pass
    try:
        return _group(directory.find_group(address), home_tenant_id)
    except NotFoundError:
        raise NotFoundError(f"no user or group in the home tenant has the address {address}") from None


def _user(user: DirectoryObject, tenants: TenantResolver, home_tenant_id: str) -> Principal:
    """A home-tenant user object; a guest is granted in its home tenant (where the person signs in)."""
    upn = user.user_principal_name or ""
    if user.user_type == "Guest" or "#EXT#" in upn.upper():
        home = guest_home_address(upn) or user.mail
        if not home:
            raise PrincipalError(f"guest {upn} has no home address")
        return tenants.principal_for_user(home, display_name=user.display_name)
    return _user_in_home(user, home_tenant_id)


def _user_in_home(user: DirectoryObject, home_tenant_id: str) -> Principal:
    return Principal(PrincipalKind.USER, user.user_principal_name or user.id, home_tenant_id,
                     display_name=user.display_name, object_id=user.id)


def _group(group: DirectoryObject, home_tenant_id: str) -> Principal:
    ensure_security_group(group.as_group_json())
    return Principal(PrincipalKind.GROUP, group.id, home_tenant_id, display_name=group.display_name, object_id=group.id)


def _app(app: DirectoryObject, home_tenant_id: str) -> Principal:
    return Principal(PrincipalKind.APP, app.app_id or app.id, home_tenant_id,
                     display_name=app.display_name, object_id=app.id)
