"""PURE data-connection core: the declared ingestion of a database (Event Hub, Event Grid, IoT Hub),
validated from the config and planned against what ARM lists, like the assignments are.

- A connection's identity is (database, kind, source resource ID, consumer group): Kusto refuses a
  second connection on the same source and consumer group, whatever its name.
- The app gives a connection it creates the ARM name `<prefix><name>-<hash>` (hash of the database
  and the configured name) and owns exactly the connections named so, plus those it adopted.
- A declared connection that exists under its own name and differs is an update: PATCH when only
  fields ARM lets change differ, a recreate (delete, then create) when a field ARM keeps does.
- A connection made by another tool is drift: never changed nor removed unless adopted.
- Owned connections nobody declares any more are removed, within the deletion guard.

Field names are the ARM property names (api-version 2025-02-14), in the config and on the wire.
Sources: the Azure REST API reference for Kusto data connections and its examples; Terraform
azurerm_kusto_*_data_connection for the fields that force a new resource.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, NamedTuple

from shared.core.plan import Action, Policy, action_order, action_symbol, guard_holds
from shared.core.scopes import Scope, ScopeError

KINDS = ("EventHub", "EventGrid", "IotHub")
DATA_FORMATS = ("MULTIJSON", "JSON", "CSV", "TSV", "SCSV", "SOHSV", "PSV", "TXT", "RAW", "SINGLEJSON", "AVRO",
                "TSVE", "PARQUET", "ORC", "APACHEAVRO", "W3CLOGFILE", "AZMONSTREAM")
COMPRESSIONS = ("None", "GZip")
DATABASE_ROUTINGS = ("Single", "Multi")
BLOB_EVENT_TYPES = ("Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobRenamed")

_SUB_RG = r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
RESOURCE_TYPES: dict[str, tuple[str, re.Pattern[str]]] = {
    "eventHubResourceId": ("an event hub (Microsoft.EventHub/namespaces/eventhubs)",
                           re.compile(_SUB_RG + r"Microsoft\.EventHub/namespaces/[^/]+/eventhubs/[^/]+", re.I)),
    "storageAccountResourceId": ("a storage account (Microsoft.Storage/storageAccounts)",
                                 re.compile(_SUB_RG + r"Microsoft\.Storage/storageAccounts/[^/]+", re.I)),
    "eventGridResourceId": ("an Event Grid subscription (.../providers/Microsoft.EventGrid/eventSubscriptions)",
                            re.compile(_SUB_RG + r".+/providers/Microsoft\.EventGrid/eventSubscriptions/[^/]+", re.I)),
    "iotHubResourceId": ("an IoT hub (Microsoft.Devices/IotHubs)",
                         re.compile(_SUB_RG + r"Microsoft\.Devices/IotHubs/[^/]+", re.I)),
    "managedIdentityResourceId": (
        "a user-assigned identity (Microsoft.ManagedIdentity/userAssignedIdentities) or the cluster (system-assigned)",
        re.compile(_SUB_RG + r"(Microsoft\.ManagedIdentity/userAssignedIdentities|Microsoft\.Kusto/clusters)/[^/]+", re.I)),
}

_TARGET = ("tableName", "mappingRuleName", "dataFormat")
KIND_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # kind -> (required, optional), per the SDK models
    "EventHub": (("eventHubResourceId", "consumerGroup"),
                 _TARGET + ("compression", "managedIdentityResourceId", "databaseRouting", "retrievalStartDate")),
    "EventGrid": (("storageAccountResourceId", "eventHubResourceId", "consumerGroup"),
                  _TARGET + ("eventGridResourceId", "blobStorageEventType", "ignoreFirstRecord",
                             "managedIdentityResourceId", "databaseRouting")),
    "IotHub": (("iotHubResourceId", "consumerGroup", "sharedAccessPolicyName"),
               _TARGET + ("databaseRouting", "retrievalStartDate")),
}
SOURCE_FIELD = {"EventHub": "eventHubResourceId", "EventGrid": "eventHubResourceId", "IotHub": "iotHubResourceId"}

RECREATE_FIELDS = frozenset({
    "eventHubResourceId", "storageAccountResourceId", "eventGridResourceId", "iotHubResourceId", "consumerGroup",
    "sharedAccessPolicyName", "compression", "databaseRouting",
})
"""Fields a change of which recreates the connection (delete, then create): the source and how it is
read. Terraform's azurerm data connections mark them "forces a new resource"."""
PATCH_FIELDS = frozenset({"tableName", "mappingRuleName", "dataFormat", "managedIdentityResourceId",
                          "blobStorageEventType", "ignoreFirstRecord"})
