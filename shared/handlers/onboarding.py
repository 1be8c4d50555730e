"""Onboarding queue messages: schema v1, policy, approval and handling (plain Python; the trigger
lives in function_app.py and only hands the body over).

A message grants or revokes one profile of the config for one principal, or, only when the config
allows it, targets from its explicit allow-list. The profile says what may be granted (targets), to
whom (principal kinds, tenants, consumer accounts), for how long (maxDuration) and whether a person
approves it first. Handling resolves the principal, checks it against that policy, records the
grant in the ledger (so the group sync keeps it) and writes through the engine's apply path: owned
names, one writer per cluster, retries, audit. Delivery is at least once, so every step is
idempotent.

Outcomes follow the queue rule of docs/onboarding.md:
- permanent (bad JSON, schema, unknown profile, policy, unresolvable principal, stale): never
  raised; a rejection that always fits a queue message goes to `onboarding-rejected` with the
  reason, and the audit records it;
- transient (throttling, 5xx, a busy cluster): raised, so the host retries and finally poison-queues;
- a principal Graph knows but ARM does not yet: the message is sent again with a growing delay,
  carrying its attempt count in `_attempt`, up to `onboarding.maxNewIdentityRetries`, then rejected;
- a grant of a profile with `approval: true`: recorded as pending, nothing written, until
  `approve` (by someone other than its requester) releases it to the queue or `deny` rejects it.

Graph change notifications arrive on the same queue and are passed to shared.handlers.notifications.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.handlers import notifications
from shared.adapters.audit import now_iso
from shared.core.config import DIRECT_PROFILE, HOME, Profile, SyncConfig, Target, format_duration
from shared.core.errors import NotFoundError, PermanentError, TransientError
from shared.adapters.kusto import PrincipalNotYetKnownError
from shared.adapters.ledger import Grant, PendingGrant, Revocation
from shared.core.plan import Action, Assignment, Change, Desired, Plan, Policy, plan, same_principal
from shared.core.principals import Principal, PrincipalKind, is_guid
from shared.adapters.queues import MAX_MESSAGE_BYTES, ONBOARDING, ONBOARDING_REJECTED
from shared.engine.reconcile import READ_CONCURRENCY, ChangeResult, Engine, RunReport, new_run_id
from shared.engine.resolve import names_by_display_name, resolve_principal
from shared.core.scopes import ADMIN_ROLES, Scope, ScopeError, canonical_role

log = logging.getLogger(__name__)

TRIGGER = "onboarding"
APPROVAL_TRIGGER = "approval"
MAX_BYTES = 8 * 1024
NEW_IDENTITY_DELAY_SECONDS = 30
MAX_DELAY_SECONDS = 7 * 24 * 3600 - 1  # a queue message may stay invisible for at most 7 days
ATTEMPT = "_attempt"
ENQUEUED = "_enqueued"  # the first delivery's time, kept across delayed retries and approval
INTERNAL = (ATTEMPT, ENQUEUED)
DIRECT = DIRECT_PROFILE
FIELDS = ("version", "id", "action", "principal", "principalType", "profile", "targets",
          "expiresAt", "reason", "requestedBy", "issuedAt", "sequence")
PRINCIPAL_TYPES = ("User", "App", "Group")
CLOCK_SKEW = timedelta(minutes=5)
MAX_REVOKED_IDS = 50
_KIND_NAMES = {PrincipalKind.USER: "user", PrincipalKind.APP: "app", PrincipalKind.GROUP: "group",
               PrincipalKind.MSA: "user"}
# Characters that could start a new log or audit line, or make one read differently than it is.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNSAFE_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
KEPT_FOR_NOW = "kept for now"  # a revoke that must wait for the sync: its ledger row stays, marked revoked


class Rejected(PermanentError):
    """The message can never succeed as sent; the text is the reason a person reads."""


@dataclass(frozen=True)
class Message:
    """A validated v1 message. `body` is what it says (internal fields removed); `time` orders it
    against revokes: `issuedAt`, else its first delivery's time."""

    id: str
    action: str
    principal: str
    principal_type: str | None = None
    profile: str | None = None
    targets: tuple = ()
    expires_at: str | None = None
    reason: str | None = None
    requested_by: str | None = None
    attempt: int = 0
    time: str = ""
    sequence: int | None = None
    body: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass
