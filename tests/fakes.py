"""In-memory fakes behind the engine's ports: they keep state and record every call (no mocks)."""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable

from shared.adapters.audit import MemoryAudit
from shared.adapters.directory import DirectoryObject
from shared.adapters.locks import ClusterBusyError
from shared.core.errors import NotFoundError, PermanentError
from shared.core.connections import DataConnection
from shared.core.plan import Assignment
from shared.core.principals import Principal
from shared.core.scopes import Scope
from shared.core.tenants import TenantInfo


def user(oid: str, upn: str, **extra) -> DirectoryObject:
    return DirectoryObject("user", oid, display_name=upn.split("@")[0], user_principal_name=upn,
                           account_enabled=extra.pop("enabled", True), user_type=extra.pop("user_type", "Member"), **extra)


def app(oid: str, app_id: str, name: str) -> DirectoryObject:
    return DirectoryObject("servicePrincipal", oid, display_name=name, app_id=app_id)


def group(oid: str, name: str, *, security: bool = True, mail_enabled: bool = False, mail: str | None = None,
          group_types: tuple[str, ...] = ()) -> DirectoryObject:
    return DirectoryObject("group", oid, display_name=name, mail=mail, security_enabled=security,
                           mail_enabled=mail_enabled, group_types=group_types)


class FakeDirectory:
    """Groups with flattened members; `failing` maps a group id to the error its member read raises.

    Users and service principals are found by object ID, UPN, mail or app ID once they are a
    group's member or added with `add_object`; `rename` changes a user's UPN in place."""

    def __init__(self, tenants: dict[str, str] | None = None):
        self.groups: dict[str, DirectoryObject] = {}
        self.members: dict[str, list[DirectoryObject]] = {}
        self.objects: dict[str, DirectoryObject] = {}
        self.tenants = {d.lower(): t for d, t in (tenants or {}).items()}
        self.failing: dict[str, Exception] = {}
        self.calls: list[tuple[str, str]] = []
        self.version = 0  # groups/delta: every change bumps it; a link remembers the one it was taken at
        self.changed_at: dict[str, int] = {}
        self.delta_expired = False  # Graph refuses every link (as after a sync-state reset)
        self.deleted: set[str] = set()  # soft-deleted groups: directory/deletedItems has them

    def add_group(self, obj: DirectoryObject, members: list[DirectoryObject]) -> None:
        self.groups[obj.id] = obj
        self.members[obj.id] = list(members)
        for member in members:
            self.add_object(member)

    def add_object(self, obj: DirectoryObject) -> None:
        if obj.kind == "group":
            self.groups.setdefault(obj.id, obj)
            self.members.setdefault(obj.id, [])
        else:
            self.objects[obj.id] = obj

    def rename(self, object_id: str, upn: str) -> DirectoryObject:
        """Give a user a new UPN, everywhere it is a member."""
        renamed = self.objects[object_id]._replace(user_principal_name=upn, display_name=upn.split("@")[0])
        self.objects[object_id] = renamed
        for group_id, members in self.members.items():
            self.members[group_id] = [renamed if m.id == object_id else m for m in members]
        return renamed

    def _find(self, kind: str, ref: str) -> DirectoryObject:
        key = ref.casefold()
        for obj in self.objects.values():
            if obj.kind == kind and key in (obj.id, (obj.user_principal_name or "").casefold(),
                                            (obj.mail or "").casefold(), (obj.app_id or "").casefold(),
                                            "" if kind == "user" else (obj.display_name or "").casefold()):
                return obj
        raise NotFoundError(f"no {kind} has id, name or address '{ref}'")

    def touch(self, *group_ids: str) -> None:
        """Record a direct membership change of these groups, as groups/delta would report it."""
        self.version += 1
        self.changed_at.update({g: self.version for g in group_ids})

    def set_members(self, group_id: str, members: list[DirectoryObject], *, changed: tuple[str, ...] = ()) -> None:
        """New transitive members; `changed` names the (nested) groups whose direct members changed."""
        self.members[group_id] = list(members)
        self.touch(*(changed or (group_id,)))

    def latest_delta_links(self, group_ids) -> list[str]:
        self.calls.append(("latest_delta_links", ",".join(sorted(group_ids))))
        ids = sorted(group_ids)
        return [f"delta:{self.version}:{','.join(ids[i:i + 50])}" for i in range(0, len(ids), 50)]

    def changed_groups(self, link: str) -> tuple[set[str], str]:
        from shared.adapters.directory import DeltaExpiredError

        self.calls.append(("changed_groups", link))
        if self.delta_expired:
            raise DeltaExpiredError("syncStateNotFound")
        _, version, ids = link.split(":", 2)
        changed = {g for g in ids.split(",") if self.changed_at.get(g, 0) > int(version)}
        return changed, f"delta:{self.version}:{ids}"

    def find_group(self, ref: str) -> DirectoryObject:
        self.calls.append(("find_group", ref))
        for g in self.groups.values():
            if ref.casefold() in (g.id, (g.display_name or "").casefold(), (g.mail or "").casefold()):
                return g
        raise NotFoundError(f"no group has displayName '{ref}'")

    def delete_group(self, group_id: str, *, soft: bool = False) -> None:
        """Delete a group (soft: kept in deletedItems, as a Microsoft 365 group is)."""
        self.groups.pop(group_id)
        self.members.pop(group_id)
        if soft:
            self.deleted.add(group_id)
        self.touch(group_id)

    def deleted_group(self, group_id: str) -> bool:
        self.calls.append(("deleted_group", group_id))
        return group_id in self.deleted

    def transitive_members(self, group_id: str) -> list[DirectoryObject]:
        self.calls.append(("transitive_members", group_id))
        if group_id in self.failing:
            raise self.failing[group_id]
        if group_id not in self.members:
            raise NotFoundError(f"Resource '{group_id}' does not exist")
        return list(self.members[group_id])

    def find_user(self, ref: str) -> DirectoryObject:
        self.calls.append(("find_user", ref))
        return self._find("user", ref)

    def find_service_principal(self, ref: str) -> DirectoryObject:
        self.calls.append(("find_service_principal", ref))
        return self._find("servicePrincipal", ref)

    def find_tenant_by_domain(self, domain: str) -> TenantInfo | None:
        self.calls.append(("find_tenant_by_domain", domain))
        tenant = self.tenants.get(domain.lower())
        return TenantInfo(tenant, domain, domain) if tenant else None