"""Fields changed in place with PATCH."""
COMPARED_FIELDS = RECREATE_FIELDS | PATCH_FIELDS
"""`retrievalStartDate` is not compared: it only tells a new connection where to start reading."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,29}")
NAME_RULE = "must be 1-30 characters of A-Z a-z 0-9 - starting with a letter or digit"


@dataclass(frozen=True)
class DataConnection:
    """A data connection of a database: declared (`name` as configured) or listed (its ARM name)."""

    scope: Scope
    name: str
    kind: str
    properties: tuple[tuple[str, Any], ...] = ()
    """(ARM property name, value), sorted; only the fields that are set."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.properties).get(key, default)

    @property
    def source(self) -> str:
        return str(self.get(SOURCE_FIELD.get(self.kind, ""), ""))

    @property
    def identity(self) -> tuple:
        """What Kusto refuses twice: (database, kind, source, consumer group), case-insensitive."""
        return (self.scope.key, self.kind.casefold(), self.source.casefold(), str(self.get("consumerGroup", "")).casefold())

    def comparable(self) -> dict[str, Any]:
        """The compared fields, with ARM's defaults filled in and case-insensitive values folded."""
        props = {"databaseRouting": "Single"} | ({"compression": "None"} if self.kind == "EventHub" else {})
        props |= dict(self.properties)
        out = {}
        for key in COMPARED_FIELDS & props.keys():
            value = props[key]
            out[key] = value.casefold() if isinstance(value, str) and key not in ("tableName", "mappingRuleName") else value
        return out

    def describe(self) -> str:
        target = self.get("tableName")
        return f"{self.kind} {self.source} [{self.get('consumerGroup')}]" + (f" -> {target}" if target else "")

    def body(self) -> dict[str, Any]:
        """The ARM request body (kind at the top level: azure-mgmt-kusto 4.0.0 forgets it)."""
        return {"kind": self.kind, "properties": dict(self.properties)}

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "properties": dict(self.properties)}


def connection_name(prefix: str, scope: Scope, name: str) -> str:
    """The ARM name the app gives a declared connection: readable, and recognisable as the app's."""
    return f"{prefix}{name}-{_digest(scope, name)}"


def _digest(scope: Scope, name: str) -> str:
    return hashlib.sha256("|".join((*scope.key, name.casefold())).encode()).hexdigest()[:8]


def is_owned(connection: DataConnection, prefix: str) -> bool:
    """Named exactly as the app names the connections it creates (a prefix alone is not enough)."""
    name = connection.name
    if not name.startswith(prefix) or len(name) < len(prefix) + 10 or name[-9] != "-":
        return False
    return _digest(connection.scope, name[len(prefix):-9]) == name[-8:]


# --- config -------------------------------------------------------------------------------------

