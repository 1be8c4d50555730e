"""Scale: planning 100,000 members over 20 mappings, and Graph calls per 1,000 members.

1. Pure path with recorded inputs: the engine's plan (members -> principals -> diff) over
   in-memory fakes holding recorded Graph members and ARM assignments, at 10k and 100k members
   (95% already granted, 3% to remove, 2% unowned drift, 5% guests), timed and RSS measured.
2. A full read through the real adapters against the emulator: one 100,000-member group behind
   the 20 mappings; Graph member-page calls per 1,000 members from the emulator's request log.

Prints `name: value` lines; the last one is `plan_100k_s` (target <= 2 s, peak RSS <= 300 MB).
Run: .venv/bin/python bench/scale.py
"""
from __future__ import annotations

import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


from fakes import FakeAssignments, FakeDirectory, group, user  # noqa: E402
from shared.core.config import parse_config  # noqa: E402
from shared.core.plan import Assignment, assignment_name  # noqa: E402
from shared.core.principals import Principal, PrincipalKind  # noqa: E402
from shared.engine.reconcile import Engine  # noqa: E402
from shared.core.scopes import Scope  # noqa: E402
from shared.core.tenants import TenantResolver  # noqa: E402

HOME = "11111111-0000-4000-8000-000000000001"
MAPPINGS = 20
CLUSTERS = [f"/subscriptions/5b000000-0000-4000-8000-00000000000{c}/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-{c}"
            for c in range(1, 5)]


def guid(kind: int, n: int) -> str:
    return f"{kind:08x}-0000-4000-8000-{n:012d}"


def recorded_world(members: int):
    """Fakes holding what Graph and ARM would have answered, for `members` people over 20 mappings."""
    directory = FakeDirectory(tenants={f"partner{i}.com": guid(0x7E, i) for i in range(50)})
    arm = FakeAssignments()
    per_group = members // MAPPINGS
    mappings = []
    for m in range(MAPPINGS):
        scope = Scope(CLUSTERS[m % 4], f"db{m % 5}")
        people = []
        for i in range(m * per_group, (m + 1) * per_group):
            if i % 20 == 0:
                people.append(user(guid(0xA, i), f"guest{i}_partner{i % 50}.com#EXT#@contoso.onmicrosoft.com", user_type="Guest"))
            else:
                people.append(user(guid(0xA, i), f"user{i}@contoso.com"))
        directory.add_group(group(guid(0xB, m), f"group-{m}"), people)
        mappings.append({"name": f"m{m}", "group": f"group-{m}",
                         "targets": [{"cluster": scope.cluster, "database": scope.database, "role": "Viewer"}]})
        for index, person in enumerate(people):
            if index % 100 < 95 and not person.user_principal_name.startswith("guest"):
                principal = Principal(PrincipalKind.USER, person.user_principal_name, HOME, object_id=person.id)
                arm.seed(Assignment(scope, "Viewer", principal, assignment_name("ks-", scope, "Viewer", principal)))
        for extra in range(per_group * 3 // 100):  # owned, no longer wanted
            gone = Principal(PrincipalKind.USER, f"left{m}-{extra}@contoso.com", HOME)
            arm.seed(Assignment(scope, "Viewer", gone, assignment_name("ks-", scope, "Viewer", gone)))
        for extra in range(per_group * 2 // 100):  # made by someone else
            arm.seed(Assignment(scope, "Viewer", Principal(PrincipalKind.USER, f"manual{m}-{extra}@contoso.com", HOME), f"portal-{m}-{extra}"))
    config = parse_config({"guards": {"maxDeletes": members, "maxDeletePercent": 100}, "mappings": mappings})
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com", "contoso.onmicrosoft.com"])
    return Engine(config, directory, arm, tenants, HOME)


def timed_plan(members: int) -> tuple[float, int]:
    engine = recorded_world(members)
    gc.collect()
    started = time.perf_counter()
    the_plan = engine.plan()
    elapsed = time.perf_counter() - started
    return elapsed, len(the_plan.changes)


def graph_calls_per_1k(members: int) -> tuple[float, float]:
    """Member-page calls and all Graph calls per 1,000 members for a full read via the real adapter."""
    from azure.identity import ManagedIdentityCredential

    from emulator.testing import EmulatorProcess, write_tenant
    from shared.adapters.directory import GraphDirectory

    tenant = {
        "tenant": {"id": HOME, "domains": ["contoso.com"]},
        "users": [{"id": guid(0xA, i), "userPrincipalName": f"user{i}@contoso.com"} for i in range(members)],
        "groups": [{"id": guid(0xB, 0), "displayName": "everyone", "mailEnabled": False, "securityEnabled": True,
                    "groupTypes": [], "members": [guid(0xA, i) for i in range(members)]}],
        "clusters": [],
    }
    with tempfile.TemporaryDirectory() as folder, EmulatorProcess(write_tenant(folder, tenant)) as emu:
        os.environ.update(emu.env)
        directory = GraphDirectory(ManagedIdentityCredential(), endpoint=emu.env["GRAPH_ENDPOINT"],
                                   scope="https://graph.microsoft.com/.default")
        emu.clear_requests()
        found = directory.find_group("everyone")
        read = len(directory.transitive_members(found.id))
        assert read == members, read
        log = emu.requests()
        directory.close()
    pages = log["counts"].get("GET graph /groups/{id}/transitiveMembers", 0)
    graph_calls = sum(1 for r in log["requests"] if r["api"] == "graph")
    return pages * 1000 / members, graph_calls * 1000 / members


def main() -> None:
    t10k, _ = timed_plan(10_000)
    t100k, changes = timed_plan(100_000)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    pages_per_1k, calls_per_1k = graph_calls_per_1k(100_000)
    print(f"plan_10k_s: {t10k:.2f}")
    print(f"plan_100k_changes: {changes}")
    print(f"growth_100k_over_10k: {t100k / t10k:.1f}")
    print(f"peak_rss_mb: {peak_rss:.0f}")
    print(f"graph_member_pages_per_1k: {pages_per_1k:.3f}")
    print(f"graph_calls_per_1k: {calls_per_1k:.3f}")
    print(f"plan_100k_s: {t100k:.2f}")


if __name__ == "__main__":
    main()
