"""PURE planning core: (desired, current, ownership) -> an ordered, deterministic list of Change.

Nothing here does I/O. The rules it encodes are the heart of the app's safety:

- An assignment is identified by (scope, role, principal); its ARM name is not part of it. A
  principal is matched by its directory identity (`Principal.identity`: object ID for users and
  groups, app ID for apps, plus tenant), so a renamed user is the same principal and a reused UPN
  is not. An assignment listed without an object ID is matched by the UPN it was written with.
- A desired assignment that exists under any name is satisfied: no duplicate is created.
- The app owns exactly the assignments whose name is the one it would give them
  (`assignment_name`), unless the config adopts others. Only owned assignments are removed.
  Adoption is only for what group mappings want, never for an onboarding grant.
- Unowned assignments that are not desired are drift: reported, never removed; so is an
  assignment ARM listed in a shape the app cannot read.
- Unknown is not empty, and only as wide as the facts: an `Unknown` covers a whole scope, one
  role of it, or one principal (in one role); an owned assignment it covers gets no removal.
- Removals beyond the guard in a scope are held until approved; additions still go ahead. The
  percentage applies only above an absolute floor, so ordinary offboarding is never held.
- Removing an ended (expired or revoked) onboarding grant is an explicit instruction: never held,
  and not counted against the guard.
- Excluded principals and the app's own identity are never touched.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Iterator, Mapping

from shared.core.principals import Principal
from shared.core.scopes import Scope


class Action(str, Enum):
    ADD = "add"
    UPDATE = "update"  # data connections only (shared.core.connections)
    REMOVE = "remove"
    HOLD = "hold"
    SKIP = "skip"


_ACTION_ORDER = {Action.SKIP: 0, Action.ADD: 1, Action.UPDATE: 1, Action.REMOVE: 2, Action.HOLD: 3}
_SYMBOLS = {Action.ADD: "+", Action.UPDATE: "*", Action.REMOVE: "-", Action.HOLD: "!", Action.SKIP: "~"}


def action_order(action: Action) -> int:
    return _ACTION_ORDER[action]


def action_symbol(action: Action) -> str:
    return _SYMBOLS[action]


@dataclass(frozen=True)
class Assignment:
    """A role held by a principal in a scope; `name` is the ARM resource name of an existing one."""

    scope: Scope
    role: str
    principal: Principal
    name: str | None = field(default=None, compare=False)
    key: tuple = field(init=False, repr=False, compare=False)
    """(scope, role, principal) identity, computed once: planning compares it many times."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.scope.key, self.role.casefold(), self.principal.key))


@dataclass(frozen=True)
class Change:
    """One step of a plan. `name` is the ARM resource to create or delete."""

    action: Action
    scope: Scope
    role: str | None
    principal: Principal | None
    reason: str
    name: str | None = None

    @property
    def sort_key(self) -> tuple:
        return (
            self.scope.key, _ACTION_ORDER[self.action], (self.role or "").casefold(),
            self.principal.fqn.casefold() if self.principal else "", self.reason,
        )

    def describe(self) -> str:
        """One human line, e.g. `+ adx-prod/Sales Viewer aaduser=<object id>;<tid> (bob@contoso.com) (member of Analysts)`."""
        who = f" {self.principal.label}" if self.principal else ""
        role = f" {self.role}" if self.role else ""
        return f"{_SYMBOLS[self.action]} {self.scope}{role}{who} ({self.reason})"

    def as_json(self) -> dict:
        arm = self.principal.to_arm() if self.principal else (None, None, None)
        return {
            "action": self.action.value,
            "scope": self.scope.as_json(),
            "role": self.role,
            "principal": self.principal.fqn if self.principal else None,
            "principalName": (self.principal.upn or self.principal.display_name) if self.principal else None,
            "principalType": arm[1],
            "tenantId": arm[2],
            "reason": self.reason,
            "name": self.name,
        }


@dataclass(frozen=True)
class Unreadable:
    """An existing assignment ARM listed in a shape the app cannot read: drift, never touched."""

    scope: Scope
    name: str | None
    reason: str


@dataclass(frozen=True)
class Unknown:
    """A part of a scope's desired state that could not be read, and why.

    `role` None: every role of the scope; `principal` None: every principal (of `role`). An owned
    assignment it covers is kept as it is.
    """

    reason: str
    role: str | None = None
    principal: Principal | None = None

    def covers(self, assignment: Assignment) -> bool:
        if self.role is not None and self.role.casefold() != assignment.role.casefold():
            return False
        return self.principal is None or not self.principal.match_keys.isdisjoint(assignment.principal.match_keys)

    def describe(self) -> str:
        if self.principal is not None:
            return f"{self.reason}; its assignment, if any, is kept"
        if self.role is not None:
            return f"{self.reason}; no removal of {self.role} in this scope"
        return f"{self.reason}; no removal in this scope"


