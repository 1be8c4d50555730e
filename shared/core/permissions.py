"""The one list of what the app's identity needs: Microsoft Graph application roles and ARM actions.

Everything that speaks of permissions is produced from, or tested against, these lists: the
`doctor` preflight, the engine's reasons when a permission is missing, `docs/permissions.md`,
the custom role definition in `infra/kusto-sync-role.json`, and the emulator's defaults. Add a
permission here, with why and when it is needed, and nowhere else.

`needed_for` names a feature of the config (a key of FEATURES) that raises the need; None means
always. Sources: Microsoft Graph permissions reference and the permissions tables of the APIs the
app calls (Get group, List group transitive members, group: delta, Get user, Get
servicePrincipal, findTenantInformationByDomainName); the permissions overview, "Limited
information returned for inaccessible member objects"; Azure RBAC resource provider operations
for Microsoft.Kusto.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Permission:
    """One Graph app role or ARM action, why the app needs it, and the config feature that does
    (None: always needed)."""

    name: str
    why: str
    needed_for: str | None = None


FEATURES = {
    "guests-home": "`guests: home`, or onboarding profiles (principals of other tenants are resolved by domain)",
    "hidden-groups": "a mapped group has hidden membership",
    "dataConnections": "`dataConnections` in the config",
    "graph-events": "GRAPH_EVENTS_TARGET (group change notifications through Event Grid)",
}
"""Config features that raise the need for a permission, and how the doctor explains them."""

GRAPH_ROLES: tuple[Permission, ...] = (
    Permission("GroupMember.Read.All", "read groups, their transitive members and groups/delta"),
    Permission("User.Read.All", "read members' userPrincipalName, userType and accountEnabled (User.ReadBasic.All "
               "lacks the last two, so guests and skipDisabledAccounts cannot work, and GET /users refuses it); "
               "without it users come back with limited information (id and @odata.type only) and are unknown"),
    Permission("Application.Read.All", "read service principals (app members, resolving app IDs); without it app "
               "members come back with limited information and are unknown"),
    Permission("CrossTenantInformation.ReadBasic.All", "findTenantInformationByDomainName: a guest's or a foreign "
               "user's home tenant from its domain", needed_for="guests-home"),
    Permission("Member.Read.Hidden", "list the members of hidden-membership groups", needed_for="hidden-groups"),
    Permission("Group.Read.All", "create, renew and reauthorize the Graph subscription on groups that sends group "
               "change events (the least privileged application permission Graph takes for it)",
               needed_for="graph-events"),
)

ARM_ACTIONS: tuple[Permission, ...] = (
    Permission("Microsoft.Kusto/Clusters/read", "read the cluster"),
    Permission("Microsoft.Kusto/Clusters/Databases/read", "read its databases"),
    Permission("Microsoft.Kusto/Clusters/PrincipalAssignments/read", "list cluster principal assignments"),
    Permission("Microsoft.Kusto/Clusters/PrincipalAssignments/write", "create cluster principal assignments"),
    Permission("Microsoft.Kusto/Clusters/PrincipalAssignments/delete", "remove owned cluster principal assignments"),
    Permission("Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/read", "list database principal assignments"),
    Permission("Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/write", "create database principal assignments"),
    Permission("Microsoft.Kusto/Clusters/Databases/PrincipalAssignments/delete",
               "remove owned database principal assignments"),
    Permission("Microsoft.Kusto/locations/operationresults/read", "poll long-running operations"),
    Permission("Microsoft.Kusto/Clusters/Databases/DataConnections/read", "list a database's data connections",
               needed_for="dataConnections"),
    Permission("Microsoft.Kusto/Clusters/Databases/DataConnections/write", "create and update declared data connections",
               needed_for="dataConnections"),
    Permission("Microsoft.Kusto/Clusters/Databases/DataConnections/delete",
               "remove owned data connections (and recreate one whose source changed)", needed_for="dataConnections"),
    Permission("Microsoft.Kusto/Clusters/Databases/DataConnectionValidation/action",
               "let Kusto check a data connection before it is written", needed_for="dataConnections"),
)

ROLE_NAME = "Kusto access sync"
ROLE_DESCRIPTION = "Lets the Kusto access sync app read clusters and manage their principal assignments and data connections."

# Graph app roles that include narrower ones (the permissions reference's "higher privileged").
GRAPH_IMPLIES: Mapping[str, tuple[str, ...]] = {
    "Directory.Read.All": ("User.Read.All", "GroupMember.Read.All", "Application.Read.All"),
    "Directory.ReadWrite.All": ("Directory.Read.All",),
    "User.Read.All": ("User.ReadBasic.All",),
    "User.ReadWrite.All": ("User.Read.All",),
    "Group.Read.All": ("GroupMember.Read.All",),
    "Group.ReadWrite.All": ("Group.Read.All",),
    "GroupMember.ReadWrite.All": ("GroupMember.Read.All",),
    "Application.ReadWrite.All": ("Application.Read.All",),
}

# What a refused (403) Graph request lacks, by the first segment of its path.
_GRAPH_ROLE_BY_PATH = {
    "groups": "GroupMember.Read.All", "users": "User.Read.All", "serviceprincipals": "Application.Read.All",
    "tenantrelationships": "CrossTenantInformation.ReadBasic.All", "directoryobjects": "User.Read.All",
    "subscriptions": "Group.Read.All",
}
# The role that would reveal a member that came back with limited information, by its kind.
_REVEALS = {"user": "User.Read.All", "servicePrincipal": "Application.Read.All", "group": "GroupMember.Read.All"}


def graph_role_names() -> tuple[str, ...]:
    return tuple(p.name for p in GRAPH_ROLES)


def arm_action_names() -> tuple[str, ...]:
    return tuple(p.name for p in ARM_ACTIONS)


def required(permissions: Iterable[Permission], features: Iterable[str]) -> tuple[Permission, ...]:
    """The permissions a config with these features needs."""
    wanted = set(features)
    return tuple(p for p in permissions if p.needed_for is None or p.needed_for in wanted)


def implied_roles(roles: Iterable[str]) -> frozenset[str]:
    """The roles and every narrower role they include, casefolded."""
    implies = {k.casefold(): v for k, v in GRAPH_IMPLIES.items()}
    out: set[str] = set()
    todo = list(roles)
    while todo:
        role = todo.pop().casefold()
        if role not in out:
            out.add(role)
            todo.extend(implies.get(role, ()))
    return frozenset(out)


def missing_graph_roles(granted: Iterable[str], features: Iterable[str] = ()) -> tuple[Permission, ...]:
    """The needed Graph roles that `granted` (a token's `roles` claim) does not cover."""
    have = implied_roles(granted)
    return tuple(p for p in required(GRAPH_ROLES, features) if p.name.casefold() not in have)


def _pattern(action: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in action.split("*")) + "$", re.IGNORECASE)


