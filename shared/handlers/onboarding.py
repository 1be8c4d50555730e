"""Onboarding queue messages: schema v1, policy, and handling (plain Python; the trigger lives in
function_app.py and only hands the body over).

A message grants or revokes one profile of the config for one principal, or, only when the config
allows it, targets from its explicit allow-list. Handling resolves the principal, records the grant
in the ledger (so the group sync keeps it) and writes through the engine's apply path: owned names,
one writer per cluster, retries, audit. Delivery is at least once, so every step is idempotent.

Outcomes follow the queue rule of docs/onboarding.md:
- permanent (bad JSON, schema, unknown profile, policy, unresolvable principal): never raised; the
  body goes to `onboarding-rejected` with the reason, and the audit records it;
- transient (throttling, 5xx, a busy cluster): raised, so the host retries and finally poison-queues;
- a principal ARM does not know yet: the message is sent again with a growing delay, carrying its
  attempt count in `_attempt`, up to `onboarding.maxNewIdentityRetries`, then rejected.

Graph change notifications arrive on the same queue and are passed to shared.handlers.notifications.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shared.handlers import notifications
from shared.adapters.audit import now_iso
from shared.core.config import DIRECT_PROFILE, SyncConfig, Target
from shared.core.errors import NotFoundError, PermanentError, TransientError
from shared.adapters.kusto import PrincipalNotYetKnownError
from shared.adapters.ledger import Grant
from shared.core.plan import Action, Change, Desired, Plan, Policy, plan
from shared.core.principals import Principal, PrincipalKind, is_guid, split_upn
from shared.adapters.queues import ONBOARDING, ONBOARDING_REJECTED
from shared.engine.reconcile import READ_CONCURRENCY, ChangeResult, Engine, RunReport, new_run_id
from shared.engine.resolve import resolve_principal
from shared.core.scopes import ADMIN_ROLES, Scope, ScopeError, canonical_role

log = logging.getLogger(__name__)

TRIGGER = "onboarding"
MAX_BYTES = 8 * 1024
NEW_IDENTITY_DELAY_SECONDS = 30
MAX_DELAY_SECONDS = 7 * 24 * 3600 - 1  # a queue message may stay invisible for at most 7 days
ATTEMPT = "_attempt"
DIRECT = DIRECT_PROFILE
FIELDS = ("version", "id", "action", "principal", "principalType", "profile", "targets",
          "expiresAt", "reason", "requestedBy")
PRINCIPAL_TYPES = ("User", "App", "Group")
KEPT_FOR_NOW = "kept for now"  # a revoke that must wait for the sync: its ledger row stays, marked revoked


class Rejected(PermanentError):
    """The message can never succeed as sent; the text is the reason a person reads."""


@dataclass(frozen=True)
class Message:
    """A validated v1 message. `body` is what to send again for a delayed retry."""

    id: str
    action: str
    principal: str
    principal_type: str | None = None
    profile: str | None = None
    targets: tuple[Target, ...] = ()
    expires_at: str | None = None
    reason: str | None = None
    requested_by: str | None = None
    attempt: int = 0
    body: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Outcome:
    status: str  # granted | revoked | unchanged | deferred | rejected | reconciled
    message_id: str
    detail: str
    report: RunReport | None = None


# --- schema -----------------------------------------------------------------------------------

def decode(body: bytes | str) -> Any:
    """The JSON in a queue body: as the trigger hands it over (decoded), or still base64-encoded."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BYTES:
        raise Rejected(f"the message is {len(raw)} bytes; at most {MAX_BYTES} are accepted")
    try:
        text = raw.decode("utf-8")
        try:
            return json.loads(text)
        except ValueError:
            return json.loads(base64.b64decode(text.strip(), validate=True).decode("utf-8"))
    except ValueError:  # also covers binascii.Error and UnicodeDecodeError
        raise Rejected("the message is not JSON (nor base64-encoded JSON)") from None