class Killed(BaseException):
    """The run dies mid-write (host timeout, restart): nothing in the app catches it."""


class MortalAudit(MemoryAudit):
    """An audit whose process can die: once `dead()` is true, nothing it is asked to record lands
    (a killed process runs no `finally`), so it holds only what was recorded before the death."""

    def __init__(self, dead: Callable[[], bool]):
        super().__init__()
        self.dead = dead

    def record_start(self, run):
        if not self.dead():
            super().record_start(run)

    def record_end(self, run, changes):
        if not self.dead():
            super().record_end(run, changes)


class FakeAssignments:
    """Kusto assignments per scope. Refuses duplicates of (role, principal) like Kusto does.

    `fail` is a list of (action, exception) consumed in order by matching writes; `list_failing`
    maps a scope to the error its listing raises; after `kill_after` writes, the next one is made
    and then the process dies (`dead`): it raises Killed, and so does every write after it until
    `dead` is reset. `made` records the writes that changed the state, `writes` every one attempted.
    """

    def __init__(self):
        self.state: dict[Scope, dict[str, Assignment]] = defaultdict(dict)
        self.writes: list[tuple[str, Scope, str]] = []
        self.fail: list[tuple[str, Exception]] = []
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight = 0
        self.permissions: dict[str, list[dict]] = {}  # cluster ID -> effective permissions (default: everything)
        self.write_seconds = 0.0  # how long each write takes, like a long-running ARM operation
        self.list_failing: dict[Scope, Exception] = {}
        self.kill_after: int | None = None
        self.dead = False
        self.made: list[tuple[str, Scope, str]] = []

    def seed(self, *assignments: Assignment) -> None:
        for a in assignments:
            self.state[a.scope][a.name] = a

    def list_assignments(self, scope: Scope) -> list[Assignment]:
        """As ARM lists them: the principal as written, its tenant, display name and object ID
        (`aadObjectId`), never the UPN it had when written (a user renamed since is not that UPN)."""
        if scope in self.list_failing:
            raise self.list_failing[scope]
        return [a if a.principal.upn is None else
                dataclasses.replace(a, principal=Principal(a.principal.kind, a.principal.identifier, a.principal.tenant,
                                                           display_name=a.principal.display_name,
                                                           object_id=a.principal.object_id))
                for a in self.state[scope].values()]

    def _maybe_fail(self, action: str) -> None:
        if self.dead:
            raise Killed(f"the process died before this {action}")
        for i, (which, error) in enumerate(self.fail):
            if which == action:
                del self.fail[i]
                raise error

    def create_assignment(self, scope: Scope, name: str, role: str, principal: Principal) -> None:
        self.writes.append(("create", scope, name))
        time.sleep(self.write_seconds)
        self._maybe_fail("create")
        for existing in self.state[scope].values():
            if existing.role == role and existing.principal.key == principal.key and existing.name != name:
                raise PermanentError(f"{role} for {principal.fqn} already exists as {existing.name}")
        self.state[scope][name] = Assignment(scope, role, principal, name)
        self.made.append(("create", scope, name))
        self._maybe_die("create")

    def delete_assignment(self, scope: Scope, name: str) -> None:
        self.writes.append(("delete", scope, name))
        time.sleep(self.write_seconds)
        self._maybe_fail("delete")
        if self.state[scope].pop(name, None) is not None:
            self.made.append(("delete", scope, name))
        self._maybe_die("delete")

    def _maybe_die(self, action: str) -> None:
        if self.kill_after is not None:
            if self.kill_after <= 0:
                self.kill_after, self.dead = None, True
                raise Killed(f"the process died just after this {action}")
            self.kill_after -= 1

    def effective_permissions(self, cluster_id: str) -> list[dict]:
        return self.permissions.get(cluster_id, [{"actions": ["*"], "notActions": []}])