class Outcome:
    status: str  # granted | revoked | unchanged | deferred | pending | rejected | reconciled
    message_id: str
    detail: str
    report: RunReport | None = None


def unsafe_character(text: str) -> str | None:
    """The first character of `text` that could forge or disguise a log line (as U+XXXX), or None."""
    for char in text:
        if char in _BIDI or unicodedata.category(char) in _UNSAFE_CATEGORIES:
            return f"U+{ord(char):04X}"
    return None


def printable(text: str, limit: int = 2000) -> str:
    """`text` safe for one log or audit line: unsafe characters escaped, at most `limit` characters."""
    out = "".join(c.encode("unicode_escape").decode("ascii") if unsafe_character(c) else c for c in text[:limit])
    return out if len(text) <= limit else out + f"... ({len(text) - limit} more characters)"


# --- schema -----------------------------------------------------------------------------------

def decode(body: bytes | str) -> Any:
    """The JSON in a queue body: as the trigger hands it over (decoded), or still base64-encoded."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
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
    except RecursionError:
        raise Rejected("the message nests its JSON too deeply") from None


def parse(data: Any, *, default_id: str, now: datetime | None = None, enqueued: datetime | None = None) -> Message:
    """Validate a decoded message against schema v1; Rejected lists every problem at once."""
    if not isinstance(data, dict):
        raise Rejected("the message must be a JSON object (schema version 1)")
    now = now or datetime.now(timezone.utc)
    body = {k: v for k, v in data.items() if k not in INTERNAL}
    problems: list[str] = []
    unknown = sorted(str(k) for k in set(body) - set(FIELDS))
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        problems.append(f"unknown field(s) {shown} (allowed: {', '.join(FIELDS)})")

    def text(key: str, limit: int, required: bool = False) -> str | None:
        value = body.get(key)
        if value is None:
            if required:
                problems.append(f"{key}: is required")
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            problems.append(f"{key}: must be a non-empty string of at most {limit} characters")
            return None
        bad = unsafe_character(value)
        if bad:
            problems.append(f"{key}: must not contain control or line-breaking characters ({bad})")
            return None
        return value.strip()

    version = body.get("version", 1)
    if version != 1 or isinstance(version, bool):
        problems.append(f"version: must be 1, got {printable(repr(version), 40)}")
    action = body.get("action", "grant")
    if action not in ("grant", "revoke"):
        problems.append(f"action: must be 'grant' or 'revoke', got {printable(repr(action), 40)}")
    principal_type = text("principalType", 16)
    if principal_type is not None:
        principal_type = next((t for t in PRINCIPAL_TYPES if t.casefold() == principal_type.casefold()), None)
        if principal_type is None:
            problems.append(f"principalType: must be one of {', '.join(PRINCIPAL_TYPES)}")
    profile = text("profile", 64)
    targets = _targets(body.get("targets"), problems)
    if (profile is None) == (body.get("targets") is None):
        problems.append("exactly one of profile and targets must be given")
    expires_at = _expiry(body.get("expiresAt"), action, now, problems)
    issued = _time(body.get("issuedAt"), "issuedAt", problems)
    if issued is not None and issued > now + CLOCK_SKEW:
        problems.append("issuedAt: is in the future (more than 5 minutes of clock skew)")
    sequence = body.get("sequence")
    if sequence is not None and (not isinstance(sequence, int) or isinstance(sequence, bool)
                                 or not 0 <= sequence < 2**63):
        problems.append("sequence: must be an integer from 0 to 2^63-1")
        sequence = None
    attempt = data.get(ATTEMPT, 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or not 0 <= attempt < 1000:
        problems.append(f"{ATTEMPT}: must be a non-negative integer")
        attempt = 0
    first = _time(data.get(ENQUEUED), ENQUEUED, problems)
    when = issued or first or enqueued or now
    message = Message(
        id=text("id", 128) or default_id, action=action, principal=text("principal", 512, required=True),
        principal_type=principal_type, profile=profile, targets=targets, expires_at=expires_at,
        reason=text("reason", 1024), requested_by=text("requestedBy", 256), attempt=attempt,
        time=when.astimezone(timezone.utc).isoformat(), sequence=sequence, body=body,
    )
    if problems:
        raise Rejected("invalid message: " + "; ".join(problems))
    return message


def _targets(value: Any, problems: list[str]) -> tuple:
    """The targets a message names, as (Scope, canonical role) pairs; checked against the config later."""
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
            problems.append(f"{where}.role: {printable(repr(item['role']), 40)} is not one of {', '.join(scope.roles)}")
            continue
        found.append((scope, role))
    return tuple(found)


def _time(value: Any, key: str, problems: list[str]) -> datetime | None:
    """An ISO 8601 time with a time zone, in UTC; a problem recorded for anything else."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError
        return when.astimezone(timezone.utc)
    except (TypeError, ValueError, OverflowError):  # 9999-12-31T23:30:00-01:00 overflows in UTC
        problems.append(f"{key}: must be an ISO 8601 time with a time zone between the years 1 and 9999, "
                        "e.g. 2030-01-31T18:00:00Z")
        return None


