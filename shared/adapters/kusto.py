"""ARM adapter for Kusto: cluster and database principal assignments (list, create, delete), and
the data connections of a database (list, validate, create, update, delete).

Uses azure-mgmt-kusto 4.x (api-version 2025-02-14) with one client per subscription. Long-running
operations are polled after ARM's Retry-After, or else at the configured interval (an assignment
write no later than its expected end: see `_write`). Library errors become the app's typed errors:
throttling, conflicts and 5xx are TransientError(retry_after); "already exists" on create and
"not found" on delete are successes, because every write may be a retry of one that landed.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

from shared.core.connections import KIND_FIELDS, DataConnection
from shared.core.errors import NotFoundError, PermanentError, PermissionDeniedError, PrincipalError, TransientError
from shared.core.plan import Assignment, Unreadable
from shared.core.principals import Principal
from shared.core.scopes import Scope

log = logging.getLogger(__name__)

_ALREADY_EXISTS = re.compile(r"already exists", re.IGNORECASE)
_PRINCIPAL_UNKNOWN = re.compile(r"principal .*not (be )?found|was not found in tenant", re.IGNORECASE)
_ACTION = re.compile(r"perform action '([^']+)'")
PERMISSIONS_API_VERSION = "2022-04-01"  # Microsoft.Authorization: Permissions - List For Resource


class PrincipalNotYetKnownError(PermanentError):
    """ARM does not know the principal (yet): new identities take minutes to replicate."""


class Assignments(Protocol):
    """What the engine needs from ARM. KustoAssignments implements it; tests use fakes."""

    def list_assignments(self, scope: Scope) -> list[Assignment | Unreadable]: ...
    def create_assignment(self, scope: Scope, name: str, role: str, principal: Principal) -> None: ...
    def delete_assignment(self, scope: Scope, name: str) -> None: ...
    def effective_permissions(self, cluster_id: str) -> list[dict]: ...


class DataConnections(Protocol):
    """What the engine needs from ARM for data connections. KustoAssignments implements it too."""

    def list_connections(self, scope: Scope) -> list[DataConnection]: ...
    def validate_connection(self, connection: DataConnection) -> list[str]: ...
    def create_connection(self, connection: DataConnection) -> None: ...
    def update_connection(self, connection: DataConnection) -> None: ...
    def delete_connection(self, scope: Scope, name: str) -> None: ...


class KustoAssignments:
    """Assignments and data connections over ARM with azure-mgmt-kusto."""

    def __init__(self, credential, *, endpoint: str, scope: str, polling_interval: float = 30.0):
        self._credential = credential
        self._endpoint = endpoint
        self._scopes = [scope]
        self._polling_interval = polling_interval
        self._clients: dict[str, object] = {}
        self._locations: dict[str, str] = {}  # cluster key -> its Azure region (a data connection names it)
        self._durations: dict[str, float] = {}  # cluster key -> seconds its last write's operation took
        self._lock = threading.Lock()

    def client(self, subscription_id: str):
        with self._lock:
            client = self._clients.get(subscription_id.casefold())
            if client is None:
                from azure.mgmt.kusto import KustoManagementClient

                client = KustoManagementClient(
                    self._credential, subscription_id, base_url=self._endpoint,
                    credential_scopes=self._scopes, polling_interval=self._polling_interval,
                )
                self._clients[subscription_id.casefold()] = client
            return client

    def list_assignments(self, scope: Scope) -> list[Assignment | Unreadable]:
        """Every assignment of the scope, following nextLink; one ARM returns in a shape the app
        cannot read is an Unreadable with the reason (drift), so the rest of the scope is planned.

        Sent through the SDK client's own pipeline (auth, retries, the same api-version), but the
        JSON is read here: model deserialization costs ~0.13 ms per assignment, which dominated
        onboarding and large scopes.
        """
        from azure.core.rest import HttpRequest

        client = self.client(scope.subscription_id)
        path = scope.cluster + (f"/databases/{quote(scope.database, safe='')}" if scope.database else "")
        url = f"{self._endpoint}{path}/principalAssignments?api-version={client._config.api_version}"
        assignments = []
        with _translated(f"list assignments of {scope}"):
            while url:
                response = client.send_request(HttpRequest("GET", url))
                response.raise_for_status()
                page = response.json()
                assignments += [_to_assignment(scope, item) for item in page.get("value", [])]
                url = page.get("nextLink")
        return assignments

    def create_assignment(self, scope: Scope, name: str, role: str, principal: Principal) -> None:
        principal_id, principal_type, tenant_id = principal.to_arm()
        body = {"principalId": principal_id, "principalType": principal_type, "role": role}
        if tenant_id is not None:
            body["tenantId"] = tenant_id
        try:
            self._write(scope, "PUT", name, {"properties": body}, f"create {role} for {principal.fqn} on {scope}")
        except _AlreadyExists:
            log.info("%s %s for %s already exists on %s: nothing to do", name, role, principal.fqn, scope)

    def delete_assignment(self, scope: Scope, name: str) -> None:
        try:
            self._write(scope, "DELETE", name, None, f"delete {name} on {scope}")
        except NotFoundError:
            log.info("%s on %s is already gone: nothing to do", name, scope)

    def _write(self, scope: Scope, method: str, name: str, body: dict | None, doing: str) -> None:
        """One assignment write, to its end: the request, then its long-running operation.

        Sent through the SDK client's pipeline (auth, retries after Retry-After) like the listing,
        with the operation polled here rather than by the SDK's poller: that one polls at once
        (before anything can have changed) and GETs the resource again when the operation has
        ended, two round trips per write that told nothing; and it polls at a fixed interval, so
        an operation is seen ended up to an interval late. Here each poll waits for ARM's
        Retry-After when it sends one; otherwise the interval, but no later than the operation's
        expected end: the time the last operation on this cluster took, as ARM reported it.
        """
        from azure.core.rest import HttpRequest

        client = self.client(scope.subscription_id)
        path = scope.cluster + (f"/databases/{quote(scope.database, safe='')}" if scope.database else "")
        url = f"{self._endpoint}{path}/principalAssignments/{quote(name, safe='')}?api-version={client._config.api_version}"
        with _translated(doing):
            response = client.send_request(HttpRequest(method, url, json=body))
            response.raise_for_status()
            status_url = response.headers.get("Azure-AsyncOperation") or response.headers.get("Location")
            if response.status_code not in (201, 202) or not status_url:
                return  # done already (200, 204)
            accepted, expected = time.monotonic(), self._durations.get(scope.cluster_key)
            while True:
                time.sleep(self._wait(response, accepted, expected))
                response = client.send_request(HttpRequest("GET", status_url))
                response.raise_for_status()
                if response.status_code == 202:  # a Location URL: still running
                    continue
                status = response.json() if response.content else {}  # a Location URL answers the resource
                state = str(status.get("status") or "Succeeded").casefold()
                if state not in ("succeeded", "failed", "canceled"):
                    continue
                duration = _duration(status)
                if duration is not None:
                    self._durations[scope.cluster_key] = duration
                if state != "succeeded":
                    error = status.get("error") or {}
                    raise PermanentError(f"{doing} failed: operation {state}: {error.get('code', 'unknown')}: "
                                         f"{error.get('message', '')}")
                return

    def _wait(self, response, accepted: float, expected: float | None) -> float:
        """Seconds until the next poll of an operation ARM accepted at `accepted` (monotonic)."""
        retry_after = response.headers.get("Retry-After")
        try:
            if retry_after:
                return float(retry_after)
        except ValueError:
            pass
        left = accepted + expected - time.monotonic() if expected is not None else 0.0
        return min(self._polling_interval, left) if left > 0 else self._polling_interval

    def effective_permissions(self, cluster_id: str) -> list[dict]:
        """The identity's effective permissions on a cluster: ARM's Permissions - List For Resource
        `value` (one {actions, notActions, dataActions, notDataActions} per role assignment)."""
        from azure.core.rest import HttpRequest

        client = self.client(cluster_id.split("/")[2])
        url = f"{self._endpoint}{cluster_id}/providers/Microsoft.Authorization/permissions?api-version={PERMISSIONS_API_VERSION}"
        entries: list[dict] = []
        with _translated(f"read the permissions on {cluster_id.rsplit('/', 1)[-1]}"):
            while url:
                response = client.send_request(HttpRequest("GET", url))
                response.raise_for_status()
                page = response.json()
                entries += page.get("value", [])
                url = page.get("nextLink")
        return entries

    # -- data connections ----------------------------------------------------------------------

    def list_connections(self, scope: Scope) -> list[DataConnection]:
        client = self.client(scope.subscription_id)
        with _translated(f"list data connections of {scope}"):
            items = list(client.data_connections.list_by_database(
                scope.resource_group, scope.cluster_name, scope.database))
        return [_to_connection(scope, item.as_dict()) for item in items]

    def validate_connection(self, connection: DataConnection) -> list[str]:
        """Kusto's objections to the connection (table or mapping missing, consumer group taken,
        source not found...), empty when it would accept it. Nothing is written."""
        scope = connection.scope
        body = {"dataConnectionName": connection.name, "properties": connection.body()}
        with _translated(f"validate data connection {connection.name} of {scope}"):
            result = self.client(scope.subscription_id).data_connections.begin_data_connection_validation(
                scope.resource_group, scope.cluster_name, scope.database, body).result()
        return [v.error_message for v in result.value or () if v.error_message]

    def create_connection(self, connection: DataConnection) -> None:
        """Create (or overwrite) with PUT. The body is a dict with `kind` at the top: the 4.0.0
        models do not set the discriminator, and ARM refuses a body without it."""
        scope = connection.scope
        client = self.client(scope.subscription_id)
        body = connection.body() | {"location": self._location(client, scope)}
        with _translated(f"create data connection {connection.name} of {scope}"):
            client.data_connections.begin_create_or_update(
                scope.resource_group, scope.cluster_name, scope.database, connection.name, body).result()

    def update_connection(self, connection: DataConnection) -> None:
        """Change the fields ARM lets change, in place (PATCH)."""
        scope = connection.scope
        client = self.client(scope.subscription_id)
        with _translated(f"update data connection {connection.name} of {scope}"):
            client.data_connections.begin_update(
                scope.resource_group, scope.cluster_name, scope.database, connection.name, connection.body()).result()

    def delete_connection(self, scope: Scope, name: str) -> None:
        client = self.client(scope.subscription_id)
        try:
            with _translated(f"delete data connection {name} of {scope}"):
                client.data_connections.begin_delete(
                    scope.resource_group, scope.cluster_name, scope.database, name).result()
        except NotFoundError:
            log.info("data connection %s of %s is already gone: nothing to do", name, scope)

    def _location(self, client, scope: Scope) -> str:
        key = scope.cluster_key
        with self._lock:
            known = self._locations.get(key)
        if known is None:
            with _translated(f"read cluster {scope.cluster_name}"):
                known = client.clusters.get(scope.resource_group, scope.cluster_name).location
            with self._lock:
                self._locations[key] = known
        return known

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _to_assignment(scope: Scope, item: Any) -> Assignment | Unreadable:
    name = item.get("name") if isinstance(item, dict) else None
    # ARM names nested resources "cluster/assignment" or "cluster/db/assignment".
    short = name.rsplit("/", 1)[-1] if isinstance(name, str) and name else None
    try:
        props = (item.get("properties") if isinstance(item, dict) else None) or {}
        missing = [key for key in ("principalId", "principalType", "role") if not isinstance(props.get(key), str)]
        if missing or short is None:
            raise PrincipalError(f"no {', '.join(missing or ['name'])} in the listed assignment")
        principal = Principal.from_arm(
            props["principalId"], props["principalType"], props.get("tenantId"),
            principal_name=props.get("principalName"), aad_object_id=props.get("aadObjectId"),
        )
        return Assignment(scope, props["role"], principal, name=short)
    except (PrincipalError, AttributeError, TypeError) as error:
        log.warning("assignment %s of %s is unreadable: %s", short, scope, error)
        return Unreadable(scope, short, str(error))


def _to_connection(scope: Scope, item: dict) -> DataConnection:
    kind = item.get("kind") or ""
    props = item.get("properties") or {}
    required, optional = KIND_FIELDS.get(kind, ((), ()))
    known = {k: v for k, v in props.items() if k in required + optional and v is not None}
    return DataConnection(scope, item["name"].rsplit("/", 1)[-1], kind, tuple(sorted(known.items())))


class _AlreadyExists(Exception):
    pass


class _translated:
    """Context manager turning azure-core errors into the app's typed errors, with what was being done."""

    def __init__(self, doing: str):
        self.doing = doing

    def __enter__(self):
        return self

    def __exit__(self, exc_type, error, tb):
        from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

        if error is None:
            return False
        if isinstance(error, (ServiceRequestError, ServiceResponseError)):
            raise TransientError(f"{self.doing}: {error}") from error
        if not isinstance(error, HttpResponseError):
            return False
        status = error.status_code or 0
        code = getattr(error.error, "code", None) or "unknown"
        message = getattr(error.error, "message", None) or error.message or str(error)
        what = f"{self.doing} failed: {status} {code}: {message}"
        retry_after = _retry_after(error)
        if _ALREADY_EXISTS.search(message) and status in (400, 409):
            raise _AlreadyExists(what) from error
        if status == 404:
            raise NotFoundError(what) from error
        if status in (409, 429) or status >= 500:
            raise TransientError(what, retry_after=retry_after) from error
        if status == 400 and _PRINCIPAL_UNKNOWN.search(message):
            raise PrincipalNotYetKnownError(what) from error
        if status == 403:
            action = _ACTION.search(message)
            grant = f"missing ARM action {action.group(1)}: add it to the identity's role on the cluster" if action else \
                "the identity's role on the cluster lacks this action"
            raise PermissionDeniedError(f"{what} ({grant}; see docs/permissions.md)",
                                        permission=action.group(1) if action else None) from error
        if status == 401:
            raise PermanentError(what + " (check the app's role on the cluster: see docs/permissions.md)") from error
        raise PermanentError(what) from error


def _duration(status: dict) -> float | None:
    """How long an ended operation took by ARM's own clock (its status' startTime and endTime)."""
    try:
        return (datetime.fromisoformat(status["endTime"]) - datetime.fromisoformat(status["startTime"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value else None
    except ValueError:
        return None
