"""App settings, read once from the environment and checked as a whole.

`Settings.from_env(environ)` reports every missing or invalid key in one ConfigError, before any
call to Azure; a problem names the setting and never repeats a URL's value (it may carry
credentials). Endpoints default to the chosen cloud (`AZURE_CLOUD`). `ARM_ENDPOINT` and
`GRAPH_ENDPOINT` may be overridden only with that cloud's own hosts or their private-link aliases,
listed below: the token audience stays the cloud's, so any other host would receive the cloud's
tokens. Loopback hosts (the local emulator) need `LOCAL_EMULATOR=true` on top.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from shared.core.errors import ConfigError
from shared.core.subscriptions import MAX_CLIENT_STATE, event_grid_problems


@dataclass(frozen=True)
class Cloud:
    """The public endpoints and token audiences of one Azure cloud."""

    name: str
    arm_endpoint: str
    graph_endpoint: str
    authority_host: str
    storage_suffix: str
    """The DNS suffix of storage accounts: https://{account}.{blob|queue|table}.{storage_suffix}."""
    arm_aliases: tuple[str, ...] = ()
    """Hosts besides the ARM endpoint's that may receive ARM tokens (private-link names of ARM)."""
    graph_aliases: tuple[str, ...] = ()
    """Hosts besides the Graph endpoint's that may receive Graph tokens."""

    @property
    def arm_scope(self) -> str:
        return self.arm_endpoint.rstrip("/") + "/.default"

    @property
    def graph_scope(self) -> str:
        return self.graph_endpoint.rstrip("/") + "/.default"


CLOUDS = {
    "AzureCloud": Cloud(
        "AzureCloud", "https://management.azure.com", "https://graph.microsoft.com",
        "https://login.microsoftonline.com", "core.windows.net",
        # Resource Management Private Link: the private DNS zone privatelink.azure.com.
        arm_aliases=("management.privatelink.azure.com",),
    ),
    "AzureUSGovernment": Cloud(
        "AzureUSGovernment", "https://management.usgovcloudapi.net", "https://graph.microsoft.us",
        "https://login.microsoftonline.us", "core.usgovcloudapi.net",
        graph_aliases=("dod-graph.microsoft.us",),  # the DoD Graph endpoint shares the cloud's tokens
    ),
    "AzureChinaCloud": Cloud(
        "AzureChinaCloud", "https://management.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn",
        "https://login.chinacloudapi.cn", "core.chinacloudapi.cn",
    ),
}
_CLOUD_ALIASES = {
    "public": "AzureCloud", "azurecloud": "AzureCloud", "azurepubliccloud": "AzureCloud",
    "usgov": "AzureUSGovernment", "usgovernment": "AzureUSGovernment", "azureusgovernment": "AzureUSGovernment",
    "china": "AzureChinaCloud", "azurechinacloud": "AzureChinaCloud",
}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_STORAGE_IDENTITY_KEYS = ("accountName", "queueServiceUri", "blobServiceUri", "tableServiceUri")
_STORAGE_SERVICES = ("blob", "queue", "table")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

BINDING_SETTINGS = ("SYNC_SCHEDULE",)
"""Settings the Functions host itself resolves in bindings (`%SYNC_SCHEDULE%`). The host reads them
from app settings only, so the defaults below never reach it: without the setting, the function
that uses it fails to index. They must be set wherever the app runs."""