def _expiry(value: Any, action: str, now: datetime, problems: list[str]) -> str | None:
    if value is None:
        return None
    if action != "grant":
        problems.append("expiresAt: only applies to action 'grant'")
        return None
    when = _time(value, "expiresAt", problems)
    if when is not None and when <= now:
        problems.append(f"expiresAt: {when.isoformat()} is already past")
        return None
    return None if when is None else when.isoformat()


# --- policy -----------------------------------------------------------------------------------

def allowed_profile(message: Message, config: SyncConfig) -> Profile:
    """The profile the message may use: a configured one, or, for direct targets, an ad hoc one of
    the configured target objects with the default policy; or Rejected."""
    if message.profile is not None:
        profile = config.profiles.get(message.profile)
        if profile is None:
            known = ", ".join(sorted(config.profiles)) or "none"
            raise Rejected(f"unknown profile '{message.profile}' (profiles in the config: {known})")
        # The config only lets profiles marked admin hold admin roles (shared.core.config validates it).
        return profile
    if not config.onboarding.allow_direct_targets:
        raise Rejected("targets are refused: the config does not allow direct targets "
                       "(onboarding.allowDirectTargets is false); name a profile instead")
    # ARM compares resource IDs ignoring ASCII case only: casefold() would let 'ﬁnance-straße'
    # pass for 'finance-strasse'. The write always goes to the configured spelling.
    configured = {_exact(t.scope, t.role): t for t in config.onboarding.direct_targets}
    chosen = []
    for scope, role in message.targets:
        if role in ADMIN_ROLES:
            raise Rejected(f"{role} on {scope} is an admin role: it is granted only "
                           "through a profile marked admin, never as a direct target")
        target = configured.get(_exact(scope, role))
        if target is None:
            raise Rejected(f"{role} on {printable(str(scope), 300)} is not in the config's onboarding.directTargets")
        chosen.append(target)
    return Profile(DIRECT, False, tuple(dict.fromkeys(chosen)))


def _exact(scope: Scope, role: str) -> tuple[str, str, str]:
    return _ascii_lower(scope.cluster), _ascii_lower(scope.database or ""), role


def _ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def check_principal(engine: Engine, profile: Profile, principal: Principal) -> None:
    """Refuse a principal the profile may not grant, naming the rule and the profile."""
    where = "direct targets" if profile.name == DIRECT else f"profile '{profile.name}'"
    if principal.kind is PrincipalKind.MSA:
        if not profile.allow_consumer_accounts:
            raise Rejected(f"{principal.fqn} is a Microsoft (consumer) account: {where} does not grant "
                           "consumer accounts (allowConsumerAccounts is false)")
        return  # a consumer account has no tenant to check
    kind = _KIND_NAMES[principal.kind]
    if kind not in profile.principal_kinds:
        raise Rejected(f"{principal.fqn} is a {kind}: {where} grants only {', '.join(profile.principal_kinds)} "
                       "(principalKinds)")
    tenant = (principal.tenant or "").lower()
    if tenant not in _tenant_ids(engine, profile):
        raise Rejected(f"{principal.fqn} is in tenant {tenant or '(none)'}: {where} grants only to "
                       f"{', '.join(profile.tenants)} (tenants)")