def arm_allows(permissions: Mapping[str, Iterable[str]], action: str) -> bool:
    """Whether ARM permissions ({actions, notActions}, `*` wildcards, any case) allow an action."""
    if not any(_pattern(a).match(action) for a in permissions.get("actions", ())):
        return False
    return not any(_pattern(a).match(action) for a in permissions.get("notActions", ()))


def missing_arm_actions(effective: Iterable[Mapping[str, Iterable[str]]], needed: Iterable[str]) -> tuple[str, ...]:
    """The needed actions that none of the effective permission entries (ARM's Permissions - List
    For Resource `value`) allows."""
    entries = list(effective)
    return tuple(a for a in needed if not any(arm_allows(e, a) for e in entries))


def scope_actions(database: bool) -> tuple[str, ...]:
    """The ARM actions a sync of one scope uses: list, create and remove its assignments, and
    poll the operations."""
    marker = "/clusters/databases/principalassignments/" if database else "/clusters/principalassignments/"
    return tuple(a for a in arm_action_names() if marker in a.casefold() or "/operationresults/" in a.casefold())


def graph_role_for(path: str) -> str:
    """The Graph role a refused request most likely lacks, from its path (`/v1.0/...` or not)."""
    segments = [s for s in path.split("?")[0].split("/") if s and s.casefold() != "v1.0"]
    head = re.split(r"[(]", segments[0])[0].casefold() if segments else ""
    return _GRAPH_ROLE_BY_PATH.get(head, "GroupMember.Read.All")


def role_revealing(kind: str) -> str:
    """The Graph role that would reveal a member of this kind that came back with limited information."""
    return _REVEALS.get(kind, "Directory.Read.All")


def role_definition(assignable_scopes: Iterable[str] = ("/subscriptions/<subscription-id>",)) -> dict:
    """The custom Azure role (`az role definition create --role-definition`) with ARM_ACTIONS."""
    return {
        "Name": ROLE_NAME,
        "IsCustom": True,
        "Description": ROLE_DESCRIPTION,
        "Actions": list(arm_action_names()),
        "NotActions": [],
        "DataActions": [],
        "NotDataActions": [],
        "AssignableScopes": list(assignable_scopes),
    }