@dataclass(frozen=True)
class Settings:
    """Every app setting the code reads. Field docs give the unit and why the default is what it is."""

    sync_config: str
    """SYNC_CONFIG: a path to the sync config (JSON or YAML), or the config itself inline."""

    cloud: Cloud = CLOUDS["AzureCloud"]
    """AZURE_CLOUD: AzureCloud (default), AzureUSGovernment or AzureChinaCloud; picks the defaults below."""

    arm_endpoint: str = CLOUDS["AzureCloud"].arm_endpoint
    """ARM_ENDPOINT: Azure Resource Manager base URL. Default: the cloud's."""

    graph_endpoint: str = CLOUDS["AzureCloud"].graph_endpoint
    """GRAPH_ENDPOINT: Microsoft Graph base URL without the version. Default: the cloud's."""

    arm_polling_interval: float = 30.0
    """ARM_POLLING_INTERVAL: seconds between polls of a long-running ARM operation when the service
    sends no Retry-After; a principal-assignment write is polled no later than its expected end
    (ARM's duration of the last operation on the cluster). 30 is azure-core's default; tests use 0."""

    sync_schedule: str = "0 */30 * * * *"
    """SYNC_SCHEDULE: NCRONTAB (6 fields, UTC) of the timer sync. Default every 30 minutes."""

    tenant_id: str | None = None
    """AZURE_TENANT_ID: the home tenant. Optional: by default it is read from the app's own token."""

    home_domains: tuple[str, ...] = ()
    """HOME_TENANT_DOMAINS: comma-separated verified domains of the home tenant, resolved without a Graph call."""

    storage: Mapping[str, str] = field(default_factory=dict)
    """AzureWebJobsStorage (connection string) or its identity-based AzureWebJobsStorage__* keys. With
    identity-based storage, every `__{blob,queue,table}ServiceUri` is filled in from `__accountName`
    and the cloud's storage suffix, so the adapters never guess a host."""

    local_emulator: bool = False
    """LOCAL_EMULATOR: true only against the local emulator; lets ARM_ENDPOINT and GRAPH_ENDPOINT name
    a loopback host. Never set it in Azure."""

    max_parallel_clusters: int = 4
    """MAX_PARALLEL_CLUSTERS: clusters written at the same time (each cluster takes one write at a time)."""

    retry_budget_seconds: float = 120.0
    """RETRY_BUDGET_SECONDS: how long one change may keep retrying 409/429/503 before it is reported failed."""

    dry_run: bool = False
    """SYNC_DRY_RUN: when true the timer only plans and reports; nothing is written."""

    graph_events_target: str | None = None
    """GRAPH_EVENTS_TARGET: the Event Grid partner topic Graph delivers group change events to, as
    Graph's notificationUrl: EventGrid:?azuresubscriptionid=…&resourcegroup=…&partnertopic=…&location=….
    Unset: no change notifications, and the app makes no Graph subscription call at all."""

    graph_events_client_state: str | None = field(default=None, repr=False)
    """GRAPH_EVENTS_CLIENT_STATE: the secret Graph echoes in every event (clientState, at most 128
    characters); events that carry another are rejected. Required with GRAPH_EVENTS_TARGET."""

    run_deadline_seconds: float | None = None
    """RUN_DEADLINE_SECONDS: how long one run (or cluster job) may write before it stops starting
    writes and ends `incomplete`, leaving the rest to its continuation. Default (None): host.json's
    functionTimeout minus DEADLINE_MARGIN_SECONDS, so the audit row is final before the host kills it."""

    lease_renew_seconds: float = 10.0
    """LEASE_RENEW_SECONDS: how often a held cluster lease (30 s) is renewed. A third of the lease by
    default; tests make it short to see renewals happen."""
    app_insights: bool = False
    """APPLICATIONINSIGHTS_CONNECTION_STRING is set: traces and metrics go to Application Insights through
    the Azure Monitor OpenTelemetry distro (which reads the connection string itself). Unset: no telemetry
    is configured and none costs anything."""

    worker_telemetry: bool = False
    """PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: true when the Functions worker configures the Azure
    Monitor distro itself (with host.json telemetryMode OpenTelemetry); the app then only uses it."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, require_config: bool = True) -> "Settings":
        """Read and check every setting; raise one ConfigError that lists all problems.

        `require_config=False` is for commands that need no sync config (`resolve`).
        """
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def text(key: str) -> str | None:
            value = env.get(key, "").strip()
            return value or None

        def number(key: str, default: float, *, minimum: float = 0, integer: bool = False) -> float:
            raw = text(key)
            if raw is None:
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                problems.append(f"{key}: '{raw}' is not {'an integer' if integer else 'a number'}")
                return default
            if value < minimum:
                problems.append(f"{key}: {raw} is below the minimum {minimum:g}")
                return default
            return value

        def url(key: str, default: str, aliases: tuple[str, ...]) -> str:
            raw = text(key)
            if raw is None:
                return default
            try:
                parts = urlsplit(raw)
                host = (parts.hostname or "").lower()
            except ValueError:
                parts, host = None, ""
            if parts is None or parts.scheme != "https" or not host:
                problems.append(f"{key}: not an https:// URL (bearer tokens are only sent over TLS)")
                return default
            if parts.username or parts.password or parts.query or parts.fragment:
                problems.append(f"{key}: must not carry credentials, a query or a fragment")
                return default
            allowed = (urlsplit(default).hostname, *aliases)
            if host in _LOOPBACK and not local_emulator:
                problems.append(f"{key}: a loopback host is only allowed with LOCAL_EMULATOR=true")
                return default
            if host not in _LOOPBACK and host not in allowed:
                problems.append(f"{key}: not a host of {cloud.name} ({', '.join(allowed)}); "
                                "its tokens must not go anywhere else")
                return default
            return raw.rstrip("/")

        sync_config = text("SYNC_CONFIG")
        if sync_config is None and require_config:
            problems.append("SYNC_CONFIG: missing; set it to the path of the sync config or to the config itself")

        cloud_name = text("AZURE_CLOUD") or "AzureCloud"
        canonical_cloud = cloud_name if cloud_name in CLOUDS else _CLOUD_ALIASES.get(cloud_name.casefold())
        if canonical_cloud is None:
            problems.append(f"AZURE_CLOUD: '{cloud_name}' is not one of {', '.join(CLOUDS)}")
            canonical_cloud = "AzureCloud"
        cloud = CLOUDS[canonical_cloud]

        schedule = text("SYNC_SCHEDULE") or cls.sync_schedule
        if len(schedule.split()) != 6:
            problems.append(
                f"SYNC_SCHEDULE: '{schedule}' is not an NCRONTAB expression of 6 fields "
                "({second} {minute} {hour} {day} {month} {day-of-week})"
            )

        tenant_id = text("AZURE_TENANT_ID")
        if tenant_id is not None and not _GUID.match(tenant_id):
            problems.append(f"AZURE_TENANT_ID: '{tenant_id}' is not a tenant GUID")

        home_domains = tuple(d.strip().lower() for d in (text("HOME_TENANT_DOMAINS") or "").split(",") if d.strip())

        events_target = text("GRAPH_EVENTS_TARGET")
        client_state = text("GRAPH_EVENTS_CLIENT_STATE")
        if events_target is not None:
            problems += [f"GRAPH_EVENTS_TARGET: {p}" for p in event_grid_problems(events_target)]
            if client_state is None:
                problems.append("GRAPH_EVENTS_CLIENT_STATE: missing; GRAPH_EVENTS_TARGET needs a secret "
                                "for Graph to echo in every event")
        if client_state is not None and len(client_state) > MAX_CLIENT_STATE:
            problems.append(f"GRAPH_EVENTS_CLIENT_STATE: longer than the {MAX_CLIENT_STATE} characters Graph keeps")

        local_emulator = _flag(text("LOCAL_EMULATOR"), "LOCAL_EMULATOR", problems)
        storage = _storage(env, cloud, problems)

        settings = cls(
            sync_config=sync_config or "",
            cloud=cloud,
            arm_endpoint=url("ARM_ENDPOINT", cloud.arm_endpoint, cloud.arm_aliases),
            graph_endpoint=url("GRAPH_ENDPOINT", cloud.graph_endpoint, cloud.graph_aliases),
            arm_polling_interval=number("ARM_POLLING_INTERVAL", cls.arm_polling_interval),
            sync_schedule=schedule,
            tenant_id=tenant_id.lower() if tenant_id else None,
            home_domains=home_domains,
            storage=storage,
            local_emulator=local_emulator,
            app_insights=text("APPLICATIONINSIGHTS_CONNECTION_STRING") is not None,
            worker_telemetry=_flag(text("PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"),
                                   "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY", problems),
            max_parallel_clusters=int(number("MAX_PARALLEL_CLUSTERS", cls.max_parallel_clusters, minimum=1, integer=True)),
            retry_budget_seconds=number("RETRY_BUDGET_SECONDS", cls.retry_budget_seconds),
            dry_run=_flag(text("SYNC_DRY_RUN"), "SYNC_DRY_RUN", problems),
            graph_events_target=events_target,
            graph_events_client_state=client_state,
            run_deadline_seconds=(number("RUN_DEADLINE_SECONDS", 0.0, minimum=1)
                                  if text("RUN_DEADLINE_SECONDS") else None),
            lease_renew_seconds=number("LEASE_RENEW_SECONDS", cls.lease_renew_seconds, minimum=0.05),
        )
        if settings.lease_renew_seconds > 15:
            problems.append(f"LEASE_RENEW_SECONDS: {settings.lease_renew_seconds:g} is above 15 "
                            "(half the 30 s lease: one failed renewal must leave time for the next)")
        if problems:
            raise ConfigError(problems, source="app settings")
        return settings

    @property
    def has_storage(self) -> bool:
        return bool(self.storage.get("AzureWebJobsStorage")) or any(
            f"AzureWebJobsStorage__{k}" in self.storage for k in _STORAGE_IDENTITY_KEYS
        )


DEADLINE_MARGIN_SECONDS = 60.0
"""Kept free at the end of a run: the write in flight, the audit's final row and the continuation."""


