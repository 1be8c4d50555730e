"""GraphDirectory against the emulator, through the real msgraph-sdk request adapter.

One emulator per module over a tenant written here: a 2,500-member group (3 pages of 999), a
group with one member of each kind, same-named groups, a guest and a service principal. Faults
injected on the `$skiptoken` request hit the second page while the first is being consumed.
Kiota waits `Retry-After` whole seconds (fractions are ignored, and 0 falls back to a ~3 s
backoff), so the throttling tests use retryAfter=1 and stay few.
"""
from __future__ import annotations

import socket
import threading
import uuid

import pytest

from emulator.testing import EmulatorProcess, write_tenant
from shared.adapters.directory import MEMBER_FIELDS, GraphDirectory
from shared.core.errors import NotFoundError, PermanentError, TransientError

SCOPE = "https://graph.microsoft.com/.default"
TENANT_ID = "11111111-0000-4000-8000-000000000001"
FABRIKAM_ID = "22222222-0000-4000-8000-000000000002"
BIG = 2_500


def oid(prefix: int, n: int) -> str:
    return str(uuid.UUID(int=(prefix << 96) | n, version=4))


BIG_GROUP, KINDS_GROUP, NESTED_GROUP, SAME_A, SAME_B = (oid(2, n) for n in range(1, 6))
GUEST, DISABLED, NESTED_USER = oid(1, 90_001), oid(1, 90_002), oid(1, 90_003)
SP, SP_APP = oid(3, 1), oid(4, 1)
GUEST_UPN = "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"


def tenant() -> dict:
    users = [{"id": oid(1, n), "userPrincipalName": f"user{n}@contoso.com", "displayName": f"User {n}",
              "mail": f"user{n}@contoso.com"} for n in range(BIG)]
    users += [
        {"id": GUEST, "userPrincipalName": GUEST_UPN, "displayName": "Alice (Fabrikam)",
         "mail": "alice@fabrikam.com", "userType": "Guest"},
        {"id": DISABLED, "userPrincipalName": "frank@contoso.com", "displayName": "Frank", "accountEnabled": False},
        {"id": NESTED_USER, "userPrincipalName": "nina@contoso.com", "displayName": "Nina", "mail": "nina@contoso.com"},
    ]

    def group(gid, name, members, **fields):
        return {"id": gid, "displayName": name, "mail": None, "mailEnabled": False, "securityEnabled": True,
                "groupTypes": [], "members": members, **fields}

    return {
        "tenant": {"id": TENANT_ID, "displayName": "Contoso", "domains": ["contoso.com", "contoso.onmicrosoft.com"]},
        "foreignTenants": [{"id": FABRIKAM_ID, "displayName": "Fabrikam", "domains": ["fabrikam.com"]}],
        "users": users,
        "servicePrincipals": [{"id": SP, "appId": SP_APP, "displayName": "ingest-pipeline"}],
        "groups": [
            group(BIG_GROUP, "all-staff", [oid(1, n) for n in range(BIG)]),
            group(NESTED_GROUP, "Project Falcon", [NESTED_USER], mail="falcon@contoso.com", mailEnabled=True,
                  securityEnabled=False, groupTypes=["Unified"]),
            group(KINDS_GROUP, "data-readers", [GUEST, DISABLED, SP, NESTED_GROUP], mail="readers@contoso.com",
                  mailEnabled=True),
            group(SAME_A, "Analysts", []),
            group(SAME_B, "Analysts", []),
        ],
    }


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with EmulatorProcess(write_tenant(tmp_path_factory.mktemp("directory"), tenant())) as emu:
        yield emu


@pytest.fixture(scope="module")
def make_directory(emulator):
    """Build GraphDirectory objects the way the app does: managed identity, emulator endpoint."""
    from azure.identity import ManagedIdentityCredential

    built = []
    with pytest.MonkeyPatch.context() as patch:
        for key, value in emulator.env.items():
            patch.setenv(key, value)
        credential = ManagedIdentityCredential()

        def make(**options):
            options.setdefault("page_retry_delay", 0.05)
            built.append(GraphDirectory(credential, endpoint=emulator.env["GRAPH_ENDPOINT"], scope=SCOPE, **options))
            return built[-1]

        yield make
    for directory in built:
        directory.close()


@pytest.fixture(scope="module")
def directory(make_directory):
    return make_directory()


@pytest.fixture
def emu(emulator):
    emulator.clear_faults()
    emulator.clear_requests()
    yield emulator
    emulator.clear_faults()


def member_pages(emu) -> list[dict]:
    return [r for r in emu.requests()["requests"] if r["api"] == "graph" and "transitiveMembers" in r["path"]]