def parse_connections(root, problems: list[str]) -> tuple[DataConnection, ...]:
    """The `dataConnections` list of the config; problems are recorded with their path.

    `root` is the config reader (shared.core.config._Node) of the whole config.
    """
    from shared.core.config import _Node

    found: list[DataConnection] = []
    names: dict[tuple, str] = {}
    sources: dict[tuple[str, str], str] = {}
    allowed = ("name", "cluster", "database", "kind") + tuple(
        dict.fromkeys(f for required, optional in KIND_FIELDS.values() for f in required + optional))
    for value, path in root.each("dataConnections"):
        node = _Node(problems, value, path, allowed, required=("name", "cluster", "database", "kind"))
        if not node.is_mapping:
            continue
        connection = _connection(node, path)
        if connection is None:
            continue
        key = (connection.scope.key, connection.name.casefold())
        if key in names:
            node.report(f"{path}.name", f"duplicate data connection '{connection.name}' in {connection.scope} "
                                        f"(first at {names[key]})")
            continue
        names[key] = path
        source = (connection.source.casefold(), str(connection.get("consumerGroup")).casefold())
        if source in sources:
            node.report(f"{path}.consumerGroup", f"consumer group '{connection.get('consumerGroup')}' of "
                        f"{connection.source} is already used by {sources[source]} (Kusto refuses to share one)")
            continue
        sources[source] = path
        found.append(connection)
    return tuple(found)


def _connection(node, path: str, exempt: tuple[str, ...] = ()) -> DataConnection | None:
    before = len(node.problems)
    name = node.get("name", "a string", check=lambda v: None if NAME.fullmatch(v) else f"{v!r} {NAME_RULE}")
    cluster = node.get("cluster", "a string")
    database = node.get("database", "a string", check=lambda v: None if v.strip() else "must not be empty")
    kind = node.get("kind", "a string", check=lambda v: None if _canonical(v, KINDS) else (
        f"{v!r} is not one of {', '.join(KINDS)}"))
    scope = None
    if cluster is not None and database is not None:
        try:
            scope = Scope(cluster, database)
        except ScopeError as error:
            node.report(f"{path}.cluster", str(error))
    properties = _properties(node, path, _canonical(kind, KINDS) if kind else None, exempt)
    if len(node.problems) > before or None in (name, scope, kind):
        return None
    return DataConnection(scope, name, _canonical(kind, KINDS), properties)


def _properties(node, path: str, kind: str | None, exempt: tuple[str, ...] = ()) -> tuple[tuple[str, Any], ...]:
    out: dict[str, Any] = {}
    if kind is None:
        return ()
    required, optional = KIND_FIELDS[kind]
    for key in node.data:
        if key in ("name", "cluster", "database", "kind", "fromMessage") or key in required + optional:
            continue
        node.report(f"{path}.{key}", f"does not apply to kind {kind} (it takes {', '.join(required + optional)})")
    for key in required:
        if key not in node.data and key not in exempt:
            node.report(f"{path}.{key}", f"is required for kind {kind}")
    for key in required + optional:
        if key not in node.data:
            continue
        if key == "ignoreFirstRecord":
            value = node.get(key, "a boolean")
        else:
            value = node.get(key, "a string", check=_field_check(key))
            if isinstance(value, str):
                value = _field_value(key, value)
        if value is not None:
            out[key] = value
    return tuple(sorted(out.items()))


# --- onboarding templates -----------------------------------------------------------------------

TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,22}")


@dataclass(frozen=True)
class ConnectionTemplate:
    """A data connection an onboarding profile makes, with the fields its message supplies."""

    profile: str
    name: str
    scope: Scope
    kind: str
    fixed: tuple[tuple[str, Any], ...]
    """The fields the config sets (validated)."""
    from_message: tuple[str, ...]
    """The only fields a message may (and, when the kind requires them, must) set."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cluster": self.scope.cluster, "database": self.scope.database,
                "kind": self.kind, "fromMessage": list(self.from_message)} | dict(self.fixed)

    def instantiate(self, values: Any, principal_key: tuple) -> DataConnection:
        """The connection for one onboarded principal; ValueError lists every problem at once.

        Named `<template>-<hash of the principal>`: one per principal and template, so that a
        revoke removes exactly that principal's connection.
        """
        from shared.core.config import _Node

        where = f"dataConnections.{self.name}"
        if not isinstance(values, dict):
            raise ValueError([f"{where}: must be an object of the fields {', '.join(self.from_message)}"])
        problems = [f"{where}.{key}: the profile {self.profile} does not let a message set it (allowed: "
                    f"{', '.join(self.from_message) or 'none'})" for key in values if key not in self.from_message]
        entry = {"name": instance_name(self.name, principal_key), "cluster": self.scope.cluster, "database": self.scope.database,
                 "kind": self.kind} | dict(self.fixed) | {k: v for k, v in values.items() if k in self.from_message}
        allowed = ("name", "cluster", "database", "kind") + sum(KIND_FIELDS[self.kind], ())
        node = _Node(problems, entry, where, allowed)
        connection = _connection(node, where)
        if problems or connection is None:
            raise ValueError(problems)
        return connection


def instance_name(template: str, principal_key: tuple) -> str:
    """The name of a template's connection for one principal: `<template>-<hash of the principal>`."""
    return f"{template}-{hashlib.sha256('|'.join(principal_key).encode()).hexdigest()[:6]}"