def _tenant_ids(engine: Engine, profile: Profile) -> set[str]:
    ids = set()
    for entry in profile.tenants:
        if entry == HOME:
            ids.add(engine.home_tenant_id.lower())
        elif is_guid(entry):
            ids.add(entry)
        else:
            try:
                info = engine.tenants.resolve_tenant(entry)
            except PermanentError as error:  # a domain that no longer resolves admits no one
                log.warning("profile %s: tenant %s does not resolve: %s", profile.name, entry, error)
                continue
            if not info.is_msa:
                ids.add(info.tenant_id.lower())
    return ids


def bounded_expiry(message: Message, profile: Profile, now: datetime) -> str | None:
    """The grant's expiry within the profile's maxDuration: the message's, or the maximum; or Rejected."""
    limit = profile.max_duration
    if limit is None:
        return message.expires_at
    latest = now + limit
    if message.expires_at is None:
        return latest.isoformat(timespec="seconds")
    if datetime.fromisoformat(message.expires_at) > latest:
        raise Rejected(f"expiresAt {message.expires_at} is beyond the maxDuration {format_duration(limit)} of "
                       f"profile '{profile.name}' (at most {latest.isoformat(timespec='seconds')})")
    return message.expires_at


def _check_fresh(engine: Engine, message: Message, principal: Principal, profile: Profile) -> None:
    """Refuse a grant that a later revoke of the same (principal, profile) overtook."""
    revoked = engine.ledger.revocation(principal, profile.name)
    if revoked is None:
        return
    if message.id in revoked.message_ids:
        why = f"message {message.id} was granted once already and revoked at {revoked.time}: a replay"
    elif message.sequence is not None and revoked.sequence is not None:
        if message.sequence >= revoked.sequence:
            return
        why = f"its sequence {message.sequence} is below the revoke's {revoked.sequence}"
    elif datetime.fromisoformat(message.time) < datetime.fromisoformat(revoked.time):
        why = f"it was issued at {message.time}, before the revoke at {revoked.time}"
    else:
        return
    raise Rejected(f"stale grant of {profile.name} for {principal.fqn}: {why}")


# --- handling ---------------------------------------------------------------------------------

def handle(engine: Engine, body: bytes | str, *, message_id: str, dequeue_count: int = 1,
           now: datetime | None = None, enqueued: datetime | None = None) -> Outcome:
    """Handle one queue body. Returns the outcome; raises only what the host should retry.

    `enqueued` is the queue's insertion time of the message: it orders a message without
    `issuedAt` against revokes."""
    report = RunReport(new_run_id(), TRIGGER, selector=f"message {message_id}")
    data = None
    try:
        data = decode(body)
        if notifications.is_event(data):
            reports = notifications.handle(engine, data)
            return Outcome("reconciled", message_id, f"{len(reports)} mapping run(s)")
        message = parse(data, default_id=message_id, now=now, enqueued=enqueued)
    except PermanentError as error:
        sent_id = data.get("id") if isinstance(data, dict) else None
        usable = isinstance(sent_id, str) and 0 < len(sent_id) <= 128 and not unsafe_character(sent_id)
        return _reject(engine, report, body, sent_id if usable else message_id, str(error))
    if dequeue_count > 1:
        log.info("message %s delivered %d times: handling it again is harmless", message.id, dequeue_count)
    report.selector = f"{message.action} {message.profile or 'direct targets'} for {message.principal} (message {message.id})"
    # Recorded once, when done: a handler that dies half-way has its message delivered again.
    with engine.telemetry.run(report), engine.recording(report, start=False):
        try:
            if message.action == "revoke" and message.profile and message.profile not in engine.config.profiles:
                # A grant of a profile since removed can still be revoked, with the targets the ledger holds.
                principal = _resolve(engine, message, Profile(message.profile, False, ()))
                return _revoke(engine, message, principal, granted_profile(engine, message.profile, principal), report)
            profile = allowed_profile(message, engine.config)
            principal = _resolve(engine, message, profile)
            if message.action == "revoke":  # taking access away is never refused by the policy
                return _revoke(engine, message, principal, profile, report)
            check_principal(engine, profile, principal)
            expires_at = bounded_expiry(message, profile, now or datetime.now(timezone.utc))
            _check_fresh(engine, message, principal, profile)
            if profile.approval:
                pending = _approval(engine, message, principal, profile, report, now)
                if pending is not None:
                    return pending
            return _grant(engine, message, principal, profile, expires_at, report)
        except PermanentError as error:
            return _reject(engine, report, body, message.id, str(error), recorded=True)


