"""Microsoft Graph adapter: groups, their transitive members, users, apps and tenant look-ups.

Reads go through msgraph-sdk's own request adapter, so they keep the SDK's auth, retry (429/503
with Retry-After), redirect and telemetry middleware, but JSON pages are parsed here instead of
into msgraph model objects: that mapping costs about 6.5 ms per member and imports over a
thousand model modules on the first call (measured with msgraph-sdk 1.65.0), while json.loads costs microseconds.

Collections are streamed: `iter_pages` follows @odata.nextLink to the end, fetching page N+1 while
the caller turns page N into DirectoryObjects, so memory holds the resulting members and at most
two raw pages, never the whole group's JSON. Members are read with $top=999 and a $select of
MEMBER_FIELDS only (docs/benchmarks.md has the figures).

A failure never passes for the end of the data: a page that answers an error, breaks off, is not
JSON or has no `value` list raises TransientError. Throttling is handled at two levels. Kiota's
RetryHandler re-sends the same request on 429/503/504 after Retry-After (3 retries by default).
When those run out, the adapter re-reads that same page up to `page_retries` times (after
Retry-After, or a short backoff) before it gives up. A throttling storm in the middle of a large
group thus resumes at the page it reached instead of restarting the group or returning part of it.

The SDK is asynchronous and the rest of the app is not. The adapter therefore owns one event loop
on a daemon thread for its whole life, so the httpx connection pool survives across calls and
across warm Functions invocations, whatever loop (if any) the caller runs on.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import Future
from typing import Any, Iterable, Iterator, NamedTuple, Protocol
from urllib.parse import quote, urlsplit

from shared.core.errors import NotFoundError, PermanentError, PermissionDeniedError, PrincipalError, TransientError
from shared.core.permissions import graph_role_for
from shared.core.principals import is_guid
from shared.core.tenants import TenantInfo, guest_home_address

log = logging.getLogger(__name__)

MEMBER_FIELDS = (
    "id", "displayName", "userPrincipalName", "mail", "accountEnabled", "userType",
    "appId", "securityEnabled", "mailEnabled", "groupTypes",
)
GROUP_FIELDS = ("id", "displayName", "mail", "mailEnabled", "securityEnabled", "groupTypes", "visibility")
DELTA_FILTER_LIMIT = 50  # ids Graph accepts in one groups/delta $filter
PAGE_SIZE = 999  # the largest $top Graph accepts for membership reads: fewest calls per member
PAGE_RETRIES = 2  # adapter-level re-reads of one failed page, each after kiota's own retries ran out
PAGE_RETRY_DELAY = 2.0  # seconds before the first re-read when the service named no Retry-After
MAX_PAGE_RETRY_WAIT = 60.0  # a longer Retry-After is left to the caller (queue retry), not slept here

# One shared str per value rather than one per member: json.loads makes a new str for each.
_KINDS = {"#microsoft.graph.user": "user", "#microsoft.graph.group": "group",
          "#microsoft.graph.serviceprincipal": "servicePrincipal"}
_USER_TYPES = {"Member": "Member", "Guest": "Guest"}


class DirectoryObject(NamedTuple):
    """A user, group or service principal as the engine needs it (one tuple per member: cheap at 100k)."""

    kind: str  # "user" | "group" | "servicePrincipal" | another Graph type name
    id: str
    display_name: str | None = None
    user_principal_name: str | None = None
    mail: str | None = None
    account_enabled: bool | None = None
    user_type: str | None = None
    app_id: str | None = None
    security_enabled: bool | None = None
    mail_enabled: bool | None = None
    group_types: tuple[str, ...] = ()
    visibility: str | None = None  # a group's: Public, Private or HiddenMembership
    limited: bool = False
    """Graph returned only @odata.type and id (the app may not read this type): the member is
    unknown, not absent. shared.core.permissions.role_revealing(kind) names the role to grant."""

    @classmethod
    def from_json(cls, item: dict[str, Any], kind: str | None = None) -> "DirectoryObject":
        """Map one Graph object. Typed reads pass `kind`; otherwise @odata.type decides it."""
        if kind is None:
            odata_type = item.get("@odata.type")
            if not odata_type:
                raise PermanentError(f"Graph returned directory object {item.get('id')} without @odata.type")
            kind = _KINDS.get(odata_type.lower()) or odata_type.rsplit(".", 1)[-1]
        display_name = item.get("displayName")
        upn, app_id = item.get("userPrincipalName"), item.get("appId")
        return cls(
            kind=kind,
            id=item["id"],
            display_name=display_name,
            user_principal_name=upn,
            mail=item.get("mail"),
            account_enabled=item.get("accountEnabled"),
            user_type=_USER_TYPES.get(item.get("userType"), item.get("userType")),
            app_id=app_id,
            security_enabled=item.get("securityEnabled"),
            mail_enabled=item.get("mailEnabled"),
            group_types=tuple(item.get("groupTypes") or ()),
            visibility=item.get("visibility"),
            # Every directory object has a displayName; only limited information leaves it null.
            limited=display_name is None and upn is None and app_id is None,
        )

    @property
    def is_guest(self) -> bool:
        """A B2B guest: marked so by Graph, or recognisable by its #EXT# UPN."""
        return self.user_type == "Guest" or "#EXT#" in (self.user_principal_name or "").upper()

    def home_address(self) -> str:
        """The address a guest was invited with: its #EXT# UPN unwrapped once, else its mail. Often,
        not always, the UPN it signs in with at home (the invitation may name another address)."""
        address = (guest_home_address(self.user_principal_name) if self.user_principal_name else None) or self.mail
        if not address:
            raise PrincipalError(f"guest {self.user_principal_name or self.id} has no home address to resolve")
        return address

    def as_group_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "displayName": self.display_name, "mail": self.mail,
            "mailEnabled": self.mail_enabled, "securityEnabled": self.security_enabled,
            "groupTypes": list(self.group_types),
        }