def parse_templates(root, problems: list[str]) -> dict[str, tuple[ConnectionTemplate, ...]]:
    """`profiles.<name>.dataConnections` of the config: {profile: templates}."""
    from shared.core.config import _Node

    profiles = root.data.get("profiles")
    found: dict[str, tuple[ConnectionTemplate, ...]] = {}
    if not isinstance(profiles, dict):
        return found
    allowed = ("name", "cluster", "database", "kind", "fromMessage") + tuple(
        dict.fromkeys(f for required, optional in KIND_FIELDS.values() for f in required + optional))
    for profile, value in profiles.items():
        if not isinstance(value, dict) or not isinstance(profile, str):
            continue
        profile_node = _Node(problems, value, f"profiles.{profile}", tuple(value))
        templates = []
        names: set[str] = set()
        for item, path in profile_node.each("dataConnections"):
            node = _Node(problems, item, path, allowed, required=("name", "cluster", "database", "kind"))
            if not node.is_mapping:
                continue
            before = len(problems)
            from_message = node.get("fromMessage", "a list", [])
            kind = _canonical(node.data.get("kind") if isinstance(node.data.get("kind"), str) else None, KINDS)
            fields = sum(KIND_FIELDS[kind], ()) if kind else ()
            for i, key in enumerate(from_message):
                if key not in fields and kind:
                    node.report(f"{path}.fromMessage[{i}]", f"{key!r} is not a field of kind {kind} "
                                                            f"({', '.join(fields)})")
                elif key in node.data:
                    node.report(f"{path}.fromMessage[{i}]", f"{key!r} is set by the config too; pick one")
            name = node.data.get("name")
            if isinstance(name, str) and not TEMPLATE_NAME.fullmatch(name):
                node.report(f"{path}.name", f"{name!r} must be 1-23 characters of A-Z a-z 0-9 - starting with a "
                                            "letter or digit (the principal's hash is appended)")
            elif isinstance(name, str) and name.casefold() in names:
                node.report(f"{path}.name", f"duplicate template '{name}' in profile {profile}")
            connection = _connection(node, path, exempt=tuple(from_message))
            if connection is None or len(problems) > before:
                continue
            names.add(connection.name.casefold())
            templates.append(ConnectionTemplate(profile, connection.name, connection.scope, connection.kind,
                                                connection.properties, tuple(from_message)))
        if templates:
            found[profile] = tuple(templates)
    return found


_CHOICES = {"dataFormat": DATA_FORMATS, "compression": COMPRESSIONS, "databaseRouting": DATABASE_ROUTINGS,
            "blobStorageEventType": BLOB_EVENT_TYPES}


def _field_check(key: str):
    def check(value: str) -> str | None:
        text = value.strip()
        if not text:
            return "must not be empty"
        if key in RESOURCE_TYPES:
            what, pattern = RESOURCE_TYPES[key]
            return None if pattern.fullmatch(text.rstrip("/")) else f"{value!r} is not the resource ID of {what}"
        if key in _CHOICES:
            return None if _canonical(text, _CHOICES[key]) else f"{value!r} is not one of {', '.join(_CHOICES[key])}"
        if key == "retrievalStartDate":
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return f"{value!r} is not an ISO 8601 date and time"
            return None if parsed.tzinfo else f"{value!r} needs a time zone (e.g. 2026-01-01T00:00:00Z)"
        return None
    return check