def granted_profile(engine: Engine, name: str, principal: Principal) -> Profile:
    """A profile the config no longer has, as the ledger remembers granting it to `principal`:
    such a grant can still be revoked."""
    targets = tuple(dict.fromkeys(
        Target(g.scope, g.role) for g in engine.ledger.all_grants()
        if g.profile == name and _same(Change(Action.SKIP, g.scope, g.role, g.principal, ""), Target(g.scope, g.role), principal)))
    if not targets:
        known = ", ".join(sorted(engine.config.profiles)) or "none"
        raise Rejected(f"unknown profile '{name}' (profiles in the config: {known}), and the ledger holds "
                       f"no grant of it for {principal.fqn}")
    return Profile(name, False, targets)


def _resolve(engine: Engine, message: Message, profile: Profile) -> Principal:
    """The principal, through Graph. Graph is authoritative for the home tenant: an address or ID it
    does not know there is a typo, refused at once (the delayed retries are for ARM's lag only)."""
    if any(t.role in ADMIN_ROLES for t in profile.targets) and names_by_display_name(message.principal):
        raise Rejected(f"{message.principal!r} is a display name, which anyone who may create a group can copy: "
                       "an admin role is granted only to a principal named by object ID, app ID, UPN or email")
    try:
        principal = resolve_principal(message.principal, engine.directory, engine.tenants, engine.home_tenant_id,
                                      guests=engine.config.guests)
    except NotFoundError as error:
        raise Rejected(f"{error} (tenant {engine.home_tenant_id}; Graph is authoritative for it, so this is "
                       "not replication lag: check the spelling)") from None
    if message.principal_type and message.principal_type != principal.principal_type:
        raise Rejected(f"principalType is {message.principal_type}, but {message.principal!r} "
                       f"resolves to {principal.principal_type} {principal.fqn}")
    if not engine.excluded().isdisjoint(principal.match_keys):
        raise Rejected(f"{principal.fqn} is in the config's exclude list: the app never grants or revokes it")
    return principal


def _grant(engine: Engine, message: Message, principal: Principal, profile: Profile,
           expires_at: str | None, report: RunReport) -> Outcome:
    grants = [Grant(t.scope, t.role, principal, profile.name, message.id, expires_at) for t in profile.targets]
    # The ledger first: should the sync run in between, it makes the same add under the same name.
    # Another grant of the same profile may own the row: it is restored if this one fails, and the
    # later of the two expiries wins.
    previous = [engine.ledger.get_grant(g) for g in grants]
    grants = [_later(g, p) for g, p in zip(grants, previous)]
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
        _restore(engine, grants, previous)
        return _defer(engine, message, error, report)
    except PermanentError:
        _restore(engine, grants, previous)
        raise
    _granted(engine, message, principal, profile)
    status = "granted" if adds else "unchanged"
    kept_expiry = [g for g, p in zip(grants, previous) if p is not None and g.expires_at != expires_at]
    note = f"; expiry kept at {kept_expiry[0].expires_at or 'never'} (a grant with a later expiry)" if kept_expiry else ""
    return Outcome(status, message.id, f"{len(adds)} added, {len(kept)} already granted{note}", report)


def _later(grant: Grant, previous: Grant | None) -> Grant:
    """`grant`, with the previous row's expiry when that one is later (None is never); a revoked row
    counts for nothing (this grant supersedes it)."""
    if previous is None or previous.revoked_at or previous.expires_at == grant.expires_at or grant.expires_at is None:
        return grant
    if previous.expires_at is None or datetime.fromisoformat(previous.expires_at) > datetime.fromisoformat(grant.expires_at):
        return replace(grant, expires_at=previous.expires_at)
    return grant


def _restore(engine: Engine, grants: list[Grant], previous: list[Grant | None]) -> None:
    for grant, before in zip(grants, previous):
        if before is None:
            engine.ledger.remove_grant(grant)
        else:
            engine.ledger.record_grant(before)