def parse(data: Any, *, default_id: str, now: datetime | None = None) -> Message:
    """Validate a decoded message against schema v1; Rejected lists every problem at once."""
    if not isinstance(data, dict):
        raise Rejected("the message must be a JSON object (schema version 1)")
    body = {k: v for k, v in data.items() if k != ATTEMPT}
    problems: list[str] = []
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(FIELDS)})")

    def text(key: str, limit: int, required: bool = False) -> str | None:
        value = body.get(key)
        if value is None:
            if required:
                problems.append(f"{key}: is required")
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            problems.append(f"{key}: must be a non-empty string of at most {limit} characters")
            return None
        return value.strip()

    version = body.get("version", 1)
    if version != 1 or isinstance(version, bool):
        problems.append(f"version: must be 1, got {version!r}")
    action = body.get("action", "grant")
    if action not in ("grant", "revoke"):
        problems.append(f"action: must be 'grant' or 'revoke', got {action!r}")
    principal_type = text("principalType", 16)
    if principal_type is not None:
        principal_type = next((t for t in PRINCIPAL_TYPES if t.casefold() == principal_type.casefold()), None)
        if principal_type is None:
            problems.append(f"principalType: must be one of {', '.join(PRINCIPAL_TYPES)}")
    profile = text("profile", 64)
    targets = _targets(body.get("targets"), problems)
    if (profile is None) == (body.get("targets") is None):
        problems.append("exactly one of profile and targets must be given")
    expires_at = _expiry(body.get("expiresAt"), action, now or datetime.now(timezone.utc), problems)
    attempt = data.get(ATTEMPT, 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        problems.append(f"{ATTEMPT}: must be a non-negative integer")
    message = Message(
        id=text("id", 128) or default_id, action=action, principal=text("principal", 512, required=True),
        principal_type=principal_type, profile=profile, targets=targets, expires_at=expires_at,
        reason=text("reason", 1024), requested_by=text("requestedBy", 256), attempt=attempt, body=body,
    )
    if problems:
        raise Rejected("invalid message: " + "; ".join(problems))
    return message


def _targets(value: Any, problems: list[str]) -> tuple[Target, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value or len(value) > 20:
        problems.append("targets: must be a list of 1 to 20 {cluster, database?, role} objects")
        return ()
    found = []
    for i, item in enumerate(value):
        where = f"targets[{i}]"
        if not isinstance(item, dict) or not {"cluster", "role"} <= set(item) <= {"cluster", "database", "role"}:
            problems.append(f"{where}: must be an object with cluster, role and optionally database")
            continue
        try:
            scope = Scope(item["cluster"], item.get("database"))
            role = canonical_role(scope, item["role"])
        except (ScopeError, AttributeError, TypeError):
            problems.append(f"{where}: cluster must be a Kusto cluster resource ID and database a name")
            continue
        if role is None:
            problems.append(f"{where}.role: {item['role']!r} is not one of {', '.join(scope.roles)}")
            continue
        found.append(Target(scope, role))
    return tuple(found)


def _expiry(value: Any, action: str, now: datetime, problems: list[str]) -> str | None:
    if value is None:
        return None
    if action != "grant":
        problems.append("expiresAt: only applies to action 'grant'")
        return None
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:
        problems.append("expiresAt: must be an ISO 8601 time with a time zone, e.g. 2030-01-31T18:00:00Z")
    elif when <= now:
        problems.append(f"expiresAt: {value} is already past")
    else:
        return when.astimezone(timezone.utc).isoformat()
    return None


# --- policy -----------------------------------------------------------------------------------

def allowed_targets(message: Message, config: SyncConfig) -> tuple[tuple[Target, str], ...]:
    """What the message may touch, each with the ledger profile it is recorded under; or Rejected."""
    if message.profile is not None:
        profile = config.profiles.get(message.profile)
        if profile is None:
            known = ", ".join(sorted(config.profiles)) or "none"
            raise Rejected(f"unknown profile '{message.profile}' (profiles in the config: {known})")
        # The config only lets profiles marked admin hold admin roles (shared.core.config validates it).
        return tuple((t, profile.name) for t in profile.targets)
    if not config.onboarding.allow_direct_targets:
        raise Rejected("targets are refused: the config does not allow direct targets "
                       "(onboarding.allowDirectTargets is false); name a profile instead")
    for target in message.targets:
        if target.role in ADMIN_ROLES:
            raise Rejected(f"{target.role} on {target.scope} is an admin role: it is granted only "
                           "through a profile marked admin, never as a direct target")
        if target not in config.onboarding.direct_targets:
            raise Rejected(f"{target.role} on {target.scope} is not in the config's onboarding.directTargets")
    return tuple((t, DIRECT) for t in message.targets)


# --- handling ---------------------------------------------------------------------------------

def handle(engine: Engine, body: bytes | str, *, message_id: str, dequeue_count: int = 1,
           now: datetime | None = None) -> Outcome:
    """Handle one queue body. Returns the outcome; raises only what the host should retry."""
    original = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    report = RunReport(new_run_id(), TRIGGER, selector=f"message {message_id}")
    data = None
    try:
        data = decode(body)
        if notifications.is_event(data):
            reports = notifications.handle(engine, data)
            return Outcome("reconciled", message_id, f"{len(reports)} mapping run(s)")
        message = parse(data, default_id=message_id, now=now)
    except PermanentError as error:
        sent_id = data.get("id") if isinstance(data, dict) else None
        return _reject(engine, report, original, sent_id if isinstance(sent_id, str) else message_id, str(error))
    if dequeue_count > 1:
        log.info("message %s delivered %d times: handling it again is harmless", message.id, dequeue_count)
    report.selector = f"{message.action} {message.profile or 'direct targets'} for {message.principal} (message {message.id})"
    # Recorded once, when done: a handler that dies half-way has its message delivered again.
    with engine.telemetry.run(report), engine.recording(report, start=False):
        try:
            if message.action == "revoke" and message.profile and message.profile not in engine.config.profiles:
                principal = _resolve(engine, message)
                targets = granted_targets(engine, message.profile, principal)
            else:
                targets = allowed_targets(message, engine.config)
                principal = _resolve(engine, message)
            work = _grant if message.action == "grant" else _revoke
            outcome = work(engine, message, principal, targets, report)
        except PermanentError as error:
            outcome = _reject(engine, report, original, message.id, str(error), recorded=True)
    return outcome


def granted_targets(engine: Engine, profile: str, principal: Principal) -> tuple[tuple[Target, str], ...]:
    """The targets the ledger holds for `principal` through a profile the config no longer has:
    such a grant can still be revoked."""
    found = tuple((Target(g.scope, g.role), g.profile) for g in engine.ledger.all_grants()
                  if g.profile == profile and _same(Change(Action.SKIP, g.scope, g.role, g.principal, ""),
                                                    Target(g.scope, g.role), principal))
    if not found:
        known = ", ".join(sorted(engine.config.profiles)) or "none"
        raise Rejected(f"unknown profile '{profile}' (profiles in the config: {known}), and the ledger holds "
                       f"no grant of it for {principal.fqn}")
    return found


def _resolve(engine: Engine, message: Message) -> Principal:
    try:
        principal = resolve_principal(message.principal, engine.directory, engine.tenants, engine.home_tenant_id)
    except NotFoundError:
        principal = _brand_new(engine, message)
        if principal is None:
            raise
    if message.principal_type and message.principal_type != principal.principal_type:
        raise Rejected(f"principalType is {message.principal_type}, but {message.principal!r} "
                       f"resolves to {principal.principal_type} {principal.fqn}")
    if principal.key in {p.key for p in engine.config.exclude}:
        raise Rejected(f"{principal.fqn} is in the config's exclude list: the app never grants or revokes it")
    return principal


def _brand_new(engine: Engine, message: Message) -> Principal | None:
    """A home-tenant user (by UPN) or app (by app ID) that Graph does not show yet.

    A new identity takes a while to replicate, and HR tooling enqueues the moment it creates one,
    so ARM is left to judge: its "principal not found" starts the delayed retries.
    """
    text, kind = message.principal, message.principal_type
    if kind == "App" and is_guid(text):
        return Principal(PrincipalKind.APP, text, engine.home_tenant_id)
    if kind not in (None, "User") or "@" not in text or "=" in text or "#EXT#" in text.upper():
        return None
    local, domain = split_upn(text)
    tenant = engine.tenants.resolve_tenant(domain)
    if tenant.is_msa or tenant.tenant_id.lower() != engine.home_tenant_id.lower():
        return None
    return Principal(PrincipalKind.USER, f"{local}@{domain}", engine.home_tenant_id)


def _grant(engine: Engine, message: Message, principal: Principal,
           targets: tuple[tuple[Target, str], ...], report: RunReport) -> Outcome:
    grants = [Grant(t.scope, t.role, principal, profile, message.id, message.expires_at) for t, profile in targets]
    # A re-grant writes the same rows; should it fail, the earlier grants must survive it.
    earlier = {(g.scope, g.row_key): g for g in engine.ledger.grants({g.scope for g in grants})}

    def undo() -> None:
        for grant in grants:
            previous = earlier.get((grant.scope, grant.row_key))
            if previous is None:
                engine.ledger.remove_grant(grant)
            else:
                engine.ledger.record_grant(previous)

    # The ledger first: should the sync run in between, it makes the same add under the same name.
    for grant in grants:
        engine.ledger.record_grant(grant)
    try:
        scopes = sorted({g.scope for g in grants})
        current = {scope: engine.assignments.list_assignments(scope) for scope in scopes}
        desired = {scope: Desired({
            (g.role, principal): f"onboarded with profile {g.profile} (message {message.id})"
            for g in grants if g.scope == scope}) for scope in scopes}
        # Only the adds: the rest of each scope belongs to the sync.
        adds = [c for c in plan(desired, current, _policy(engine)).changes if c.action is Action.ADD]
        pending = {(c.scope, c.role) for c in adds}
        kept = [Change(Action.SKIP, g.scope, g.role, principal, "already granted: an existing assignment satisfies it")
                for g in grants if (g.scope, g.role) not in pending]
        _apply(engine, Plan(tuple(kept + adds)), report)
    except PrincipalNotYetKnownError as error:
        undo()
        return _defer(engine, message, error, report)
    except PermanentError:
        undo()
        raise
    status = "granted" if adds else "unchanged"
    return Outcome(status, message.id, f"{len(adds)} added, {len(kept)} already granted", report)


def _revoke(engine: Engine, message: Message, principal: Principal,
            targets: tuple[tuple[Target, str], ...], report: RunReport) -> Outcome:
    scopes = sorted({t.scope for t, _ in targets})
    # The rows are marked revoked first and dropped only once the assignments are gone: a revoked
    # row is what makes the scheduled sync finish a removal this message could not (never held).
    wanted = {(t.scope, Grant(t.scope, t.role, principal, profile, message.id).row_key) for t, profile in targets}
    revoked = [dataclasses.replace(g, revoked_at=g.revoked_at or now_iso())
               for g in engine.ledger.grants(scopes) if (g.scope, g.row_key) in wanted]
    for grant in revoked:
        engine.ledger.record_grant(grant)
    # Without this grant, does anything still want the assignment? Exactly what the sync would ask.
    with ThreadPoolExecutor(max_workers=READ_CONCURRENCY, thread_name_prefix="read") as pool:
        desired = engine.gather_desired(engine.config.mappings, set(scopes), pool)
    current = {scope: engine.assignments.list_assignments(scope) for scope in scopes}
    changes = plan(desired, current, _policy(engine, engine.ledger.adopted(scopes))).changes
    removes, kept, unsettled = [], [], set()
    for target, _ in targets:
        mine = [c for c in changes if c.action is Action.REMOVE and _same(c, target, principal)]
        removes += mine
        if not mine:
            why = _kept_because(desired[target.scope], current[target.scope], target, principal)
            kept.append(Change(Action.SKIP, target.scope, target.role, principal, why))
            if why.startswith(KEPT_FOR_NOW):
                unsettled.add((target.scope, target.role.casefold()))
    _apply(engine, Plan(tuple(kept + removes)), report)
    for grant in revoked:
        if (grant.scope, grant.role.casefold()) not in unsettled:
            engine.ledger.remove_grant(grant)
    status = "revoked" if removes else "unchanged"
    return Outcome(status, message.id, "; ".join([f"{len(removes)} removed"] + [c.reason for c in kept]), report)


def _kept_because(desired: Desired, current: list, target: Target, principal: Principal) -> str:
    for (role, wanted), why in desired.grants.items():
        if _same(Change(Action.SKIP, target.scope, role, wanted, ""), target, principal):
            return f"kept: still granted ({why})"
    if desired.unknown:
        return f"{KEPT_FOR_NOW}: {desired.unknown[0]}; the scheduled sync removes it once it can read the scope"
    if any(_same(Change(Action.SKIP, a.scope, a.role, a.principal, ""), target, principal) for a in current):
        return "kept: the assignment is not owned by the app"
    return "nothing to remove: no such assignment"


def _same(change: Change, target: Target, principal: Principal) -> bool:
    other = change.principal
    return (change.scope == target.scope and (change.role or "").casefold() == target.role.casefold()
            and (other.key == principal.key or (other.object_id is not None and other.object_id == principal.object_id)))


def _policy(engine: Engine, adopted: frozenset = frozenset()) -> Policy:
    """The sync's planning policy; `adopted` only matters to removals. One explicit revoke is no
    mass deletion, so the deletion guard does not hold it."""
    return Policy(prefix=engine.config.ownership.prefix, exclude=frozenset(p.key for p in engine.config.exclude),
                  self_ids=engine.self_ids, adopted=adopted, approve_deletes=True)


def _apply(engine: Engine, the_plan: Plan, report: RunReport) -> None:
    """Write through the engine (owned names, the cluster lease, retries); raise what failed, typed."""
    report.plan = the_plan
    engine.apply(the_plan, report)
    failed: list[ChangeResult] = [r for r in report.results if r.status == "failed"]
    errors = [r.cause for r in failed]
    text = "; ".join(f"{r.change.describe()}: {r.error}" for r in failed)
    if any(isinstance(e, PrincipalNotYetKnownError) for e in errors):
        raise PrincipalNotYetKnownError(text)
    if any(not isinstance(e, PermanentError) for e in errors):
        raise TransientError(text)
    if failed:
        raise Rejected(text)


def _defer(engine: Engine, message: Message, error: Exception, report: RunReport) -> Outcome:
    retries = engine.config.onboarding.max_new_identity_retries
    if message.attempt >= retries:
        raise Rejected(f"{error} (the principal is still unknown after {message.attempt} delayed "
                       f"retries; onboarding.maxNewIdentityRetries is {retries})")
    delay = min(NEW_IDENTITY_DELAY_SECONDS * 2 ** message.attempt, MAX_DELAY_SECONDS)
    engine.queues.send(ONBOARDING, message.body | {"id": message.id, ATTEMPT: message.attempt + 1},
                       delay_seconds=delay)
    for result in report.results:
        if result.status == "failed":
            result.status, result.error = "deferred", f"retry {message.attempt + 1} of {retries} in {delay}s: {error}"
    return Outcome("deferred", message.id, f"the principal is not known to ARM yet; retry {message.attempt + 1} "
                                           f"of {retries} in {delay}s", report)


def _reject(engine: Engine, report: RunReport, original: str, message_id: str, reason: str,
            *, recorded: bool = False) -> Outcome:
    """Send the body to onboarding-rejected with the reason, and audit it; never raises a permanent error."""
    engine.queues.send(ONBOARDING_REJECTED, {"reason": reason, "messageId": message_id, "time": now_iso(),
                                             "original": original})
    report.error = f"rejected: {reason}"
    if not recorded:
        report.finished = now_iso()
        engine.audit.record_end(report.record(), [])
    log.warning("onboarding message %s rejected: %s", message_id, reason)
    return Outcome("rejected", message_id, reason, report)