def run_deadline(function_timeout: str | None) -> float | None:
    """Seconds a run may write, from host.json's functionTimeout ("hh:mm:ss", "d.hh:mm:ss" or
    "-1" for none): the timeout minus DEADLINE_MARGIN_SECONDS, at least half the timeout.
    None when there is no timeout."""
    text = (function_timeout or "").strip()
    if not text or text == "-1":
        return None
    days, _, clock = text.rpartition(".") if text.count(":") == 2 and "." in text.split(":")[0] else ("", "", text)
    try:
        hours, minutes, seconds = (float(part) for part in clock.split(":"))
        total = (int(days) if days else 0) * 86400 + hours * 3600 + minutes * 60 + seconds
    except ValueError:
        raise ConfigError([f"host.json functionTimeout: '{text}' is not hh:mm:ss"], source="host.json") from None
    return max(total - DEADLINE_MARGIN_SECONDS, total / 2)


def _storage(env: Mapping[str, str], cloud: Cloud, problems: list[str]) -> dict[str, str]:
    """The AzureWebJobsStorage settings; identity-based ones completed with the cloud's service URIs."""
    storage = {k: v for k, v in env.items() if k == "AzureWebJobsStorage" or k.startswith("AzureWebJobsStorage__")}
    storage = {k: v.strip() for k, v in storage.items() if v.strip()}
    if storage.get("AzureWebJobsStorage"):
        return storage
    account = storage.get("AzureWebJobsStorage__accountName")
    for service in _STORAGE_SERVICES:
        key = f"AzureWebJobsStorage__{service}ServiceUri"
        if key in storage:
            continue
        if account:
            storage[key] = f"https://{account}.{service}.{cloud.storage_suffix}"
        elif any(f"AzureWebJobsStorage__{s}ServiceUri" in storage for s in _STORAGE_SERVICES):
            problems.append(f"{key}: missing; set AzureWebJobsStorage__accountName or every service URI")
    return storage


