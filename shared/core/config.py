"""The sync config: which groups get which Kusto roles where, plus guards and onboarding profiles.

`load_config` reads it from a file or inline (JSON or YAML) and `parse_config` validates it as a
whole: every problem is reported at once, each with its path (`mappings[2].targets[0].role: ...`),
in one ConfigError, and nothing runs on a bad config. docs/configuration.md documents every key.

`resolve_selector` turns the `--scope` of a run (a mapping name, a cluster, or CLUSTER/DATABASE)
into the mappings and scopes that run covers.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable


from shared.core.errors import ConfigError, PrincipalError
from shared.core.scopes import ADMIN_ROLES, CLUSTER_ROLES, DATABASE_ROLES, Scope, ScopeError

if TYPE_CHECKING:
    from shared.core.connections import DataConnection
    from shared.core.principals import Principal

MODES = ("members", "group")
INCLUDES = ("users", "apps", "both")
GUESTS = ("home", "host")
PRINCIPAL_KINDS = ("user", "app", "group")
HOME = "home"
"""In a profile's `tenants`: the app's own tenant, whatever its ID."""
MAX_ADMIN_DURATION = timedelta(days=30)


@dataclass(frozen=True)
class Target:
    """One role on one scope (a cluster, or a database of it); `role` is spelled canonically."""

    scope: Scope
    role: str

    def to_dict(self) -> dict[str, str]:
        out = {"cluster": self.scope.cluster}
        if self.scope.database is not None:
            out["database"] = self.scope.database
        return out | {"role": self.role}


@dataclass(frozen=True)
class Mapping:
    """An Entra group whose members (mode "members") or itself (mode "group") get the targets."""

    name: str
    group: str
    """Object ID, mail or display name of the group."""
    mode: str = "members"
    include: str = "users"
    """users | apps | both; members of these kinds are granted. Only used in mode "members"."""
    skip_disabled_accounts: bool = True
    targets: tuple[Target, ...] = ()

    @property
    def includes_users(self) -> bool:
        """True when user members are granted one by one (never in mode "group")."""
        return self.mode == "members" and self.include in ("users", "both")

    @property
    def includes_apps(self) -> bool:
        """True when service-principal members are granted one by one (never in mode "group")."""
        return self.mode == "members" and self.include in ("apps", "both")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "group": self.group, "mode": self.mode}
        if self.mode == "members":
            out.update(include=self.include, skipDisabledAccounts=self.skip_disabled_accounts)
        out["targets"] = [t.to_dict() for t in self.targets]
        return out


DIRECT_PROFILE = "(direct)"  # the onboarding ledger's profile for direct targets: no profile name has parentheses


@dataclass(frozen=True)
class Guards:
    """Deletion guard, per scope: more deletions than maxDeletes, or more than maxDeletePercent once
    there are more than deleteFloor, are held until approved. It stops accidents, not offboarding."""

    max_deletes: int = 20
    """Most owned assignments one run may delete in a scope without approval."""
    max_delete_percent: float = 25.0
    """Most of a scope's owned assignments, in percent, one run may delete without approval, once
    more than delete_floor are deleted."""
    delete_floor: int = 10
    """Up to this many deletions in a scope are never held by the percentage: one leaver of two
    owned is ordinary offboarding, not an accident."""


@dataclass(frozen=True)
class Ownership:
    prefix: str = "ks-"
    """Name prefix of the assignments the app creates; it is how the app recognises its own."""
    adopt: bool = False
    """Record matching pre-existing assignments as owned (so they may later be deleted)."""


@dataclass(frozen=True)
class Profile:
    """What an onboarding message naming this profile grants, to whom, for how long, and whether a
    person must approve it first. The defaults are the safe ones: a queue writer is trusted less
    than a config reviewer."""

    name: str
    admin: bool
    """Only admin profiles may grant Admin / AllDatabasesAdmin."""
    targets: tuple[Target, ...]
    principal_kinds: tuple[str, ...] = ("user",)
    """Which kinds of principal it may grant: user, app, group."""
    tenants: tuple[str, ...] = (HOME,)
    """Tenants its principals may live in: "home", tenant IDs (lower-case) or verified domains."""
    allow_consumer_accounts: bool = False
    """Whether a Microsoft (consumer) account (msauser=) may be granted."""
    max_duration: timedelta | None = None
    """Longest grant; a message without expiresAt gets exactly this. None: no limit."""
    approval: bool = False
    """A valid grant waits, written nowhere, until someone other than its requester approves it."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"admin": self.admin, "targets": [t.to_dict() for t in self.targets],
                               "principalKinds": list(self.principal_kinds), "tenants": list(self.tenants),
                               "allowConsumerAccounts": self.allow_consumer_accounts, "approval": self.approval}
        if self.max_duration is not None:
            out["maxDuration"] = format_duration(self.max_duration)
        return out


