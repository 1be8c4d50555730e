"""Ownership ledger: what the app owns or grants beyond what its group mappings say.

- Adopted assignments: the app owns what it created (recognised by name, see shared.core.plan). With
  `ownership.adopt: true` it also takes over matching assignments another tool made; those keep
  their foreign name, so the ledger remembers them.
- Onboarding grants: access granted by a queue message through a profile. The group sync treats
  them as desired until they end (expire, are revoked, or their profile leaves the config), so it
  never undoes an onboarding. An ended grant's row stays until its assignment is gone: the row is
  what makes the removal an explicit instruction that the deletion guard never holds.
- Pending grants: grants of a profile that needs approval, waiting for a person. They are not
  grants yet: the sync never sees them.
- Revocations: the latest revoke per (principal, profile), so an older grant that arrives after it
  (a delayed retry, a replay from the poison queue) is recognised as stale.
- Managed scopes: every scope the config has targeted, so that a scope that leaves the config is
  still planned and gives up what the app owned there.
- Missing groups: groups Graph answered 404 for in the last run that read them; a second 404 in a
  row confirms the group is deleted.
- Exclusions: the directory objects each `exclude` entry of the config resolved to. An entry
  spelled by UPN names nobody once that person is renamed; the object it named before stays
  excluded (a fresh instance could not otherwise know whom the entry meant).

Table `syncownership`: PartitionKey = the scope; RowKey = the ARM name of an adopted assignment,
or `grant-<hash>` of (role, principal, profile) for a grant. A grant's row keeps the principal's
directory identity (`objectId`) and UPN beside its reference, so that a revoke matches it after
the user is renamed, by the new UPN or by object ID. Managed scopes are under PartitionKey
`managed-scope` (RowKey = the scope's partition), missing groups under `missing-group` (RowKey =
the object ID), pending grants under `pending` (RowKey = the pending grant's ID), revocations under
`revoked` (RowKey = `revoke-<hash>` of (principal, profile)), exclusions under `exclude` (RowKey =
`exclude-<hash>` of (entry, object)).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
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


PENDING_STATUSES = ("pending", "approved", "granted", "denied", "expired")


@dataclass(frozen=True)
class PendingGrant:
    """A grant of a profile that needs approval: what the message asked, and what became of it.

    status: pending (waiting) -> approved (released, the queue writes it) -> granted; or denied or
    expired (rejected with `decision_reason`)."""

    id: str
    principal: Principal
    profile: str
    message_id: str
    body: dict = field(compare=False)
    """The message as sent (without internal fields), released to the queue on approval."""
    requested_by: str | None
    requested: str
    """ISO 8601 time it was recorded."""
    deadline: str
    """ISO 8601 time after which it expires unless decided."""
    status: str = "pending"
    decided_by: str | None = None
    decision_reason: str | None = None

    @staticmethod
    def id_for(message_id: str, principal: Principal, profile: str) -> str:
        material = "|".join((message_id, *principal.identity, profile.casefold()))
        return "p" + hashlib.sha256(material.encode()).hexdigest()[:24]

    def past_deadline(self, now: datetime | None = None) -> bool:
        return datetime.fromisoformat(self.deadline) <= (now or datetime.now(timezone.utc))

    def decided(self, status: str, by: str | None, reason: str | None) -> "PendingGrant":
        return replace(self, status=status, decided_by=by, decision_reason=reason)

    def as_json(self) -> dict:
        return {"id": self.id, "status": self.status, "principal": self.principal.fqn,
                "principalType": self.principal.principal_type, "profile": self.profile,
                "messageId": self.message_id, "requestedBy": self.requested_by, "requested": self.requested,
                "deadline": self.deadline, "expiresAt": self.body.get("expiresAt"), "reason": self.body.get("reason"),
                "decidedBy": self.decided_by, "decisionReason": self.decision_reason}


@dataclass(frozen=True)
class Revocation:
    """The latest revoke of (principal, profile): its time, the producer's sequence if it set one,
    and the IDs of the grant messages it took away (a replay of one of them is stale)."""

    principal: Principal
    profile: str
    time: str
    sequence: int | None = None
    message_ids: tuple[str, ...] = ()

    @property
    def row_key(self) -> str:
        return revoke_key(self.principal, self.profile)


def revoke_key(principal: Principal, profile: str) -> str:
    material = "|".join((*principal.identity, profile.casefold()))
    return "revoke-" + hashlib.sha256(material.encode()).hexdigest()[:32]


class Ledger(Protocol):
    def adopted(self, scopes: Iterable[Scope]) -> frozenset[tuple[tuple[str, str], str]]: ...
    def record_adopted(self, assignments: Iterable[Assignment]) -> None: ...
    def grants(self, scopes: Iterable[Scope]) -> list[Grant]: ...
    def get_grant(self, grant: Grant) -> Grant | None: ...
    def record_grant(self, grant: Grant) -> None: ...
    def remove_grant(self, grant: Grant) -> None: ...
    def all_grants(self) -> list[Grant]: ...
    def managed_scopes(self) -> set[Scope]: ...
    def record_managed(self, scopes: Iterable[Scope]) -> None: ...
    def forget_managed(self, scopes: Iterable[Scope]) -> None: ...
    def missing_groups(self) -> set[str]: ...
    def record_missing(self, missing: Iterable[str], found: Iterable[str]) -> None: ...
    def pending(self) -> list[PendingGrant]: ...
    def get_pending(self, pending_id: str) -> PendingGrant | None: ...
    def save_pending(self, pending: PendingGrant) -> None: ...
    def revocation(self, principal: Principal, profile: str) -> Revocation | None: ...
    def record_revocation(self, revocation: Revocation) -> None: ...
    def connections(self, scopes: Iterable[Scope]) -> list[OnboardedConnection]: ...
    def record_connection(self, onboarded: OnboardedConnection) -> None: ...
    def remove_connection(self, onboarded: OnboardedConnection) -> None: ...
    def exclusions(self) -> dict[str, list[Principal]]: ...
    def remember_exclusion(self, entry: str, principals: Iterable[Principal]) -> None: ...


def exclusion_entry(reference: Principal) -> str:
    """How an `exclude` entry is remembered: its canonical reference, case-folded."""
    return reference.fqn.casefold()


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
        self.waiting: dict[str, PendingGrant] = {}
        self.revocations: dict[str, Revocation] = {}
        self.onboarded: dict[tuple[tuple[str, str], str], OnboardedConnection] = {}
        self.excluded: dict[str, dict[tuple, Principal]] = {}

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

    def get_grant(self, grant: Grant) -> Grant | None:
        return self.granted.get((grant.scope.key, grant.row_key))

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

    def pending(self) -> list[PendingGrant]:
        return sorted(self.waiting.values(), key=lambda p: (p.requested, p.id))

    def get_pending(self, pending_id: str) -> PendingGrant | None:
        return self.waiting.get(pending_id)

    def save_pending(self, pending: PendingGrant) -> None:
        self.waiting[pending.id] = pending

    def revocation(self, principal: Principal, profile: str) -> Revocation | None:
        return self.revocations.get(revoke_key(principal, profile))

    def record_revocation(self, revocation: Revocation) -> None:
        self.revocations[revocation.row_key] = revocation

    def connections(self, scopes: Iterable[Scope]) -> list[OnboardedConnection]:
        keys = {s.key for s in scopes}
        return [c for (scope_key, _), c in sorted(self.onboarded.items()) if scope_key in keys]

    def record_connection(self, onboarded: OnboardedConnection) -> None:
        self.onboarded[(onboarded.connection.scope.key, onboarded.row_key)] = onboarded

    def remove_connection(self, onboarded: OnboardedConnection) -> None:
        self.onboarded.pop((onboarded.connection.scope.key, onboarded.row_key), None)

    def exclusions(self) -> dict[str, list[Principal]]:
        return {entry: list(found.values()) for entry, found in self.excluded.items()}

    def remember_exclusion(self, entry: str, principals: Iterable[Principal]) -> None:
        self.excluded.setdefault(entry, {}).update((p.identity, p) for p in principals)


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
            **_identity(grant.principal), "profile": grant.profile, "messageId": grant.message_id,
            "expiresAt": grant.expires_at or "", "revokedAt": grant.revoked_at or "",
        })

    def get_grant(self, grant: Grant) -> Grant | None:
        entity = self._get(_partition(grant.scope), grant.row_key)
        return None if entity is None else _grant(grant.scope, entity)

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

    def pending(self) -> list[PendingGrant]:
        found = self._table().query_entities("PartitionKey eq @p", parameters={"p": _PENDING})
        return sorted((_pending(e) for e in found), key=lambda p: (p.requested, p.id))

    def get_pending(self, pending_id: str) -> PendingGrant | None:
        entity = self._get(_PENDING, pending_id)
        return None if entity is None else _pending(entity)

    def save_pending(self, pending: PendingGrant) -> None:
        self._table().upsert_entity({
            "PartitionKey": _PENDING, "RowKey": pending.id, "kind": "pending", "status": pending.status,
            **_identity(pending.principal), "profile": pending.profile, "messageId": pending.message_id,
            "body": json.dumps(pending.body, separators=(",", ":")), "requestedBy": pending.requested_by or "",
            "requested": pending.requested, "deadline": pending.deadline,
            "decidedBy": pending.decided_by or "", "decisionReason": pending.decision_reason or "",
        })

    def revocation(self, principal: Principal, profile: str) -> Revocation | None:
        entity = self._get(_REVOKED, revoke_key(principal, profile))
        if entity is None:
            return None
        sequence = entity.get("sequence")
        return Revocation(principal, profile, entity["time"], None if sequence in (None, "") else int(sequence),
                          tuple(json.loads(entity.get("messageIds") or "[]")))

    def record_revocation(self, revocation: Revocation) -> None:
        self._table().upsert_entity({
            "PartitionKey": _REVOKED, "RowKey": revocation.row_key, "kind": "revoke",
            "principal": revocation.principal.fqn, "profile": revocation.profile, "time": revocation.time,
            # A producer's sequence may exceed Int32; stored as text, it compares after int().
            "sequence": "" if revocation.sequence is None else str(revocation.sequence),
            "messageIds": json.dumps(list(revocation.message_ids)),
        })

    def _get(self, partition: str, row_key: str):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._table().get_entity(partition, row_key)
        except ResourceNotFoundError:
            return None

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

    def exclusions(self) -> dict[str, list[Principal]]:
        found: dict[str, list[Principal]] = {}
        for e in self._table().query_entities("PartitionKey eq @p", parameters={"p": _EXCLUDE}):
            found.setdefault(e["entry"], []).append(_principal(e))
        return found

    def remember_exclusion(self, entry: str, principals: Iterable[Principal]) -> None:
        for p in principals:
            row = "exclude-" + hashlib.sha256(f"{entry}|{'|'.join(p.identity)}".encode()).hexdigest()[:32]
            self._table().upsert_entity({"PartitionKey": _EXCLUDE, "RowKey": row, "kind": "exclude",
                                         "entry": entry, **_identity(p)})

    def record_adopted(self, assignments: Iterable[Assignment]) -> None:
        for a in assignments:
            self._table().upsert_entity({
                "PartitionKey": _partition(a.scope), "RowKey": a.name.casefold(), "kind": "adopted",
                "cluster": a.scope.cluster, "database": a.scope.database or "", "role": a.role,
                "principal": a.principal.fqn,
            })


_PENDING, _REVOKED, _EXCLUDE = "pending", "revoked", "exclude"  # a scope's partition is 32 hex digits: never these


def _partition(scope: Scope) -> str:
    return hashlib.sha256("|".join(scope.key).encode()).hexdigest()[:32]


def _grant(scope: Scope, e) -> Grant:
    return Grant(scope, e["role"], _principal(e), e["profile"], e["messageId"],
                 e.get("expiresAt") or None, e.get("revokedAt") or None)


def _identity(principal: Principal) -> dict[str, str]:
    """A row's principal: its reference, and its directory identity and names when known."""
    return {"principal": principal.fqn, "objectId": principal.object_id or "", "upn": principal.upn or "",
            "displayName": principal.display_name or ""}


def _principal(entity: dict) -> Principal:
    """A grant or pending row's principal with its directory identity (rows written before it was kept have none)."""
    reference = parse_principal(entity["principal"])
    return Principal(reference.kind, reference.identifier, reference.tenant,
                     display_name=entity.get("displayName") or None, object_id=entity.get("objectId") or None,
                     upn=entity.get("upn") or None)


def _pending(e) -> PendingGrant:
    return PendingGrant(e["RowKey"], _principal(e), e["profile"], e["messageId"], json.loads(e["body"]),
                        e.get("requestedBy") or None, e["requested"], e["deadline"], e["status"],
                        e.get("decidedBy") or None, e.get("decisionReason") or None)
