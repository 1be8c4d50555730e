"""Where an assignment lives: a Kusto cluster, or one database of it, and the roles each allows.

A cluster is named by its ARM resource ID. ARM treats the ID case-insensitively, so scopes compare
on a case-folded key while keeping the casing the operator wrote for display.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.core.errors import PrincipalError

CLUSTER_ROLES = ("AllDatabasesAdmin", "AllDatabasesViewer", "AllDatabasesMonitor")
DATABASE_ROLES = ("Admin", "Ingestor", "Monitor", "User", "UnrestrictedViewer", "Viewer")
ADMIN_ROLES = frozenset({"AllDatabasesAdmin", "Admin"})

_CLUSTER_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.Kusto/clusters/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


class ScopeError(PrincipalError):
    """A cluster resource ID or database scope is malformed."""


@dataclass(frozen=True)
class Scope:
    """A cluster (database is None) or one database of a cluster."""

    cluster: str
    database: str | None = None
    subscription_id: str = field(init=False, compare=False, repr=False)
    resource_group: str = field(init=False, compare=False, repr=False)
    cluster_name: str = field(init=False, compare=False, repr=False)
    key: tuple[str, str] = field(init=False, compare=False, repr=False)
    """Identity for comparisons: ARM names are case-insensitive (computed once)."""

    def __post_init__(self) -> None:
        match = _CLUSTER_ID.match(self.cluster.strip().rstrip("/"))
        if not match:
            raise ScopeError(
                f"'{self.cluster}' is not a Kusto cluster resource ID "
                "(/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Kusto/clusters/<name>)"
            )
        if self.database is not None and not self.database.strip():
            raise ScopeError(f"empty database name for cluster '{self.cluster}'")
        sub, rg, name = match["sub"], match["rg"], match["name"]
        canonical = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kusto/clusters/{name}"
        object.__setattr__(self, "cluster", canonical)
        object.__setattr__(self, "subscription_id", sub)
        object.__setattr__(self, "resource_group", rg)
        object.__setattr__(self, "cluster_name", name)
        if self.database is not None:
            object.__setattr__(self, "database", self.database.strip())
        object.__setattr__(self, "key", (canonical.casefold(), (self.database or "").casefold()))

    @property
    def cluster_key(self) -> str:
        return self.cluster.casefold()

    @property
    def roles(self) -> tuple[str, ...]:
        return CLUSTER_ROLES if self.database is None else DATABASE_ROLES

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: "Scope") -> bool:
        return self.key < other.key

    def __str__(self) -> str:
        return self.cluster_name if self.database is None else f"{self.cluster_name}/{self.database}"

    def as_json(self) -> dict[str, str | None]:
        return {"cluster": self.cluster, "database": self.database}


def canonical_role(scope: Scope, role: str) -> str | None:
    """The role's exact spelling for this scope, or None when the scope does not have it."""
    wanted = role.strip().casefold()
    return next((r for r in scope.roles if r.casefold() == wanted), None)
