"""The engine: gather desired and current state, plan, apply, report.

Desired state comes from Graph (through the Directory port), current state from ARM (through the
Assignments port); `shared.core.plan` decides; this module only moves data and performs the writes:
one write at a time per cluster, clusters in parallel, transient failures retried within a budget,
and every outcome recorded so that a partial failure converges on the next run.

A run has a deadline (before the host's functionTimeout): it starts no write that could not finish
before it, and stops writing to a cluster the moment that cluster's lease is lost. What it did not
write is reported `pending` and the run ends `incomplete`; planning is idempotent, so the next run
(or the job's continuation) picks the rest up.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from shared.adapters.audit import HEARTBEAT_MS, Audit, MemoryAudit, now_iso, now_ms
from shared.core.config import Mapping, Selection, SyncConfig, resolve_selector, select_scopes
from shared.engine.delta import DeltaState, MemoryStateStore, Observed, StateStore
from shared.adapters.directory import DeltaExpiredError, Directory, DirectoryObject
from shared.core.errors import NotFoundError, PermanentError, PermissionDeniedError, SyncError, TransientError
from shared.core.permissions import missing_arm_actions, role_revealing, scope_actions
from shared.adapters.kusto import Assignments, DataConnections
from shared.core.connections import ConnectionChange, ConnectionPlan, DataConnection, plan_connections, refused
from shared.adapters.ledger import Grant, Ledger, MemoryLedger, exclusion_entry
from shared.adapters.locks import InProcessLocks, Locks
from shared.core.plan import (Action, Assignment, Change, Desired, Plan, Policy, Unknown, Unreadable,
                              exclusion_keys, plan, same_principal)
from shared.adapters.queues import CLUSTER_JOBS, MemoryQueues, Queues
from shared.adapters.telemetry import NoTelemetry, Telemetry
from shared.core.principals import Principal, PrincipalKind, ensure_security_group, is_guid, split_upn
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.resolve import principal_of, resolve_reference

log = logging.getLogger(__name__)

READ_CONCURRENCY = 8  # Graph and ARM reads in flight at once during planning
DELETED_GROUP = "deletedGroup"  # DirectoryObject.kind of a group Graph reports deleted: known-empty


@dataclass
class ChangeResult:
    change: Change
    status: str
    """succeeded | failed | held | skipped | pending (not written: deadline or lease lost) | planned (dry
    run) | intended (recorded before the write; what remains of it in a run whose process died)."""
    error: str | None = None
    attempts: int = 0
    cause: Exception | None = field(default=None, repr=False, compare=False)  # the typed error, for callers that act on it

    def as_json(self) -> dict:
        return self.change.as_json() | {"result": self.status, "error": self.error}


@dataclass
class RunReport:
    run_id: str
    trigger: str
    plan: Plan = field(default_factory=lambda: Plan(()))
    results: list[ChangeResult] = field(default_factory=list)
    started_ms: int = field(default_factory=now_ms)
    finished: str | None = None
    dry_run: bool = False
    selector: str | None = None
    error: str | None = None
    deadline: float | None = field(default=None, repr=False, compare=False)
    """time.monotonic() after which no write starts (None: no deadline)."""
    longest_write: float = field(default=0.0, repr=False, compare=False)
    """The longest write so far, in seconds: how long the next one is expected to take at most."""
    jobs: list[str] = field(default_factory=list)
    """The cluster jobs its writes were queued as (Engine.dispatch); readers roll them up."""

    @property
    def started(self) -> str:
        return datetime.fromtimestamp(self.started_ms / 1000, timezone.utc).isoformat(timespec="seconds")

    @property
    def status(self) -> str:
        """One of RUN_STATUSES: failures first, then skips (unknown state left alone), then holds."""
        if self.error:
            return "failed"
        if self.finished is None:
            return "running"
        if self.jobs:
            return "queued"  # its writes wait in cluster jobs; shared.handlers.jobs.rolled_up tells the outcome
        if any(r.status == "pending" for r in self.results):
            return "incomplete"
        failed = sum(r.status == "failed" for r in self.results)
        if failed:
            done = sum(r.status == "succeeded" for r in self.results)
            return "partially failed" if done else "failed"
        actions = {r.change.action for r in self.results if r.status in ("skipped", "held", "planned")}
        if Action.SKIP in actions:
            return "partially_skipped"
        if Action.HOLD in actions:
            return "succeeded_with_holds"
        return "succeeded"

    @property
    def converged(self) -> bool:
        """Every planned write was made and nothing was left unknown or for later (held removals await
        approval)."""
        return self.status in ("succeeded", "succeeded_with_holds") and not self.plan.deferred

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for result in self.results:
            counts[result.status] += 1
        return dict(counts)

    def record(self) -> dict:
        """The run as the audit stores it (without its changes)."""
        return {
            "runId": self.run_id, "trigger": self.trigger, "status": self.status, "dryRun": self.dry_run,
            "scope": self.selector, "started": self.started, "startedMs": self.started_ms,
            "finished": self.finished, "counts": self.counts(), "error": self.error,
            "drift": len(self.plan.drift),
        } | ({"jobs": self.jobs} if self.jobs else {})

    def as_json(self) -> dict:
        return self.record() | {
            "changes": [r.as_json() for r in self.results],
            "drift": self.plan.as_json()["drift"],
        }


@dataclass
class Engine:
    """Everything a run needs, wired once by shared.app.build()."""

    config: SyncConfig
    directory: Directory
    assignments: Assignments
    tenants: TenantResolver
    home_tenant_id: str
    self_ids: frozenset = frozenset()
    locks: Locks = field(default_factory=InProcessLocks)
    audit: Audit = field(default_factory=MemoryAudit)
    ledger: Ledger = field(default_factory=MemoryLedger)
    queues: Queues = field(default_factory=MemoryQueues)
    delta_state: StateStore = field(default_factory=MemoryStateStore)
    telemetry: Telemetry = field(default_factory=NoTelemetry)
    connections: DataConnections | None = None
    """Data connections over ARM; None: the assignments adapter, which implements both."""
    max_parallel_clusters: int = 4
    retry_budget_seconds: float = 120.0
    run_seconds: float | None = None  # how long a run may write (see shared.core.settings.run_deadline)
    heartbeat_seconds: float = HEARTBEAT_MS / 1000
    sleep: Callable[[float], None] = time.sleep
    progress: Callable[[str], None] = logging.getLogger("shared.progress").info
    _excluded: "_Exclusions | None" = field(default=None, init=False, repr=False, compare=False)

    # -- planning ------------------------------------------------------------------------------

    def plan(self, selector: str | None = None, *, approve_deletes: bool = False,
             selection: Selection | None = None, observed: Observed | None = None) -> Plan:
        """The plan for a selector (see shared.core.config.resolve_selector) or an explicit selection.

        `observed`, when given, is filled with what the group reads found (shared.engine.delta.Observed).
        """
        everything = selector is None and selection is None
        if selection is None:
            selection = resolve_selector(self.config, selector)
            if selector is None:
                selection = select_scopes(self.config, selection.scopes | self.config.onboarding_scopes()
                                          | self._departed_scopes())
        # Scopes the config no longer targets (from the ledger, or named again by a quick cycle).
        departed = selection.scopes - self.managed_scopes()
        scopes = sorted(selection.scopes)
        exclusions = self._exclusions()
        policy = Policy(
            prefix=self.config.ownership.prefix,
            adopt=self.config.ownership.adopt,
            max_deletes=self.config.guards.max_deletes,
            max_delete_percent=self.config.guards.max_delete_percent,
            delete_floor=self.config.guards.delete_floor,
            approve_deletes=approve_deletes,
            exclude=exclusions.keys,
            self_ids=self.self_ids,
            adopted=self.ledger.adopted(scopes),
        )
        # Graph and ARM reads are independent: run them all at once rather than one after another.
        with _gc_paused(), ThreadPoolExecutor(max_workers=READ_CONCURRENCY, thread_name_prefix="read") as pool:
            granted = {c: pool.submit(self._permissions_or_none, c) for c in sorted({s.cluster for s in scopes})}
            listings = {scope: pool.submit(self._list_or_none, scope) for scope in scopes}
            connection_scopes = [s for s in self.config.connection_scopes() if everything or s in selection.scopes]
            connections = self.connection_listings(connection_scopes, pool)
            desired = self.gather_desired(selection.mappings, set(scopes), pool, observed)
            current = {scope: listing.result() for scope, listing in listings.items()}
            unreachable = sorted(s for s in departed if isinstance(current[s], SyncError)
                                 or self._missing_actions(s, granted[s.cluster].result(), current[s]))
            for scope in unreachable:  # not a skip: a warning, and planned again next cycle (Plan.deferred)
                del desired[scope], current[scope]
            for scope in current:
                missing = self._missing_actions(scope, granted[scope.cluster].result(), current[scope])
                if missing:
                    # Skipped whole, the permission named: nothing is added or removed, nothing is empty.
                    desired[scope] = dataclasses.replace(desired[scope], grants={}, ended={},
                                                         unknown=desired[scope].unknown + (missing,))
                    current[scope] = current[scope] if isinstance(current[scope], list) else []
            current = {scope: None if isinstance(listing, SyncError) else listing for scope, listing in current.items()}
            the_plan = plan(desired, current, policy)
            the_plan = dataclasses.replace(the_plan, deferred=tuple(unreachable), warnings=(
                exclusions.warnings + the_plan.warnings + tuple(
                    f"{scope} left the config but cannot be listed; what the app owned there is removed once it can"
                    for scope in unreachable)))
            if not connection_scopes:
                return the_plan
            return self._with_connections(the_plan, connections, policy, pool)

    def _with_connections(self, the_plan: Plan, listings: dict, policy: Policy, pool: ThreadPoolExecutor) -> Plan:
        """The plan with the data connections of its databases."""
        planned = self.plan_connections(listings, policy, pool)
        merged = sorted(the_plan.changes + planned.changes, key=lambda c: c.sort_key)
        return dataclasses.replace(the_plan, changes=tuple(merged), connections=planned)

    def plan_connections(self, listings: dict, policy: Policy, pool: ThreadPoolExecutor) -> ConnectionPlan:
        """The data-connection plan of these databases ({scope: future of its listing}): the
        config's and the onboarded connections declared, the listed ones current, and every add or
        update checked by Kusto's validation first (a refusal is a skip, in dry run as in apply)."""
        declared: dict[Scope, list[DataConnection]] = defaultdict(list)
        for connection in self.config.data_connections:
            if connection.scope in listings:
                declared[connection.scope].append(connection)
        try:
            onboarded = self.ledger.connections(listings)
        except Exception as error:  # unreadable is not "nothing onboarded": no removal, no write
            log.warning("onboarding ledger unreadable: %s", error)
            return ConnectionPlan(tuple(ConnectionChange(Action.SKIP, scope, "*", None,
                                                         f"onboarding ledger could not be read: {error}")
                                        for scope in sorted(listings)))
        for entry in onboarded:
            declared[entry.connection.scope].append(entry.connection)
        current = {scope: listing.result() for scope, listing in listings.items()}
        adopted = self.ledger.adopted(listings)
        planned = plan_connections(declared, current, dataclasses.replace(policy, adopted=adopted))
        checks = {id(c): pool.submit(self._validation_problems, c.connection)
                  for c in planned.changes if c.action in (Action.ADD, Action.UPDATE)}
        changes = [refused(c, checks[id(c)].result()) if id(c) in checks and checks[id(c)].result() else c
                   for c in planned.changes]
        return dataclasses.replace(planned, changes=tuple(changes))

    def connection_listings(self, scopes, pool: ThreadPoolExecutor) -> dict:
        return {s: pool.submit(self._list_connections_or_none, s) for s in scopes}

    def _validation_problems(self, connection: DataConnection) -> list[str]:
        try:
            return self._connections.validate_connection(connection)
        except SyncError as error:  # not validated is not accepted: nothing is written
            return [f"could not be validated: {error}"]

    @property
    def _connections(self) -> DataConnections:
        return self.connections if self.connections is not None else self.assignments  # type: ignore[return-value]

    def _list_connections_or_none(self, scope: Scope) -> list[DataConnection] | None:
        """The database's data connections, or None (never []) when they cannot be listed."""
        try:
            return self._connections.list_connections(scope)
        except SyncError as error:
            log.warning("cannot list data connections of %s: %s", scope, error)
            return None

    def gather_desired(self, mappings: tuple[Mapping, ...], scopes: set[Scope],
                       pool: ThreadPoolExecutor, observed: Observed | None = None) -> dict[Scope, Desired]:
        grants: dict[Scope, dict[tuple, tuple[str, Principal, str]]] = {s: {} for s in scopes}
        unknown: dict[Scope, list[Unknown]] = {s: [] for s in scopes}
        onboarded: dict[Scope, set[tuple]] = {s: set() for s in scopes}
        wanted = [m for m in mappings if any(t.scope in scopes for t in m.targets)]
        expand = {m.group.casefold() for m in wanted if m.mode == "members"}
        reads_seen = Observed() if observed is None else observed
        # A deletion is confirmed by a 404 in a run that started after the one that saw the first.
        started = reads_seen.started_ms or now_ms()
        gone = {g for g, first in self._missing_groups().items() if first < started} if wanted else set()
        reads = {
            key: pool.submit(self._read_group, ref, key in expand, reads_seen, gone)
            for key, ref in {m.group.casefold(): m.group for m in wanted}.items()
        }
        warnings: dict[Scope, list[str]] = {s: [] for s in scopes}
        if self.config.guests == "home":
            self._prefetch_guest_tenants(reads.values(), pool)
        for mapping in wanted:
            targets = [t for t in mapping.targets if t.scope in scopes]
            try:
                group, members = reads[mapping.group.casefold()].result()
                if observed is not None:
                    nested = [m.id for m in members or () if m.kind == "group"]
                    observed.groups[mapping.group.casefold()] = (group.id, nested)
            except (PermanentError, TransientError) as error:
                if observed is not None and mapping.group.casefold() not in observed.groups:
                    observed.failed.add(mapping.group.casefold())
                log.warning("mapping %s: %s", mapping.name, error)
                # A group-mode mapping can only ever want its group: nothing else is in doubt.
                principal = self._group_principal(mapping, error) if mapping.mode == "group" else None
                for target in targets:
                    unknown[target.scope].append(Unknown(f"mapping {mapping.name}: {error}", target.role, principal))
                continue
            if group.kind == DELETED_GROUP:
                for target in targets:
                    warnings[target.scope].append(
                        f"group {group.id} of mapping {mapping.name} was deleted in Entra: the assignments "
                        "the app owns for it are removed, under the deletion guard")
                continue
            principals, reason, doubts = self._mapping_principals(mapping, group, members)
            for target in targets:
                scope_grants = grants[target.scope]
                for principal in principals:
                    scope_grants.setdefault((target.role.casefold(), principal.identity), (target.role, principal, reason))
                unknown[target.scope] += [Unknown(f"mapping {mapping.name}: {why}", target.role, who)
                                          for who, why in doubts]
        try:
            granted = self.ledger.grants(scopes)
        except Exception as error:  # an unreadable ledger must not look like "no onboarding grants"
            log.warning("onboarding ledger unreadable: %s", error)
            granted = []
            for scope in scopes:
                unknown[scope].append(Unknown(f"onboarding ledger could not be read: {error}"))
        ended: dict[Scope, dict[tuple, str]] = {s: {} for s in scopes}
        for grant in granted:
            key = (grant.role.casefold(), grant.principal.identity)
            if grant.ended():
                ended[grant.scope].setdefault(key, grant.ended_reason())
            elif self.config.offers(grant.profile, grant.scope, grant.role):
                why = f"onboarded with profile {grant.profile} (message {grant.message_id})"
                if key not in grants[grant.scope]:
                    grants[grant.scope][key] = (grant.role, grant.principal, why)
                    onboarded[grant.scope].add(key)
            # else: the config no longer offers it; its removal is a config change, under the guard
        return {
            scope: Desired(
                grants={(role, principal): why for role, principal, why in grants[scope].values()},
                unknown=tuple(unknown[scope]),
                onboarded=frozenset(onboarded[scope]),
                ended=ended[scope],
                warnings=tuple(warnings[scope]),
            )
            for scope in scopes
        }

    def excluded(self) -> frozenset:
        """Policy.exclude: every spelling of the config's `exclude` principals, resolved once per
        config through the same resolver as onboarding principals. Raises TransientError when the
        directory cannot answer: a run must not go ahead without knowing whom to leave alone."""
        return self._exclusions().keys

    def _exclusions(self) -> "_Exclusions":
        """The exclusions of this config version: resolved, remembered in the ledger, and the
        warnings for entries that name nobody now.

        An entry resolved to a directory object is remembered; an entry that resolves to nobody
        (a UPN after its holder was renamed) keeps excluding the objects it named before, so a
        fresh instance leaves alone whom a warm one would."""
        if self._excluded is None or self._excluded.version != self.config.version:
            principals, lost, remembered = [], [], True
            for reference in self.config.exclude:
                written, resolved = self._exclusion(reference)
                principals += written + resolved
                if not resolved:
                    lost.append(reference)
                    continue
                try:
                    self.ledger.remember_exclusion(exclusion_entry(reference), resolved)
                except Exception as error:  # excluded all the same; remembered at the next plan
                    log.warning("exclude %s: not remembered in the ledger: %s", reference.fqn, error)
                    remembered = False
            warnings = []
            if lost:
                try:
                    before = self.ledger.exclusions()
                except Exception as error:
                    raise TransientError(f"the ledger, which remembers whom the config's exclude entries named, "
                                         f"cannot be read: {error}") from error
                for reference in lost:
                    named = before.get(exclusion_entry(reference), [])
                    principals += named
                    warnings.append(
                        f"exclude {reference.fqn} names nobody in the directory now; still leaving alone "
                        f"{', '.join(p.label for p in named)}, whom it named before" if named else
                        f"exclude {reference.fqn} names nobody in the directory: only that exact spelling is left alone")
            exclusions = _Exclusions(self.config.version, exclusion_keys(principals), tuple(warnings))
            if not remembered:
                return exclusions
            self._excluded = exclusions
        return self._excluded

    def _exclusion(self, reference: Principal) -> tuple[list[Principal], list[Principal]]:
        """An `exclude` reference as written (and with its tenant as a GUID), and the directory
        objects it names under either guest rule (none when the directory does not know it)."""
        written = [reference]
        if reference.kind is not PrincipalKind.MSA:
            domain = reference.tenant
            if domain is None and "@" in reference.identifier:
                domain = split_upn(reference.identifier)[1]
            if domain is not None and not is_guid(domain):
                try:
                    tenant = self.tenants.resolve_tenant(domain)
                    if not tenant.is_msa:
                        written.append(Principal(reference.kind, reference.identifier, tenant.tenant_id))
                except PermanentError:
                    pass
        resolved = []
        for guests in dict.fromkeys((self.config.guests, "host")):
            try:
                resolved.append(resolve_reference(reference, self.directory, self.tenants, self.home_tenant_id,
                                                  guests=guests))
            except PermanentError as error:
                log.warning("exclude %s: %s", reference.fqn, error)
        return written, resolved

    def _group_principal(self, mapping: Mapping, error: Exception) -> Principal | None:
        """The group a group-mode mapping names, when known despite `error`."""
        group = getattr(error, "group", None)
        object_id = group.id if group is not None else mapping.group if is_guid(mapping.group) else None
        return None if object_id is None else Principal(PrincipalKind.GROUP, object_id, self.home_tenant_id)

    def _prefetch_guest_tenants(self, reads, pool: ThreadPoolExecutor) -> None:
        """Resolve the guests' home domains all at once: each unknown domain is a Graph round trip,
        and turning members into principals one by one would make them one after another."""
        domains = set()
        for read in reads:
            try:
                _, members = read.result()
                domains |= {_home_domain(m) for m in members or () if m.kind == "user" and m.is_guest}
            except SyncError:
                continue  # reported, with its scopes skipped, when the mapping is read below
        list(pool.map(self._resolve_quietly, domains - {None}))

    def _resolve_quietly(self, domain: str) -> None:
        try:
            self.tenants.resolve_tenant(domain)
        except SyncError:
            pass  # raised again, for the member concerned, when it becomes a principal

    def _read_group(self, ref: str, with_members: bool, seen: Observed,
                    gone: set[str]) -> tuple[DirectoryObject, list[DirectoryObject] | None]:
        """The group (checked to be a security group) and, when asked, its transitive members.

        A group Graph reports deleted is known-empty: a DELETED_GROUP object and no members. Deleted
        means a 404 that Graph's deletedItems confirms, or a second 404 in a row (`gone`: the IDs
        that answered 404 in the last run that read them). A first 404 is not proof (a typo in the
        config, replication): NotFoundError, so the mapping stays unknown.
        """
        try:
            group = self.directory.find_group(ref)
        except NotFoundError:
            if not is_guid(ref):
                raise  # a name that no longer resolves may as well be a rename
            return self._deleted_or_raise(ref.casefold(), ref, seen, gone)
        try:
            ensure_security_group(group.as_group_json())
        except PermanentError as error:
            error.group = group  # what a group-mode mapping would have wanted is still known
            raise
        if not with_members:
            seen.found.add(group.id.casefold())
            return group, None
        started = time.monotonic()
        try:
            members = self.directory.transitive_members(group.id)
        except NotFoundError:
            return self._deleted_or_raise(group.id.casefold(), ref, seen, gone)
        except PermissionDeniedError as error:
            # The group itself was readable, so what is refused is a hidden membership on the way.
            raise PermissionDeniedError(
                f"the members of group {group.display_name} (or of a group nested in it) are hidden: "
                f"grant the app role Member.Read.Hidden (docs/permissions.md); {error}",
                permission="Member.Read.Hidden") from error
        seen.found.add(group.id.casefold())
        self.progress(
            f"read group {group.display_name}: {len(members)} transitive members in {time.monotonic() - started:.1f}s"
        )
        return group, members

    def _deleted_or_raise(self, group_id: str, ref: str, seen: Observed, gone: set[str]):
        seen.missing.add(group_id)
        if group_id in gone or self.directory.deleted_group(group_id):
            log.warning("group %s (%s) was deleted in Entra: known-empty", group_id, ref)
            return DirectoryObject(DELETED_GROUP, group_id, display_name=ref), []
        raise NotFoundError(f"group {ref} was not found (404); if it is still missing next run, it is taken as deleted")

    def _missing_groups(self) -> dict[str, int]:
        try:
            return self.ledger.missing_groups()
        except Exception as error:  # without it a deletion is confirmed one run later, nothing worse
            log.warning("cannot read the missing groups: %s", error)
            return {}

    def _record_missing(self, observed: Observed) -> None:
        """Remember the groups that answered 404 (and forget those read again) for the next run."""
        before = set(self._missing_groups())
        new, back = observed.missing - before, observed.found & before
        if new or back:
            self.ledger.record_missing(new, back, observed.started_ms)

    def _mapping_principals(self, mapping: Mapping, group: DirectoryObject, members: list[DirectoryObject] | None
                            ) -> tuple[list[Principal], str, list[tuple[Principal | None, str]]]:
        """The principals a mapping wants, the reason, and the members in doubt: (the principal,
        as far as known, or None when nothing is known of it, and why)."""
        if mapping.mode == "group":
            return [principal_of(group, self.home_tenant_id, self.tenants)], \
                f"group {group.display_name} (mapping {mapping.name})", []
        principals, doubts = [], []
        for member in members or ():
            try:
                principal = self.member_principal(member, mapping)
            except TransientError as error:  # e.g. a guest's tenant look-up: any principal of the role
                doubts.append((None, f"member {member.user_principal_name or member.id}: {error}"))
                continue
            except PermanentError as error:
                known = self._as_known(member)
                doubts.append((known, f"member {known.label}: {error}"))
                continue
            if principal is not None:
                principals.append(principal)
        return principals, f"member of {group.display_name} (mapping {mapping.name})", doubts

    def member_principal(self, member: DirectoryObject, mapping: Mapping) -> Principal | None:
        """The Kusto principal a group member becomes, or None when the mapping leaves it out.

        Raises a SyncError, with the reason, for a member the mapping includes that cannot become
        a principal: Graph showed limited information, or a guest has no home identity."""
        if member.kind == "servicePrincipal":
            return principal_of(member, self.home_tenant_id, self.tenants) if mapping.includes_apps else None
        if member.kind != "user" or not mapping.includes_users:
            return None
        if mapping.skip_disabled_accounts and member.account_enabled is not True and not member.limited:
            if member.account_enabled is False:
                return None
            raise PermissionDeniedError(
                "skipDisabledAccounts needs accountEnabled, which Graph did not return (User.ReadBasic.All does "
                "not include it): grant the app role User.Read.All (docs/permissions.md)", permission="User.Read.All")
        return principal_of(member, self.home_tenant_id, self.tenants, guests=self.config.guests)

    def _as_known(self, member: DirectoryObject) -> Principal:
        """What is known of a member that cannot become a principal: its object in the home tenant."""
        kind = PrincipalKind.APP if member.kind == "servicePrincipal" else PrincipalKind.USER
        return Principal(kind, member.app_id or member.id, self.home_tenant_id, display_name=member.display_name,
                         object_id=member.id, upn=member.user_principal_name)

    def managed_scopes(self) -> set[Scope]:
        """The scopes the config targets now: what the app manages, and remembers managing."""
        return set(self.config.scopes()) | self.config.onboarding_scopes()

    def _departed_scopes(self) -> set[Scope]:
        """Scopes the app managed that have left the config: planned until it owns nothing there."""
        try:
            return self.ledger.managed_scopes() - self.managed_scopes()
        except Exception as error:  # the next run tries again; nothing is removed meanwhile
            log.warning("cannot read the managed scopes: %s", error)
            return set()

    def _record_managed(self) -> None:
        """Remember the config's scopes before writing anything there, so that they are planned
        after they leave the config, even if this run dies half-way."""
        new = self.managed_scopes() - self.ledger.managed_scopes()
        if new:
            self.ledger.record_managed(new)

    def _forget_departed(self, report: RunReport) -> None:
        """Forget a departed scope once a run planned it and the app owns nothing there any more (a
        change with no result is queued in a cluster job, which forgets the scope when it is done;
        an excluded principal's owned assignment stays, so its scope is planned again, say after
        the exclusion ends)."""
        unsettled = {r.change.scope for r in report.results if r.status != "succeeded"} | set(report.plan.kept)
        unsettled |= {c.scope for c in report.plan.changes} - {r.change.scope for r in report.results}
        done = set(report.plan.scopes) - self.managed_scopes() - unsettled
        if done:
            self.ledger.forget_managed(done)

    def _list_or_none(self, scope: Scope) -> list[Assignment] | SyncError:
        """The scope's current assignments, or the error (never []) when they cannot be listed."""
        try:
            return self.assignments.list_assignments(scope)
        except NotFoundError as error:
            if scope not in self.managed_scopes():
                return []  # it left the config, and its cluster or database is gone: nothing is left there
            log.warning("cannot list assignments of %s: %s", scope, error)
            return error
        except SyncError as error:
            log.warning("cannot list assignments of %s: %s", scope, error)
            return error

    def _permissions_or_none(self, cluster: str) -> list[dict] | None:
        """The identity's effective ARM permissions on a cluster, or None when ARM cannot say
        (then the reads and writes themselves tell)."""
        try:
            return self.assignments.effective_permissions(cluster)
        except SyncError as error:
            log.warning("cannot read the identity's permissions on %s: %s", cluster, error)
            return None

    @staticmethod
    def _missing_actions(scope: Scope, granted: list[dict] | None, listing) -> str | None:
        """Why a scope cannot be synced for want of an ARM permission, or None."""
        if granted is not None:
            missing = missing_arm_actions(granted, scope_actions(scope.database is not None))
            if missing:
                return (f"the identity lacks {', '.join(missing)} on cluster {scope.cluster_name}: "
                        "add it to its role (docs/permissions.md)")
        if isinstance(listing, PermissionDeniedError):
            return f"current assignments could not be listed: {listing}"
        return None

    # -- applying ------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """The time.monotonic() after which a run starting now starts no write."""
        return None if self.run_seconds is None else time.monotonic() + self.run_seconds

    def dispatch(self, report: RunReport, *, approve_deletes: bool) -> RunReport:
        """Queue the plan's writes as one job per cluster on `cluster-jobs`; report holds and skips.

        Each job is recorded in the audit first (status "queued", under this run), and its message
        names only the job: the handler (shared.handlers.jobs) reads everything else from the audit,
        re-plans the job's scopes under the cluster's lease, and writes. The Functions host spreads
        the jobs over instances by queue length; host.json's batchSize bounds them per instance.
        """
        by_cluster: dict[str, list[Change]] = defaultdict(list)
        for change in report.plan.changes:
            if change.action in (Action.ADD, Action.UPDATE, Action.REMOVE):
                by_cluster[change.scope.cluster].append(change)
            else:
                status = "held" if change.action is Action.HOLD else "skipped"
                report.results.append(ChangeResult(change, status, change.reason))
        for index, cluster in enumerate(sorted(by_cluster), 1):
            scopes = sorted({c.scope for c in by_cluster[cluster]})
            job = job_record(report.run_id, index, 1, cluster, scopes, approve_deletes=approve_deletes,
                             parent_started_ms=report.started_ms)
            if not self.audit.create_run(job):
                log.info("job %s was already recorded; sending its message again", job["runId"])
            self.queues.send(CLUSTER_JOBS, {"jobId": job["runId"]})
            report.jobs.append(job["runId"])
            self.progress(f"queued job {job['runId']}: {len(by_cluster[cluster])} write(s) on {cluster}")
        return report

    def apply(self, the_plan: Plan, report: RunReport) -> RunReport:
        """Perform the plan's adds and removes into `report`; held and skipped items are reported as such.

        `report.results` follows the plan's order, one result per change. Every write is in the
        audit as `intended` before any is made, and each result replaces its `intended` as it
        happens (the heartbeat records them): should the process die, the audit still names every
        write it may have made.
        """
        by_cluster: dict[str, list[Change]] = defaultdict(list)
        slot: dict[int, int] = {}  # id(change) -> its index in report.results
        for change in the_plan.changes:
            if change.action in (Action.ADD, Action.UPDATE, Action.REMOVE):
                by_cluster[change.scope.cluster].append(change)
                slot[id(change)] = len(report.results)
                report.results.append(ChangeResult(change, "intended"))
            else:
                status = "held" if change.action is Action.HOLD else "skipped"
                report.results.append(ChangeResult(change, status, change.reason))
        if not by_cluster:
            return report
        self.audit.record_end(report.record() | {"heartbeatMs": now_ms()}, [r.as_json() for r in report.results])

        def settle(result: ChangeResult) -> None:
            report.results[slot[id(result.change)]] = result

        workers = min(self.max_parallel_clusters, len(by_cluster))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cluster") as pool:
            apply_cluster = self.telemetry.carry(self._apply_cluster)
            futures = {cluster: pool.submit(apply_cluster, cluster, changes, settle, report)
                       for cluster, changes in by_cluster.items()}
            for cluster, future in futures.items():
                try:
                    future.result()
                except SyncError as error:  # the lease could not be taken or kept
                    log.warning("cluster %s: %s", cluster, error)
                    for change in by_cluster[cluster]:
                        if report.results[slot[id(change)]].status == "intended":
                            settle(ChangeResult(change, "failed", f"not attempted: {error}", 0, error))
        return report

    def _apply_cluster(self, cluster: str, changes: list[Change], settle: Callable[[ChangeResult], None],
                       report: RunReport) -> None:
        with self.locks.hold(cluster) as lease:
            done: list[ChangeResult] = []
            for index, change in enumerate(changes):
                stop = _why_stop(lease, report)
                if stop:
                    log.warning("%s: %d write(s) left for the continuation: %s", cluster, len(changes) - index, stop)
                    for rest in changes[index:]:
                        settle(ChangeResult(rest, "pending", stop))
                    break
                started = time.monotonic()
                result = self.telemetry.write(change, lambda c: self._write(c, report.deadline))
                report.longest_write = max(report.longest_write, time.monotonic() - started)
                settle(result)
                done.append(result)
                log.info("%s -> %s%s", change.describe(), result.status, f": {result.error}" if result.error else "")
                if index + 1 == len(changes) or changes[index + 1].scope != change.scope:
                    in_scope = [r for r in done if r.change.scope == change.scope]
                    failed = sum(r.status == "failed" for r in in_scope)
                    self.progress(f"{change.scope}: {len(in_scope) - failed} of {len(in_scope)} writes done, {failed} failed")

    def _write(self, change: Change, run_deadline: float | None = None) -> ChangeResult:
        deadline = time.monotonic() + self.retry_budget_seconds
        attempts, delay = 0, 1.0
        while True:
            attempts += 1
            try:
                if isinstance(change, ConnectionChange):
                    write_connection(self._connections, change)
                elif change.action is Action.ADD:
                    self.assignments.create_assignment(change.scope, change.name, change.role, change.principal)
                else:
                    self.assignments.delete_assignment(change.scope, change.name)
                return ChangeResult(change, "succeeded", attempts=attempts)
            except TransientError as error:
                wait = error.retry_after if error.retry_after is not None else delay
                if run_deadline is not None and time.monotonic() + wait > run_deadline:
                    return ChangeResult(change, "pending", f"{error} (the run's deadline came first)", attempts, error)
                if time.monotonic() + wait > deadline:
                    return ChangeResult(change, "failed", f"{error} (retry budget spent)", attempts, error)
                self.sleep(wait)
                delay = min(delay * 2, 30.0)
            except SyncError as error:
                return ChangeResult(change, "failed", str(error), attempts, error)

    def sync(self, *, trigger: str = "timer", dry_run: bool = False, full: bool = False,
             jobs: bool = False) -> RunReport:
        """The scheduled sync: a quick cycle over the groups that changed, or a full read when due
        (or when `full`: Graph said it missed notifications).

        With `jobs`, the writes are queued as cluster jobs (see dispatch); a job that does not
        converge makes the next cycle a full read (shared.handlers.jobs), so nothing is lost. The
        rules that keep quick cycles from losing a change are in shared.engine.delta's docstring.
        """
        state = self.delta_state.load()
        due = (full or state is None or state.config_version != self.config.version or state.full_next
               or state.cycles + 1 >= self.config.full_sync_every
               or self.delta_state.full_read_requested() > state.full_started_ms)
        if not due:
            try:
                changed, links = set(), []
                for link in state.links:  # read before the groups are: the links cover what follows
                    ids, new_link = self.directory.changed_groups(link)
                    changed |= ids
                    links.append(new_link)
            except DeltaExpiredError as error:
                self.progress(f"delta refused, reading everything: {error}")
                due = True
        if state is not None and not dry_run:  # should this cycle die half-way, the next reads everything
            self.delta_state.save(dataclasses.replace(state, full_next=True))
        if due:
            return self._full_sync(trigger, dry_run, state, jobs)
        affected = state.affected(changed)
        scopes = {t.scope for m in self.config.mappings
                  if state.group_ids.get(m.group.casefold()) in affected for t in m.targets}
        scopes |= state.pending_scopes()
        scopes |= {g.scope for g in self.finished_grants()}  # expiry must not wait for the next full read
        self.progress(f"quick cycle: {len(changed)} group(s) changed, {len(scopes)} scope(s) to reconcile")
        observed = Observed()
        report = self.run(trigger=f"{trigger}:delta", dry_run=dry_run, selection=select_scopes(self.config, scopes),
                          observed=observed, jobs=jobs)
        if dry_run:  # the same changes come round again
            return report
        covered = state.watched()
        state.cycles += 1  # whatever the writes did: the scheduled full read must come
        if observed.failed:  # its changes stay behind the old links, and the next cycle reads everything
            state.full_next = True
        else:
            state.links = links
        self._remember(state, observed, report, covered)
        return report

    def _full_sync(self, trigger: str, dry_run: bool, previous: DeltaState | None, jobs: bool = False) -> RunReport:
        if dry_run:
            return self.run(trigger=f"{trigger}:full", dry_run=True)
        # Links first, for every group known before the reads: a change made while they run is
        # then seen by the next cycle. Groups first seen by the reads are handled in _remember.
        started = now_ms()  # a full read requested from now on is not this one
        covered = previous.watched() if previous else set()
        covered |= {m.group.casefold() for m in self.config.mappings if is_guid(m.group)}
        try:
            links = self.directory.latest_delta_links(covered) if covered else []
        except SyncError as error:
            log.warning("no delta links before the reads (%s); taking them after", error)
            links, covered = [], set()
        observed = Observed()
        report = self.run(trigger=f"{trigger}:full", observed=observed, jobs=jobs)
        state = DeltaState(self.config.version, links, {}, {}, cycles=0, full_next=bool(observed.failed),
                           full_started_ms=started)
        self._remember(state, observed, report, covered)
        return report

    def _remember(self, state: DeltaState, observed: Observed, report: RunReport, covered: set[str]) -> None:
        """Save what this cycle read into the state: group IDs and nesting, links for groups first
        seen (their mappings are read again next cycle, after the link), and the scopes to plan
        again because a write failed, a removal was held (until approved, or no longer needed) or
        the scope could not be listed."""
        for ref, (gid, nested) in observed.groups.items():
            state.group_ids[ref] = gid
            state.nested[gid] = list(nested)
        pending = {r.change.scope for r in report.results if r.status in ("failed", "pending", "held")}
        pending |= {c.scope for c in report.plan.changes
                    if c.action is Action.SKIP and c.role is None and c.principal is None}
        pending |= set(report.plan.deferred)
        new = {gid for gid, nested in observed.groups.values() for gid in (gid, *nested)} - covered
        if new:
            try:
                state.links += self.directory.latest_delta_links(new)
                pending |= {t.scope for m in self.config.mappings if m.group.casefold() in observed.groups
                            and {observed.groups[m.group.casefold()][0], *observed.groups[m.group.casefold()][1]} & new
                            for t in m.targets}
            except SyncError as error:
                log.warning("no delta links for %d new group(s) (%s); the next cycle reads everything", len(new), error)
                state.full_next = True
        state.pending = [[s.cluster, s.database] for s in sorted(pending)]
        self.delta_state.save(state)

    def _written_under_config(self) -> None:
        """After writes made under a config other than the one the quick cycles' state was taken
        with (an HTTP or CLI apply, a job, a config since rolled back), the next cycle reads
        everything: no group change would bring those scopes round again."""
        state = self.delta_state.load()
        if state is not None and state.config_version != self.config.version:
            self.delta_state.request_full_read(now_ms())

    def force_full_read(self) -> None:
        """Make the next timer cycle a full read (a cluster job did not converge: its changes must
        come round again even if Graph reports no further change)."""
        self.delta_state.request_full_read(now_ms())

    def finished_grants(self) -> list[Grant]:
        """Ledger grants that no longer grant: ended (expired, revoked) or no longer offered by the config."""
        try:
            return [g for g in self.ledger.all_grants()
                    if g.ended() or not self.config.offers(g.profile, g.scope, g.role)]
        except Exception as error:  # the full read will see them; this is only about promptness
            log.warning("cannot read the onboarding ledger for ended grants: %s", error)
            return []

    def _forget_finished_grants(self, report: RunReport) -> None:
        """Drop finished grants from the ledger once their assignment is gone (or wanted by a mapping).

        A grant whose removal failed, was held or whose scope was skipped keeps its row: for an
        ended grant the row is what makes its removal explicit, so the next run tries again.
        """
        planned = set(report.plan.scopes)
        for grant in self.finished_grants():
            if grant.scope in planned and not any(_leaves_in_place(r, grant) for r in report.results):
                self.ledger.remove_grant(grant)

    @contextmanager
    def recording(self, report: RunReport, *, start: bool = True) -> Iterator[RunReport]:
        """Record `report` in the audit around the block: (optionally) when it starts, and whatever
        happens, when it ends, with the error that ended it if one did."""
        beating = _Beat()
        if start:
            self.audit.record_start(report.record() | {"heartbeatMs": now_ms()})
            threading.Thread(target=self._heartbeat, args=(report, beating), daemon=True,
                             name=f"heartbeat-{report.run_id}").start()
        try:
            yield report
        except BaseException as error:
            report.error = str(error) or type(error).__name__
            raise
        finally:
            with beating.lock:  # a beat in flight must not land after the end
                beating.stop.set()
            report.finished = now_iso()
            self.audit.record_end(report.record(), [r.as_json() for r in report.results])

    def _heartbeat(self, report: RunReport, beat: "_Beat") -> None:
        """Rewrite the running record every heartbeat, so that a run whose process died is seen as
        `abandoned` once its heartbeat lapses (shared.adapters.audit), instead of `running` forever."""
        while not beat.stop.wait(self.heartbeat_seconds):
            with beat.lock:
                if beat.stop.is_set():
                    return
                try:
                    # With the results so far: should the process die, what it wrote is known.
                    self.audit.record_end(report.record() | {"heartbeatMs": now_ms()},
                                          [r.as_json() for r in list(report.results)])
                except Exception as error:  # a missed beat is no reason to stop the run
                    log.warning("run %s: heartbeat not recorded: %s", report.run_id, error)

    def run(self, selector: str | None = None, *, trigger: str, approve_deletes: bool = False,
            dry_run: bool = False, run_id: str | None = None, selection: Selection | None = None,
            observed: Observed | None = None, jobs: bool = False) -> RunReport:
        """Plan and (unless dry run) apply, recording the run in the audit: what every trigger calls.

        With `jobs`, the writes are not made here but queued, one job per cluster (see dispatch).
        The run is recorded as "running" first; whatever happens, it ends recorded with its outcome.
        """
        report = RunReport(run_id or new_run_id(), trigger, dry_run=dry_run, selector=selector,
                           deadline=self.deadline())
        observed = Observed() if observed is None else observed
        observed.started_ms = observed.started_ms or report.started_ms
        with self.telemetry.run(report), self.recording(report):
            if not dry_run:
                self._record_managed()
            report.plan = self.plan(selector, approve_deletes=approve_deletes, selection=selection, observed=observed)
            log.info("run %s plan: %s", report.run_id, report.plan.summary())
            if dry_run:
                report.results = [ChangeResult(c, "planned") for c in report.plan.changes]
            elif jobs:
                self.dispatch(report, approve_deletes=approve_deletes)
                self._forget_departed(report)
                self._record_missing(observed)  # what the reads saw, whatever the jobs then write
            else:
                self.apply(report.plan, report)
                if report.plan.adopted:
                    self.ledger.record_adopted(report.plan.adopted)
                if report.plan.connections is not None and report.plan.connections.adopted:
                    self.ledger.record_adopted(report.plan.connections.adopted)
                self._forget_finished_grants(report)
                self._forget_departed(report)
                self._record_missing(observed)
                if any(r.status == "succeeded" for r in report.results):
                    self._written_under_config()
        log.info("run %s %s: %s", report.run_id, report.status, report.counts())
        return report