@dataclass(frozen=True)
class Onboarding:
    allow_direct_targets: bool = False
    """Whether an onboarding message may name targets itself instead of a profile."""
    direct_targets: tuple[Target, ...] = ()
    """The only targets a message may name when allow_direct_targets is true."""
    max_new_identity_retries: int = 6
    """Retries while a brand-new identity is not yet visible to Kusto/ARM."""
    approval_timeout: timedelta = timedelta(days=7)
    """How long a grant waits for approval before it is rejected."""


@dataclass(frozen=True)
class SyncConfig:
    mappings: tuple[Mapping, ...] = ()
    guards: Guards = Guards()
    ownership: Ownership = Ownership()
    guests: str = "host"
    """host: a B2B guest is granted as its guest object in the home tenant (what every cluster
    accepts); home: as the address it was invited with, in that address's tenant (the cluster must
    trust that tenant)."""
    full_sync_every: int = 12
    """Delta cycles between full re-reads of the groups (delta misses nested-group changes)."""
    exclude: tuple[Principal, ...] = ()
    """Principals the app never adds or removes."""
    profiles: dict[str, Profile] = field(default_factory=dict, hash=False)
    onboarding: Onboarding = Onboarding()
    version: str = ""
    """Short hash of the effective config, to report which config a run used (computed if empty)."""
    data_connections: tuple[DataConnection, ...] = ()
    """Declared ingestion per database (shared.core.connections)."""

    def __post_init__(self) -> None:
        if not self.version:
            canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            object.__setattr__(self, "version", hashlib.sha256(canonical.encode()).hexdigest()[:12])

    def scopes(self) -> tuple[Scope, ...]:
        """Every distinct scope the mappings target, sorted."""
        return tuple(sorted({t.scope for m in self.mappings for t in m.targets}))

    def offers(self, profile: str, scope: Scope, role: str) -> bool:
        """Whether the config still offers `role` on `scope` through `profile` (or as a direct target):
        an onboarding grant the config no longer offers ends like any other config change."""
        if profile == DIRECT_PROFILE:
            targets = self.onboarding.direct_targets
        else:
            targets = self.profiles[profile].targets if profile in self.profiles else ()
        return any(t.scope == scope and t.role.casefold() == role.casefold() for t in targets)

    def onboarding_scopes(self) -> set[Scope]:
        """Scopes that onboarding can grant in: every profile's and allowed direct target's."""
        targets = [t for p in self.profiles.values() for t in p.targets] + list(self.onboarding.direct_targets)
        return {t.scope for t in targets}

    def connection_scopes(self) -> tuple[Scope, ...]:
        """Every database with declared data connections, sorted."""
        return tuple(sorted({c.scope for c in self.data_connections}))

    def clusters(self) -> tuple[str, ...]:
        """Every distinct cluster resource ID the mappings target, sorted (ARM IDs ignore case)."""
        by_key = {s.cluster_key: s.cluster for s in reversed(self.scopes())}
        return tuple(by_key[k] for k in sorted(by_key))

    def to_dict(self) -> dict[str, Any]:
        """The effective config in its file form, defaults filled in; parse_config(to_dict()) == self."""
        return {
            "version": 1,
            "ownership": {"prefix": self.ownership.prefix, "adopt": self.ownership.adopt},
            "guards": {"maxDeletes": self.guards.max_deletes, "maxDeletePercent": self.guards.max_delete_percent,
                       "deleteFloor": self.guards.delete_floor},
            "guests": self.guests,
            "fullSyncEvery": self.full_sync_every,
            "exclude": [p.fqn for p in self.exclude],
            "mappings": [m.to_dict() for m in self.mappings],
            "profiles": {name: p.to_dict() for name, p in self.profiles.items()},
            "onboarding": {
                "allowDirectTargets": self.onboarding.allow_direct_targets,
                "directTargets": [t.to_dict() for t in self.onboarding.direct_targets],
                "maxNewIdentityRetries": self.onboarding.max_new_identity_retries,
                "approvalTimeout": format_duration(self.onboarding.approval_timeout),
            },
        } | ({"dataConnections": [
            {"name": c.name, "cluster": c.scope.cluster, "database": c.scope.database, "kind": c.kind} | dict(c.properties)
            for c in self.data_connections
        ]} if self.data_connections else {})