def skiptoken(request: dict) -> str | None:
    return next((p.split("=", 1)[1] for p in request["query"].split("&") if p.startswith("$skiptoken=")), None)


def test_pages_are_followed_to_the_end_with_top_999_and_select(emu, directory):
    members = directory.transitive_members(BIG_GROUP)

    assert [m.id for m in members] == [oid(1, n) for n in range(BIG)]
    pages = member_pages(emu)
    assert len(pages) == 3 and [r["status"] for r in pages] == [200, 200, 200]
    assert skiptoken(pages[0]) is None and len({skiptoken(r) for r in pages[1:]}) == 2
    query = pages[0]["query"]
    assert "$top=999" in query
    assert f"$select={','.join(MEMBER_FIELDS)}" in query


def test_iter_pages_streams_page_by_page(emu, directory):
    sizes = []
    for page in directory.iter_pages(f"/groups/{BIG_GROUP}/members?$select=id&$top=999"):
        sizes.append(len(page))
        # the next page is prefetched while this one is used, never more than that
        assert len([r for r in emu.requests()["requests"] if r["api"] == "graph"]) <= len(sizes) + 1
    assert sizes == [999, 999, 502]


def test_throttled_page_is_retried_in_place(emu, directory):
    emu.faults(method="GET", path=r"transitiveMembers.*\$skiptoken=", status=429, count=2, retryAfter=1)

    members = directory.transitive_members(BIG_GROUP)

    assert len(members) == BIG and len({m.id for m in members}) == BIG
    pages = member_pages(emu)
    assert [skiptoken(r) is None for r in pages].count(True) == 1  # never restarted from the top
    second = skiptoken(pages[1])
    assert [(skiptoken(r) == second, r["status"]) for r in pages[1:4]] == [(True, 429), (True, 429), (True, 200)]
    assert len(pages) == 5


def test_throttling_beyond_kiota_retries_resumes_at_the_same_page(emu, directory):
    # Kiota sends the request 4 times (3 retries) and gives up; the adapter re-reads that page.
    emu.faults(method="GET", path=r"transitiveMembers.*\$skiptoken=", status=429, count=4, retryAfter=1)

    members = directory.transitive_members(BIG_GROUP)

    assert len(members) == BIG and len({m.id for m in members}) == BIG
    pages = member_pages(emu)
    assert skiptoken(pages[0]) is None and all(skiptoken(r) for r in pages[1:])
    second = skiptoken(pages[1])
    assert [r["status"] for r in pages if skiptoken(r) == second] == [429] * 4 + [200]
    assert len(pages) == 1 + 5 + 1


def test_throttled_for_good_raises_after_kiotas_three_retries(emu, make_directory):
    directory = make_directory(page_retries=0)
    emu.faults(method="GET", path=r"\$skiptoken=", status=429, count=-1, retryAfter=1)

    with pytest.raises(TransientError) as raised:
        directory.transitive_members(BIG_GROUP)

    assert raised.value.retry_after == 1
    assert [r["status"] for r in member_pages(emu)] == [200, 429, 429, 429, 429]


@pytest.mark.parametrize("fault, message", [
    ({"status": 500}, "500 InternalServerError"),
    ({"status": 200, "body": {"@odata.context": "cut short"}}, "no 'value' list"),
    ({"status": 200, "body": "{\"value\": [{\"id\": "}, "not an object"),  # a JSON string
], ids=["server-error", "no-value", "not-an-object"])
def test_failed_page_fails_the_whole_read(emu, directory, fault, message):
    emu.faults(method="GET", path=r"\$skiptoken=", count=-1, **fault)

    with pytest.raises(TransientError, match=message):
        directory.transitive_members(BIG_GROUP)

    statuses = [r["status"] for r in member_pages(emu)]
    assert statuses[0] == 200 and len(statuses) == 1 + 1 + directory.page_retries


def test_page_cut_off_mid_body_fails_the_whole_read(emu, directory):
    # The emulator cannot break a response off, so page 2 comes from a socket that does:
    # it promises 5,000 bytes and closes after a few.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 5000\r\n\r\n{\"value\": [{\"id\": ")

    threading.Thread(target=serve, daemon=True).start()
    next_link = f"http://127.0.0.1:{port}/v1.0/groups/{BIG_GROUP}/transitiveMembers?$skiptoken=X"
    emu.faults(method="GET", path="transitiveMembers", status=200, count=1,
               body={"value": [{"@odata.type": "#microsoft.graph.user", "id": GUEST}], "@odata.nextLink": next_link})
    try:
        with pytest.raises(TransientError, match="RemoteProtocolError"):
            directory.transitive_members(BIG_GROUP)
    finally:
        server.close()


