"""Tenant look-ups: resolving 10,000 principals spread over 500 foreign domains.

The emulator serves a tenant file with 500 foreign tenants (one domain each). 10,000 UPNs, 20 per
domain, in a shuffled order, are resolved with `resolve_principal` by 16 threads sharing one
TenantResolver whose look-up is the real Graph adapter (msgraph-sdk over TLS). Every result is
checked against the tenant that owns its domain.

Figures:
- tenant_lookups: findTenantInformationByDomainName calls counted in the emulator's request log
  (what went over the wire, not what the resolver believes it did);
- resolve_per_s: resolutions per second, wall clock, look-ups included.
Last line: tenant_lookups_per_domain = tenant_lookups / domains (target 1.0: at most one per domain).

Run: .venv/bin/python bench/tenant_lookups.py
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.testing import EmulatorProcess, write_tenant  # noqa: E402

PRINCIPALS = 10_000
DOMAINS = 500
WORKERS = 16
HOME = "11111111-0000-4000-8000-000000000001"
TENANT_LOOKUP = "GET graph /tenantRelationships/findTenantInformationByDomainName"


def tenant_id(n: int) -> str:
    return f"77777777-0000-4000-8000-{n:012d}"


def domain(n: int) -> str:
    return f"tenant{n:03d}.example"


def tenant_file(directory: str) -> Path:
    return write_tenant(directory, {
        "tenant": {"id": HOME, "displayName": "Contoso", "domains": ["contoso.com", "contoso.onmicrosoft.com"]},
        "foreignTenants": [{"id": tenant_id(n), "displayName": f"Tenant {n}", "domains": [domain(n)]}
                           for n in range(DOMAINS)],
        "users": [], "servicePrincipals": [], "groups": [], "clusters": [],
    }, "tenant-lookups.json")


def main() -> int:
    from azure.identity import ManagedIdentityCredential

    from shared.adapters.directory import GraphDirectory
    from shared.engine.resolve import resolve_principal
    from shared.core.tenants import TenantResolver

    upns = [(f"user{i}@{domain(i % DOMAINS)}", tenant_id(i % DOMAINS)) for i in range(PRINCIPALS)]
    random.Random(7).shuffle(upns)
    with tempfile.TemporaryDirectory() as scratch, EmulatorProcess(tenant_file(scratch)) as emu:
        os.environ.update(emu.env)
        graph = GraphDirectory(ManagedIdentityCredential(), endpoint=emu.env["GRAPH_ENDPOINT"],
                               scope="https://graph.microsoft.com/.default")
        try:
            tenants = TenantResolver(graph, home_tenant_id=HOME, home_domains=["contoso.com", "contoso.onmicrosoft.com"])
            emu.clear_requests()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=WORKERS) as pool:
                resolved = list(pool.map(lambda item: resolve_principal(item[0], graph, tenants, HOME), upns))
            elapsed = time.perf_counter() - started
            lookups = emu.requests()["counts"].get(TENANT_LOOKUP, 0)
        finally:
            graph.close()
    wrong = sum(1 for principal, (_, expected) in zip(resolved, upns) if principal.tenant != expected)
    print(f"principals: {PRINCIPALS}")
    print(f"domains: {DOMAINS}")
    print(f"workers: {WORKERS}")
    print(f"wrong_tenants: {wrong}")
    print(f"tenant_lookups: {lookups}")
    print(f"resolver_lookups: {tenants.lookups}")
    print(f"elapsed_s: {elapsed:.2f}")
    print(f"resolve_per_s: {PRINCIPALS / elapsed:.0f}")
    print(f"tenant_lookups_per_domain: {lookups / DOMAINS:.2f}")
    return 0 if wrong == 0 and lookups <= DOMAINS else 1


if __name__ == "__main__":
    sys.exit(main())
