"""What the managed identity may do: its Microsoft Graph app roles and, per cluster, its ARM
actions; and the answers Graph and ARM give when it may not.

Graph (permissions reference and each API's permissions table):
- groups, members, transitiveMembers and groups/delta need GroupMember.Read.All (or a role that
  implies it); the members of a group with ``visibility: HiddenMembership`` also need
  Member.Read.Hidden;
- in a member collection, an object whose type the roles cannot read comes back with limited
  information: ``@odata.type`` and ``id``, every other property null ("Limited information
  returned for inaccessible member objects"). Users need User.Read.All, or User.ReadBasic.All
  for the basic profile only (displayName, givenName, surname, mail, userPrincipalName);
  service principals need Application.Read.All;
- ``GET /users`` needs User.Read.All; ``GET /users/{id}`` takes User.ReadBasic.All for the
  basic profile and refuses a ``$select`` beyond it; servicePrincipals need
  Application.Read.All; findTenantInformationByDomainName needs
  CrossTenantInformation.ReadBasic.All. A refusal is 403 ``Authorization_RequestDenied``.

ARM: an action is allowed when one of the cluster's ``actions`` matches it (``*`` wildcards,
case-insensitive) and none of its ``notActions`` does. A refusal is 403 ``AuthorizationFailed``.

The defaults are the app's documented least-privilege set, and which Graph roles include which
and how ARM matches actions come from the same module (``shared.core.permissions``), so the
emulator is as strict as Azure unless a test grants more.
"""
from __future__ import annotations

from shared.core.permissions import arm_action_names, arm_allows, graph_role_names, implied_roles

from .wire import arm_error, graph_error

DEFAULT_GRAPH_ROLES: tuple[str, ...] = graph_role_names()
DEFAULT_ARM_PERMISSIONS = {"actions": list(arm_action_names()), "notActions": []}

BASIC_USER_PROPERTIES = frozenset({"id", "displayName", "givenName", "surname", "mail", "userPrincipalName"})
READ_ROLE = {"group": "GroupMember.Read.All", "servicePrincipal": "Application.Read.All"}


class GraphAccess:
    """The Graph app roles in force for one request."""

    def __init__(self, roles):
        self.granted = implied_roles(roles)

    def has(self, role: str) -> bool:
        return role.casefold() in self.granted

    def user_level(self) -> str | None:
        """"full", "basic" or None: how much of a user the roles may read."""
        if self.has("User.Read.All"):
            return "full"
        return "basic" if self.has("User.ReadBasic.All") else None

    def can_read(self, kind: str) -> bool:
        return self.user_level() is not None if kind == "user" else self.has(READ_ROLE[kind])


def denied():
    return graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def validate_roles(value, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) and r.strip() for r in value):
        return [f"{path}: must be a list of Graph app role names (e.g. \"GroupMember.Read.All\")"]
    return []


def validate_arm_permissions(value, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: must be an object {{actions: [...], notActions: [...]}}"]
    problems = [f"{path}: unknown key '{k}'" for k in value if k not in ("actions", "notActions")]
    for key in ("actions", "notActions"):
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(a, str) and a.strip() for a in items):
            problems.append(f"{path}.{key}: must be a list of ARM actions (e.g. \"Microsoft.Kusto/Clusters/read\")")
    return problems


def allows(permissions: dict, action: str) -> bool:
    """Whether ARM permissions {actions, notActions} allow an action (the app's own rule)."""
    return arm_allows(permissions, action)


# Actions of ARM requests that the generic rule (resource type + read/write/delete/action) gets
# wrong: a name check reads the assignments or connections.
ACTION_OVERRIDES = {
    ("POST", "checkprincipalassignmentnameavailability"): "PrincipalAssignments/read",
    ("POST", "checknameavailability"): "DataConnections/read",  # under a database: data connection names
}


def arm_action(method: str, path: str) -> str | None:
    """The RBAC action of an ARM request: its resource types after ``/providers/`` and the
    verb, e.g. ``Microsoft.Kusto/clusters/databases/principalAssignments/write``."""
    low = path.lower()
    at = low.rfind("/providers/")
    if at < 0:
        return None
    parts = [p for p in path[at + len("/providers/"):].split("/") if p]
    if not parts:
        return None
    namespace, rest = parts[0], parts[1:]
    types = rest[0::2]
    if not types:
        return None
    override = ACTION_OVERRIDES.get((method.upper(), types[-1].lower()))
    if override:
        return "/".join([namespace, *types[:-1], override])
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(method.upper(), "action")
    if verb == "action" and len(rest) % 2 == 0:  # POST to a resource itself, not to an action name
        verb = "write"
    return "/".join([namespace, *types, verb])


def authorization_failed(claims: dict, action: str, scope: str):
    """ARM's 403 for an action the caller's role assignments do not allow."""
    client, oid = claims.get("appid") or claims.get("oid"), claims.get("oid")
    return arm_error(403, "AuthorizationFailed",
                     f"The client '{client}' with object id '{oid}' does not have authorization to perform action "
                     f"'{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, "
                     "please refresh your credentials.")
