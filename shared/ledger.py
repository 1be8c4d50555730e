"""Ownership ledger: assignments the app owns although it did not name them.

The app owns what it created (recognised by name, see shared.plan). With `ownership.adopt: true`
it also takes over matching assignments that another tool made; those keep their foreign name,
so the ledger remembers them (Table `syncownership`, PartitionKey = scope, RowKey = ARM name).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Protocol

from shared.plan import Assignment
from shared.scopes import Scope

TABLE = "syncownership"


class Ledger(Protocol):
    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]: ...
    def record_adopted(self, assignments: Iterable[Assignment]) -> None: ...


class MemoryLedger:
    def __init__(self) -> None:
        self.entries: set[tuple[tuple[str, str], str]] = set()

    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]:
        keys = {s.key for s in scopes}
        return frozenset(e for e in self.entries if e[0] in keys)

    def record_adopted(self, assignments: Iterable[Assignment]) -> None:
        self.entries |= {(a.scope.key, a.name.casefold()) for a in assignments}


class TableLedger:
    """The ledger in Azure Table storage (Azurite locally)."""

    def __init__(self, table_client):
        self._table = table_client
        self._ready = False

    @classmethod
    def from_service(cls, service_client) -> "TableLedger":
        return cls(service_client.get_table_client(TABLE))

    def _ensure(self) -> None:
        if not self._ready:
            from azure.core.exceptions import ResourceExistsError

            try:
                self._table.create_table()
            except ResourceExistsError:
                pass
            self._ready = True

    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]:
        self._ensure()
        found = set()
        for scope in scopes:
            for entity in self._table.query_entities("PartitionKey eq @p", parameters={"p": _partition(scope)}):
                found.add((scope.key, entity["RowKey"]))
        return frozenset(found)

    def record_adopted(self, assignments: Iterable[Assignment]) -> None:
        self._ensure()
        for a in assignments:
            self._table.upsert_entity({
                "PartitionKey": _partition(a.scope), "RowKey": a.name.casefold(), "kind": "adopted",
                "cluster": a.scope.cluster, "database": a.scope.database or "", "role": a.role,
                "principal": a.principal.fqn,
            })


def _partition(scope: Scope) -> str:
    return hashlib.sha256("|".join(scope.key).encode()).hexdigest()[:32]
