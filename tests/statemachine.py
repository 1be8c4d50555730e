"""A Hypothesis state machine over the engine and the in-memory fakes, with a small reference model
of what the access should be, and the sync-safety invariants checked after every run.

The world is a tiny tenant (users, two configured groups and one nestable group, one-time-passcode
guests), two clusters with three databases, and a config that the rules change. Rules change the
directory (join, leave, nest, unnest, delete a group, rename a user, add a guest), the config
(mappings, targets, exclude), onboarding (grant, revoke, expiry), inject faults (a throttled or
failing group read, an unlistable scope, transient and permanent write failures, a run killed
mid-apply) and run the app (a quick cycle through `Engine.sync`, a full read through `Engine.run`).

The invariants, after every run (`check_run`):
1. no unowned assignment is ever changed;
2. no excluded principal is ever added or removed;
3. nothing is removed for a principal whose desired state was unknown in that run;
4. every write made is in the audit, even when the process is killed (the kill is a hard one:
   nothing the dying process records lands, so only what it recorded before a write counts);
5. after a fault-free full read, the clusters equal the model exactly;
6. after a fault-free quick cycle, whatever the history, so do they: every membership change since
   the last successful cycle is applied, and a scope that left the config is settled.

The guard is the default one. Histories are small enough that a scope rarely loses more than the
guard's floor in one run; when it does, the model checks that each hold is one the default guard
must make (more than maxDeletes, or more than deleteFloor and maxDeletePercent of the owned), and
invariant 5 is then checked after an approved full read, as an operator would release them.

A group deleted for good (a security group) is known-empty only on the second 404 in a row, which
the app remembers in its ledger; until then the model calls its targets unknown, as the app must.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fakes import FakeAssignments, FakeDirectory, Killed, MortalAudit, group, user
from shared.adapters.ledger import MemoryLedger
from shared.core.config import Guards, SyncConfig, parse_config
from shared.core.errors import PermanentError, PermissionDeniedError, TransientError
from shared.core.plan import Action, Assignment, assignment_name
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.delta import MemoryStateStore
from shared.engine.reconcile import Engine
from shared.handlers.onboarding import handle

HOME = "11111111-1111-1111-1111-111111111111"
DOMAIN = "contoso.com"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
TEST = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-test"
SALES, OPS, TEST_SALES = Scope(PROD, "Sales"), Scope(PROD, "Ops"), Scope(TEST, "Sales")
SCOPES = (SALES, OPS, TEST_SALES)
TARGETS = ((SALES, "Viewer"), (OPS, "Viewer"), (TEST_SALES, "Ingestor"), (SALES, "Ingestor"))
PROFILE_TARGET = (SALES, "Viewer")  # what the `analyst` onboarding profile grants

USERS = tuple(f"{i:08d}-0000-4000-8000-000000000000" for i in range(1, 9))
ALPHA, BETA, NESTED = (f"{c * 8}-0000-4000-8000-00000000000{c}" for c in "abc")
CONFIGURED = (ALPHA, BETA)  # mappings reference these by object ID; NESTED is only ever nested
GROUP_NAMES = {ALPHA: "Alpha", BETA: "Beta", NESTED: "Nested"}

# Principals by directory identity, guests as the host tenant's guest object (the `safety` work):
# until that is the app's default, the rules that need it (rename, guests, exclude spellings) are off.
IDENTITY = next(f.default for f in fields(SyncConfig) if f.name == "guests") == "host"
# Scopes that leave the config converge (the `safety2` work): until then, nothing leaves the config.
CONVERGES = hasattr(Engine, "managed_scopes")
GUARD = Guards()  # the default guard: nothing here raises maxDeletePercent


class World:
    """The reference model: the directory, the config and onboarding as they truly are."""

    def __init__(self):
        self.upn = {u: f"u{i}@{DOMAIN}" for i, u in enumerate(USERS, 1)}
        self.upns_ever = {u: {upn} for u, upn in self.upn.items()}
        self.guests: list[str] = []
        self.direct: dict[str, set[str]] = {g: set() for g in GROUP_NAMES}
        self.deleted: dict[str, bool] = {}  # group -> soft (deletedItems confirms it)
        self.mappings: dict[tuple[str, str], set[int]] = {}  # (group, mode) -> indexes into TARGETS
        self.exclude: dict[str, str] = {}  # user -> how it is spelled in the config
        self.resolved: set[tuple[str, str]] = set()  # (user, spelling) the app has seen the spelling name
        self.grants: dict[str, bool] = {}  # user -> active (False: revoked or expired)

    def excluded(self) -> set[str]:
        """The people the config's exclude names: by object ID or by the UPN they hold, or by a UPN
        they held when the app last read the entry (it remembers whom an entry named; an entry
        spelled by a UPN its holder gave up before the app ever read it names nobody)."""
        return {u for u, spelling in self.exclude.items() if self._names(u, spelling) or (u, spelling) in self.resolved}

    def read_excludes(self) -> None:
        """The app reads the config's exclude entries (every run and every onboarding message does)."""
        self.resolved |= {(u, spelling) for u, spelling in self.exclude.items() if self._names(u, spelling)}

    def _names(self, uid: str, spelling: str) -> bool:
        return spelling.split("=", 1)[1].split(";")[0].casefold() in (uid, self.upn[uid].casefold())

    def people(self) -> list[str]:
        return list(USERS) + self.guests

    def transitive(self, gid: str) -> set[str]:
        """Users and guests in the group, through nesting."""
        found = set()
        for member in self.direct[gid]:
            found |= self.transitive(member) if member in GROUP_NAMES else {member}
        return found

    def config(self) -> SyncConfig:
        mappings = [
            {"name": f"{GROUP_NAMES[g].lower()}-{mode}", "group": g, "mode": mode,
             "targets": [{"cluster": TARGETS[i][0].cluster, "database": TARGETS[i][0].database,
                          "role": TARGETS[i][1]} for i in sorted(targets)]}
            for (g, mode), targets in sorted(self.mappings.items()) if targets
        ]
        scope, role = PROFILE_TARGET
        return parse_config({
            "mappings": mappings,
            "exclude": sorted(self.exclude.values()),
            "profiles": {"analyst": {"targets": [{"cluster": scope.cluster, "database": scope.database,
                                                  "role": role}]}},
        })

    def desired(self, confirmed: set[str]) -> tuple[set[tuple], set[tuple]]:
        """(scope key, role, who) wanted, and the (scope key, role) whose desired state is unknown
        without any fault: targets of a group deleted for good but not yet confirmed."""
        wanted, unknown = set(), set()
        for (gid, mode), targets in self.mappings.items():
            for i in targets:
                scope, role = TARGETS[i]
                if gid in self.deleted:
                    if not (self.deleted[gid] or gid in confirmed):
                        unknown.add((scope.key, role.casefold()))
                    continue
                for who in ({gid} if mode == "group" else self.transitive(gid)):
                    wanted.add((scope.key, role.casefold(), who))
        scope, role = PROFILE_TARGET
        wanted |= {(scope.key, role.casefold(), u) for u, active in self.grants.items() if active}
        return ({w for w in wanted if w[2] not in self.excluded()},
                unknown)