def _revoke(engine: Engine, message: Message, principal: Principal, profile: Profile, report: RunReport) -> Outcome:
    targets = profile.targets
    scopes = sorted({t.scope for t in targets})
    # The rows are marked revoked first and dropped only once the assignments are gone: a revoked
    # row is what makes the scheduled sync finish a removal this message could not (never held).
    # They are matched by directory identity: the grant may have been recorded under a UPN since renamed.
    revoked = [dataclasses.replace(g, revoked_at=g.revoked_at or now_iso())
               for g in engine.ledger.grants(scopes) if _revokes(g, principal, profile)]
    for grant in revoked:
        engine.ledger.record_grant(grant)
    _record_revocation(engine, message, principal, profile, [g.message_id for g in revoked])
    # Without this grant, does anything still want the assignment? Exactly what the sync would ask.
    with ThreadPoolExecutor(max_workers=READ_CONCURRENCY, thread_name_prefix="read") as pool:
        desired = engine.gather_desired(engine.config.mappings, set(scopes), pool)
    current = {scope: engine.assignments.list_assignments(scope) for scope in scopes}
    changes = plan(desired, current, _policy(engine, engine.ledger.adopted(scopes))).changes
    removes, kept, unsettled = [], [], set()
    for target in targets:
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


def _record_revocation(engine: Engine, message: Message, principal: Principal, profile: Profile,
                       taken: list[str]) -> None:
    """Remember the latest revoke of (principal, profile): an older grant arriving later is stale."""
    before = engine.ledger.revocation(principal, profile.name)
    time, sequence, ids = message.time, message.sequence, list(taken)
    if before is not None:
        time = max(time, before.time, key=datetime.fromisoformat)
        if before.sequence is not None:
            sequence = before.sequence if sequence is None else max(sequence, before.sequence)
        ids = list(before.message_ids) + ids
    ids = list(dict.fromkeys(ids))[-MAX_REVOKED_IDS:]
    engine.ledger.record_revocation(Revocation(principal, profile.name, time, sequence, tuple(ids)))


def _kept_because(desired: Desired, current: list, target, principal: Principal) -> str:
    for (role, wanted), why in desired.grants.items():
        if _same(Change(Action.SKIP, target.scope, role, wanted, ""), target, principal):
            return f"kept: still granted ({why})"
    wanted = Assignment(target.scope, target.role, principal)
    doubt = next((u for u in desired.unknown if u.covers(wanted)), None)
    if doubt is not None:
        return f"{KEPT_FOR_NOW}: {doubt.reason}; the scheduled sync removes it once it can read the scope"
    if any(isinstance(a, Assignment) and _same(Change(Action.SKIP, a.scope, a.role, a.principal, ""), target, principal)
           for a in current):
        return "kept: the assignment is not owned by the app"
    return "nothing to remove: no such assignment"


def _revokes(grant: Grant, principal: Principal, profile: Profile) -> bool:
    """Whether revoking `profile` for `principal` ends this ledger row (matched by directory identity)."""
    return grant.profile == profile.name and same_principal(principal, grant.principal) and any(
        grant.scope == t.scope and grant.role.casefold() == t.role.casefold() for t in profile.targets)


def _same(change: Change, target, principal: Principal) -> bool:
    return (change.scope == target.scope and (change.role or "").casefold() == target.role.casefold()
            and change.principal is not None and same_principal(principal, change.principal))


