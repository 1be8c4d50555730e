"""Preflight of the live identity against what the config needs: `python -m shared doctor` and
`GET /api/health?deep=true`.

- Graph: the `roles` claim of the app's own Graph token, from a fresh credential, against the
  roles the config needs (shared.core.permissions). The token is decoded without checking its
  signature: it is the app's own, just issued to it. Guests in their home tenant, onboarding
  profiles and hidden-membership groups each raise the need.
- ARM: for each cluster the config targets, the identity's effective permissions (ARM's
  Permissions - List For Resource) against the actions the app uses.
- Storage: the queues, the audit table and the lock container answer.
- Graph subscription (with GRAPH_EVENTS_TARGET): its id and expiry; missing, or expiring within
  a day, is a problem (shared.handlers.subscriptions).
- HTTP: role settings are only trusted with App Service authentication on (WEBSITE_AUTH_ENABLED).

Each check is one line, `ok`, `missing: …` or `unreachable: …`, with the fix. All ok, or nothing.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from shared.core.errors import PermissionDeniedError, SyncError
from shared.core.permissions import ARM_ACTIONS, FEATURES, GRAPH_ROLES, implied_roles, missing_arm_actions, required

log = logging.getLogger(__name__)

OK, MISSING, UNREACHABLE = "ok", "missing", "unreachable"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    area: str  # graph | arm | storage | http
    subject: str  # a role, a cluster, a queue...
    status: str  # ok | missing | unreachable
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        head = OK if self.status == OK else f"{self.status}:"
        text = f"{head} {self.area} {self.subject}" + (f": {self.detail}" if self.detail else "")
        return text + (f" (fix: {self.fix})" if self.fix else "")


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status == OK for c in self.checks)

    def lines(self) -> list[str]:
        return [c.line() for c in self.checks] + [f"doctor: {'ok' if self.ok else 'problems found'}"]

    def as_json(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def diagnose(engine, settings) -> Report:
    """Every check, for the engine's config and adapters and the settings' credential."""
    features = config_features(engine) | ({"graph-events"} if settings.graph_events_target else set())
    return Report(tuple(graph_checks(settings, engine.config, features) + subscription_checks(engine, settings)
                        + arm_checks(engine, features) + storage_checks(engine, settings) + http_checks()))


def http_checks(environ=None) -> list[Check]:
    """Role settings without App Service authentication: every role-gated call is refused."""
    from shared.core.settings import HttpSettings

    return [Check("http", "authentication", MISSING, problem,
                  "turn on App Service authentication (Easy Auth), or unset the role settings")
            for problem in HttpSettings.from_env(environ).problems()]


def config_features(engine) -> set[str]:
    """The features of FEATURES the config uses (hidden membership found by reading its groups)."""
    config = engine.config
    features = set()
    if config.guests == "home" or config.profiles:
        features.add("guests-home")
    if config.data_connections:
        features.add("dataConnections")
    for ref in sorted({m.group for m in config.mappings}):
        try:
            if engine.directory.find_group(ref).visibility == "HiddenMembership":
                features.add("hidden-groups")
        except SyncError as error:  # a refused read shows up as a missing role below
            log.debug("doctor: group %s: %s", ref, error)
    return features


def graph_checks(settings, config, features: set[str]) -> list[Check]:
    from shared.app import make_credential, token_claims

    try:
        claims = token_claims(make_credential(settings), settings.cloud.graph_scope)
    except SyncError as error:
        return [Check("graph", "token", UNREACHABLE, str(error), "let the app sign in (managed identity, or az login)")]
    if "roles" not in claims and claims.get("scp"):
        return [Check("graph", "roles", UNREACHABLE, "the Graph token is a user's (delegated), without app roles",
                      "run doctor as the managed identity (on Azure, or with its environment)")]
    granted = implied_roles(claims.get("roles") or ())
    skip_disabled = any(m.includes_users and m.skip_disabled_accounts for m in config.mappings)
    checks = []
    for role in required(GRAPH_ROLES, features):
        why = role.why
        if role.needed_for:
            why += f"; needed because of {FEATURES[role.needed_for]}"
        if role.name == "User.Read.All" and skip_disabled:
            why += "; skipDisabledAccounts needs accountEnabled"
        if role.name.casefold() in granted:
            checks.append(Check("graph", role.name, OK))
        else:
            checks.append(Check("graph", role.name, MISSING, why,
                                f"grant the Microsoft Graph app role {role.name} to the app's identity (docs/permissions.md)"))
    return checks


def subscription_checks(engine, settings) -> list[Check]:
    """The Graph subscription for group events (with GRAPH_EVENTS_TARGET only): its id, its
    expiry, and whether it is healthy (present, and not expiring within a day)."""
    if not settings.graph_events_target:
        return []
    from shared.handlers.subscriptions import status

    report = status(engine, settings)
    if report["id"] is None:
        kind = UNREACHABLE if report["detail"].startswith("cannot list") else MISSING
        return [Check("graph", "subscription", kind, report["detail"],
                      "the graph_subscription timer makes one within the hour; check its log and Group.Read.All")]
    detail = f"id {report['id']}, expires {report['expirationDateTime']}"
    if report["healthy"]:
        return [Check("graph", "subscription", OK, detail)]
    return [Check("graph", "subscription", MISSING, f"{detail}: {report['detail']}",
                  "the graph_subscription timer renews it; check its log and Group.Read.All")]


def arm_checks(engine, features: set[str]) -> list[Check]:
    config = engine.config
    scopes = set(config.scopes()) | config.onboarding_scopes() | set(config.connection_scopes())
    clusters = {s.cluster_key: s.cluster for s in sorted(scopes)}
    needed = [p.name for p in required(ARM_ACTIONS, features)]
    checks = []
    for key in sorted(clusters):
        cluster = clusters[key]
        name = cluster.rsplit("/", 1)[-1]
        try:
            missing = missing_arm_actions(engine.assignments.effective_permissions(cluster), needed)
        except PermissionDeniedError as error:
            checks.append(Check("arm", name, MISSING, str(error), "assign the identity its role on the cluster"))
            continue
        except SyncError as error:
            checks.append(Check("arm", name, UNREACHABLE, str(error), "check the cluster's resource ID and ARM_ENDPOINT"))
            continue
        if missing:
            checks.append(Check("arm", name, MISSING, ", ".join(missing),
                                "add these actions to the identity's role on the cluster (infra/kusto-sync-role.json)"))
        else:
            checks.append(Check("arm", name, OK))
    return checks


def storage_checks(engine, settings) -> list[Check]:
    if not settings.has_storage:
        return [Check("storage", "AzureWebJobsStorage", OK, "not set: runs, ledger and locks are kept in memory")]
    from shared.adapters.queues import ONBOARDING, ONBOARDING_REJECTED, RECONCILE_REQUESTS

    probes = [(f"queue {q}", lambda q=q: engine.queues.probe(q)) for q in (ONBOARDING, RECONCILE_REQUESTS, ONBOARDING_REJECTED)]
    probes += [("table syncruns", engine.audit.probe), ("container kusto-sync-locks", engine.locks.probe)]
    checks = []
    for subject, probe in probes:
        try:
            probe()
            checks.append(Check("storage", subject, OK))
        except PermissionDeniedError as error:
            checks.append(Check("storage", subject, MISSING, str(error), "grant the identity its storage roles (docs/permissions.md)"))
        except Exception as error:  # noqa: BLE001 - any failure to answer is "unreachable", reported not raised
            checks.append(Check("storage", subject, UNREACHABLE, f"{type(error).__name__}: {str(error).splitlines()[0]}",
                                "check AzureWebJobsStorage and the network path to the account"))
    return checks