class SyncMachine(RuleBasedStateMachine):
    """Rules change the world or run the app; `check_run` holds the app to the model after each run."""

    histories = 0
    steps = 0
    runs = 0
    releases = 0  # fault-free runs whose holds the default guard had to make, released by approval

    @initialize(members=st.lists(st.sets(st.integers(0, len(USERS) - 1)), min_size=3, max_size=3))
    def start(self, members=((), (), ())):
        """A tenant with some members already in each group, and a config that maps them."""
        SyncMachine.histories += 1
        self.world = World()
        for gid, indexes in zip(GROUP_NAMES, members):
            self.world.direct[gid] = {USERS[i] for i in indexes}
        self.world.mappings = {(ALPHA, "members"): {0, 3}, (BETA, "members"): {1}, (BETA, "group"): {2}}
        self.directory = FakeDirectory()
        self.assignments = FakeAssignments()
        self.audit = MortalAudit(lambda: self.assignments.dead)
        self.ledger, self.delta = MemoryLedger(), MemoryStateStore()
        self.objects = {u: user(u, upn) for u, upn in self.world.upn.items()}
        for gid, name in GROUP_NAMES.items():
            self.directory.add_group(group(gid, name), [])
        for obj in self.objects.values():
            if hasattr(self.directory, "add_object"):
                self.directory.add_object(obj)
        # Assignments made by people: never the app's to change.
        self.unowned = {
            (SALES, "manual-viewer-u1"): Assignment(SALES, "Viewer", self._principal(USERS[0]), "manual-viewer-u1"),
            (OPS, "manual-viewer-u2"): Assignment(OPS, "Viewer", self._principal(USERS[1]), "manual-viewer-u2"),
            (SALES, "manual-admin-u3"): Assignment(SALES, "Admin", self._principal(USERS[2]), "manual-admin-u3"),
        }
        self.assignments.seed(*self.unowned.values())
        self._publish()
        self.engine = None
        self.message = 0

    def _principal(self, uid: str) -> Principal:
        return Principal(PrincipalKind.USER, self.world.upn[uid], HOME, object_id=uid)

    def _engine(self) -> Engine:
        config = self.world.config()
        if self.engine is None or self.engine.config.version != config.version:
            tenants = TenantResolver(self.directory, home_tenant_id=HOME, home_domains=[DOMAIN])
            self.engine = Engine(config, self.directory, self.assignments, tenants, HOME, audit=self.audit,
                                 ledger=self.ledger, delta_state=self.delta, sleep=lambda s: None,
                                 retry_budget_seconds=60, heartbeat_seconds=3600, progress=lambda line: None)
        return self.engine

    def _publish(self, *changed: str) -> None:
        """Show the directory as the world has it: transitive members (nested groups included, as
        Graph lists them), and a groups/delta change for each group whose direct members changed."""
        for gid in GROUP_NAMES:
            if gid in self.world.deleted:
                continue
            nested = {m for m in self.world.direct[gid] if m in GROUP_NAMES}
            self.directory.members[gid] = ([self.objects[u] for u in sorted(self.world.transitive(gid))]
                                           + [self.directory.groups[n] for n in sorted(nested)])
        if changed and hasattr(self.directory, "touch"):
            self.directory.touch(*changed)

    # -- the directory ---------------------------------------------------------------------------

    person = st.integers(0, 9)
    some_group = st.sampled_from(sorted(GROUP_NAMES))

    def _who(self, index: int) -> str:
        people = self.world.people()
        return people[index % len(people)]

    @rule(index=person, gid=some_group)
    def join(self, index, gid):
        if gid not in self.world.deleted:
            self.world.direct[gid].add(self._who(index))
            self._publish(gid)

    @rule(index=person, gid=some_group)
    def leave(self, index, gid):
        if gid not in self.world.deleted and self._who(index) in self.world.direct[gid]:
            self.world.direct[gid].discard(self._who(index))
            self._publish(gid)

    @rule(gid=some_group, joining=st.booleans())
    def reorganize(self, gid, joining):
        """A whole team joins or leaves at once: the size of change the deletion guard is about."""
        if gid not in self.world.deleted:
            people = set(self.world.people())
            self.world.direct[gid] = (self.world.direct[gid] | people) if joining else (self.world.direct[gid] - people)
            self._publish(gid)

    @rule(parent=st.sampled_from(CONFIGURED))
    def nest(self, parent):
        if parent not in self.world.deleted and NESTED not in self.world.deleted:
            self.world.direct[parent].add(NESTED)
            self._publish(parent)

    @rule(parent=st.sampled_from(CONFIGURED))
    def unnest(self, parent):
        if parent not in self.world.deleted and NESTED in self.world.direct[parent]:
            self.world.direct[parent].discard(NESTED)
            self._publish(parent)

    @precondition(lambda self: hasattr(self.directory, "delete_group"))
    @rule(gid=some_group, soft=st.booleans())
    def delete_group(self, gid, soft):
        if gid in self.world.deleted:
            return
        parents = [p for p in CONFIGURED if gid in self.world.direct[p]]
        for parent in parents:  # Entra drops a deleted group from the groups it was nested in
            self.world.direct[parent].discard(gid)
        self.world.deleted[gid] = soft
        self.directory.delete_group(gid, soft=soft)
        self._publish(*parents)

    @precondition(lambda self: IDENTITY)
    @rule(index=person)
    def rename(self, index):
        uid = self._who(index)
        if uid in self.world.guests:
            return
        upn = f"{uid[:8]}.r{len(self.world.upns_ever[uid])}@{DOMAIN}"
        self.world.upn[uid] = upn
        self.world.upns_ever[uid].add(upn)
        self.objects[uid] = self.objects[uid]._replace(user_principal_name=upn, display_name=upn.split("@")[0])
        if hasattr(self.directory, "add_object"):
            self.directory.add_object(self.objects[uid])
        self._publish()  # a rename is no membership change: groups/delta does not report it

    @precondition(lambda self: IDENTITY and len(self.world.guests) < 2)
    @rule()
    def add_guest(self):
        n = len(self.world.guests) + 1
        gid = f"{n:08d}-6000-4000-8000-000000000000"
        self.world.guests.append(gid)
        self.objects[gid] = user(gid, f"x{n}_gmail.com#EXT#@{DOMAIN}", user_type="Guest", mail=f"x{n}@gmail.com")
        if hasattr(self.directory, "add_object"):
            self.directory.add_object(self.objects[gid])

    # -- faults: each one is consumed by the next run ---------------------------------------------

    @rule(gid=st.sampled_from(CONFIGURED), throttled=st.booleans())
    def fail_read(self, gid, throttled):
        if gid in self.world.deleted:  # nothing left to read: Graph answers 404 for it
            return
        self.directory.failing[gid] = (TransientError("429 Too Many Requests", retry_after=1) if throttled else
                                       PermissionDeniedError("403 Authorization_RequestDenied", permission="GroupMember.Read.All"))

    @rule(scope=st.sampled_from(SCOPES))
    def fail_listing(self, scope):
        self.assignments.list_failing[scope] = TransientError("ARM listing throttled past the retry budget")

    @rule(action=st.sampled_from(("create", "delete")), transient=st.booleans())
    def fail_write(self, action, transient):
        error = TransientError("409 Conflict: operation in progress") if transient else PermanentError("400 refused")
        self.assignments.fail.append((action, error))

    @rule(after=st.integers(0, 3))
    def kill(self, after):
        self.assignments.kill_after = after

    def _faulty(self) -> bool:
        return bool(self.directory.failing or self.assignments.list_failing or self.assignments.fail
                    or self.assignments.kill_after is not None)

    # -- the config ----------------------------------------------------------------------------

    @rule(gid=st.sampled_from(CONFIGURED), mode=st.sampled_from(("members", "members", "group")),
          goal=st.integers(0, len(TARGETS) - 1))
    def add_target(self, gid, mode, goal):
        self.world.mappings.setdefault((gid, mode), set()).add(goal)

    @precondition(lambda self: CONVERGES)
    @rule(goal=st.integers(0, len(TARGETS) - 1), which=st.integers(0, 3))
    def remove_target(self, goal, which):
        keys = sorted(self.world.mappings)
        if keys:
            self.world.mappings[keys[which % len(keys)]].discard(goal)

    @precondition(lambda self: CONVERGES)
    @rule(which=st.integers(0, 3))
    def remove_mapping(self, which):
        keys = sorted(self.world.mappings)
        if keys:
            del self.world.mappings[keys[which % len(keys)]]

    @rule(index=st.integers(0, len(USERS) - 1), spelling=st.integers(0, 3))
    def add_exclude(self, index, spelling):
        uid = USERS[index]
        upn = self.world.upn[uid]
        spellings = [f"aaduser={upn};{HOME}"]
        if IDENTITY:
            spellings += [f"aaduser={upn}", f"aaduser={upn};{DOMAIN}", f"aaduser={uid};{HOME}"]
        self.world.exclude[uid] = spellings[spelling % len(spellings)]

    @rule(index=st.integers(0, len(USERS) - 1))
    def remove_exclude(self, index):
        self.world.exclude.pop(USERS[index], None)

    # -- onboarding (through the queue handler, as messages arrive) ------------------------------

    def _onboard(self, body: dict):
        self.message += 1
        self.world.read_excludes()
        before = self._snapshot()
        outcome = handle(self._engine(), json.dumps(body), message_id=f"m-{self.message}")
        self.check_run(before, outcome.report, unknown=set())
        return outcome

    @precondition(lambda self: not self._faulty())
    @rule(index=st.integers(0, len(USERS) - 1))
    def grant(self, index):
        uid = USERS[index]
        outcome = self._onboard({"principal": self.world.upn[uid], "profile": "analyst"})
        if uid in self.world.excluded():
            assert outcome.status == "rejected", (outcome.status, outcome.detail)
            return
        assert outcome.status in ("granted", "unchanged"), (outcome.status, outcome.detail)
        self.world.grants[uid] = True

    @precondition(lambda self: not self._faulty())
    @rule(index=st.integers(0, len(USERS) - 1))
    def revoke(self, index):
        uid = USERS[index]
        if not self.world.grants.get(uid) or uid in self.world.excluded():
            return
        outcome = self._onboard({"action": "revoke", "principal": self.world.upn[uid], "profile": "analyst"})
        assert outcome.status in ("revoked", "unchanged"), (outcome.status, outcome.detail)
        self.world.grants[uid] = False

    @rule(index=st.integers(0, len(USERS) - 1))
    def expire(self, index):
        uid = USERS[index]
        if not self.world.grants.get(uid):
            return
        rows = [g for g in self.ledger.all_grants() if self._whose(g.principal) == uid and not g.ended()]
        assert rows, f"the active grant of {uid} is not in the ledger"
        past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
        for row in rows:
            self.ledger.record_grant(dataclasses.replace(row, expires_at=past))
        self.world.grants[uid] = False

    # -- runs --------------------------------------------------------------------------------

    @precondition(lambda self: hasattr(self.directory, "changed_groups"))  # groups/delta in the fake
    @rule()
    def cycle(self):
        self._run(lambda engine: engine.sync(trigger="timer"), quick=True)

    @rule()
    def full_read(self):
        self._run(lambda engine: engine.run(trigger="full"), quick=False)

    def _run(self, start, *, quick: bool) -> None:
        fault_free = not self._faulty()
        unknown = self._unknown_now()
        confirmed = self._confirmed()  # as the run starts: it may record a first 404
        before = self._snapshot()
        engine = self._engine()
        self.world.read_excludes()
        try:
            report = start(engine)
        except Killed:
            report = None
        finally:
            self.directory.failing.clear()
            self.assignments.list_failing.clear()
            self.assignments.fail.clear()
            self.assignments.kill_after, self.assignments.dead = None, False  # the host starts a new process
        SyncMachine.runs += 1
        self.check_run(before, report, unknown)
        if fault_free and report is not None:
            self.check_converged(report, engine, confirmed, quick=quick)

    # -- the invariants --------------------------------------------------------------------------

    def _snapshot(self) -> dict:
        return {"state": {s: dict(self.assignments.state[s]) for s in SCOPES}, "made": len(self.assignments.made)}

    def _whose(self, principal: Principal) -> str | None:
        """The person or group a principal is, however it is written (object ID or any UPN ever held)."""
        for text in (principal.object_id, principal.identifier):
            if not text:
                continue
            text = text.casefold()
            if text in GROUP_NAMES or text in self.objects:
                return text
            for uid, upns in self.world.upns_ever.items():
                if text in {u.casefold() for u in upns}:
                    return uid
        return None

    def _confirmed(self) -> set[str]:
        missing = getattr(self.ledger, "missing_groups", None)
        return {g.casefold() for g in missing()} if missing else set()

    def _unknown_now(self) -> set[tuple]:
        """(scope key, role or '*', who or '*') whose desired state the next run cannot know."""
        unknown = set()
        gone = {g for g, soft in self.world.deleted.items() if not soft and g not in self._confirmed()}
        for (gid, mode), targets in self.world.mappings.items():
            if (gid in self.directory.failing and gid not in self.world.deleted) or gid in gone:
                for i in targets:
                    scope, role = TARGETS[i]
                    unknown.add((scope.key, role.casefold(), gid if mode == "group" else "*"))
        unknown |= {(scope.key, "*", "*") for scope in self.assignments.list_failing}
        return unknown

    def check_run(self, before: dict, report, unknown: set[tuple]) -> None:
        made = self.assignments.made[before["made"]:]
        excluded = self.world.excluded()
        # 1. no unowned assignment is ever changed (nor any the app would not have named)
        for (scope, name), assignment in self.unowned.items():
            assert self.assignments.state[scope].get(name) == assignment, f"unowned {name} changed"
        prefix = self._engine().config.ownership.prefix
        for action, scope, name in made:
            if action == "delete":
                gone = before["state"][scope][name]
                assert name == assignment_name(prefix, scope, gone.role, gone.principal), f"deleted unowned {name}"
        for action, scope, name in made:
            assignment = (before["state"][scope].get(name) if action == "delete"
                          else self.assignments.state[scope].get(name))
            if assignment is None:  # created, then deleted again within the run: judged by its delete
                continue
            who = self._whose(assignment.principal)
            # 2. no excluded principal is ever added or removed
            assert who not in excluded, f"excluded {who} touched: {action} {scope} {name}"
            # 3. nothing is removed for a principal whose desired state was unknown in that run
            if action == "delete":
                key, role = scope.key, assignment.role.casefold()
                assert not ({(key, role, who), (key, role, "*"), (key, "*", "*")} & unknown), (
                    f"removed {who} from {scope} {assignment.role} while its desired state was unknown")
        # 4. every write made is in the audit: with its outcome, or (the process was killed before
        # it could record one) as the write its run intended
        audited = {(c["action"], c["name"]) for changes in self.audit.changes.values() for c in changes
                   if c.get("result") in ("succeeded", "intended")}
        for action, scope, name in made:
            assert ({"create": "add", "delete": "remove"}[action], name) in audited, f"{action} {name} not audited"
        if report is not None:
            assert self.audit.runs[report.run_id]["status"] == report.status
            assert not [c for c in self.audit.changes.get(report.run_id, []) if c.get("result") == "intended"]

    def check_converged(self, report, engine: Engine, confirmed: set[str], *, quick: bool) -> None:
        """5 and 6: a fault-free run leaves the clusters as the model says (holds only where the
        default guard must hold, released by an approved full read)."""
        wanted, unknown = self.world.desired(confirmed)
        self._check_status(report, unknown, "cycle" if quick else "full read")
        if not any(r.status == "held" for r in report.results) and self._mismatch(wanted, unknown)[1]:
            # Removals an earlier run held stay until approved: a quick cycle does not plan them again.
            report = engine.run(trigger="check", dry_run=True)
        if any(r.change.action is Action.HOLD for r in report.results):
            self._check_holds_are_the_guards(report)
            SyncMachine.releases += 1
            report = engine.run(trigger="approved", approve_deletes=True)
            self._check_status(report, unknown, "approved full read")
            assert not any(r.status == "held" for r in report.results)
        missing, extra = self._mismatch(wanted, unknown)
        assert not (missing or extra), (
            f"after a fault-free {'cycle' if quick else 'full read'}: missing {missing}, extra {extra}")

    def _mismatch(self, wanted: set[tuple], unknown: set[tuple]) -> tuple[list, list]:
        """What the clusters lack, and have beyond, the model (outside what it calls unknown)."""
        out = self.world.excluded()
        actual = {(scope.key, a.role.casefold(), self._whose(a.principal))
                  for scope in SCOPES for a in self.assignments.state[scope].values()}
        expected = wanted | {(s.key, a.role.casefold(), self._whose(a.principal)) for (s, _), a in self.unowned.items()}
        settled = lambda keys: {k for k in keys if k[:2] not in unknown and k[2] not in out}  # noqa: E731
        return sorted(settled(expected) - settled(actual)), sorted(settled(actual) - settled(expected))

    @staticmethod
    def _check_status(report, unknown: set[tuple], what: str) -> None:
        """Without a fault, nothing fails, and only what the model calls unknown is skipped."""
        unexpected = [r for r in report.results if r.status not in ("succeeded", "held")
                      and not (r.status == "skipped" and r.change.scope.key in {k[0] for k in unknown})]
        assert not unexpected, f"fault-free {what} ended {report.status}: " + "; ".join(
            f"{r.change.describe()} {r.status} {r.error or ''}" for r in unexpected)
        assert report.status in ("succeeded", "succeeded_with_holds", "partially_skipped"), report.status

    def _check_holds_are_the_guards(self, report) -> None:
        held: dict[Scope, int] = {}
        for r in report.results:
            if r.change.action is Action.HOLD:
                held[r.change.scope] = held.get(r.change.scope, 0) + 1
        for scope, removals in held.items():
            owned = sum(1 for a in self.assignments.state[scope].values() if (scope, a.name) not in self.unowned)
            assert removals > GUARD.max_deletes or (
                removals > GUARD.delete_floor and removals * 100 > GUARD.max_delete_percent * owned), (
                f"{removals} of {owned} removals held in {scope}: the default guard allows them")

    @invariant()
    def count(self):
        SyncMachine.steps += 1