def _field_value(key: str, value: str) -> str:
    value = value.strip()
    if key in RESOURCE_TYPES:
        return value.rstrip("/")
    if key in _CHOICES:
        return _canonical(value, _CHOICES[key])
    return value


def _canonical(value: str | None, choices: Iterable[str]) -> str | None:
    folded = (value or "").strip().casefold()
    return next((c for c in choices if c.casefold() == folded), None)


# --- planning -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectionChange:
    """One data-connection step of a plan: add, update (PATCH or recreate), remove, hold or skip.

    It reads like an assignment Change (action, scope, name, reason, describe, as_json) so the plan,
    the apply loop and the audit carry both.
    """

    action: Action
    scope: Scope
    name: str
    connection: DataConnection | None
    """What to create or update to (add, update), or what exists (remove, hold); None for a skip of the scope."""
    reason: str
    changed: tuple[str, ...] = ()
    """The fields that differ (update)."""
    recreate: bool = False
    """Update by delete, then create: a changed field ARM does not let PATCH change."""
    role: None = field(default=None, init=False)
    principal: None = field(default=None, init=False)

    @property
    def sort_key(self) -> tuple:
        return (self.scope.key, action_order(self.action), "~dataConnection", self.name.casefold(), self.reason)

    def describe(self) -> str:
        what = f" {self.connection.describe()}" if self.connection else ""
        return f"{action_symbol(self.action)} {self.scope} dataConnection {self.name}{what} ({self.reason})"

    def as_json(self) -> dict:
        return {
            "action": self.action.value, "scope": self.scope.as_json(), "role": None, "principal": None,
            "principalType": None, "tenantId": None, "reason": self.reason, "name": self.name,
            "dataConnection": self.connection.as_json() if self.connection else {"name": self.name},
            "changed": list(self.changed), "recreate": self.recreate,
        }


class _Label(NamedTuple):
    fqn: str


@dataclass(frozen=True)
class Unowned:
    """An existing connection the app leaves alone (drift) or takes over (adopted)."""

    connection: DataConnection
    adopted: bool = False
    differs: tuple[str, ...] = ()

    @property
    def scope(self) -> Scope:
        return self.connection.scope

    @property
    def name(self) -> str:
        return self.connection.name

    # What the ownership ledger records of an adopted assignment, for an adopted connection.
    role = "dataConnection"

    @property
    def principal(self) -> _Label:
        return _Label(self.connection.describe())

    def describe(self) -> str:
        c = self.connection
        if self.adopted:
            return f"= {c.scope} dataConnection {c.name} {c.describe()} (adopted: now owned by the app)"
        why = f"differs in {', '.join(self.differs)}; " if self.differs else ""
        return f"? {c.scope} dataConnection {c.name} {c.describe()} ({why}not owned by the app; left alone)"

    def as_json(self) -> dict:
        return {"scope": self.scope.as_json(), "dataConnection": self.connection.as_json(),
                "differs": list(self.differs)}


@dataclass(frozen=True)
class ConnectionPlan:
    changes: tuple[ConnectionChange, ...] = ()
    drift: tuple[Unowned, ...] = ()
    adopted: tuple[Unowned, ...] = ()


def plan_connections(
    declared: Mapping[Scope, Iterable[DataConnection]],
    current: Mapping[Scope, Iterable[DataConnection] | None],
    policy: Policy = Policy(),
) -> ConnectionPlan:
    """Compare the declared and listed connections per database.

    `current[scope] is None` means the connections could not be listed: the scope is skipped.
    `policy.adopted` holds (scope key, casefolded name) of connections adopted by earlier runs.
    """
    changes: list[ConnectionChange] = []
    drift: list[Unowned] = []
    adopted: list[Unowned] = []
    for scope in sorted(set(declared) | set(current)):
        existing = current.get(scope, ())
        if existing is None:
            changes.append(ConnectionChange(Action.SKIP, scope, "*", None, "data connections could not be listed"))
            continue
        c, d, a = _plan_database(scope, list(declared.get(scope, ())), list(existing), policy)
        changes += c
        drift += d
        adopted += a
    changes.sort(key=lambda c: c.sort_key)
    return ConnectionPlan(tuple(changes), tuple(drift), tuple(adopted))


