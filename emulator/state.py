"""Tenant file validation and the emulator's in-memory state: the directory (users, groups,
service principals, tenants) and the Kusto clusters with their principal assignments.

Every validation problem is reported with its JSON path, all at once. Principal resolution
(what Kusto does on a principal-assignment PUT) lives here too, because loading a tenant file
resolves its assignments exactly like a PUT would.

Directory changes are versioned: every change bumps ``State.version``, keeps the new Directory
as a snapshot (the last ``SNAPSHOTS_KEPT``) and appends to ``State.changelog``. Group entries
there are computed by diffing the old and new directory (create, update with the changed
``properties``, addMembers/removeMembers with the ``members`` and their type, delete with the
``reason`` Graph's delta reports), so ``State.group_changes`` can collapse a version window per
group for ``GET /groups/delta``. Delta tokens carry ``State.delta_generation``: loading or
resetting the state, or ``expire_delta``, starts a new generation and refuses older tokens.
"""
from __future__ import annotations

import copy
import re
import threading
import uuid
from datetime import datetime, timezone

from . import dataconnections
from .permissions import DEFAULT_ARM_PERMISSIONS, DEFAULT_GRAPH_ROLES, validate_arm_permissions, validate_roles

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
CONSUMER_DOMAINS = frozenset(
    {
        "live.com", "hotmail.com", "outlook.com", "msn.com", "passport.com", "windowslive.com",
        "live.co.uk", "live.fr", "live.de", "live.it", "live.nl", "live.ca", "live.com.au", "live.jp",
        "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es", "hotmail.nl",
        "hotmail.ca", "hotmail.com.au", "hotmail.co.jp", "hotmail.be", "hotmail.ch",
        "outlook.fr", "outlook.de", "outlook.it", "outlook.es", "outlook.co.uk", "outlook.jp",
        "outlook.com.au", "outlook.be", "outlook.at", "outlook.ie", "outlook.dk", "outlook.sa",
    }
)

CLUSTER_ROLES = ("AllDatabasesAdmin", "AllDatabasesViewer", "AllDatabasesMonitor")
DATABASE_ROLES = ("Admin", "Ingestor", "Monitor", "User", "UnrestrictedViewer", "Viewer")
PRINCIPAL_TYPES = ("App", "Group", "User")

DEFAULT_MANAGED_IDENTITY = {
    "appId": "5a1c0e3b-7f2d-4e6a-9b8c-1d2e3f4a5b6c",
    "objectId": "6b2d1f4c-8a3e-4f7b-ac9d-2e3f4a5b6c7d",
    "displayName": "kusto-access-sync",
}

TOP_LEVEL_KEYS = ("tenant", "foreignTenants", "users", "servicePrincipals", "groups", "clusters", "managedIdentity",
                  "ingestionSources")
USER_KEYS = {"id", "userPrincipalName", "displayName", "mail", "userType", "accountEnabled", "givenName", "surname", "jobTitle"}
SP_KEYS = {"id", "appId", "displayName"}
GROUP_KEYS = {"id", "displayName", "description", "mail", "mailEnabled", "securityEnabled", "groupTypes", "members", "visibility"}
CLUSTER_KEYS = {"subscriptionId", "resourceGroup", "name", "location", "databases", "principalAssignments", "databasePrincipalAssignments", "sku",
                "tables", "dataConnections", "permissions"}
GROUP_PROPS = ("displayName", "description", "mail", "mailEnabled", "securityEnabled", "groupTypes", "visibility")
VISIBILITIES = ("Public", "Private", "HiddenMembership")
SNAPSHOTS_KEPT = 64
ASSIGNMENT_KEYS = {"name", "principalId", "principalType", "role", "tenantId", "tenantName", "principalName", "aadObjectId", "provisioningState"}