def _policy(engine: Engine, adopted: frozenset = frozenset()) -> Policy:
    """The sync's planning policy; `adopted` only matters to removals. One explicit revoke is no
    mass deletion, so the deletion guard does not hold it."""
    return Policy(prefix=engine.config.ownership.prefix, exclude=engine.excluded(),
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
    engine.queues.send(ONBOARDING, _resend(message) | {ATTEMPT: message.attempt + 1}, delay_seconds=delay)
    for result in report.results:
        if result.status == "failed":
            result.status, result.error = "deferred", f"retry {message.attempt + 1} of {retries} in {delay}s: {error}"
    return Outcome("deferred", message.id, f"the principal is not known to ARM yet; retry {message.attempt + 1} "
                                           f"of {retries} in {delay}s", report)


def _resend(message: Message) -> dict:
    """The message to send again: as sent, with its ID and the time that orders it against revokes."""
    return message.body | {"id": message.id, ENQUEUED: message.time}


# --- approval ---------------------------------------------------------------------------------

class ApprovalError(PermanentError):
    """An approval or denial that cannot be done: `kind` is not-found, decided, expired or self-approval."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


def _approval(engine: Engine, message: Message, principal: Principal, profile: Profile,
              report: RunReport, now: datetime | None) -> Outcome | None:
    """None when the grant was approved (write it); otherwise the outcome of waiting for approval."""
    now = now or datetime.now(timezone.utc)
    pending_id = PendingGrant.id_for(_fingerprint(message), principal, profile.name)
    pending = engine.ledger.get_pending(pending_id)
    if pending is not None and pending.status in ("approved", "granted"):
        return None
    if pending is not None and pending.status in ("denied", "expired"):
        raise Rejected(f"grant {pending.id} was {pending.status}"
                       + (f" by {pending.decided_by}" if pending.decided_by else "")
                       + (f": {pending.decision_reason}" if pending.decision_reason else ""))
    if not message.requested_by:
        raise Rejected(f"profile '{profile.name}' needs approval: requestedBy must name the requester, "
                       "who may not approve it")
    if pending is None:
        deadline = now + engine.config.onboarding.approval_timeout
        pending = PendingGrant(pending_id, principal, profile.name, message.id, _resend(message),
                               message.requested_by, now.isoformat(timespec="seconds"),
                               deadline.isoformat(timespec="seconds"))
        engine.ledger.save_pending(pending)
        log.info("onboarding message %s waits for approval as %s", message.id, pending.id)
    elif pending.past_deadline(now):
        _expire(engine, pending)
        raise Rejected(_expired_reason(engine, pending))
    # Held, like a deletion the guard holds: it waits for a person's explicit approval.
    report.results = [ChangeResult(Change(Action.HOLD, t.scope, t.role, principal,
                                          f"pending approval {pending.id} (until {pending.deadline})"), "held")
                      for t in profile.targets]
    return Outcome("pending", message.id, f"waiting for approval as {pending.id} until {pending.deadline}", report)


def _fingerprint(message: Message) -> str:
    """The message ID and exact content: a different request under the same ID waits for its own approval."""
    content = {k: v for k, v in message.body.items() if k != "id"}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return message.id + "|" + hashlib.sha256(canonical.encode()).hexdigest()


def list_pending(engine: Engine, status: str | None = "pending") -> list[PendingGrant]:
    """Pending grants (all of them when `status` is None), oldest first; expired ones are rejected first."""
    expire_pending(engine)
    return [p for p in engine.ledger.pending() if status is None or p.status == status]


def approve(engine: Engine, pending_id: str, *, approver: str, approver_ids: frozenset[str] = frozenset(),
            reason: str | None = None) -> PendingGrant:
    """Release a pending grant: record the approval, then send the message again; the queue handler
    writes it, finding the approval in the ledger (the queue message alone is no authority)."""
    pending = _undecided(engine, pending_id, also=("approved",))
    if pending.status == "approved":  # its release may not have been sent: sending it again is harmless
        engine.queues.send(ONBOARDING, pending.body)
        return pending
    names = {approver.casefold(), *(i.casefold() for i in approver_ids)}
    if pending.requested_by and pending.requested_by.casefold() in names:
        raise ApprovalError("self-approval", f"{approver} requested grant {pending.id}: "
                                             "the requester may not approve it")
    approved = pending.decided("approved", approver, reason)
    engine.ledger.save_pending(approved)
    engine.queues.send(ONBOARDING, approved.body)
    _audit_decision(engine, approved, None)
    return approved


def deny(engine: Engine, pending_id: str, *, approver: str, reason: str) -> PendingGrant:
    """Reject a pending grant with a reason: it goes to onboarding-rejected like any refusal."""
    pending = _undecided(engine, pending_id)
    denied = pending.decided("denied", approver, reason)
    engine.ledger.save_pending(denied)
    why = f"denied by {approver}: {reason}"
    _send_rejection(engine, pending.body, pending.message_id, f"grant {pending.id} {why}")
    _audit_decision(engine, denied, why)
    return denied


def expire_pending(engine: Engine, now: datetime | None = None) -> list[PendingGrant]:
    """Reject every pending grant past its deadline (the timer calls this); returns them."""
    waiting = [p for p in engine.ledger.pending() if p.status == "pending" and p.past_deadline(now)]
    return [_expire(engine, pending) for pending in waiting]


def _expire(engine: Engine, pending: PendingGrant) -> PendingGrant:
    reason = _expired_reason(engine, pending)
    expired = pending.decided("expired", None, reason)
    engine.ledger.save_pending(expired)
    _send_rejection(engine, pending.body, pending.message_id, reason)
    _audit_decision(engine, expired, reason)
    return expired


def _expired_reason(engine: Engine, pending: PendingGrant) -> str:
    return (f"grant {pending.id} was not approved by {pending.deadline} "
            f"(onboarding.approvalTimeout {format_duration(engine.config.onboarding.approval_timeout)})")


def _undecided(engine: Engine, pending_id: str, also: tuple[str, ...] = ()) -> PendingGrant:
    pending = engine.ledger.get_pending(pending_id) if re.fullmatch(r"p[0-9a-f]{24}", pending_id or "") else None
    if pending is None:
        raise ApprovalError("not-found", f"no pending grant has the ID '{printable(pending_id or '', 64)}'")
    if pending.status == "pending" and pending.past_deadline():
        _expire(engine, pending)
        raise ApprovalError("expired", _expired_reason(engine, pending))
    if pending.status != "pending" and pending.status not in also:
        by = f" by {pending.decided_by}" if pending.decided_by else ""
        raise ApprovalError("decided", f"grant {pending.id} is already {pending.status}{by}")
    return pending


def _audit_decision(engine: Engine, pending: PendingGrant, error: str | None) -> None:
    verb = {"approved": "approve", "denied": "deny", "expired": "expire"}[pending.status]
    by = f" by {pending.decided_by}" if pending.decided_by else ""
    report = RunReport(new_run_id(), APPROVAL_TRIGGER, selector=f"{verb} {pending.id}{by}: grant {pending.profile} "
                                                                f"for {pending.principal.fqn} (message {pending.message_id})")
    report.error, report.finished = error, now_iso()
    engine.audit.record_end(report.record(), [])
    log.info("pending grant %s %s%s", pending.id, pending.status, by)


def _granted(engine: Engine, message: Message, principal: Principal, profile: Profile) -> None:
    if profile.approval:
        pending = engine.ledger.get_pending(PendingGrant.id_for(_fingerprint(message), principal, profile.name))
        if pending is not None and pending.status == "approved":
            engine.ledger.save_pending(replace(pending, status="granted"))


# --- rejection --------------------------------------------------------------------------------

def _reject(engine: Engine, report: RunReport, body: bytes | str, message_id: str, reason: str,
            *, recorded: bool = False) -> Outcome:
    """Send a rejection to onboarding-rejected and audit it; never raises a permanent error."""
    reason = printable(reason)
    _send_rejection(engine, body, message_id, reason)
    report.error = f"rejected: {reason}"
    if not recorded:
        report.finished = now_iso()
        engine.audit.record_end(report.record(), [])
    log.warning("onboarding message %s rejected: %s", message_id, reason)
    return Outcome("rejected", message_id, reason, report)


def _send_rejection(engine: Engine, original: bytes | str | dict, message_id: str, reason: str) -> None:
    engine.queues.send(ONBOARDING_REJECTED, rejection(original, message_id, reason))


def rejection(original: bytes | str | dict, message_id: str, reason: str, *, time: str | None = None,
              limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """The rejected-queue message: reason, messageId, time, size, the original's SHA-256, and as much
    of the original (the text as received) as fits a queue message, with `originalTruncated`.

    Whatever the original (any size, any bytes, any Unicode), the JSON of the result is at most
    `limit` bytes: JSON escapes grow non-ASCII text up to 6 times, so the cut is measured, not guessed."""
    if isinstance(original, dict):
        raw = json.dumps(original, separators=(",", ":")).encode()
    elif isinstance(original, str):
        raw = original.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(original)
    text = raw.decode("utf-8", "replace")
    out = {"reason": printable(reason, 4000), "messageId": printable(message_id, 200), "time": time or now_iso(),
           "size": len(raw), "originalSha256": hashlib.sha256(raw).hexdigest(),
           "originalTruncated": False, "original": text}

    def size(candidate: dict) -> int:
        return len(json.dumps(candidate, separators=(",", ":")).encode())

    if size(out) <= limit:
        return out
    out["originalTruncated"] = True
    low, high = 0, len(text)  # the longest prefix that fits: the encoded size grows with the prefix
    while low < high:
        middle = (low + high + 1) // 2
        if size(out | {"original": text[:middle]}) <= limit:
            low = middle
        else:
            high = middle - 1
    out["original"] = text[:low]
    return out