class FakeLocks:
    """Cluster locks; a cluster in `busy` cannot be leased (as when another run holds it)."""

    def __init__(self, busy: set[str] | None = None):
        self.busy = {c.casefold() for c in busy or ()}

    @contextmanager
    def hold(self, cluster_id: str):
        if cluster_id.casefold() in self.busy:
            raise ClusterBusyError(f"the lease of {cluster_id} is held by another run")
        yield


class FakeConnections:
    """Kusto data connections per database, with Kusto's validation answered from `tables`
    ({table: mapping names}) and the one-consumer-group-per-source rule."""

    def __init__(self, tables: dict[str, set[str]] | None = None):
        self.state: dict[Scope, dict[str, DataConnection]] = defaultdict(dict)
        self.tables = tables if tables is not None else {"Events": {"EventsMapping"}}
        self.writes: list[tuple[str, Scope, str]] = []
        self.validations = 0

    def seed(self, *connections: DataConnection) -> None:
        for c in connections:
            self.state[c.scope][c.name] = c

    def list_connections(self, scope: Scope) -> list[DataConnection]:
        return list(self.state[scope].values())

    def validate_connection(self, connection: DataConnection) -> list[str]:
        self.validations += 1
        problems = []
        table = connection.get("tableName")
        if table and table not in self.tables:
            problems.append("table does not exist")
        elif table and connection.get("mappingRuleName") and connection.get("mappingRuleName") not in self.tables[table]:
            problems.append("BadRequest_MappingReferenceWasNotFound")
        for existing in (c for cs in self.state.values() for c in cs.values()):
            if existing.name != connection.name and existing.identity[1:] == connection.identity[1:]:
                problems.append("event hub resource id and consumer group tuple provided are already used")
        return problems

    def create_connection(self, connection: DataConnection) -> None:
        self.writes.append(("create", connection.scope, connection.name))
        self.state[connection.scope][connection.name] = connection

    def update_connection(self, connection: DataConnection) -> None:
        self.writes.append(("update", connection.scope, connection.name))
        self.state[connection.scope][connection.name] = connection

    def delete_connection(self, scope: Scope, name: str) -> None:
        self.writes.append(("delete", scope, name))
        self.state[scope].pop(name, None)


class FakeSubscriptions:
    """Graph subscriptions in memory; `calls` records (method, id) of every call."""

    def __init__(self):
        from shared.core.subscriptions import Subscription

        self.Subscription = Subscription
        self.items: dict[str, object] = {}
        self.calls: list[tuple[str, str | None]] = []
        self.reauthorized: list[str] = []

    def add(self, sid: str, target: str, expires, *, lifecycle: bool = True):
        self.items[sid] = self.Subscription(sid, "groups", "updated,deleted", target, target if lifecycle else None, expires)
        return self.items[sid]

    def list(self):
        self.calls.append(("list", None))
        return list(self.items.values())

    def create(self, target, client_state, expires):
        sid = f"sub-{len(self.calls)}"
        self.calls.append(("create", sid))
        return self.add(sid, target, expires)

    def renew(self, subscription_id, expires):
        from dataclasses import replace

        self.calls.append(("renew", subscription_id))
        if subscription_id not in self.items:
            raise NotFoundError(subscription_id)
        self.items[subscription_id] = replace(self.items[subscription_id], expires=expires)
        return self.items[subscription_id]

    def reauthorize(self, subscription_id):
        self.calls.append(("reauthorize", subscription_id))
        if subscription_id not in self.items:
            raise NotFoundError(subscription_id)
        self.reauthorized.append(subscription_id)

    def delete(self, subscription_id):
        self.calls.append(("delete", subscription_id))
        if self.items.pop(subscription_id, None) is None:
            raise NotFoundError(subscription_id)