@dataclass(frozen=True)
class Desired:
    """What the config wants in one scope: role grants with the reason for each, and what is unknown.

    `onboarded` holds (casefolded role, principal identity) of the grants that come from onboarding
    only: they are satisfied by an existing assignment but never adopt it.
    """

    grants: Mapping[tuple[str, Principal], str] = field(default_factory=dict)
    unknown: tuple[Unknown, ...] = ()  # a plain string is read as Unknown(reason) for the whole scope
    onboarded: frozenset = frozenset()
    ended: Mapping[tuple[str, tuple], str] = field(default_factory=dict)
    """(casefolded role, Principal.identity) of ended onboarding grants -> why: their removal is explicit."""
    warnings: tuple[str, ...] = ()  # facts the operator should see, e.g. a group deleted in Entra

    def __post_init__(self) -> None:
        object.__setattr__(self, "unknown", tuple(u if isinstance(u, Unknown) else Unknown(u) for u in self.unknown))


@dataclass(frozen=True)
class Policy:
    """The knobs of planning that come from the config and the app's identity."""

    prefix: str = "ks-"
    adopt: bool = False
    max_deletes: int = 20
    max_delete_percent: float = 25.0
    delete_floor: int = 10  # up to this many removals per scope, the percentage does not apply
    approve_deletes: bool = False
    exclude: frozenset = frozenset()  # match keys of the principals never touched (see exclusion_keys)
    self_ids: frozenset = frozenset()  # the app's own app ID / object ID, casefolded
    adopted: frozenset = frozenset()  # (scope key, casefolded ARM name) adopted by earlier runs


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    drift: tuple[Assignment, ...] = ()
    adopted: tuple[Assignment, ...] = ()
    scopes: tuple[Scope, ...] = ()  # every scope the plan covered, changed or not
    connections: Any = None  # shared.core.connections.ConnectionPlan: unowned data connections (drift, adopted)
    warnings: tuple[str, ...] = ()  # facts the operator should see, e.g. a group deleted in Entra
    unreadable: tuple[Unreadable, ...] = ()
    deferred: tuple[Scope, ...] = ()  # scopes that left the config but could not be listed: planned next cycle
    kept: tuple[Scope, ...] = ()  # scopes where the app owns assignments it leaves alone (excluded principals)

    @property
    def pending(self) -> bool:
        """True when applying would write something, or something is held or could not be planned."""
        return bool(self.changes)

    @property
    def writes(self) -> bool:
        """True when applying would write something (an add, an update or a remove)."""
        return any(c.action in (Action.ADD, Action.UPDATE, Action.REMOVE) for c in self.changes)

    def describe_unowned(self) -> list[str]:
        """Lines for what the plan adopts (=) and the drift it leaves alone (?)."""
        adopted = [f"= {a.scope} {a.role} {a.principal.fqn} (adopted: {a.name} is now owned by the app)"
                   for a in self.adopted]
        drift = [f"? {a.scope} {a.role} {a.principal.label} (not owned by the app: {a.name}; left alone)"
                 for a in self.drift]
        drift += [f"? {u.scope} {u.name} (unreadable: {u.reason}; left alone)" for u in self.unreadable]
        if self.connections is not None:
            adopted += [u.describe() for u in self.connections.adopted]
            drift += [u.describe() for u in self.connections.drift]
        return adopted + drift

    def describe(self) -> list[str]:
        """The plan as human lines: changes, adoptions, drift, then the summary."""
        warnings = [f"warning: {w}" for w in self.warnings]
        return warnings + [c.describe() for c in self.changes] + self.describe_unowned() + [f"plan: {self.summary()}"]

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    def summary(self) -> str:
        shown = (Action.ADD, Action.UPDATE, Action.REMOVE, Action.HOLD, Action.SKIP)
        parts = [f"{self.count(a)} {a.value}" for a in shown if a is not Action.UPDATE or self.count(a)]
        drift = len(self.drift) + len(self.unreadable) + (len(self.connections.drift) if self.connections is not None else 0)
        return ", ".join(parts) + f"; {drift} unowned drift"

    def as_json(self) -> dict:
        return {
            "changes": [c.as_json() for c in self.changes],
            "drift": [
                {"scope": a.scope.as_json(), "role": a.role, "principal": a.principal.fqn, "name": a.name}
                for a in self.drift
            ] + [
                {"scope": u.scope.as_json(), "role": None, "principal": None, "name": u.name, "reason": u.reason}
                for u in self.unreadable
            ],
            "adopted": [
                {"scope": a.scope.as_json(), "role": a.role, "principal": a.principal.fqn, "name": a.name}
                for a in self.adopted
            ],
            "summary": {a.value: self.count(a) for a in Action}
            | {"drift": len(self.drift) + len(self.unreadable), "adopted": len(self.adopted)},
            "warnings": list(self.warnings),
        } | ({} if self.connections is None else {"dataConnections": {
            "drift": [u.as_json() for u in self.connections.drift],
            "adopted": [u.as_json() for u in self.connections.adopted],
        }})


