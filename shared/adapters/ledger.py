"""Ownership ledger: what the app owns or grants beyond what its group mappings say.

- Adopted assignments: the app owns what it created (recognised by name, see shared.core.plan). With
  `ownership.adopt: true` it also takes over matching assignments another tool made; those keep
  their foreign name, so the ledger remembers them.
- Onboarding grants: access granted by a queue message through a profile. The group sync treats
  them as desired until they end (expire, are revoked, or their profile leaves the config), so it
  never undoes an onboarding. An ended grant's row stays until its assignment is gone: the row is
  what makes the removal an explicit instruction that the deletion guard never holds.
- Managed scopes: every scope the config has targeted, so that a scope that leaves the config is
  still planned and gives up what the app owned there.
- Missing groups: groups Graph answered 404 for in the last run that read them; a second 404 in a
  row confirms the group is deleted.

Table `syncownership`: PartitionKey = the scope; RowKey = the ARM name of an adopted assignment,
or `grant-<hash>` of (role, principal, profile) for a grant. Managed scopes are under PartitionKey
`managed-scope` (RowKey = the scope's partition), missing groups under `missing-group` (RowKey =
the object ID).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Protocol

from shared.core.connections import DataConnection
from shared.core.plan import Assignment
from shared.core.principals import Principal, parse_principal
from shared.core.scopes import Scope
from shared.adapters.tables import LazyTable

TABLE = "syncownership"


@dataclass(frozen=True)
class Grant:
    """Access granted by an onboarding message: `role` on `scope` for `principal`, via `profile`."""

    scope: Scope
    role: str
    principal: Principal
    profile: str
    message_id: str
    expires_at: str | None = None  # ISO 8601 with a time zone; None = never
    revoked_at: str | None = None  # set by a revoke; the row goes once the assignment is gone

    @property
    def row_key(self) -> str:
        material = "|".join((self.role.casefold(), *self.principal.key, self.profile.casefold()))
        return "grant-" + hashlib.sha256(material.encode()).hexdigest()[:32]

    def expired(self, now: datetime | None = None) -> bool:
        if not self.expires_at:
            return False
        return datetime.fromisoformat(self.expires_at) <= (now or datetime.now(timezone.utc))

    def ended(self, now: datetime | None = None) -> bool:
        """Expired or revoked: the app removes the assignment, as an explicit instruction."""
        return bool(self.revoked_at) or self.expired(now)

    def ended_reason(self) -> str:
        how = f"revoked {self.revoked_at}" if self.revoked_at else f"expired {self.expires_at}"
        return f"onboarding grant {how} (profile {self.profile}, message {self.message_id}); explicit, never held"


class Ledger(Protocol):
    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]: ...
    def record_adopted(self, assignments: Iterable[Assignment]) -> None: ...
    def grants(self, scopes: Iterable[Scope]) -> list[Grant]: ...
    def record_grant(self, grant: Grant) -> None: ...
    def remove_grant(self, grant: Grant) -> None: ...
    def all_grants(self) -> list[Grant]: ...
    def managed_scopes(self) -> set[Scope]: ...
    def record_managed(self, scopes: Iterable[Scope]) -> None: ...
    def forget_managed(self, scopes: Iterable[Scope]) -> None: ...
    def missing_groups(self) -> set[str]: ...
    def record_missing(self, missing: Iterable[str], found: Iterable[str]) -> None: ...
    def connections(self, scopes: Iterable[Scope]) -> list[OnboardedConnection]: ...
    def record_connection(self, onboarded: OnboardedConnection) -> None: ...
    def remove_connection(self, onboarded: OnboardedConnection) -> None: ...


@dataclass(frozen=True)
class OnboardedConnection:
    """A data connection made by an onboarding message through a profile's template: declared, like
    the config's, until the profile is revoked for `principal` (its fqn)."""

    connection: DataConnection
    profile: str
    principal: str
    message_id: str

    @property
    def row_key(self) -> str:
        return "connection-" + self.connection.name.casefold()


class MemoryLedger:
    def __init__(self) -> None:
        self.entries: set[tuple[tuple[str, str], str]] = set()
        self.granted: dict[tuple[tuple[str, str], str], Grant] = {}
        self.managed: set[Scope] = set()
        self.missing: set[str] = set()
        self.onboarded: dict[tuple[tuple[str, str], str], OnboardedConnection] = {}

    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]:
        keys = {s.key for s in scopes}
        return frozenset(e for e in self.entries if e[0] in keys)

    def record_adopted(self, assignments: Iterable[Assignment]) -> None:
        self.entries |= {(a.scope.key, a.name.casefold()) for a in assignments}

    def grants(self, scopes: Iterable[Scope]) -> list[Grant]:
        keys = {s.key for s in scopes}
        return [g for (scope_key, _), g in sorted(self.granted.items()) if scope_key in keys]

    def record_grant(self, grant: Grant) -> None:
        self.granted[(grant.scope.key, grant.row_key)] = grant

    def remove_grant(self, grant: Grant) -> None:
        self.granted.pop((grant.scope.key, grant.row_key), None)

    def all_grants(self) -> list[Grant]:
        return [g for _, g in sorted(self.granted.items())]

    def managed_scopes(self) -> set[Scope]:
        return set(self.managed)

    def record_managed(self, scopes: Iterable[Scope]) -> None:
        self.managed |= set(scopes)

    def forget_managed(self, scopes: Iterable[Scope]) -> None:
        self.managed -= set(scopes)

    def missing_groups(self) -> set[str]:
        return set(self.missing)

    def record_missing(self, missing: Iterable[str], found: Iterable[str]) -> None:
        self.missing = (self.missing - {i.casefold() for i in found}) | {i.casefold() for i in missing}

    def connections(self, scopes: Iterable[Scope]) -> list[OnboardedConnection]:
        keys = {s.key for s in scopes}
        return [c for (scope_key, _), c in sorted(self.onboarded.items()) if scope_key in keys]

    def record_connection(self, onboarded: OnboardedConnection) -> None:
        self.onboarded[(onboarded.connection.scope.key, onboarded.row_key)] = onboarded

    def remove_connection(self, onboarded: OnboardedConnection) -> None:
        self.onboarded.pop((onboarded.connection.scope.key, onboarded.row_key), None)