class TenantFileError(Exception):
    """A tenant file (or a directory change) that does not validate; ``problems`` lists them all."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class ResolveError(Exception):
    """Kusto could not accept the principal of an assignment; the message is what ARM answers."""


def is_guid(value) -> bool:
    return isinstance(value, str) and bool(GUID_RE.match(value))


def _is_str(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _objects(data: dict, key: str, problems: list[str]):
    """(path, object) for each entry of the list `data[key]`; what is not a list of objects is a problem."""
    items = data.get(key, [])
    if not isinstance(items, list):
        problems.append(f"{key}: must be a list")
        return
    for i, item in enumerate(items):
        if isinstance(item, dict):
            yield f"{key}[{i}]", item
        else:
            problems.append(f"{key}[{i}]: must be an object")


def _check_keys(obj, allowed, path, problems):
    for key in obj:
        if key not in allowed:
            problems.append(f"{path}: unknown key '{key}'")


# ---------------------------------------------------------------- directory validation

def validate_directory(data: dict) -> list[str]:
    """Problems of the directory part of a tenant file (everything except clusters)."""
    problems: list[str] = []
    tenant = data.get("tenant")
    home_domains: set[str] = set()
    if not isinstance(tenant, dict):
        problems.append("tenant: required object {id, domains[]}")
    else:
        _check_keys(tenant, {"id", "domains", "displayName"}, "tenant", problems)
        if not is_guid(tenant.get("id")):
            problems.append(f"tenant.id: must be a GUID, got {tenant.get('id')!r}")
        problems += _domains(tenant.get("domains"), "tenant.domains", home_domains, set())
    all_domains = set(home_domains)
    tenant_ids = {str(tenant.get("id", "")).lower()} if isinstance(tenant, dict) else set()
    for path, ft in _objects(data, "foreignTenants", problems):
        _check_keys(ft, {"id", "displayName", "domains"}, path, problems)
        if not is_guid(ft.get("id")):
            problems.append(f"{path}.id: must be a GUID, got {ft.get('id')!r}")
        elif ft["id"].lower() in tenant_ids or ft["id"].lower() == MSA_TENANT_ID:
            problems.append(f"{path}.id: duplicate tenant id '{ft['id']}'")
        else:
            tenant_ids.add(ft["id"].lower())
        if not _is_str(ft.get("displayName")):
            problems.append(f"{path}.displayName: required string")
        problems += _domains(ft.get("domains"), f"{path}.domains", set(), all_domains)

    ids: dict[str, str] = {}  # lower id -> kind

    def claim_id(value, path):
        if not is_guid(value):
            problems.append(f"{path}: must be a GUID, got {value!r}")
            return
        if value.lower() in ids:
            problems.append(f"{path}: duplicate object id '{value}'")
        ids[value.lower()] = path

    upns: set[str] = set()
    for path, u in _objects(data, "users", problems):
        problems += validate_user(u, path, home_domains)
        claim_id(u.get("id"), f"{path}.id")
        upn = u.get("userPrincipalName")
        if isinstance(upn, str):
            if upn.lower() in upns:
                problems.append(f"{path}.userPrincipalName: duplicate '{upn}'")
            upns.add(upn.lower())

    sps = list(_objects(data, "servicePrincipals", problems))
    app_ids: set[str] = set()
    for path, sp in sps:
        problems += validate_service_principal(sp, path)
        claim_id(sp.get("id"), f"{path}.id")
        if is_guid(sp.get("appId")):
            if sp["appId"].lower() in app_ids:
                problems.append(f"{path}.appId: duplicate appId '{sp['appId']}'")
            app_ids.add(sp["appId"].lower())

    mi = data.get("managedIdentity")
    if mi is not None:
        if not isinstance(mi, dict):
            problems.append("managedIdentity: must be an object {appId, objectId, displayName, graphRoles?}")
        else:
            _check_keys(mi, {"appId", "objectId", "displayName", "graphRoles"}, "managedIdentity", problems)
            if "graphRoles" in mi:
                problems += validate_roles(mi["graphRoles"], "managedIdentity.graphRoles")
            for key in ("appId", "objectId"):
                if not is_guid(mi.get(key)):
                    problems.append(f"managedIdentity.{key}: must be a GUID, got {mi.get(key)!r}")
            if not _is_str(mi.get("displayName")):
                problems.append("managedIdentity.displayName: required string")
            if is_guid(mi.get("objectId")) and mi["objectId"].lower() in ids:
                same = next((sp for _, sp in sps if str(sp.get("id", "")).lower() == mi["objectId"].lower()), None)
                if same is None or str(same.get("appId", "")).lower() != str(mi.get("appId", "")).lower():
                    problems.append("managedIdentity.objectId: used by another object with a different appId")
            elif is_guid(mi.get("appId")) and mi["appId"].lower() in app_ids:
                problems.append("managedIdentity.appId: already used by another service principal")

    groups = list(_objects(data, "groups", problems))
    for path, g in groups:
        problems += validate_group(g, path)
        claim_id(g.get("id"), f"{path}.id")
    mi_id = (mi if isinstance(mi, dict) else DEFAULT_MANAGED_IDENTITY).get("objectId")
    known = set(ids)
    if is_guid(mi_id):
        known.add(mi_id.lower())
    for path, g in groups:
        if not isinstance(g.get("members"), list):
            continue
        seen: set[str] = set()
        for j, m in enumerate(g["members"]):
            if not isinstance(m, str):
                continue
            low = m.lower()
            if low not in known:
                problems.append(f"{path}.members[{j}]: unknown object id '{m}'")
            elif low == str(g.get("id", "")).lower():
                problems.append(f"{path}.members[{j}]: a group cannot be a member of itself")
            elif low in seen:
                problems.append(f"{path}.members[{j}]: duplicate member '{m}'")
            seen.add(low)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(f"{key}: unknown top-level key (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    return problems


def _domains(value, path, collect: set, taken: set) -> list[str]:
    problems = []
    if not isinstance(value, list) or not value:
        return [f"{path}: required non-empty list of domain names"]
    for j, d in enumerate(value):
        if not _is_str(d) or "." not in d or "@" in d:
            problems.append(f"{path}[{j}]: not a domain name: {d!r}")
            continue
        if d.lower() in taken or d.lower() in collect:
            problems.append(f"{path}[{j}]: domain '{d}' is already used by a tenant")
        collect.add(d.lower())
        taken.add(d.lower())
    return problems


def validate_user(u: dict, path: str, home_domains: set | None = None) -> list[str]:
    problems: list[str] = []
    _check_keys(u, USER_KEYS, path, problems)
    upn = u.get("userPrincipalName")
    if not _is_str(upn) or upn.count("@") != 1 or upn.startswith("@") or upn.endswith("@"):
        problems.append(f"{path}.userPrincipalName: must be name@domain, got {upn!r}")
    else:
        domain = upn.split("@")[1].lower()
        if home_domains and domain not in home_domains:
            problems.append(f"{path}.userPrincipalName: domain '{domain}' is not a domain of the home tenant")
        if "#EXT#" in upn.upper() and u.get("userType", "Member") != "Guest":
            problems.append(f"{path}.userType: a #EXT# user must have userType 'Guest'")
    if "displayName" in u and not isinstance(u["displayName"], str):
        problems.append(f"{path}.displayName: must be a string")
    if u.get("mail") is not None and (not isinstance(u["mail"], str) or "@" not in u["mail"]):
        problems.append(f"{path}.mail: must be an e-mail address or null")
    if u.get("userType", "Member") not in ("Member", "Guest"):
        problems.append(f"{path}.userType: must be 'Member' or 'Guest', got {u.get('userType')!r}")
    if "accountEnabled" in u and not isinstance(u["accountEnabled"], bool):
        problems.append(f"{path}.accountEnabled: must be true or false")
    return problems


def validate_service_principal(sp: dict, path: str) -> list[str]:
    problems: list[str] = []
    _check_keys(sp, SP_KEYS, path, problems)
    if not is_guid(sp.get("appId")):
        problems.append(f"{path}.appId: must be a GUID, got {sp.get('appId')!r}")
    if not _is_str(sp.get("displayName")):
        problems.append(f"{path}.displayName: required string")
    return problems


def validate_group(g: dict, path: str) -> list[str]:
    problems: list[str] = []
    _check_keys(g, GROUP_KEYS, path, problems)
    if not _is_str(g.get("displayName")):
        problems.append(f"{path}.displayName: required string")
    for key in ("mailEnabled", "securityEnabled"):
        if not isinstance(g.get(key), bool):
            problems.append(f"{path}.{key}: required true or false")
    gt = g.get("groupTypes")
    if not isinstance(gt, list) or not all(isinstance(t, str) for t in gt):
        problems.append(f"{path}.groupTypes: required list of strings (e.g. [] or [\"Unified\"])")
    if g.get("mail") is not None and (not isinstance(g["mail"], str) or "@" not in g["mail"]):
        problems.append(f"{path}.mail: must be an e-mail address or null")
    if g.get("visibility") is not None and g["visibility"] not in VISIBILITIES:
        problems.append(f"{path}.visibility: must be one of {', '.join(VISIBILITIES)} or null")
    if g.get("mailEnabled") is True and not g.get("mail"):
        problems.append(f"{path}.mail: a mail-enabled group needs a mail address")
    members = g.get("members", [])
    if not isinstance(members, list):
        problems.append(f"{path}.members: must be a list of object ids")
    else:
        for j, m in enumerate(members):
            if not is_guid(m):
                problems.append(f"{path}.members[{j}]: must be an object id (GUID), got {m!r}")
    return problems


# ---------------------------------------------------------------- directory

class Directory:
    """Immutable-by-convention snapshot of the directory with lookup indexes and a lazily
    computed transitive-membership cache. A change builds a new Directory."""

    def __init__(self, data: dict, version: int = 1):
        self.version = version
        tenant = data["tenant"]
        self.tenant_id: str = tenant["id"]
        self.tenant_domains: list[str] = list(tenant["domains"])
        self.tenant_name: str = tenant.get("displayName") or tenant["domains"][0].split(".")[0]
        self.foreign_tenants: list[dict] = [dict(ft) for ft in data.get("foreignTenants", [])]
        mi = data.get("managedIdentity") or DEFAULT_MANAGED_IDENTITY
        self.managed_identity = {"appId": mi["appId"], "objectId": mi["objectId"], "displayName": mi["displayName"]}
        self.users: dict[str, dict] = {}
        self.users_by_upn: dict[str, dict] = {}
        self.users_by_mail: dict[str, dict] = {}
        for u in data.get("users", []):
            user = {
                "id": u["id"],
                "userPrincipalName": u["userPrincipalName"],
                "displayName": u.get("displayName") or u["userPrincipalName"].split("@")[0],
                "mail": u.get("mail"),
                "userType": u.get("userType", "Member"),
                "accountEnabled": u.get("accountEnabled", True),
            }
            for opt in ("givenName", "surname", "jobTitle"):
                if opt in u:
                    user[opt] = u[opt]
            self.users[u["id"].lower()] = user
            self.users_by_upn[user["userPrincipalName"].lower()] = user
            if user["mail"]:
                self.users_by_mail.setdefault(user["mail"].lower(), user)
        self.service_principals: dict[str, dict] = {}
        self.sp_by_app_id: dict[str, dict] = {}
        sps = list(data.get("servicePrincipals", []))
        if not any(s["id"].lower() == mi["objectId"].lower() for s in sps):
            sps.append({"id": mi["objectId"], "appId": mi["appId"], "displayName": mi["displayName"]})
        for s in sps:
            sp = {"id": s["id"], "appId": s["appId"], "displayName": s["displayName"],
                  "servicePrincipalType": "ManagedIdentity" if s["id"].lower() == mi["objectId"].lower() else "Application"}
            self.service_principals[s["id"].lower()] = sp
            self.sp_by_app_id[s["appId"].lower()] = sp
        self.groups: dict[str, dict] = {}
        for g in data.get("groups", []):
            self.groups[g["id"].lower()] = {
                "id": g["id"],
                "displayName": g["displayName"],
                "description": g.get("description"),
                "mail": g.get("mail"),
                "mailEnabled": g["mailEnabled"],
                "securityEnabled": g["securityEnabled"],
                "groupTypes": list(g["groupTypes"]),
                "visibility": g.get("visibility"),
                "members": list(g.get("members", [])),
            }
        self._transitive: dict[str, list] = {}
        self._members: dict[tuple, list] = {}
        self._lock = threading.Lock()

    # -- lookups
    def get_object(self, object_id: str):
        """(kind, object) for a user/group/servicePrincipal id, or (None, None)."""
        low = object_id.lower()
        for kind, table in (("user", self.users), ("group", self.groups), ("servicePrincipal", self.service_principals)):
            obj = table.get(low)
            if obj is not None:
                return kind, obj
        return None, None

    def tenant_by_domain(self, domain: str):
        """{'tenantId', 'displayName', 'defaultDomainName'} for a home/foreign domain, else None."""
        d = domain.lower()
        if d in (x.lower() for x in self.tenant_domains):
            return {"tenantId": self.tenant_id, "displayName": self.tenant_name, "defaultDomainName": self.tenant_domains[0]}
        for ft in self.foreign_tenants:
            if d in (x.lower() for x in ft["domains"]):
                return {"tenantId": ft["id"], "displayName": ft["displayName"], "defaultDomainName": ft["domains"][0]}
        return None

    def direct_members(self, group_id: str) -> list[str]:
        return self.groups[group_id.lower()]["members"]

    def transitive_members(self, group_id: str) -> list[str]:
        """Object ids of every nested member once, breadth first; nested groups included,
        the group itself excluded even when a cycle leads back to it."""
        key = group_id.lower()
        cached = self._transitive.get(key)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._transitive.get(key)
            if cached is not None:
                return cached
            seen = {key}
            out: list[str] = []
            queue = [key]
            while queue:
                nxt = []
                for gid in queue:
                    for m in self.groups[gid]["members"]:
                        low = m.lower()
                        if low in seen:
                            continue
                        seen.add(low)
                        out.append(m)
                        if low in self.groups:
                            nxt.append(low)
                queue = nxt
            self._transitive[key] = out
            return out

    def member_ids(self, group_id: str, transitive: bool, kind: str | None = None) -> list[str]:
        """Direct or transitive member ids that exist, optionally only of one kind (cached)."""
        key = (group_id.lower(), transitive, kind)
        cached = self._members.get(key)
        if cached is None:
            ids = self.transitive_members(group_id) if transitive else self.direct_members(group_id)
            cached = [i for i in ids if (k := self.get_object(i)[0]) is not None and (kind is None or k == kind)]
            self._members[key] = cached
        return cached

    def to_data(self) -> dict:
        """The directory in tenant-file shape."""
        tenant = {"id": self.tenant_id, "domains": list(self.tenant_domains), "displayName": self.tenant_name}
        mi_id = self.managed_identity["objectId"].lower()
        data = {
            "tenant": tenant,
            "foreignTenants": copy.deepcopy(self.foreign_tenants),
            "users": [dict(u) for u in self.users.values()],
            "servicePrincipals": [
                {k: sp[k] for k in ("id", "appId", "displayName")}
                for low, sp in self.service_principals.items() if low != mi_id
            ],
            "groups": [copy.deepcopy(g) for g in self.groups.values()],
            "managedIdentity": dict(self.managed_identity),
        }
        return data


def removed_reason(group: dict) -> str:
    """The ``@removed`` reason Graph's delta gives a deleted group: ``changed`` (soft-deleted,
    restorable from deletedItems: Microsoft 365 and security groups) or ``deleted``
    (distribution groups are deleted permanently at once)."""
    distribution = group["mailEnabled"] and not group["securityEnabled"] and "Unified" not in group["groupTypes"]
    return "deleted" if distribution else "changed"


def soft_deleted(group: dict) -> bool:
    """Whether a deleted group is kept in deletedItems (restorable for 30 days). Graph documents
    that deleted security groups are deleted permanently and can't be retrieved through
    directory/deletedItems; Microsoft 365 groups are soft-deleted (learn.microsoft.com, "Get
    deleted item (directory object)" and "Restore deleted item")."""
    return "Unified" in group["groupTypes"]


def group_diff(old: Directory, new: Directory) -> list[dict]:
    """Changelog entries for the groups that differ between two directories: create, update
    (``properties`` changed), addMembers/removeMembers (``members``: [{id, type}], direct
    members only, including links dropped because the member object was deleted) and delete."""
    out: list[dict] = []
    for low, g in new.groups.items():
        before = old.groups.get(low)
        if before is None:
            out.append({"op": "create", "objectType": "groups", "id": g["id"]})
            continue
        props = [k for k in GROUP_PROPS if before[k] != g[k]]
        if props:
            out.append({"op": "update", "objectType": "groups", "id": g["id"], "properties": props})
        had = {m.lower() for m in before["members"]}
        has = {m.lower() for m in g["members"]}
        for op, directory, ids, other in (("addMembers", new, g["members"], had), ("removeMembers", old, before["members"], has)):
            members = [{"id": m, "type": directory.get_object(m)[0] or "user"} for m in ids if m.lower() not in other]
            if members:
                out.append({"op": op, "objectType": "groups", "id": g["id"], "members": members})
    for low, g in old.groups.items():
        if low not in new.groups:
            out.append({"op": "delete", "objectType": "groups", "id": g["id"], "reason": removed_reason(g)})
    return out


# ---------------------------------------------------------------- principal resolution

def _uuid5(tenant_id: str, principal_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kusto-emulator:{tenant_id.lower()}/{principal_id.lower()}"))


def resolve_principal(directory: Directory, principal_id: str, principal_type: str, tenant_id: str | None) -> dict:
    """What Kusto fills in on a PUT: tenantId, tenantName, principalName, aadObjectId.
    Raises ResolveError with the message ARM would answer."""
    pid = principal_id.strip()
    upn_domain = pid.rsplit("@", 1)[1].lower() if "@" in pid else None
    tenant = None  # (id, name, kind) kind: home|foreign|msa
    if tenant_id:
        t = tenant_id.strip()
        if t.lower() == directory.tenant_id.lower() or t.lower() in (d.lower() for d in directory.tenant_domains):
            tenant = (directory.tenant_id, directory.tenant_name, "home")
        elif t.lower() == MSA_TENANT_ID:
            tenant = (MSA_TENANT_ID, "MSA", "msa")
        else:
            for ft in directory.foreign_tenants:
                if t.lower() == ft["id"].lower() or t.lower() in (d.lower() for d in ft["domains"]):
                    tenant = (ft["id"], ft["displayName"], "foreign")
                    break
        if tenant is None:
            raise ResolveError(f"AAD tenant '{t}' was not found. Specify the tenant id (GUID) or a verified domain of the principal's tenant.")
    elif principal_type == "User" and upn_domain:
        if upn_domain in CONSUMER_DOMAINS:
            tenant = (MSA_TENANT_ID, "MSA", "msa")
        else:
            info = directory.tenant_by_domain(upn_domain)
            if info and info["tenantId"].lower() != directory.tenant_id.lower():
                ft = next(f for f in directory.foreign_tenants if f["id"] == info["tenantId"])
                tenant = (ft["id"], ft["displayName"], "foreign")
    if tenant is None:
        tenant = (directory.tenant_id, directory.tenant_name, "home")
    tid, tname, kind = tenant
    kind_label = {"User": "AAD User", "Group": "AAD Group", "App": "AAD Application Id"}[principal_type]
    not_found = ResolveError(
        f"[BadRequest] Entity ID '{pid}' of type '{kind_label}' was not found in AAD tenant '{tid}'. "
        f"AAD principal '{pid}' of type {principal_type} was not found in tenant '{tid}'."
    )

    def result(name, object_id):
        return {"tenantId": tid, "tenantName": tname, "principalName": name, "aadObjectId": object_id}

    if kind == "msa":
        if principal_type != "User" or upn_domain not in CONSUMER_DOMAINS:
            raise not_found
        return result(pid, _uuid5(tid, pid))
    if kind == "foreign":
        ft = next(f for f in directory.foreign_tenants if f["id"] == tid)
        domains = {d.lower() for d in ft["domains"]}
        if principal_type == "User" and (upn_domain in domains or is_guid(pid)):
            return result(pid, _uuid5(tid, pid))
        if principal_type in ("App", "Group") and is_guid(pid):
            return result(pid, _uuid5(tid, pid))
        raise not_found
    low = pid.lower()
    if principal_type == "User":
        user = directory.users.get(low) or directory.users_by_upn.get(low) or directory.users_by_mail.get(low)
        if user is None:
            raise not_found
        return result(user["displayName"], user["id"])
    if principal_type == "Group":
        group = directory.groups.get(low)
        if group is None:
            matches = [g for g in directory.groups.values() if g["displayName"].lower() == low]
            if len(matches) > 1:
                raise ResolveError(f"[BadRequest] More than one AAD group is named '{pid}' in tenant '{tid}'; use the group's object id.")
            group = matches[0] if matches else None
        if group is None:
            raise not_found
        if not group["securityEnabled"]:
            raise ResolveError(
                f"[BadRequest] AAD group '{group['displayName']}' ({group['id']}) is not a security group "
                f"(securityEnabled is false). Kusto accepts only security groups as principals; "
                f"distribution groups cannot be assigned."
            )
        return result(group["displayName"], group["id"])
    sp = directory.sp_by_app_id.get(low) or directory.service_principals.get(low)
    if sp is None:
        matches = [s for s in directory.service_principals.values() if s["displayName"].lower() == low]
        sp = matches[0] if len(matches) == 1 else None
    if sp is None:
        raise not_found
    return result(sp["displayName"], sp["id"])


# ---------------------------------------------------------------- clusters

def role_problem(role, scope: str) -> str | None:
    valid = CLUSTER_ROLES if scope == "cluster" else DATABASE_ROLES
    if role in valid:
        return None
    kind = "cluster" if scope == "cluster" else "database"
    return f"Role '{role}' is not valid for a {kind} principal assignment. Valid roles are: {', '.join(valid)}."


def build_assignment(directory: Directory, props: dict, name: str, scope: str) -> dict:
    """Validate + resolve one assignment (PUT semantics). Raises ValueError / ResolveError."""
    for key in ("principalId", "principalType", "role"):
        if not _is_str(props.get(key)):
            raise ValueError(f"The request is invalid: required property 'properties.{key}' is missing or empty.")
    if props["principalType"] not in PRINCIPAL_TYPES:
        raise ValueError(f"Principal type '{props['principalType']}' is not valid. Valid types are: {', '.join(PRINCIPAL_TYPES)}.")
    problem = role_problem(props["role"], scope)
    if problem:
        raise ValueError(problem)
    tenant_id = props.get("tenantId")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise ValueError("The request is invalid: 'properties.tenantId' must be a string.")
    resolved = resolve_principal(directory, props["principalId"], props["principalType"], tenant_id or None)
    return {
        "name": name,
        "principalId": props["principalId"],
        "principalType": props["principalType"],
        "role": props["role"],
        **resolved,
        "provisioningState": "Succeeded",
    }


def identity_key(a: dict) -> tuple:
    return (a["role"], a["aadObjectId"].lower(), a["tenantId"].lower())


def cluster_path(c) -> str:
    return f"/subscriptions/{c.subscription_id}/resourceGroups/{c.resource_group}/providers/Microsoft.Kusto/clusters/{c.name}"


class Cluster:
    """One Kusto cluster: databases and principal assignments keyed by lower-case name."""

    def __init__(self, spec: dict):
        self.subscription_id = spec["subscriptionId"]
        self.resource_group = spec["resourceGroup"]
        self.name = spec["name"]
        self.location = spec.get("location", "westeurope")
        self.sku = spec.get("sku") or {"name": "Standard_E8ads_v5", "tier": "Standard", "capacity": 2}
        self.databases: dict[str, str] = {d.lower(): d for d in spec.get("databases", [])}
        self.assignments: dict[str, dict] = {}
        self.db_assignments: dict[str, dict[str, dict]] = {d.lower(): {} for d in spec.get("databases", [])}
        self.permissions: dict = copy.deepcopy(spec.get("permissions") or DEFAULT_ARM_PERMISSIONS)
        """The managed identity's effective ARM permissions on this cluster: {actions, notActions}."""
        self.tables: dict[str, dict[str, tuple[str, set[str]]]] = {}  # db -> table -> (name, mapping names)
        self.data_connections: dict[str, dict[str, dict]] = {}  # db -> name -> {name, kind, location, properties}

    def scope_table(self, database: str | None) -> dict:
        return self.assignments if database is None else self.db_assignments[database.lower()]

    def to_data(self) -> dict:
        return {
            "subscriptionId": self.subscription_id,
            "resourceGroup": self.resource_group,
            "name": self.name,
            "location": self.location,
            "sku": dict(self.sku),
            "permissions": copy.deepcopy(self.permissions),
            "databases": list(self.databases.values()),
            "principalAssignments": [dict(a) for a in self.assignments.values()],
            "databasePrincipalAssignments": {
                self.databases[low]: [dict(a) for a in table.values()] for low, table in self.db_assignments.items()
            },
        } | dataconnections.to_data(self)


def load_clusters(data: dict, directory: Directory) -> tuple[list[Cluster], list[str]]:
    problems: list[str] = []
    clusters: list[Cluster] = []
    specs = data.get("clusters", [])
    if not isinstance(specs, list):
        return [], ["clusters: must be a list"]
    seen = set()
    for i, spec in enumerate(specs):
        path = f"clusters[{i}]"
        if not isinstance(spec, dict):
            problems.append(f"{path}: must be an object")
            continue
        _check_keys(spec, CLUSTER_KEYS, path, problems)
        ok = True
        if not is_guid(spec.get("subscriptionId")):
            problems.append(f"{path}.subscriptionId: must be a GUID, got {spec.get('subscriptionId')!r}")
            ok = False
        for key in ("resourceGroup", "name"):
            if not _is_str(spec.get(key)) or "/" in spec.get(key, ""):
                problems.append(f"{path}.{key}: required name without '/'")
                ok = False
        if "location" in spec and not _is_str(spec["location"]):
            problems.append(f"{path}.location: must be a string")
        if "permissions" in spec:
            problems += validate_arm_permissions(spec["permissions"], f"{path}.permissions")
        dbs = spec.get("databases", [])
        if not isinstance(dbs, list) or not all(_is_str(d) and "/" not in d for d in dbs):
            problems.append(f"{path}.databases: must be a list of database names")
            ok = False
        elif len({d.lower() for d in dbs}) != len(dbs):
            problems.append(f"{path}.databases: duplicate database name")
        if not ok:
            continue
        key = (spec["subscriptionId"].lower(), spec["resourceGroup"].lower(), spec["name"].lower())
        if key in seen:
            problems.append(f"{path}: duplicate cluster '{spec['name']}' in resource group '{spec['resourceGroup']}'")
            continue
        seen.add(key)
        cluster = Cluster(spec)
        _load_assignments(directory, spec.get("principalAssignments", []), cluster.assignments, "cluster", f"{path}.principalAssignments", problems)
        dpa = spec.get("databasePrincipalAssignments", {})
        if not isinstance(dpa, dict):
            problems.append(f"{path}.databasePrincipalAssignments: must be an object {{database: [assignments]}}")
        else:
            for db, items in dpa.items():
                if db.lower() not in cluster.databases:
                    problems.append(f"{path}.databasePrincipalAssignments.{db}: unknown database '{db}'")
                    continue
                _load_assignments(directory, items, cluster.db_assignments[db.lower()], "database", f"{path}.databasePrincipalAssignments.{db}", problems)
        dataconnections.load(problems, cluster, spec, path)
        clusters.append(cluster)
    return clusters, problems


def _load_assignments(directory, items, table, scope, path, problems):
    if not isinstance(items, list):
        problems.append(f"{path}: must be a list")
        return
    keys: dict[tuple, str] = {}
    for j, a in enumerate(items):
        p = f"{path}[{j}]"
        if not isinstance(a, dict):
            problems.append(f"{p}: must be an object")
            continue
        _check_keys(a, ASSIGNMENT_KEYS, p, problems)
        name = a.get("name")
        if not _is_str(name) or "/" in name:
            problems.append(f"{p}.name: required name without '/'")
            continue
        if name.lower() in table:
            problems.append(f"{p}.name: duplicate assignment name '{name}'")
            continue
        try:
            built = build_assignment(directory, a, name, scope)
        except (ValueError, ResolveError) as exc:
            problems.append(f"{p}: {exc}")
            continue
        for opt in ("tenantName", "principalName", "aadObjectId"):
            if a.get(opt):
                built[opt] = a[opt]
        k = identity_key(built)
        if k in keys:
            problems.append(f"{p}: same role and principal as assignment '{keys[k]}' (Kusto refuses duplicates)")
            continue
        keys[k] = name
        table[name.lower()] = built


# ---------------------------------------------------------------- whole state

class State:
    """The mutable emulator state; every access goes through ``lock``."""

    def __init__(self, data: dict):
        self.lock = threading.RLock()
        self.initial = data
        self.version = 0
        self.changelog: list[dict] = []
        self.snapshots: dict[int, Directory] = {}
        self.delta_generation = ""
        self.delta_resync: set[str] = set()  # generations retired by expire_delta("resync")
        self.load(data)

    def load(self, data: dict):
        problems = validate_directory(data)
        if problems:
            raise TenantFileError(problems)
        directory = Directory(data, version=self.version + 1)
        clusters, problems = load_clusters(data, directory)
        sources = data.get("ingestionSources", [])
        if not isinstance(sources, list) or not all(_is_str(s) for s in sources):
            problems.append("ingestionSources: must be a list of resource IDs (event hubs, storage accounts, IoT hubs)")
            sources = []
        if problems:
            raise TenantFileError(problems)
        self.version += 1
        self.directory = directory
        self.clusters = clusters
        self.graph_roles = list((data.get("managedIdentity") or {}).get("graphRoles", DEFAULT_GRAPH_ROLES))
        self.sources = list(sources)
        self.ingestion_sources = {s.lower() for s in sources}
        self.changelog = []
        self.snapshots = {self.version: directory}
        self.delta_generation = uuid.uuid4().hex[:12]
        self.deleted_items: dict[str, dict] = {}  # soft-deleted groups, lower id -> group + deletedDateTime

    def reset(self):
        with self.lock:
            self.load(self.initial)

    def expire_delta(self, mode: str = "expired"):
        """Refuse every outstanding delta token: ``expired`` (Graph's syncStateNotFound) or
        ``resync`` (Graph's 410 synchronization reset)."""
        with self.lock:
            if mode == "resync":
                self.delta_resync.add(self.delta_generation)
            self.delta_generation = uuid.uuid4().hex[:12]

    def group_changes(self, since: int, until: int) -> dict[str, dict]:
        """Group changes of versions ``since < v <= until`` collapsed per group (lower id ->
        {id, created, deleted, reason, properties, members: {lower id: (id, type, added)}}),
        in order of first change. The last change of a member link wins: one added then
        removed in the window is reported removed, as Graph reports a link's final state."""
        out: dict[str, dict] = {}
        with self.lock:
            entries = [e for e in self.changelog if since < e["version"] <= until and e["objectType"] == "groups"]
        for e in entries:
            low = e["id"].lower()
            c = out.get(low)
            if c is None or e["op"] == "create":
                c = {"id": e["id"], "created": False, "deleted": False, "reason": None, "properties": set(), "members": {}}
                out[low] = c
            if e["op"] == "create":
                c["created"] = True
            elif e["op"] == "delete":
                c["deleted"], c["reason"] = True, e["reason"]
            elif e["op"] == "update":
                c["properties"].update(e.get("properties", []))
            elif e["op"] in ("addMembers", "removeMembers"):
                for m in e["members"]:
                    c["members"][m["id"].lower()] = (m["id"], m["type"], e["op"] == "addMembers")
        return out

    def permissions(self) -> dict:
        """The managed identity's Graph app roles and ARM permissions per cluster (resource ID)."""
        with self.lock:
            return {"graph": list(self.graph_roles),
                    "arm": {cluster_path(c): copy.deepcopy(c.permissions) for c in self.clusters}}

    def set_permissions(self, body) -> list[str]:
        """Admin ``POST /_emulator/permissions``: ``{"graph": [roles], "arm": {cluster: {actions,
        notActions}}}`` (a cluster by resource ID or unique name). Either part replaces what it
        names; nothing changes when there is any problem."""
        if not isinstance(body, dict):
            return ["body: must be an object {graph?: [roles], arm?: {cluster: {actions, notActions}}}"]
        problems = [f"{k}: unknown key (allowed: graph, arm)" for k in body if k not in ("graph", "arm")]
        if "graph" in body:
            problems += validate_roles(body["graph"], "graph")
        arm = body.get("arm", {})
        planned = []
        if not isinstance(arm, dict):
            problems.append("arm: must be an object {cluster resource ID or name: {actions, notActions}}")
            arm = {}
        with self.lock:
            for ref, perms in arm.items():
                found = [c for c in self.clusters if ref.lower() in (cluster_path(c).lower(), c.name.lower())]
                if len(found) != 1:
                    problems.append(f"arm.{ref}: {'no' if not found else 'more than one'} cluster has this resource ID or name")
                    continue
                problems += validate_arm_permissions(perms, f"arm.{ref}")
                planned.append((found[0], perms))
            if problems:
                return problems
            if "graph" in body:
                self.graph_roles = list(body["graph"])
            for cluster, perms in planned:
                cluster.permissions = {"actions": list(perms.get("actions", [])), "notActions": list(perms.get("notActions", []))}
        return []

    def find_cluster(self, sub: str, rg: str, name: str):
        """(cluster, problem) where problem is None or one of 'subscription', 'resourceGroup', 'cluster'."""
        subs = [c for c in self.clusters if c.subscription_id.lower() == sub.lower()]
        if not subs:
            return None, "subscription"
        rgs = [c for c in subs if c.resource_group.lower() == rg.lower()]
        if not rgs:
            return None, "resourceGroup"
        for c in rgs:
            if c.name.lower() == name.lower():
                return c, None
        return None, "cluster"

    def to_data(self) -> dict:
        data = self.directory.to_data()
        data["managedIdentity"]["graphRoles"] = list(self.graph_roles)
        data["clusters"] = [c.to_data() for c in self.clusters]
        data["ingestionSources"] = list(self.sources)
        data["version"] = self.version
        return data

    def change_directory(self, body: dict) -> list[str]:
        """Apply an admin directory change; returns problems (nothing changed when any)."""
        problems: list[str] = []
        if not isinstance(body, dict):
            return ["body: must be an object"]
        for key in body:
            if key not in ("upsert", "delete", "addMembers", "removeMembers"):
                problems.append(f"{key}: unknown key (allowed: upsert, delete, addMembers, removeMembers)")
        data = self.directory.to_data()
        tables = {"users": data["users"], "groups": data["groups"], "servicePrincipals": data["servicePrincipals"]}
        index = {k: {o["id"].lower(): i for i, o in enumerate(v)} for k, v in tables.items()}
        validators = {"users": lambda o, p: validate_user(o, p), "groups": validate_group, "servicePrincipals": validate_service_principal}
        changes = []
        upsert = body.get("upsert", {})
        for kind, items in (upsert or {}).items():
            if kind not in tables or not isinstance(items, list):
                problems.append(f"upsert.{kind}: expected a list under users, groups or servicePrincipals")
                continue
            for i, obj in enumerate(items):
                path = f"upsert.{kind}[{i}]"
                if not isinstance(obj, dict) or not is_guid(obj.get("id")):
                    problems.append(f"{path}.id: required GUID")
                    continue
                problems += validators[kind](obj, path)
                low = obj["id"].lower()
                if low in index[kind]:
                    tables[kind][index[kind][low]] = copy.deepcopy(obj)
                    op = "update"
                else:
                    index[kind][low] = len(tables[kind])
                    tables[kind].append(copy.deepcopy(obj))
                    op = "create"
                if kind != "groups":  # group entries come from the diff below
                    changes.append({"op": op, "objectType": kind, "id": obj["id"]})
        deleted: set[str] = set()
        for kind, ids in (body.get("delete") or {}).items():
            if kind not in tables or not isinstance(ids, list):
                problems.append(f"delete.{kind}: expected a list of ids under users, groups or servicePrincipals")
                continue
            for i, oid in enumerate(ids):
                if not isinstance(oid, str) or oid.lower() not in index[kind]:
                    problems.append(f"delete.{kind}[{i}]: unknown {kind[:-1]} id {oid!r}")
                    continue
                if oid.lower() == self.directory.managed_identity["objectId"].lower():
                    problems.append(f"delete.{kind}[{i}]: the managed identity cannot be deleted")
                    continue
                deleted.add(oid.lower())
                if kind != "groups":
                    changes.append({"op": "delete", "objectType": kind, "id": oid})
        for kind in tables:
            tables[kind][:] = [o for o in tables[kind] if o["id"].lower() not in deleted]
        groups = {g["id"].lower(): g for g in tables["groups"]}
        for g in groups.values():
            g["members"] = [m for m in g.get("members", []) if m.lower() not in deleted]
        for op in ("addMembers", "removeMembers"):
            spec = body.get(op) or {}
            if not isinstance(spec, dict):
                problems.append(f"{op}: must be an object {{groupId: [memberIds]}}")
                continue
            for gid, ids in spec.items():
                g = groups.get(gid.lower())
                if g is None:
                    problems.append(f"{op}.{gid}: unknown group id")
                    continue
                if not isinstance(ids, list):
                    problems.append(f"{op}.{gid}: must be a list of ids")
                    continue
                current = {m.lower() for m in g["members"]}
                for i, m in enumerate(ids):
                    if not isinstance(m, str):
                        problems.append(f"{op}.{gid}[{i}]: must be an id")
                    elif op == "addMembers" and m.lower() not in current:
                        g["members"].append(m)
                        current.add(m.lower())
                    elif op == "removeMembers":
                        if m.lower() not in current:
                            problems.append(f"{op}.{gid}[{i}]: '{m}' is not a direct member")
                        g["members"] = [x for x in g["members"] if x.lower() != m.lower()]
                        current.discard(m.lower())
        if not problems:
            problems = [f"after the change: {p}" for p in validate_directory(data)]
        if problems:
            return problems
        with self.lock:
            self.version += 1
            old, new = self.directory, Directory(data, version=self.version)
            self.directory = new
            self.snapshots[self.version] = new
            for v in [v for v in self.snapshots if v <= self.version - SNAPSHOTS_KEPT]:
                del self.snapshots[v]
            for c in changes + group_diff(old, new):
                self.changelog.append({"version": self.version, **c})
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for low, g in old.groups.items():
                if low not in new.groups and soft_deleted(g):
                    self.deleted_items[low] = {**copy.deepcopy(g), "deletedDateTime": now}
        return []