def job_record(parent_id: str, index: int, part: int, cluster: str, scopes: list[Scope], *,
               approve_deletes: bool, parent_started_ms: int, trigger: str = "job") -> dict:
    """The audit record of a queued cluster job: part 1 of job `index` of a run, or a continuation."""
    job_id = f"{parent_id}-j{index:02d}.{part}"
    return RunReport(job_id, trigger, selector=str(scopes[0]).split("/")[0]).record() | {
        "status": "queued", "parentRunId": parent_id, "parentStartedMs": parent_started_ms, "jobIndex": index,
        "part": part, "cluster": cluster, "scopes": [s.as_json() for s in scopes], "approveDeletes": approve_deletes,
    }


def _why_stop(lease, report: RunReport) -> str | None:
    """Why no further write may start on this cluster, or None."""
    if getattr(lease, "lost", False):
        return lease.reason or "the cluster's lease was lost"
    if report.deadline is not None and time.monotonic() + report.longest_write > report.deadline:
        return "deadline reached: the next write could not finish in time"
    return None


def _leaves_in_place(result: ChangeResult, grant: Grant) -> bool:
    """Whether this result may leave the grant's assignment in place: a removal of it that did not
    succeed, or a hold or skip that covers its (scope, role, principal)."""
    change = result.change
    if change.scope != grant.scope or (change.role is not None and change.role.casefold() != grant.role.casefold()):
        return False
    # Any spelling of the same principal counts (an assignment written by UPN, a grant by object
    # ID): keeping a row too long only delays its cleanup, dropping it early loses the removal.
    if change.principal is not None and change.principal.match_keys.isdisjoint(grant.principal.match_keys):
        return False
    if change.action is Action.REMOVE:
        return result.status != "succeeded"
    return change.action in (Action.HOLD, Action.SKIP)


def write_connection(connections: DataConnections, change: ConnectionChange) -> None:
    """One data-connection write: create, PATCH, recreate (delete, then create) or delete."""
    if change.action is Action.REMOVE:
        connections.delete_connection(change.scope, change.name)
    elif change.action is Action.ADD:
        connections.create_connection(change.connection)
    elif change.recreate:
        connections.delete_connection(change.scope, change.name)
        connections.create_connection(change.connection)
    else:
        connections.update_connection(change.connection)


def _home_domain(member: DirectoryObject) -> str | None:
    try:
        return member.home_address().rpartition("@")[2] or None
    except SyncError:
        return None


@dataclass(frozen=True)
class _Exclusions:
    version: str
    keys: frozenset
    warnings: tuple[str, ...]


@dataclass
class _Beat:
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


_gc_lock = threading.Lock()
_gc_pauses = 0


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Planning allocates hundreds of thousands of small acyclic objects; the cyclic collector,
    triggered by that allocation count, rescans the whole heap again and again (a third of a
    100k-member plan). Nothing here creates cycles, so it waits until the plan is made."""
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if not _gc_pauses:  # the last concurrent plan to finish turns it back on
                gc.enable()


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]