class TableLedger:
    """The ledger in Azure Table storage (Azurite locally)."""

    def __init__(self, table_client):
        self._table = LazyTable(table_client)

    @classmethod
    def from_service(cls, service_client) -> "TableLedger":
        return cls(service_client.get_table_client(TABLE))

    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]:
        found = set()
        for scope in scopes:
            query = "PartitionKey eq @p and kind eq 'adopted'"
            for entity in self._table().query_entities(query, parameters={"p": _partition(scope)}):
                found.add((scope.key, entity["RowKey"]))
        return frozenset(found)

    def grants(self, scopes: Iterable[Scope]) -> list[Grant]:
        found = []
        for scope in scopes:
            query = "PartitionKey eq @p and kind eq 'grant'"
            for e in self._table().query_entities(query, parameters={"p": _partition(scope)}):
                found.append(_grant(scope, e))
        return found

    def all_grants(self) -> list[Grant]:
        return [_grant(Scope(e["cluster"], e["database"] or None), e)
                for e in self._table().query_entities("kind eq 'grant'")]

    def record_grant(self, grant: Grant) -> None:
        self._table().upsert_entity({
            "PartitionKey": _partition(grant.scope), "RowKey": grant.row_key, "kind": "grant",
            "cluster": grant.scope.cluster, "database": grant.scope.database or "", "role": grant.role,
            "principal": grant.principal.fqn, "profile": grant.profile, "messageId": grant.message_id,
            "expiresAt": grant.expires_at or "", "revokedAt": grant.revoked_at or "",
        })

    def managed_scopes(self) -> set[Scope]:
        return {Scope(e["cluster"], e["database"] or None)
                for e in self._table().query_entities("PartitionKey eq 'managed-scope'")}

    def record_managed(self, scopes: Iterable[Scope]) -> None:
        for scope in scopes:
            self._table().upsert_entity({"PartitionKey": "managed-scope", "RowKey": _partition(scope),
                                         "kind": "managed-scope", "cluster": scope.cluster,
                                         "database": scope.database or ""})

    def forget_managed(self, scopes: Iterable[Scope]) -> None:
        for scope in scopes:
            self._table().delete_entity("managed-scope", _partition(scope))

    def missing_groups(self) -> set[str]:
        return {e["RowKey"] for e in self._table().query_entities("PartitionKey eq 'missing-group'")}

    def record_missing(self, missing: Iterable[str], found: Iterable[str]) -> None:
        for group_id in found:
            self._table().delete_entity("missing-group", group_id.casefold())
        for group_id in missing:
            self._table().upsert_entity({"PartitionKey": "missing-group", "RowKey": group_id.casefold(),
                                         "kind": "missing-group"})

    def remove_grant(self, grant: Grant) -> None:
        self._table().delete_entity(_partition(grant.scope), grant.row_key)

    def connections(self, scopes: Iterable[Scope]) -> list[OnboardedConnection]:
        found = []
        for scope in scopes:
            query = "PartitionKey eq @p and kind eq 'connection'"
            for e in self._table().query_entities(query, parameters={"p": _partition(scope)}):
                connection = DataConnection(scope, e["name"], e["connectionKind"],
                                            tuple(sorted(json.loads(e["properties"]).items())))
                found.append(OnboardedConnection(connection, e["profile"], e["principal"], e["messageId"]))
        return found

    def record_connection(self, onboarded: OnboardedConnection) -> None:
        c = onboarded.connection
        self._table().upsert_entity({
            "PartitionKey": _partition(c.scope), "RowKey": onboarded.row_key, "kind": "connection",
            "cluster": c.scope.cluster, "database": c.scope.database or "", "name": c.name, "connectionKind": c.kind,
            "properties": json.dumps(dict(c.properties), sort_keys=True), "profile": onboarded.profile,
            "principal": onboarded.principal, "messageId": onboarded.message_id,
        })

    def remove_connection(self, onboarded: OnboardedConnection) -> None:
        self._table().delete_entity(_partition(onboarded.connection.scope), onboarded.row_key)

    def record_adopted(self, assignments: Iterable[Assignment]) -> None:
        for a in assignments:
            self._table().upsert_entity({
                "PartitionKey": _partition(a.scope), "RowKey": a.name.casefold(), "kind": "adopted",
                "cluster": a.scope.cluster, "database": a.scope.database or "", "role": a.role,
                "principal": a.principal.fqn,
            })


def _grant(scope: Scope, e) -> Grant:
    return Grant(scope, e["role"], parse_principal(e["principal"]), e["profile"], e["messageId"],
                 e.get("expiresAt") or None, e.get("revokedAt") or None)


def _partition(scope: Scope) -> str:
    return hashlib.sha256("|".join(scope.key).encode()).hexdigest()[:32]