def assignment_name(prefix: str, scope: Scope, role: str, principal: Principal) -> str:
    """The deterministic ARM name the app gives an assignment it creates: idempotent across retries."""
    material = "|".join((*scope.key, role.casefold(), *principal.key))
    return prefix + hashlib.sha256(material.encode()).hexdigest()[:20]


def is_owned(assignment: Assignment, prefix: str) -> bool:
    """Owned means: named exactly as the app would have named it (a prefix alone is not enough)."""
    return assignment.name == assignment_name(prefix, assignment.scope, assignment.role, assignment.principal)


def exclusion_keys(principals: Iterable[Principal]) -> frozenset:
    """Policy.exclude for these principals: every spelling that names them (see Principal.match_keys)."""
    return frozenset(key for p in principals for key in p.match_keys)


def plan(
    desired: Mapping[Scope, Desired],
    current: Mapping[Scope, Iterable[Assignment | Unreadable] | None],
    policy: Policy = Policy(),
) -> Plan:
    """Compare desired and current state per scope and return the ordered changes.

    `current[scope] is None` means the scope could not be listed: it is skipped entirely.
    """
    changes: list[Change] = []
    drift: list[Assignment] = []
    adopted: list[Assignment] = []
    unreadable: list[Unreadable] = []
    kept: list[Scope] = []
    for scope in sorted(set(desired) | set(current)):
        wanted = desired.get(scope, Desired())
        existing = current.get(scope, ())
        if existing is None:
            changes.append(Change(Action.SKIP, scope, None, None, "current assignments could not be listed"))
            continue
        readable = []
        for item in existing:
            (readable if isinstance(item, Assignment) else unreadable).append(item)
        scope_changes, scope_drift, scope_adopted, keeps = _plan_scope(scope, wanted, readable, policy)
        if keeps:
            kept.append(scope)
        changes += scope_changes
        drift += scope_drift
        adopted += scope_adopted
    changes.sort(key=lambda c: c.sort_key)
    warnings = tuple(sorted({w for d in desired.values() for w in d.warnings}))
    return Plan(tuple(changes), tuple(drift), tuple(adopted), tuple(sorted(set(desired) | set(current))),
                warnings=warnings, unreadable=tuple(unreadable), kept=tuple(kept))


def _plan_scope(scope: Scope, wanted: Desired, existing: list[Assignment], policy: Policy):
    changes: list[Change] = []
    drift: list[Assignment] = []
    adopted: dict[int, Assignment] = {}
    for unknown in wanted.unknown:
        changes.append(Change(Action.SKIP, scope, unknown.role, unknown.principal, unknown.describe()))

    index = _Index(existing)
    satisfied: set[int] = set()
    for (role, principal), reason in wanted.grants.items():
        match = index.find(role, principal)
        if _excluded(principal, policy):
            # However it matched (a UPN the ledger kept from before a rename), its assignment is
            # left alone too: an exclusion is never half-applied.
            if match is not None:
                satisfied.add(id(match))
            continue
        if match is not None:
            satisfied.add(id(match))
            onboarded = (role.casefold(), principal.identity) in wanted.onboarded
            if policy.adopt and not onboarded and not _owned(match, policy):
                adopted[id(match)] = match
            continue
        name = assignment_name(policy.prefix, scope, role, principal)
        changes.append(Change(Action.ADD, scope, role, principal, reason, name))

    doubts = _Doubts(wanted.unknown)
    removals: list[Change] = []
    explicit: list[Change] = []
    owned_count = 0
    keeps = False  # an owned assignment left alone because its principal is excluded
    for assignment in existing:
        owned = _owned(assignment, policy) or id(assignment) in adopted
        owned_count += owned
        if id(assignment) in satisfied:
            continue
        if _untouchable(assignment.principal, policy):
            keeps = keeps or owned
            continue
        if not owned:
            drift.append(assignment)
        elif not doubts.cover(assignment):
            ended = _ended(wanted, assignment)
            target = explicit if ended else removals
            target.append(Change(
                Action.REMOVE, scope, assignment.role, assignment.principal,
                ended or "no longer granted by any mapping", assignment.name,
            ))
    if removals and guard_holds(len(removals), owned_count, policy):
        held = (
            f"held by the deletion guard: {len(removals)} removals of {owned_count} owned exceed "
            f"maxDeletes={policy.max_deletes} / maxDeletePercent={policy.max_delete_percent:g} "
            f"above deleteFloor={policy.delete_floor}; approve to release"
        )
        removals = [Change(Action.HOLD, c.scope, c.role, c.principal, held, c.name) for c in removals]
    return changes + explicit + removals, drift, list(adopted.values()), keeps


