"""The one list of what the app's identity needs: Microsoft Graph application roles and ARM actions.

Everything that speaks of permissions is produced from, or tested against, these lists: the
`doctor` preflight, `docs/permissions.md`, the custom role definition and the Graph roles script
in `infra/`. Add a permission here, with why and when it is needed, and nowhere else.

Sources: Microsoft Graph permissions reference and "List group transitive members" (limited
information for member types the app may not read); Azure RBAC resource provider operations for
Microsoft.Kusto.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Permission:
    """One Graph app role or ARM action, why the app needs it, and the config feature that does
    (None: always needed)."""

    name: str
    why: str
    needed_for: str | None = None


GRAPH_ROLES: tuple[Permission, ...] = (
    Permission("GroupMember.Read.All", "read groups and their transitive members"),
    Permission("User.Read.All", "read members' userPrincipalName, userType and accountEnabled; without it users come "
               "back with limited information (id and @odata.type only) and are unknown"),
    Permission("Application.Read.All", "read service principals (app members, resolving app IDs); without it app "
               "members come back with limited information and are unknown"),
    Permission("CrossTenantInformation.ReadBasic.All", "findTenantInformationByDomainName: a guest's or a foreign "
               "user's home tenant from its domain", needed_for="guests: home, or principals of other tenants"),
    Permission("Member.Read.Hidden", "list the members of hidden-membership groups", needed_for="hidden-membership groups"),
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


def graph_role_names() -> tuple[str, ...]:
    return tuple(p.name for p in GRAPH_ROLES)


def arm_action_names() -> tuple[str, ...]:
    return tuple(p.name for p in ARM_ACTIONS)