class Directory(Protocol):
    """What the engine needs from Entra ID. GraphDirectory implements it; tests use fakes."""

    def find_group(self, ref: str) -> DirectoryObject: ...
    def transitive_members(self, group_id: str) -> list[DirectoryObject]: ...
    def find_user(self, ref: str) -> DirectoryObject: ...
    def find_service_principal(self, ref: str) -> DirectoryObject: ...
    def find_tenant_by_domain(self, domain: str) -> TenantInfo | None: ...
    def latest_delta_links(self, group_ids: Iterable[str]) -> list[str]: ...
    def changed_groups(self, delta_link: str) -> tuple[set[str], str]: ...
    def deleted_group(self, group_id: str) -> bool: ...


class DeltaExpiredError(PermanentError):
    """Graph refused a delta token (expired, or a resync is required): read everything again."""


class _LoopThread:
    """One asyncio loop on a daemon thread; coroutines are submitted from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="graph-io", daemon=True)
        self._thread.start()

    def submit(self, coro) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


class GraphDirectory:
    """Directory over Microsoft Graph v1.0 with msgraph-sdk's request adapter and raw JSON pages."""

    def __init__(self, credential, *, endpoint: str, scope: str, page_size: int = PAGE_SIZE,
                 page_retries: int = PAGE_RETRIES, page_retry_delay: float = PAGE_RETRY_DELAY):
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from msgraph import GraphServiceClient
        from msgraph.graph_request_adapter import GraphRequestAdapter

        self.base_url = endpoint.rstrip("/") + "/v1.0"
        host = urlsplit(self.base_url).hostname or ""
        # The default allowed hosts are the public Graph hosts only; any other host (a national
        # cloud, the emulator) would silently get no Authorization header.
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[scope], allowed_hosts=[host])
        adapter = GraphRequestAdapter(auth)
        adapter.base_url = self.base_url
        self.client = GraphServiceClient(request_adapter=adapter)
        self.page_size = page_size
        self.page_retries = page_retries
        self.page_retry_delay = page_retry_delay
        self._io = _LoopThread()

    # -- single objects ------------------------------------------------------------------------

    def find_group(self, ref: str) -> DirectoryObject:
        """A group by object ID, mail or display name; ambiguous names are refused with the candidates."""
        select = ",".join(GROUP_FIELDS)
        if is_guid(ref):
            return DirectoryObject.from_json(self.get_json(f"/groups/{ref}?$select={select}"), "group")
        field_name = "mail" if "@" in ref else "displayName"
        return self._find_one("group", "/groups", field_name, ref, select)

    def deleted_group(self, group_id: str) -> bool:
        """Whether Graph holds the group in directory/deletedItems (soft-deleted, restorable).

        False when it does not: never deleted, or deleted permanently, as every security group is.
        Also False when the app may not look (403 without Group.Read.All): the caller then waits
        for a second 404 in a row before it believes the group is gone.
        """
        try:
            body = self.get_json(f"/directory/deletedItems/{quote(group_id)}")
        except NotFoundError:
            return False
        except PermanentError as error:
            log.info("cannot look the group up in deleted items: %s", error)
            return False
        return body.get("@odata.type") == "#microsoft.graph.group"

    def find_user(self, ref: str) -> DirectoryObject:
        """A user by object ID or UPN, falling back to mail."""
        select = ",".join(MEMBER_FIELDS[:6])
        try:
            return DirectoryObject.from_json(self.get_json(f"/users/{quote(ref, safe='@')}?$select={select}"), "user")
        except NotFoundError:
            if "@" not in ref:
                raise
        return self._find_one("user", "/users", "mail", ref, select)

    def find_service_principal(self, ref: str) -> DirectoryObject:
        """A service principal by app ID, then object ID, then display name."""
        select = "id,appId,displayName"
        if is_guid(ref):
            try:
                return DirectoryObject.from_json(self.get_json(f"/servicePrincipals(appId='{ref}')?$select={select}"), "servicePrincipal")
            except NotFoundError:
                return DirectoryObject.from_json(self.get_json(f"/servicePrincipals/{ref}?$select={select}"), "servicePrincipal")
        return self._find_one("servicePrincipal", "/servicePrincipals", "displayName", ref, select)

    def find_tenant_by_domain(self, domain: str) -> TenantInfo | None:
        path = f"/tenantRelationships/findTenantInformationByDomainName(domainName='{_odata_literal(domain)}')"
        try:
            body = self.get_json(path)
        except NotFoundError:
            return None
        return TenantInfo(
            tenant_id=body["tenantId"], display_name=body.get("displayName"),
            default_domain=body.get("defaultDomainName"),
        )

    def _find_one(self, kind: str, collection: str, field_name: str, value: str, select: str) -> DirectoryObject:
        query = f"{collection}?$filter={field_name} eq '{_odata_literal(value)}'&$select={select}&$top=10"
        found = [DirectoryObject.from_json(item, kind) for item in self.get_json(query).get("value", [])]
        if not found:
            raise NotFoundError(f"no {kind} has {field_name} '{value}'")
        if len(found) > 1:
            candidates = ", ".join(f"{o.display_name} ({o.id})" for o in found)
            raise PermanentError(f"{field_name} '{value}' matches {len(found)} {kind}s: {candidates}; use an object ID")
        return found[0]

    # -- collections -------------------------------------------------------------------------

    def transitive_members(self, group_id: str) -> list[DirectoryObject]:
        """Every nested member of a group, each once. Raises if any page fails: never a partial list."""
        seen: set[str] = set()
        members = []
        for member in self.iter_members(group_id, transitive=True):
            # Paging over a directory that changes meanwhile can repeat an object across pages.
            if member.id not in seen:
                seen.add(member.id)
                members.append(member)
        return members

    def iter_members(self, group_id: str, *, transitive: bool = True) -> Iterator[DirectoryObject]:
        """Direct or transitive members as their pages arrive."""
        relation = "transitiveMembers" if transitive else "members"
        first = f"/groups/{group_id}/{relation}?$select={','.join(MEMBER_FIELDS)}&$top={self.page_size}"
        from_json = DirectoryObject.from_json
        for page in self.iter_pages(first):
            for item in page:
                yield from_json(item)

    def iter_pages(self, path_or_url: str) -> Iterator[list[dict[str, Any]]]:
        """Each page's `value` list, following @odata.nextLink to the end (members, transitive
        members and delta alike), fetching the next page while the caller uses this one.

        A page that still fails after every retry raises TransientError. The pages yielded before
        it are then only part of the collection: callers must drop them, as `transitive_members`
        does by raising before it returns anything."""
        pending = self._io.submit(self._get_page(self._absolute(path_or_url)))
        pages = 0
        try:
            while pending is not None:
                body = pending.result()
                pages += 1
                next_link = body.get("@odata.nextLink")
                pending = self._io.submit(self._get_page(next_link)) if next_link else None
                yield body["value"]
        finally:
            if pending is not None:  # the caller stopped early or failed: drop the prefetch
                pending.cancel()
        log.debug("read %d page(s) from %s", pages, path_or_url.split("?")[0])

    async def _get_page(self, url: str) -> dict[str, Any]:
        """One collection page, re-read up to `page_retries` times after a TransientError."""
        attempt = 0
        while True:
            try:
                body = await self._get(url)
                if not isinstance(body.get("value"), list):
                    raise TransientError(f"Graph page of {_path(url)} has no 'value' list")
                return body
            except TransientError as error:
                wait = error.retry_after if error.retry_after else self.page_retry_delay * 2 ** attempt
                if attempt >= self.page_retries or wait > MAX_PAGE_RETRY_WAIT:
                    raise
                attempt += 1
                log.warning("re-reading a page of %s in %.1fs (retry %d of %d): %s",
                            _path(url), wait, attempt, self.page_retries, error)
                await asyncio.sleep(wait)

    # -- change tracking ---------------------------------------------------------------------

    def latest_delta_links(self, group_ids: Iterable[str]) -> list[str]:
        """Delta links that report changes from now on to these groups (50 ids per link, Graph's limit)."""
        ids = sorted(set(group_ids))
        links = []
        for start in range(0, len(ids), DELTA_FILTER_LIMIT):
            clause = " or ".join(f"id eq '{gid}'" for gid in ids[start:start + DELTA_FILTER_LIMIT])
            body = self.get_json(f"/groups/delta?$select=members&$filter={quote(clause)}&$deltatoken=latest")
            links.append(body["@odata.deltaLink"])
        return links

    def changed_groups(self, delta_link: str) -> tuple[set[str], str]:
        """IDs of the groups that changed since `delta_link`, and the link for next time.

        Raises DeltaExpiredError when Graph refuses the link; never returns a partial round.
        """
        changed: set[str] = set()
        url = delta_link
        while True:
            body = self._io.submit(self._get_page(url)).result()
            changed.update(item["id"] for item in body["value"])
            if body.get("@odata.nextLink"):
                url = body["@odata.nextLink"]
                continue
            if not body.get("@odata.deltaLink"):
                raise TransientError(f"a delta round of {_path(url)} ended without a deltaLink")
            return changed, body["@odata.deltaLink"]

    # -- transport ---------------------------------------------------------------------------

    def get_json(self, path_or_url: str) -> dict[str, Any]:
        return self._io.submit(self._get(self._absolute(path_or_url))).result()

    def _absolute(self, path_or_url: str) -> str:
        return path_or_url if "://" in path_or_url else self.base_url + path_or_url

    async def _get(self, url: str) -> dict[str, Any]:
        body = await self._send("GET", url)
        if body is None:
            raise TransientError(f"Graph returned an empty body for {_path(url)}")
        return body

    def send_json(self, method: str, path_or_url: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Any Graph call through the same middleware: the JSON object answered, None for no content."""
        return self._io.submit(self._send(method, self._absolute(path_or_url), body)).result()

    async def _send(self, method: str, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        import httpx
        from kiota_abstractions.api_error import APIError
        from kiota_abstractions.method import Method
        from kiota_abstractions.request_information import RequestInformation
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError

        request = RequestInformation(Method[method])
        request.url = url
        request.headers.try_add("Accept", "application/json")
        if payload is not None:
            request.headers.try_add("Content-Type", "application/json")
            request.content = json.dumps(payload).encode()
        try:
            raw = await self.client.request_adapter.send_primitive_async(
                request, "bytes", {"4XX": ODataError, "5XX": ODataError}
            )
        except APIError as error:
            raise _typed_error(error, url, method) from None
        except httpx.TransportError as error:  # refused, reset, timed out or cut off mid-body
            raise TransientError(f"Graph {method} {_path(url)} failed: {type(error).__name__}: {error}") from error
        if not raw:
            return None
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise TransientError(f"Graph returned {len(raw)} bytes for {_path(url)} that are not JSON "
                                 f"(cut off?): {error}") from None
        if not isinstance(body, dict):
            raise TransientError(f"Graph returned a JSON {type(body).__name__} for {_path(url)}, not an object")
        return body

    def close(self) -> None:
        self._io.loop.call_soon_threadsafe(self._io.loop.stop)


def _typed_error(error: Exception, url: str, method: str = "GET") -> Exception:
    status = getattr(error, "response_status_code", None) or 0
    headers = getattr(error, "response_headers", None) or {}
    main = getattr(error, "error", None)
    code = getattr(main, "code", None) or "unknown"
    message = getattr(main, "message", None) or str(error)
    what = f"Graph {method} {_path(url)} failed: {status} {code}: {message}"
    if status == 404:
        return NotFoundError(what)
    if status == 410 or code in ("syncStateNotFound", "resyncRequired"):
        return DeltaExpiredError(what)
    if status == 429 or status >= 500:
        return TransientError(what, retry_after=_retry_after(headers))
    if status == 403:
        role = graph_role_for(_path(url))
        return PermissionDeniedError(f"{what} (missing Graph permission: grant the app role {role}; see docs/permissions.md)",
                                     permission=role)
    if status == 401:
        return PermanentError(what + " (check the app's Graph permissions: see docs/permissions.md)")
    return PermanentError(what)


def _retry_after(headers) -> float | None:
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _path(url: str) -> str:
    return urlsplit(url).path


def _odata_literal(value: str) -> str:
    return quote(value.replace("'", "''"), safe="@")