def test_member_without_odata_type_is_refused(emu, directory):
    emu.faults(method="GET", path="transitiveMembers", status=200, count=1, body={"value": [{"id": GUEST}]})

    with pytest.raises(PermanentError, match="@odata.type"):
        directory.transitive_members(KINDS_GROUP)


def test_each_member_kind_is_mapped(emu, directory):
    members = {m.id: m for m in directory.transitive_members(KINDS_GROUP)}

    assert set(members) == {GUEST, DISABLED, SP, NESTED_GROUP, NESTED_USER}
    guest = members[GUEST]
    assert (guest.kind, guest.user_principal_name, guest.mail, guest.user_type, guest.account_enabled) == (
        "user", GUEST_UPN, "alice@fabrikam.com", "Guest", True)
    disabled = members[DISABLED]
    assert (disabled.kind, disabled.account_enabled, disabled.user_type, disabled.mail) == ("user", False, "Member", None)
    sp = members[SP]
    assert (sp.kind, sp.app_id, sp.display_name, sp.user_principal_name) == ("servicePrincipal", SP_APP, "ingest-pipeline", None)
    nested = members[NESTED_GROUP]
    assert (nested.kind, nested.security_enabled, nested.mail_enabled, nested.group_types, nested.mail) == (
        "group", False, True, ("Unified",), "falcon@contoso.com")
    assert members[NESTED_USER].kind == "user"

    direct = {m.id for m in directory.iter_members(KINDS_GROUP, transitive=False)}
    assert direct == {GUEST, DISABLED, SP, NESTED_GROUP}


def test_find_group_by_id_name_and_mail(emu, directory):
    by_id = directory.find_group(KINDS_GROUP)
    assert (by_id.kind, by_id.display_name, by_id.security_enabled, by_id.mail_enabled, by_id.group_types) == (
        "group", "data-readers", True, True, ())
    assert directory.find_group("data-readers") == by_id
    assert directory.find_group("readers@contoso.com") == by_id


def test_find_group_refuses_an_ambiguous_name_and_reports_missing_ones(emu, directory):
    with pytest.raises(PermanentError) as raised:
        directory.find_group("Analysts")
    assert not isinstance(raised.value, NotFoundError)
    assert SAME_A in str(raised.value) and SAME_B in str(raised.value)

    with pytest.raises(NotFoundError):
        directory.find_group("no-such-group")
    with pytest.raises(NotFoundError):
        directory.find_group(oid(2, 999))


def test_find_user_and_service_principal(emu, directory):
    guest = directory.find_user(GUEST_UPN)
    assert (guest.id, guest.kind, guest.user_type, guest.mail) == (GUEST, "user", "Guest", "alice@fabrikam.com")
    assert directory.find_user("nina@contoso.com").id == NESTED_USER
    with pytest.raises(NotFoundError):
        directory.find_user("nobody@contoso.com")

    sp = directory.find_service_principal(SP_APP)
    assert (sp.kind, sp.id, sp.app_id) == ("servicePrincipal", SP, SP_APP)
    assert directory.find_service_principal(SP).app_id == SP_APP


def test_find_tenant_by_domain(emu, directory):
    info = directory.find_tenant_by_domain("fabrikam.com")
    assert (info.tenant_id, info.display_name, info.default_domain) == (FABRIKAM_ID, "Fabrikam", "fabrikam.com")
    assert directory.find_tenant_by_domain("unknown-domain.example") is None


def test_members_the_roles_cannot_read_come_back_limited_and_refusals_name_the_role(directory, emu):
    from shared.core.errors import PermissionDeniedError
    from shared.core.permissions import graph_role_names

    emu.permissions(graph=[r for r in graph_role_names() if r not in ("User.Read.All", "CrossTenantInformation.ReadBasic.All")])
    try:
        members = {m.id: m for m in directory.transitive_members(KINDS_GROUP)}
        assert members[GUEST].limited and members[GUEST].kind == "user" and members[GUEST].user_principal_name is None
        assert not members[SP].limited and members[SP].app_id == SP_APP
        assert not members[NESTED_GROUP].limited
        with pytest.raises(PermissionDeniedError) as refused:
            directory.find_tenant_by_domain("fabrikam.com")
        assert refused.value.permission == "CrossTenantInformation.ReadBasic.All"
        assert "CrossTenantInformation.ReadBasic.All" in str(refused.value)
    finally:
        emu.permissions(graph=list(graph_role_names()))
    assert not directory.find_group(KINDS_GROUP).limited and directory.find_group(KINDS_GROUP).visibility is None
