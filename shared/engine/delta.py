"""Quick cycles: which configured groups changed since the last run (Graph groups/delta).

A full read of every group runs on the first cycle, every `fullSyncEvery` cycles, when the config
changes, whenever Graph refuses a delta link, and after a cycle in which a group could not be read.
In between, a quick cycle asks groups/delta which groups changed and reconciles only the mappings of
those. Delta reports direct membership changes only, so the links also cover every nested group
seen: a change deep inside a nested group maps back to the configured groups that contain it.

No change is lost between cycles:
- links are captured before the reads they cover; a group first seen during a read (new nesting,
  the first run) gets its link after, so its mappings are read again next cycle (`pending`);
- a cycle whose group read failed keeps its links and makes the next cycle a full read, and so
  does a cycle that dies half-way (the state says "full read next" until the cycle ends);
- scopes whose writes failed or were held by the guard, or that could not be listed (a scope that
  left the config too), are planned again next cycle (`pending`);
- the cycle counter counts every cycle, whatever its writes did, so full reads stay on schedule;
- whoever else learns that the quick cycles' picture is stale (a cluster job that did not
  converge, writes made under another config) requests a full read. The request is a time kept
  apart from the state, so a cycle that saves its state meanwhile cannot lose it: the next cycle
  reads everything unless a full read started after the request.

The state (links, group IDs, cycle count) is one JSON document, the request another entity: in
Table storage for the app, in memory for the CLI and tests.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Protocol

from shared.adapters.tables import LazyTable
from shared.core.scopes import Scope

TABLE = "syncstate"


@dataclass
class DeltaState:
    config_version: str
    links: list[str]
    group_ids: dict[str, str]  # configured group reference (casefolded) -> object ID
    nested: dict[str, list[str]] = field(default_factory=dict)  # configured group ID -> nested group IDs
    cycles: int = 0  # quick cycles since the last full read
    pending: list[list] = field(default_factory=list)  # [cluster, database] to plan again next cycle
    full_next: bool = False  # a group could not be read: the next cycle reads everything
    full_started_ms: int = 0  # when the full read this state comes from started

    def affected(self, changed: set[str]) -> set[str]:
        """Configured group IDs whose membership may have changed, directly or in a nested group."""
        return {gid for gid in self.group_ids.values() if gid in changed or changed & set(self.nested.get(gid, ()))}

    def watched(self) -> set[str]:
        """Every group ID the links cover: the configured groups and the nested ones seen in them."""
        return set(self.group_ids.values()) | {n for ids in self.nested.values() for n in ids}

    def pending_scopes(self) -> set[Scope]:
        return {Scope(cluster, database) for cluster, database in self.pending}

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "DeltaState":
        return cls(**json.loads(text))


@dataclass
class Observed:
    """What a run's group reads found: filled by the engine while it plans."""

    groups: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    """configured group reference (casefolded) -> (group ID, nested group IDs) of each group read."""
    failed: set[str] = field(default_factory=set)
    """configured group references (casefolded) whose group could not be read."""
    missing: set[str] = field(default_factory=set)
    """group IDs Graph answered 404 for (a 404 in a later run confirms a deletion)."""
    started_ms: int = 0
    """When the run these reads belong to started; a cluster job's reads belong to its parent run,
    so that the parent's first 404 and its job's read of the same group are not two runs in a row."""
    found: set[str] = field(default_factory=set)
    """group IDs read successfully."""


class StateStore(Protocol):
    def load(self) -> DeltaState | None: ...
    def save(self, state: DeltaState) -> None: ...
    def request_full_read(self, at_ms: int) -> None: ...
    def full_read_requested(self) -> int: ...  # when the latest request was made (0: never)


class MemoryStateStore:
    def __init__(self) -> None:
        self.state: DeltaState | None = None
        self.requested = 0

    def load(self) -> DeltaState | None:
        """A copy, as from Table storage: what a caller changes is not saved until it saves it."""
        return None if self.state is None else DeltaState.from_json(self.state.to_json())

    def save(self, state: DeltaState) -> None:
        self.state = DeltaState.from_json(state.to_json())

    def request_full_read(self, at_ms: int) -> None:
        self.requested = max(self.requested, at_ms)

    def full_read_requested(self) -> int:
        return self.requested


class TableStateStore:
    """The state as one entity; its JSON is split over properties because one holds 64 KiB."""

    _CHUNK = 30_000

    def __init__(self, table_client):
        self._table = LazyTable(table_client)

    @classmethod
    def from_service(cls, service_client) -> "TableStateStore":
        return cls(service_client.get_table_client(TABLE))

    def load(self) -> DeltaState | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table().get_entity("delta", "state")
        except ResourceNotFoundError:
            return None
        text = "".join(entity[f"part{i}"] for i in range(entity["parts"]))
        return DeltaState.from_json(text)

    def save(self, state: DeltaState) -> None:
        from azure.data.tables import UpdateMode

        text = state.to_json()
        parts = [text[i:i + self._CHUNK] for i in range(0, len(text), self._CHUNK)] or [""]
        entity = {"PartitionKey": "delta", "RowKey": "state", "parts": len(parts)}
        entity.update({f"part{i}": part for i, part in enumerate(parts)})
        self._table().upsert_entity(entity, mode=UpdateMode.REPLACE)

    def request_full_read(self, at_ms: int) -> None:
        from azure.data.tables import EdmType, UpdateMode

        self._table().upsert_entity({"PartitionKey": "delta", "RowKey": "full-read-request",
                                     "atMs": (at_ms, EdmType.INT64)}, mode=UpdateMode.REPLACE)

    def full_read_requested(self) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            at = self._table().get_entity("delta", "full-read-request")["atMs"]
        except ResourceNotFoundError:
            return 0
        return int(getattr(at, "value", at))
