"""Graph read throughput: transitive members through GraphDirectory (raw JSON pages) against
msgraph model objects, both over the same SDK request adapter and the local emulator.

Seeds a tenant file in a temporary directory with two groups, of 10,000 and 100,000 transitive
members (users with realistic fields, guests and disabled accounts among them, plus nested
groups and service principals), starts the emulator on it and reads both groups through
`shared.adapters.directory.GraphDirectory`. Then, as the baseline, reads ONE 999-member page of the same
group through msgraph model objects (`GraphServiceClient.groups.by_group_id(...)
.transitive_members.get(...)` with $top=999 and $select), after a small warm-up read so the
one-off model import is not counted.

Prints `name: value` lines:
- members_per_s_10k, members_per_s_100k: members read per second (wall clock, whole read);
- read_100k_s: wall seconds of the 100k read (target <= 10);
- rss_mb: process RSS in MiB right after the 100k read, its result still held;
- rss_growth_100k_mb: how much of that the 100k read added;
- graph_calls_per_1k: Graph requests per 1,000 members during the 100k read (request log);
- model_members_per_s: the model baseline;
- read_speedup (last line) = members_per_s_100k / model_members_per_s (target >= 100).

Run: .venv/bin/python bench/graph_read.py    (about a minute on 2 cores)
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.testing import EmulatorProcess, write_tenant  # noqa: E402

TENANT_ID = "11111111-0000-4000-8000-000000000001"
FOREIGN = ("fabrikam.com", "northwindtraders.com", "outlook.com")
FIRST = ("Adele", "Bob", "Christie", "Diego", "Emma", "Frank", "Grace", "Henry", "Isaiah", "Johanna",
         "Lee", "Megan", "Nestor", "Patti", "Raul", "Sofia")
LAST = ("Vance", "Kelly", "Cline", "Siciliani", "Larsen", "Taylor", "Langer", "Lambert", "Gates",
        "Wilber", "Sherwin", "Bowen", "Wilke", "Fernandez", "Rojas", "Novak")
SMALL, LARGE = 10_000, 100_000
NESTED_GROUPS, NESTED_SIZE, SERVICE_PRINCIPALS = 20, 250, 80
MODEL_PAGE = 999


def oid(prefix: int, n: int) -> str:
    return str(uuid.UUID(int=(prefix << 96) | n, version=4))


def user(n: int) -> dict:
    first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
    local = f"{first}.{last}{n}".lower()
    if n % 50 == 7:  # guests: B2B accounts from partner tenants and Microsoft accounts
        domain = FOREIGN[n % len(FOREIGN)]
        return {"id": oid(1, n), "userPrincipalName": f"{local}_{domain}#EXT#@contoso.onmicrosoft.com",
                "displayName": f"{first} {last} ({domain})", "mail": f"{local}@{domain}", "userType": "Guest"}
    return {"id": oid(1, n), "userPrincipalName": f"{local}@contoso.com", "displayName": f"{first} {last}",
            "mail": f"{local}@contoso.com", "givenName": first, "surname": last, "jobTitle": "Engineer",
            "accountEnabled": n % 97 != 0}


def group(n: int, name: str, members: list[str]) -> dict:
    return {"id": oid(2, n), "displayName": name, "mail": None, "mailEnabled": False,
            "securityEnabled": True, "groupTypes": [], "members": members}


def seed(directory: str) -> tuple[Path, str, str, int, int]:
    """Write the tenant; (path, small group id, large group id, their transitive member counts)."""
    users = [user(n) for n in range(LARGE)]
    sps = [{"id": oid(3, n), "appId": oid(4, n), "displayName": f"pipeline-{n}"} for n in range(SERVICE_PRINCIPALS)]
    # The large group: most users directly, the rest only through nested groups (which also
    # repeat some direct members, so the transitive read must flatten and de-duplicate).
    direct = LARGE - NESTED_GROUPS - SERVICE_PRINCIPALS - NESTED_GROUPS * NESTED_SIZE // 2
    nested = []
    for g in range(NESTED_GROUPS):
        only_here = range(direct + g * NESTED_SIZE // 2, direct + (g + 1) * NESTED_SIZE // 2)
        shared = range(g * NESTED_SIZE // 2, (g + 1) * NESTED_SIZE // 2)
        nested.append(group(10 + g, f"team-{g}", [users[i]["id"] for i in (*only_here, *shared)]))
    large = group(1, "all-staff", [u["id"] for u in users[:direct]] + [g["id"] for g in nested] + [s["id"] for s in sps])
    small_nested = nested[:2]
    small_direct = SMALL - len(small_nested) - 40 - NESTED_SIZE
    small = group(2, "engineering", [u["id"] for u in users[:small_direct]] + [g["id"] for g in small_nested]
                  + [s["id"] for s in sps[:40]])
    large_count = direct + NESTED_GROUPS * NESTED_SIZE // 2 + NESTED_GROUPS + SERVICE_PRINCIPALS
    small_only = {m for g in small_nested for m in g["members"]} - set(small["members"])
    small_count = len(small["members"]) + len(small_only)
    data = {
        "tenant": {"id": TENANT_ID, "displayName": "Contoso", "domains": ["contoso.com", "contoso.onmicrosoft.com"]},
        "foreignTenants": [{"id": oid(9, 2), "displayName": "Fabrikam", "domains": ["fabrikam.com"]},
                           {"id": oid(9, 3), "displayName": "Northwind Traders", "domains": ["northwindtraders.com"]}],
        "users": users, "servicePrincipals": sps, "groups": [large, small, *nested],
    }
    return write_tenant(directory, data, "bench-tenant.json"), small["id"], large["id"], small_count, large_count


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def read(directory, group_id: str, expected: int) -> float:
    started = time.perf_counter()
    members = directory.transitive_members(group_id)
    elapsed = time.perf_counter() - started
    if len(members) != expected or len({m.id for m in members}) != expected:
        raise SystemExit(f"read {len(members)} members of {group_id}, expected {expected}")
    return elapsed


def model_page(directory, group_id: str, top: int) -> tuple[int, float]:
    """(members, seconds) of one transitiveMembers page deserialized into msgraph models."""
    from msgraph.generated.groups.item.transitive_members.transitive_members_request_builder import (
        TransitiveMembersRequestBuilder,
    )

    from shared.adapters.directory import MEMBER_FIELDS

    query = TransitiveMembersRequestBuilder.TransitiveMembersRequestBuilderGetQueryParameters(
        top=top, select=list(MEMBER_FIELDS))
    config = TransitiveMembersRequestBuilder.TransitiveMembersRequestBuilderGetRequestConfiguration(
        query_parameters=query)

    async def get():
        return await directory.client.groups.by_group_id(group_id).transitive_members.get(request_configuration=config)

    started = time.perf_counter()
    page = asyncio.run_coroutine_threadsafe(get(), directory._io.loop).result()
    return len(page.value), time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="graph-read-bench-") as tmp:
        tenant, small_id, large_id, small_count, large_count = seed(tmp)
        with EmulatorProcess(tenant, timeout=120) as emu:
            os.environ.update(emu.env)
            from azure.identity import ManagedIdentityCredential

            from shared.adapters.directory import GraphDirectory

            directory = GraphDirectory(ManagedIdentityCredential(), endpoint=emu.env["GRAPH_ENDPOINT"],
                                       scope="https://graph.microsoft.com/.default")
            try:
                directory.find_group(small_id)  # token and connection, outside the timings
                small_s = read(directory, small_id, small_count)
                emu.clear_requests()
                rss_before = rss_mb()
                large_s = read(directory, large_id, large_count)
                rss = rss_mb()
                calls = sum(1 for r in emu.requests()["requests"] if r["api"] == "graph")
                model_page(directory, large_id, 5)  # the one-off import of the model graph
                model_count, model_s = model_page(directory, large_id, MODEL_PAGE)
            finally:
                directory.close()
    large_rate = large_count / large_s
    model_rate = model_count / model_s
    print(f"members_per_s_10k: {small_count / small_s:.0f}")
    print(f"members_per_s_100k: {large_rate:.0f}")
    print(f"read_100k_s: {large_s:.2f}")
    print(f"rss_mb: {rss:.0f}")
    print(f"rss_growth_100k_mb: {rss - rss_before:.0f}")
    print(f"graph_calls_per_1k: {calls * 1000 / large_count:.2f}")
    print(f"model_members_per_s: {model_rate:.0f}")
    print(f"read_speedup: {large_rate / model_rate:.0f}")


if __name__ == "__main__":
    main()