@dataclass(frozen=True)
class HttpSettings:
    """The app settings of the HTTP routes (role values as in the app registration; case matters)."""

    required_role: str | None = None
    """HTTP_REQUIRED_ROLE: app role every caller of reconcile, runs and grants needs (unset: function keys only)."""
    approver_role: str | None = None
    """HTTP_APPROVER_ROLE: app role needed to apply with approveDeletes (unset: no extra role) and to
    approve or deny a pending grant (unset: nobody can, over HTTP)."""
    auth_enabled: bool = False
    """WEBSITE_AUTH_ENABLED, set by the platform when App Service authentication (Easy Auth) is on.
    Only then is X-MS-CLIENT-PRINCIPAL proof of anything: Easy Auth strips a caller's own copy."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "HttpSettings":
        env = os.environ if environ is None else environ
        required, approver = ((env.get(key) or "").strip() or None for key in ("HTTP_REQUIRED_ROLE", "HTTP_APPROVER_ROLE"))
        return cls(required, approver, (env.get("WEBSITE_AUTH_ENABLED") or "").strip().lower() in ("true", "1"))

    def problems(self) -> list[str]:
        """Why role checks cannot be trusted as configured (for health and doctor); empty when fine."""
        roles = [k for k, v in (("HTTP_REQUIRED_ROLE", self.required_role), ("HTTP_APPROVER_ROLE", self.approver_role)) if v]
        if roles and not self.auth_enabled:
            return [f"{' and '.join(roles)} set, but App Service authentication is off (WEBSITE_AUTH_ENABLED): "
                    "X-MS-CLIENT-PRINCIPAL could be forged, so role-gated calls are refused"]
        return []


def _flag(raw: str | None, key: str, problems: list[str]) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    problems.append(f"{key}: '{raw}' is not true or false")
    return False