def guard_holds(removals: int, owned: int, policy: Policy) -> bool:
    """Whether the deletion guard holds `removals` of a scope's `owned` assignments.

    More than maxDeletes is always held; more than maxDeletePercent only above deleteFloor, so that
    one leaver of two, or ten of twelve, is ordinary offboarding and goes ahead.
    """
    if policy.approve_deletes:
        return False
    too_many = removals > policy.max_deletes
    too_large = removals > policy.delete_floor and removals * 100 > policy.max_delete_percent * owned
    return too_many or too_large


def _ended(wanted: Desired, assignment: Assignment) -> str | None:
    """Why an ended onboarding grant removes `assignment`, if one does: matched by identity, or by
    the reference as written (a grant recorded before identities were kept)."""
    if not wanted.ended:
        return None
    role, p = assignment.role.casefold(), assignment.principal
    return wanted.ended.get((role, p.identity)) or wanted.ended.get((role, p.key))


def same_principal(wanted: Principal, held: Principal) -> bool:
    """Whether `held` (the principal of an assignment or a ledger row) is `wanted`; see _Index.find."""
    return not set(_wanted_keys(wanted)).isdisjoint(_held_keys(held))


def _held_keys(p: Principal) -> Iterator[tuple]:
    yield ("id", *p.identity)
    yield ("text", *p.key)
    if p.object_id is not None:
        yield ("oid", p.kind.value, p.object_id, p.key[2])
    else:
        yield ("legacy", *p.key)


def _wanted_keys(p: Principal) -> Iterator[tuple]:
    """The keys `p` is looked up by, most precise first: its directory identity; its object ID
    (an app listed under its display name); the reference as written when it has no object ID (a
    guest's home identity); its UPN, against an assignment listed without an object ID only (one
    written by UPN, where Kusto did not say whose it is)."""
    yield ("id", *p.identity)
    if p.object_id is not None:
        yield ("oid", p.kind.value, p.object_id, p.key[2])
    else:
        yield ("text", *p.key)
    if p.upn is not None:
        yield ("legacy", p.kind.value, p.upn.casefold(), p.key[2])


class _Doubts:
    """A scope's unknowns, indexed: a member in doubt for each of thousands of members (limited
    information from Graph) must not make planning quadratic. Same answer as Unknown.covers."""

    def __init__(self, unknowns: tuple[Unknown, ...]):
        self.everything = any(u.role is None and u.principal is None for u in unknowns)
        self.roles = {u.role.casefold() for u in unknowns if u.role is not None and u.principal is None}
        self.keys: set[tuple] = set()
        for u in unknowns:
            if u.principal is not None:
                self.keys |= {((u.role or "").casefold(), key) for key in u.principal.match_keys}

    def cover(self, assignment: Assignment) -> bool:
        role = assignment.role.casefold()
        if self.everything or role in self.roles:
            return True
        return bool(self.keys) and any((r, key) in self.keys for key in assignment.principal.match_keys
                                       for r in (role, ""))


class _Index:
    """The existing assignments of one scope, found by role and any spelling of their principal."""

    def __init__(self, existing: list[Assignment]):
        self._by: dict[tuple, Assignment] = {}
        for assignment in existing:
            role = assignment.role.casefold()
            for key in _held_keys(assignment.principal):
                self._by.setdefault((role, key), assignment)

    def find(self, role: str, principal: Principal) -> Assignment | None:
        """The assignment of `role` that `principal` holds, by the first of its keys that matches."""
        role = role.casefold()
        for key in _wanted_keys(principal):
            found = self._by.get((role, key))
            if found is not None:
                return found
        return None


def _owned(assignment: Assignment, policy: Policy) -> bool:
    return is_owned(assignment, policy.prefix) or (
        (assignment.scope.key, (assignment.name or "").casefold()) in policy.adopted
    )


def _excluded(principal: Principal, policy: Policy) -> bool:
    return bool(policy.exclude) and not policy.exclude.isdisjoint(principal.match_keys)


def _untouchable(principal: Principal, policy: Policy) -> bool:
    if _excluded(principal, policy):
        return True
    ids = {principal.identifier.casefold(), (principal.object_id or "").casefold()}
    return bool(ids & policy.self_ids)
