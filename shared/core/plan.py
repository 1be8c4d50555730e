"""PURE planning core: (desired, current, ownership) -> an ordered, deterministic list of Change.

Nothing here does I/O. The rules it encodes are the heart of the app's safety:

- An assignment is identified by (scope, role, principal); its ARM name is not part of it.
- A desired assignment that exists under any name is satisfied: no duplicate is created.
- The app owns exactly the assignments whose name is the one it would give them
  (`assignment_name`), unless the config adopts others. Only owned assignments are removed.
- Unowned assignments that are not desired are drift: reported, never removed.
- A scope whose desired state is unknown (a group could not be read) gets a `skip` and no removal.
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
from typing import Any, Iterable, Mapping

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
        """One human line, e.g. `+ adx-prod/Sales Viewer aaduser=bob@contoso.com;<tid> (member of Analysts)`."""
        who = f" {self.principal.fqn}" if self.principal else ""
        role = f" {self.role}" if self.role else ""
        return f"{_SYMBOLS[self.action]} {self.scope}{role}{who} ({self.reason})"

    def as_json(self) -> dict:
        arm = self.principal.to_arm() if self.principal else (None, None, None)
        return {
            "action": self.action.value,
            "scope": self.scope.as_json(),
            "role": self.role,
            "principal": self.principal.fqn if self.principal else None,
            "principalType": arm[1],
            "tenantId": arm[2],
            "reason": self.reason,
            "name": self.name,
        }


@dataclass(frozen=True)
class Desired:
    """What the config wants in one scope: role grants with the reason for each, or unknown."""

    grants: Mapping[tuple[str, Principal], str] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()  # why parts of this scope's desired state could not be read
    ended: Mapping[tuple[str, tuple], str] = field(default_factory=dict)
    """(casefolded role, Principal.key) of ended onboarding grants -> why: their removal is explicit."""
    warnings: tuple[str, ...] = ()  # facts the operator should see, e.g. a group deleted in Entra


@dataclass(frozen=True)
class Policy:
    """The knobs of planning that come from the config and the app's identity."""

    prefix: str = "ks-"
    adopt: bool = False
    max_deletes: int = 20
    max_delete_percent: float = 25.0
    delete_floor: int = 10  # up to this many removals per scope, the percentage does not apply
    approve_deletes: bool = False
    exclude: frozenset = frozenset()  # Principal.key values never touched
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
        drift = [f"? {a.scope} {a.role} {a.principal.fqn} (not owned by the app: {a.name}; left alone)"
                 for a in self.drift]
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
        drift = len(self.drift) + (len(self.connections.drift) if self.connections is not None else 0)
        return ", ".join(parts) + f"; {drift} unowned drift"

    def as_json(self) -> dict:
        return {
            "changes": [c.as_json() for c in self.changes],
            "drift": [
                {"scope": a.scope.as_json(), "role": a.role, "principal": a.principal.fqn, "name": a.name}
                for a in self.drift
            ],
            "adopted": [
                {"scope": a.scope.as_json(), "role": a.role, "principal": a.principal.fqn, "name": a.name}
                for a in self.adopted
            ],
            "summary": {a.value: self.count(a) for a in Action} | {"drift": len(self.drift), "adopted": len(self.adopted)},
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


def plan(
    desired: Mapping[Scope, Desired],
    current: Mapping[Scope, Iterable[Assignment] | None],
    policy: Policy = Policy(),
) -> Plan:
    """Compare desired and current state per scope and return the ordered changes.

    `current[scope] is None` means the scope could not be listed: it is skipped entirely.
    """
    changes: list[Change] = []
    drift: list[Assignment] = []
    adopted: list[Assignment] = []
    for scope in sorted(set(desired) | set(current)):
        wanted = desired.get(scope, Desired())
        existing = current.get(scope, ())
        if existing is None:
            changes.append(Change(Action.SKIP, scope, None, None, "current assignments could not be listed"))
            continue
        scope_changes, scope_drift, scope_adopted = _plan_scope(scope, wanted, list(existing), policy)
        changes += scope_changes
        drift += scope_drift
        adopted += scope_adopted
    changes.sort(key=lambda c: c.sort_key)
    warnings = tuple(sorted({w for d in desired.values() for w in d.warnings}))
    return Plan(tuple(changes), tuple(drift), tuple(adopted), tuple(sorted(set(desired) | set(current))),
                warnings=warnings)


def _plan_scope(scope: Scope, wanted: Desired, existing: list[Assignment], policy: Policy):
    changes: list[Change] = []
    drift: list[Assignment] = []
    adopted: list[Assignment] = []
    for why in wanted.unknown:
        changes.append(Change(Action.SKIP, scope, None, None, f"{why}; no removal in this scope"))

    by_key: dict[tuple, Assignment] = {}
    by_object: dict[tuple, Assignment] = {}
    for assignment in existing:
        by_key.setdefault(assignment.key, assignment)
        if assignment.principal.object_id:
            by_object.setdefault(_object_key(assignment.role, assignment.principal), assignment)

    satisfied: set[int] = set()
    for (role, principal), reason in wanted.grants.items():
        if principal.key in policy.exclude:
            continue
        match = by_key.get(Assignment(scope, role, principal).key)
        if match is None and principal.object_id:
            match = by_object.get(_object_key(role, principal))
        if match is not None:
            satisfied.add(id(match))
            if policy.adopt and not _owned(match, policy):
                adopted.append(match)
            continue
        name = assignment_name(policy.prefix, scope, role, principal)
        changes.append(Change(Action.ADD, scope, role, principal, reason, name))

    adopted_ids = {id(a) for a in adopted}
    removals: list[Change] = []
    explicit: list[Change] = []
    owned_count = 0
    for assignment in existing:
        owned = _owned(assignment, policy) or id(assignment) in adopted_ids
        owned_count += owned
        if id(assignment) in satisfied or _untouchable(assignment.principal, policy):
            continue
        if not owned:
            drift.append(assignment)
        elif not wanted.unknown:
            ended = wanted.ended.get((assignment.role.casefold(), assignment.principal.key))
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
    return changes + explicit + removals, drift, adopted


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


def _owned(assignment: Assignment, policy: Policy) -> bool:
    return is_owned(assignment, policy.prefix) or (
        (assignment.scope.key, (assignment.name or "").casefold()) in policy.adopted
    )


def _object_key(role: str, principal: Principal) -> tuple:
    return (role.casefold(), principal.kind, principal.object_id.casefold(), (principal.tenant or "").casefold())


def _untouchable(principal: Principal, policy: Policy) -> bool:
    if principal.key in policy.exclude:
        return True
    ids = {principal.identifier.casefold(), (principal.object_id or "").casefold()}
    return bool(ids & policy.self_ids)