# --- validation ---------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,19}")
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
_KINDS: dict[str, Callable[[Any], bool]] = {
    "a boolean": lambda v: isinstance(v, bool),
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "a string": lambda v: isinstance(v, str),
    "a list": lambda v: isinstance(v, list),
    "a mapping": lambda v: isinstance(v, dict),
}
Check = Callable[[Any], "str | None"]


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    return kind if isinstance(value, (list, dict)) else f"{kind} {value!r}"


def _at(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"{v!r} is not one of {', '.join(choices)}"


def _matches(pattern: re.Pattern[str], rule: str) -> Check:
    return lambda v: None if pattern.fullmatch(v) else f"{v!r} {rule}"


def _not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


class _Node:
    """One mapping of the config being read: records every problem with its path instead of raising."""

    def __init__(self, problems: list[str], value: Any, path: str, allowed: tuple[str, ...],
                 required: tuple[str, ...] = ()):
        self.problems, self.path = problems, path
        self.is_mapping = isinstance(value, dict)
        self.data: dict[Any, Any] = value if self.is_mapping else {}
        if not self.is_mapping:
            self.report(path, f"must be a mapping, got {_describe(value)}")
            return
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.75)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.report(_at(path, key), f"unknown key{hint} (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in self.data:
                self.report(_at(path, key), "is required")

    def report(self, path: str, message: str) -> None:
        self.problems.append(f"{path or '(top level)'}: {message}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: str, default: Any = None, check: Check | None = None) -> Any:
        """The value of `key`, or `default` when it is absent or wrong (the problem is recorded)."""
        if key not in self.data:
            return default
        value = _checked(self, self.data[key], _at(self.path, key), kind, check)
        return default if value is _BAD else value

    def child(self, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> _Node:
        return _Node(self.problems, self.get(key, "a mapping", {}), _at(self.path, key), allowed, required)

    def each(self, key: str) -> list[tuple[Any, str]]:
        """The items of list `key` with their paths (none when absent or not a list)."""
        return [(item, f"{_at(self.path, key)}[{i}]") for i, item in enumerate(self.get(key, "a list", []))]


_BAD = object()


def _checked(node: _Node, value: Any, path: str, kind: str, check: Check | None = None) -> Any:
    if not _KINDS[kind](value):
        node.report(path, f"must be {kind}, got {_describe(value)}")
        return _BAD
    problem = check(value) if check else None
    if problem:
        node.report(path, problem)
        return _BAD
    return value


def _targets(node: _Node, key: str, *, empty: str | None, admin_rule: str | None = None) -> tuple[Target, ...]:
    """The targets listed under `key`. `empty`: the problem if there are none; `admin_rule`: the
    problem if an admin role is granted."""
    path = _at(node.path, key)
    if empty and node.is_mapping and not node.data.get(key) and isinstance(node.data.get(key, []), list):
        node.report(path, empty)
    targets: list[Target] = []
    seen: dict[tuple[tuple[str, str], str], tuple[str, Target]] = {}
    for value, item_path in node.each(key):
        target = _target(node.problems, value, item_path, admin_rule)
        if target is None:
            continue
        identity = (target.scope.key, target.role)
        if identity in seen:
            first_path, first = seen[identity]
            node.report(item_path, f"duplicate of {first_path} ({first.scope} {first.role})")
            continue
        seen[identity] = (item_path, target)
        targets.append(target)
    return tuple(targets)


def _target(problems: list[str], value: Any, path: str, admin_rule: str | None) -> Target | None:
    node = _Node(problems, value, path, ("cluster", "database", "role"), required=("cluster", "role"))
    before = len(problems)
    cluster = node.get("cluster", "a string")
    database = node.get("database", "a string", check=_not_blank)
    role = node.get("role", "a string")
    scope = None
    if cluster is not None:
        try:
            scope = Scope(cluster, database)
        except ScopeError as error:
            node.report(_at(path, "cluster"), str(error))
    if role is not None and (database is not None or not node.has("database")):
        # The level is known from `database` alone, so the role is checked even when the ID is bad.
        level, roles = ("database", DATABASE_ROLES) if database is not None else ("cluster", CLUSTER_ROLES)
        canonical = next((r for r in roles if r.casefold() == role.strip().casefold()), None)
        if canonical is None:
            node.report(_at(path, "role"), f"'{role}' is not a {level} role ({', '.join(roles)})")
        elif canonical in ADMIN_ROLES and admin_rule:
            node.report(_at(path, "role"), f"'{canonical}' is an admin role; {admin_rule}")
        role = canonical
    if len(problems) > before or scope is None or role is None:
        return None
    return Target(scope, role)


def _mapping(problems: list[str], value: Any, path: str) -> Mapping | None:
    keys = ("name", "group", "mode", "include", "skipDisabledAccounts", "targets")
    node = _Node(problems, value, path, keys, required=("name", "group"))
    before = len(problems)
    name = node.get("name", "a string", check=_matches(_NAME, "must be 1-64 characters of A-Z a-z 0-9 . _ -"))
    group = node.get("group", "a string", check=_not_blank)
    mode = node.get("mode", "a string", "members", _one_of(*MODES))
    include = node.get("include", "a string", "users", _one_of(*INCLUDES))
    skip = node.get("skipDisabledAccounts", "a boolean", True)
    if node.data.get("mode") == "group":
        for key in ("include", "skipDisabledAccounts"):
            if node.has(key):
                node.report(_at(path, key), "only applies to mode 'members' (this mapping has mode 'group')")
    targets = _targets(node, "targets", empty="must list at least one target")
    admin = sorted({t.role for t in targets if t.role in ADMIN_ROLES})
    if group is not None and admin and _names_by_display_name(group):
        node.report(_at(path, "group"), f"'{group.strip()}' is a display name, which anyone who may create a group "
                    f"can copy; a mapping that grants {' and '.join(admin)} names its group by object ID or mail")
    if len(problems) > before or name is None or group is None:
        return None
    return Mapping(name, group.strip(), mode, include, skip, targets)


def _names_by_display_name(group: str) -> bool:
    from shared.core.principals import is_guid

    return not is_guid(group.strip()) and "@" not in group


def reference_warnings(config: SyncConfig) -> list[str]:
    """What `check` warns about: mappings that name their group by display name. A look-alike
    group makes the name ambiguous (the mapping is then skipped), and after a rename the look-alike
    would inherit its roles; an object ID has neither problem."""
    return [f"mappings[{index}].group: '{m.group}' is a display name; name the group by object ID "
            "(a look-alike group would make the mapping ambiguous, or inherit its roles after a rename)"
            for index, m in enumerate(config.mappings) if _names_by_display_name(m.group)]


_DURATION = re.compile(r"P(?:(\d{1,5})W)?(?:(\d{1,5})D)?(?:T(?:(\d{1,6})H)?(?:(\d{1,8})M)?)?")


def parse_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration of weeks, days, hours and minutes (P30D, PT8H, P1DT12H), or None."""
    match = _DURATION.fullmatch(text.strip().upper()) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        return None
    weeks, days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes)


def format_duration(value: timedelta) -> str:
    """The ISO 8601 form parse_duration reads back: P30D, PT8H, P1DT12H30M."""
    minutes = int(value.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    time = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return "P" + (f"{days}D" if days or not time else "") + (f"T{time}" if time else "")


def _duration(value: str) -> str | None:
    return None if parse_duration(value) else (
        f"'{value}' is not an ISO 8601 duration of weeks, days, hours or minutes (e.g. P30D, PT8H, P1DT12H)")


def _tenant_entry(value: str) -> str | None:
    from shared.core.principals import is_guid, normalize_domain

    if value == HOME or is_guid(value):
        return None
    try:
        normalize_domain(value)
    except PrincipalError:
        return f"'{value}' is neither '{HOME}', a tenant ID (GUID) nor a verified domain"
    return None


def _canonical_tenant_entry(value: str) -> str:
    from shared.core.principals import is_guid, normalize_domain

    return value if value == HOME else value.lower() if is_guid(value) else normalize_domain(value)


def _profile(problems: list[str], name: Any, value: Any) -> Profile | None:
    path = f"profiles.{name}"
    keys = ("admin", "targets", "principalKinds", "tenants", "allowConsumerAccounts", "maxDuration", "approval")
    node = _Node(problems, value, path, keys)
    before = len(problems)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        node.report(path, f"profile name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ -")
    admin = node.get("admin", "a boolean", False)
    rule = None if admin else f"only profiles with admin: true may grant it ({path}.admin)"
    targets = _targets(node, "targets", empty="must list at least one target", admin_rule=rule)
    kinds = _distinct(node, "principalKinds", ("user",), _one_of(*PRINCIPAL_KINDS))
    tenants = tuple(_canonical_tenant_entry(t) for t in _distinct(node, "tenants", (HOME,), _tenant_entry))
    consumer = node.get("allowConsumerAccounts", "a boolean", False)
    raw = node.get("maxDuration", "a string", None, _duration)
    max_duration = parse_duration(raw) if raw is not None else None
    approval = node.get("approval", "a boolean", False)
    if admin:
        # An admin grant is the one a compromised queue writer wants most: bounded, and seen by a person.
        if not node.has("maxDuration"):
            node.report(f"{path}.maxDuration", f"is required for an admin profile (at most "
                                               f"{format_duration(MAX_ADMIN_DURATION)})")
        elif max_duration is not None and max_duration > MAX_ADMIN_DURATION:
            node.report(f"{path}.maxDuration", f"{raw} is longer than the {format_duration(MAX_ADMIN_DURATION)} "
                                               "an admin profile may grant")
        if approval is not True:
            node.report(f"{path}.approval", "must be true for an admin profile: a person approves every admin grant")
    if len(problems) > before:
        return None
    return Profile(name, admin, targets, kinds, tenants, consumer, max_duration, approval)


def _distinct(node: _Node, key: str, default: tuple[str, ...], check: Check) -> tuple[str, ...]:
    """A non-empty list of distinct strings under `key`, each passing `check`; `default` when absent."""
    if not node.has(key):
        return default
    found: list[str] = []
    items = node.each(key)
    if node.has(key) and isinstance(node.data[key], list) and not items:
        node.report(_at(node.path, key), "must list at least one entry (leave the key out for the default)")
    for value, path in items:
        value = _checked(node, value, path, "a string", check)
        if value is _BAD:
            continue
        if value in found:
            node.report(path, f"duplicate of '{value}'")
            continue
        found.append(value)
    return tuple(found)


def _exclude(root: _Node) -> tuple[Principal, ...]:
    from shared.core.principals import parse_principal  # the principal model is parsed where it lives

    found: dict[Any, Principal] = {}
    for text, path in root.each("exclude"):
        if _checked(root, text, path, "a string") is _BAD:
            continue
        try:
            principal = parse_principal(text)
        except PrincipalError as error:
            root.report(path, str(error))
            continue
        found.setdefault(principal.key, principal)
    return tuple(found.values())


_TOP_KEYS = ("version", "ownership", "guards", "guests", "fullSyncEvery", "exclude", "mappings", "profiles",
             "onboarding", "dataConnections")


def parse_config(data: Any, *, source: str = "config") -> SyncConfig:
    """Validate a loaded config (dicts and lists); raise ConfigError listing every problem."""
    problems: list[str] = []
    if data is None:
        raise ConfigError(["the config is empty"], source=source)
    root = _Node(problems, data, "", _TOP_KEYS)
    if not root.is_mapping:
        raise ConfigError(problems, source=source)
    root.get("version", "an integer", 1, lambda v: None if v == 1 else f"must be 1 (the only version), got {v}")

    node = root.child("ownership", ("prefix", "adopt"))
    ownership = Ownership(
        prefix=node.get("prefix", "a string", "ks-", _matches(
            _PREFIX, "must be 1-20 characters of A-Z a-z 0-9 - and start with a letter")),
        adopt=node.get("adopt", "a boolean", False),
    )
    node = root.child("guards", ("maxDeletes", "maxDeletePercent", "deleteFloor"))
    guards = Guards(
        max_deletes=node.get("maxDeletes", "an integer", 20, _at_least(0)),
        max_delete_percent=float(node.get("maxDeletePercent", "a number", 25.0, _between(0, 100))),
        delete_floor=node.get("deleteFloor", "an integer", 10, _at_least(0)),
    )
    guests = root.get("guests", "a string", "host", _one_of(*GUESTS))
    full_sync_every = root.get("fullSyncEvery", "an integer", 12, _at_least(1))
    exclude = _exclude(root)

    mappings: list[Mapping] = []
    names: dict[str, str] = {}
    for value, path in root.each("mappings"):
        mapping = _mapping(problems, value, path)
        name = value.get("name") if isinstance(value, dict) else None
        if isinstance(name, str) and name.casefold() in names:
            root.report(f"{path}.name", f"duplicate mapping name '{name}' (first at {names[name.casefold()]})")
        elif isinstance(name, str):
            names[name.casefold()] = path
        if mapping is not None:
            mappings.append(mapping)

    profiles: dict[str, Profile] = {}
    for name, value in root.get("profiles", "a mapping", {}).items():
        profile = _profile(problems, name, value)
        if profile is not None:
            profiles[name] = profile
    from shared.core.connections import parse_connections  # it reads its part with this module's reader

    data_connections = parse_connections(root, problems)
    if root.data.get("mappings", []) == [] and not root.data.get("profiles") and not data_connections:
        root.report("mappings", "must list at least one mapping (it may be empty only when profiles or "
                                "dataConnections are defined)")

    node = root.child("onboarding", ("allowDirectTargets", "directTargets", "maxNewIdentityRetries",
                                     "approvalTimeout"))
    allow = node.get("allowDirectTargets", "a boolean", False)
    timeout = node.get("approvalTimeout", "a string", None, _duration)
    onboarding = Onboarding(
        allow_direct_targets=allow,
        direct_targets=_targets(node, "directTargets", empty=(
            "must list at least one target when allowDirectTargets is true" if allow else None)),
        max_new_identity_retries=node.get("maxNewIdentityRetries", "an integer", 6, _at_least(0)),
        approval_timeout=parse_duration(timeout) if timeout else Onboarding.approval_timeout,
    )
    if problems:
        raise ConfigError(problems, source=source)
    return SyncConfig(tuple(mappings), guards, ownership, guests, full_sync_every, exclude, profiles, onboarding,
                      data_connections=data_connections)


# --- loading ------------------------------------------------------------------------------------

_SUFFIXES = (".json", ".yaml", ".yml")
_APP_ROOT = Path(__file__).resolve().parents[2]


class _DuplicateKey(ValueError):
    pass


@functools.cache
def _strict_loader():
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently).

    Built on first use: PyYAML costs ~10 ms to import, and JSON configs never need it.
    """
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key '{key_node.value}'", key_node.start_mark)
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep)

    return StrictLoader


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key '{key}'")
        out[key] = value
    return out


def _decode(text: str, as_json: bool, source: str) -> Any:
    if as_json:
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as error:
            raise ConfigError([f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"],
                              source=source) from error
        except _DuplicateKey as error:
            raise ConfigError([f"invalid JSON: {error}"], source=source) from error
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = f"{error.context}: {error.problem}" if error.context else error.problem
        raise ConfigError([f"invalid YAML{where}: {what}"], source=source) from error
    except yaml.YAMLError as error:
        raise ConfigError([f"invalid YAML: {error}"], source=source) from error


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # e.g. a one-line inline config longer than a file name may be
        return False


def load_config(value: str, *, source: str | None = None) -> SyncConfig:
    """Load the config from a file path (.json, .yaml, .yml) or from the config text itself.

    Text starting with '{' is JSON; text with a newline, or a ':' that is not part of a path to a
    config file, is YAML; anything else is a path.
    """
    text = value.strip()
    if not text:
        raise ConfigError(["no config given (the value is empty)"], source=source or "config")
    is_path = "\n" not in text and not text.startswith("#") and (text.lower().endswith(_SUFFIXES) or ":" not in text or _is_file(text))
    if text.startswith("{") or not is_path:
        where = source or "inline config"
        return parse_config(_decode(text, text.startswith("{"), where), source=where)
    path = Path(text)
    if not path.is_absolute() and not path.exists():
        path = _APP_ROOT / path  # the Functions worker's directory need not be the app's root
    where = source or text
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as error:
        raise ConfigError([f"config file not found: {path}"], source=where) from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"cannot read config file {path}: {error}"], source=where) from error
    return parse_config(_decode(content, path.suffix.lower() == ".json", where), source=where)


# --- selecting what a run covers ----------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """What one run reconciles: `scopes`, and every mapping with a target there (targets restricted).

    A scope is always reconciled against *all* mappings that target it, even when the selector is
    one mapping's name: an assignment another mapping also wants must not look undesired.
    """

    mappings: tuple[Mapping, ...]
    scopes: frozenset[Scope]


def _selector_table(config: SyncConfig) -> dict[str, dict[frozenset[Scope], str]]:
    """Every accepted spelling of a selector (case-folded) → the scopes it means → a label."""
    table: dict[str, dict[frozenset[Scope], str]] = {}

    def add(label: str, scopes: frozenset[Scope], shown: str) -> None:
        table.setdefault(label.casefold(), {})[scopes] = shown

    for mapping in config.mappings:
        add(mapping.name, frozenset(t.scope for t in mapping.targets), f"mapping {mapping.name}")
    every = config.scopes()
    for cluster in config.clusters():
        scopes = frozenset(s for s in every if s.cluster_key == cluster.casefold())
        name = next(iter(scopes)).cluster_name
        add(cluster, scopes, f"cluster {cluster}")
        add(name, scopes, f"cluster {cluster}")
        for scope in scopes:
            if scope.database is not None:
                for prefix in (cluster, name):
                    for infix in ("/", "/databases/"):
                        add(f"{prefix}{infix}{scope.database}", frozenset({scope}), f"database {cluster}/{scope.database}")
    return table


def valid_selectors(config: SyncConfig) -> list[str]:
    """What an operator can name: mappings, clusters and CLUSTER/DATABASE (besides resource IDs)."""
    valid = {m.name for m in config.mappings} | {str(s) for s in config.scopes()}
    valid |= {Scope(c).cluster_name for c in config.clusters()}
    return sorted(valid, key=str.casefold)


def resolve_selector(config: SyncConfig, selector: str | None) -> Selection:
    """The mappings and scopes a run covers. `selector`: None (everything), a mapping name, a
    cluster resource ID or name, or CLUSTER/DATABASE (cluster ID or name); case-insensitive."""
    text = (selector or "").strip().rstrip("/")
    if not text:
        return Selection(config.mappings, frozenset(config.scopes()))
    matches = _selector_table(config).get(text.casefold(), {})
    if not matches:
        raise ConfigError([f"unknown selector '{text}'; valid selectors: {', '.join(valid_selectors(config))}"
                           " (or a cluster resource ID, optionally followed by /DATABASE)"], source="selector")
    if len(matches) > 1:
        raise ConfigError([f"selector '{text}' is ambiguous: it names {'; '.join(sorted(matches.values()))}; "
                           "use a cluster resource ID"], source="selector")
    (scopes,) = matches
    return select_scopes(config, scopes)


def select_scopes(config: SyncConfig, scopes: frozenset[Scope] | set[Scope]) -> Selection:
    """Exactly these scopes, with every mapping that targets them (targets restricted to them)."""
    scopes = frozenset(scopes)
    selected = []
    for mapping in config.mappings:
        kept = tuple(t for t in mapping.targets if t.scope in scopes)
        if kept:
            selected.append(mapping if kept == mapping.targets else replace(mapping, targets=kept))
    return Selection(tuple(selected), scopes)
