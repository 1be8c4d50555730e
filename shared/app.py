"""Wiring: settings -> credential, adapters and engine, built once and reused.

Triggers and the CLI both call `engine()`. The result is cached at module level so that warm
Functions invocations reuse the token cache and the HTTP connection pools.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from shared.adapters.audit import MemoryAudit, TableAudit
from shared.adapters.ledger import MemoryLedger, TableLedger
from shared.core.config import load_config
from shared.engine.delta import MemoryStateStore, TableStateStore
from shared.adapters.directory import GraphDirectory
from shared.core.errors import ConfigError, PermanentError
from shared.adapters.kusto import KustoAssignments
from shared.adapters.locks import BlobLeaseLocks, InProcessLocks
from shared.adapters.queues import MemoryQueues, StorageQueues
from shared.engine.reconcile import Engine
from shared.core.settings import Settings, run_deadline
from shared.adapters.tables import table_service
from shared.adapters.telemetry import for_settings as telemetry_for
from shared.core.tenants import TenantResolver

log = logging.getLogger(__name__)

_cache: dict[tuple, Engine] = {}
_cache_lock = threading.Lock()


def make_credential(settings: Settings):
    """Managed identity when the platform provides one, otherwise the developer's Azure login."""
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID") or None)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(authority=settings.cloud.authority_host)


def storage_credential(settings: Settings, credential):
    """The identity for host storage: `AzureWebJobsStorage__clientId` names a user-assigned identity
    (as it does for the Functions host); otherwise the app's own credential."""
    client_id = settings.storage.get("AzureWebJobsStorage__clientId")
    if not client_id or settings.storage.get("AzureWebJobsStorage"):
        return credential
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=client_id)


def token_claims(credential, scope: str) -> dict[str, Any]:
    """The claims of the app's own access token (tenant, object and app ID). Never logged."""
    from azure.core.exceptions import ClientAuthenticationError

    try:
        token = credential.get_token(scope).token
    except ClientAuthenticationError as error:
        raise PermanentError(
            f"cannot sign in to {scope.removesuffix('/.default')}: {error.message.splitlines()[0]} "
            "(run on Azure with a managed identity, or sign in locally with `az login`)"
        ) from None
    try:
        payload = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}


def build(settings: Settings | None = None, **overrides: Any) -> Engine:
    """Build an Engine from settings; keyword overrides replace any part (fakes in tests)."""
    settings = settings or Settings.from_env()
    config = overrides.pop("config", None) or load_config(settings.sync_config)
    credential = overrides.pop("credential", None) or make_credential(settings)
    directory = overrides.pop("directory", None) or GraphDirectory(
        credential, endpoint=settings.graph_endpoint, scope=settings.cloud.graph_scope
    )
    assignments = overrides.pop("assignments", None) or KustoAssignments(
        credential, endpoint=settings.arm_endpoint, scope=settings.cloud.arm_scope,
        polling_interval=settings.arm_polling_interval,
    )
    claims = {} if "home_tenant_id" in overrides else token_claims(credential, settings.cloud.arm_scope)
    home_tenant_id = overrides.pop("home_tenant_id", None) or settings.tenant_id or claims.get("tid")
    if not home_tenant_id:
        raise ConfigError(["AZURE_TENANT_ID: missing, and the app's token names no tenant"], source="app settings")
    self_ids = frozenset(
        str(v).casefold() for v in (claims.get("oid"), claims.get("appid"), os.environ.get("AZURE_CLIENT_ID")) if v
    )
    tenants = overrides.pop("tenants", None) or TenantResolver(
        directory, home_tenant_id=home_tenant_id, home_domains=settings.home_domains
    )
    storage_identity = storage_credential(settings, credential)
    locks = overrides.pop("locks", None) or (
        BlobLeaseLocks.from_storage_settings(dict(settings.storage), storage_identity,
                                             renew_seconds=settings.lease_renew_seconds)
        if settings.has_storage else InProcessLocks()
    )
    tables = table_service(dict(settings.storage), storage_identity) if settings.has_storage else None
    audit = overrides.pop("audit", None) or (TableAudit(tables) if tables else MemoryAudit())
    ledger = overrides.pop("ledger", None) or (TableLedger.from_service(tables) if tables else MemoryLedger())
    delta_state = overrides.pop("delta_state", None) or (
        TableStateStore.from_service(tables) if tables else MemoryStateStore()
    )
    queues = overrides.pop("queues", None) or (
        StorageQueues(dict(settings.storage), storage_identity) if settings.has_storage else MemoryQueues()
    )
    telemetry = overrides.pop("telemetry", None) or telemetry_for(settings.app_insights, settings.worker_telemetry)
    return Engine(
        config=config,
        telemetry=telemetry,
        locks=locks,
        audit=audit,
        ledger=ledger,
        queues=queues,
        delta_state=delta_state,
        directory=directory,
        assignments=assignments,
        tenants=tenants,
        home_tenant_id=home_tenant_id,
        self_ids=overrides.pop("self_ids", self_ids),
        max_parallel_clusters=settings.max_parallel_clusters,
        retry_budget_seconds=settings.retry_budget_seconds,
        run_seconds=overrides.pop("run_seconds", settings.run_deadline_seconds or host_run_deadline()),
        **overrides,
    )


HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


def host_run_deadline() -> float | None:
    """How long a run may write, from host.json's functionTimeout (see run_deadline), inside the
    Functions host (which always sets FUNCTIONS_WORKER_RUNTIME); the CLI has no host to kill it."""
    if not os.environ.get("FUNCTIONS_WORKER_RUNTIME"):
        return None
    try:
        timeout = json.loads(HOST_JSON.read_text(encoding="utf-8")).get("functionTimeout")
    except (OSError, ValueError):
        return None  # no host.json (the CLI outside the app folder): no host to kill the run
    return run_deadline(timeout)


def warm() -> None:
    """Build the engine and its ARM clients ahead of the first invocation (the `warmup` function):
    the SDK imports and the sign-in cost a fresh instance about half a second, which its first job
    would otherwise pay before writing. A failure is only logged: that first invocation builds
    them again and reports what is wrong."""
    try:
        ready = engine()
        if isinstance(ready.assignments, KustoAssignments):
            for subscription in {cluster.split("/")[2] for cluster in ready.config.clusters()}:
                ready.assignments.client(subscription)
    except Exception as error:
        log.warning("warm-up: %s (the first invocation builds the engine instead)", error)


def engine(environ=None) -> Engine:
    """An Engine for the current settings and config, reusing adapters built for the same settings.

    The config is read on every call (it is small), so an edited config takes effect on the next run.
    """
    settings = Settings.from_env(environ)
    key = repr(settings)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = build(settings)
    return dataclasses.replace(cached, config=load_config(settings.sync_config))