def _plan_database(scope: Scope, declared: list[DataConnection], existing: list[DataConnection], policy: Policy):
    changes: list[ConnectionChange] = []
    drift: list[Unowned] = []
    adopted: list[Unowned] = []
    by_name = {c.name.casefold(): c for c in existing}
    by_identity: dict[tuple, DataConnection] = {}
    for c in existing:
        by_identity.setdefault(c.identity, c)

    def owned(c: DataConnection) -> bool:
        return is_owned(c, policy.prefix) or (scope.key, c.name.casefold()) in policy.adopted

    matched: set[str] = set()
    for wanted in declared:
        name = connection_name(policy.prefix, scope, wanted.name)
        desired = DataConnection(scope, name, wanted.kind, wanted.properties)
        why = f"declared as {wanted.name}"
        match = by_name.get(name.casefold())
        if match is None:
            match = by_identity.get(desired.identity)
            if match is not None and match.name.casefold() in matched:
                match = None
        if match is None:
            changes.append(ConnectionChange(Action.ADD, scope, name, desired, why))
            continue
        matched.add(match.name.casefold())
        differs = _differences(desired, match)
        if not owned(match):
            if policy.adopt:
                adopted.append(Unowned(match, adopted=True))
            else:
                drift.append(Unowned(match, differs=differs))
                continue
        if differs:
            recreate = any(f in RECREATE_FIELDS or f == "kind" for f in differs)
            how = "recreate: ARM does not change " if recreate else "update "
            target = DataConnection(scope, match.name, desired.kind, desired.properties)
            changes.append(ConnectionChange(Action.UPDATE, scope, match.name, target,
                                            f"{why}; {how}{', '.join(differs)}", differs, recreate))

    removals: list[ConnectionChange] = []
    owned_count = 0
    adopted_names = {u.name.casefold() for u in adopted}
    for c in existing:
        is_mine = owned(c) or c.name.casefold() in adopted_names
        owned_count += is_mine
        if c.name.casefold() in matched:
            continue
        if is_mine:
            removals.append(ConnectionChange(Action.REMOVE, scope, c.name, c, "no longer declared"))
        else:
            drift.append(Unowned(c))
    return changes + guard(removals, owned_count, policy), drift, adopted


def _differences(desired: DataConnection, existing: DataConnection) -> tuple[str, ...]:
    if desired.kind.casefold() != existing.kind.casefold():
        return ("kind",)
    want, have = desired.comparable(), existing.comparable()
    # A field the declaration leaves out is ARM's business (its default or another tool's choice).
    return tuple(sorted(k for k in want if want[k] != have.get(k)))


def guard(removals: list[ConnectionChange], owned_count: int, policy: Policy) -> list[ConnectionChange]:
    """The deletion guard of the assignments (shared.core.plan), applied to a database's connections."""
    if not removals or not guard_holds(len(removals), owned_count, policy):
        return removals
    held = (f"held by the deletion guard: {len(removals)} removals of {owned_count} owned data connections exceed "
            f"maxDeletes={policy.max_deletes} / maxDeletePercent={policy.max_delete_percent:g} "
            f"above deleteFloor={policy.delete_floor}; approve to release")
    return [ConnectionChange(Action.HOLD, c.scope, c.name, c.connection, held) for c in removals]


def refused(change: ConnectionChange, messages: list[str]) -> ConnectionChange:
    """The change turned into a skip because Kusto's validation refused the connection."""
    return ConnectionChange(Action.SKIP, change.scope, change.name, change.connection,
                            "Kusto refused the data connection: " + "; ".join(messages), change.changed,
                            change.recreate)
