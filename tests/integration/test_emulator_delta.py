"""``GET /v1.0/groups/delta`` on the emulator over raw HTTPS (and once through msgraph-sdk):
first round with direct members, paging of a large group, deltaLink rounds after directory
changes, refused tokens, $filter limits and faults."""
from __future__ import annotations

import asyncio
import json
import urllib.parse
from pathlib import Path

import pytest

from emulator.testing import EmulatorProcess, write_tenant

ROOT = Path(__file__).resolve().parents[2]
DATA_PLATFORM = "b0000000-0000-4000-8000-000000000001"
ANALYSTS = "b0000000-0000-4000-8000-000000000002"
ANALYSTS_EU = "b0000000-0000-4000-8000-000000000003"
ETL_APPS = "b0000000-0000-4000-8000-000000000004"
SALES_DL = "b0000000-0000-4000-8000-000000000005"
ETL_LOADER = "d0000000-0000-4000-8000-000000000002"
USER, GROUP, SP = "#microsoft.graph.user", "#microsoft.graph.group", "#microsoft.graph.servicePrincipal"
REMOVED = {"@removed": {"reason": "deleted"}}


def user(n: int) -> str:
    return f"a0000000-0000-4000-8000-{n:012d}"


@pytest.fixture
def graph(emu):
    """GET a Graph path or an absolute link from a previous response: (status, headers, body)."""
    token = emu.token("https://graph.microsoft.com")

    def call(path_or_link):
        path = path_or_link.replace(emu.url, "") if path_or_link.startswith("https://") else "/v1.0" + path_or_link
        return emu.call("GET", path, None, {"Authorization": f"Bearer {token}"})

    return call


def rounds(graph, first):
    """Follow nextLinks from ``first``: (pages, deltaLink)."""
    pages, link = [], first
    while True:
        status, _, body = graph(link)
        assert status == 200, body
        pages.append(body)
        assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
        if "@odata.nextLink" not in body:
            return pages, body["@odata.deltaLink"]
        link = body["@odata.nextLink"]


def by_id(pages) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for page in pages:
        for item in page["value"]:
            out.setdefault(item["id"], {**item, "members@delta": []})
            out[item["id"]]["members@delta"] += item.get("members@delta", [])
    return out


def test_first_round_returns_direct_members_and_a_delta_link(emu, graph):
    emu.clear_requests()
    pages, delta_link = rounds(graph, "/groups/delta?$select=displayName,members")
    assert len(pages) == 1 and delta_link.startswith(emu.url + "/v1.0/groups/delta?$deltatoken=")
    assert pages[0]["@odata.context"].endswith("$metadata#groups(displayName,members)")
    groups = {g["id"]: g for g in pages[0]["value"]}
    assert len(groups) == 10
    assert groups[DATA_PLATFORM] == {"displayName": "Data Platform", "id": DATA_PLATFORM, "members@delta": [
        {"@odata.type": GROUP, "id": ANALYSTS}, {"@odata.type": USER, "id": user(11)}]}  # direct only, no nesting
    assert groups[ETL_APPS]["members@delta"] == [{"@odata.type": SP, "id": ETL_LOADER}]
    assert emu.requests()["counts"] == {"GET graph /groups/delta": 1}


def test_without_select_all_properties_and_members_are_returned(emu, graph):
    emu.directory(upsert={"groups": [{"id": "b0000000-0000-4000-8000-0000000000ee", "displayName": "Empty",
                                      "mailEnabled": False, "securityEnabled": True, "groupTypes": []}]})
    status, _, body = graph("/groups/delta")
    groups = {g["id"]: g for g in body["value"]}
    assert status == 200 and {"displayName", "securityEnabled", "groupTypes", "mailNickname"} <= set(groups[ANALYSTS])
    assert len(groups[ANALYSTS]["members@delta"]) == 3
    assert "members@delta" not in groups["b0000000-0000-4000-8000-0000000000ee"]  # no members: no annotation
    _, _, only_props = graph("/groups/delta?$select=displayName")
    assert all("members@delta" not in g for g in only_props["value"])


def test_filter_by_ids_and_more_than_50_ids_is_refused(graph):
    flt = urllib.parse.quote(f"id eq '{ANALYSTS}' or id eq '{SALES_DL}'")
    status, _, body = graph(f"/groups/delta?$filter={flt}&$select=members")
    assert status == 200 and [g["id"] for g in body["value"]] == [ANALYSTS, SALES_DL]
    too_many = " or ".join(f"id eq 'b0000000-0000-4000-8000-{n:012d}'" for n in range(51))
    status, _, body = graph("/groups/delta?$filter=" + urllib.parse.quote(too_many))
    assert status == 400 and body["error"]["code"] == "Request_UnsupportedQuery" and "Max allowed: 50" in body["error"]["message"]
    status, _, body = graph("/groups/delta?$filter=" + urllib.parse.quote("displayName eq 'Analysts'"))
    assert status == 400 and body["error"]["code"] == "Request_UnsupportedQuery"


def test_added_and_removed_members_are_exactly_the_next_delta(emu, graph):
    _, delta_link = rounds(graph, "/groups/delta?$select=displayName,members")
    emu.directory(addMembers={ANALYSTS: [user(2)]}, removeMembers={ANALYSTS: [user(1)]})
    pages, next_delta = rounds(graph, delta_link)
    assert [p["value"] for p in pages] == [[{"displayName": "Analysts", "id": ANALYSTS, "members@delta": [
        {"@odata.type": USER, "id": user(2)}, {"@odata.type": USER, "id": user(1), **REMOVED}]}]]
    assert next_delta != delta_link
    status, _, body = graph(next_delta)  # nothing changed since
    assert status == 200 and body["value"] == [] and body["@odata.deltaLink"] and "@odata.nextLink" not in body
    status, _, again = graph(delta_link)  # an older deltaLink still answers from its own version
    assert again["value"] == pages[0]["value"]


def test_changes_are_collapsed_per_group_and_filtered(emu, graph):
    flt = urllib.parse.quote(f"id eq '{ANALYSTS}' or id eq '{ANALYSTS_EU}'")
    _, delta_link = rounds(graph, f"/groups/delta?$filter={flt}&$select=members")
    emu.directory(addMembers={ANALYSTS: [user(4)]})
    emu.directory(removeMembers={ANALYSTS: [user(4)]})  # added then removed: reported removed
    emu.directory(addMembers={ANALYSTS_EU: [user(5)], DATA_PLATFORM: [user(5)]})  # DATA_PLATFORM is filtered out
    _, _, body = graph(delta_link)
    assert body["value"] == [
        {"id": ANALYSTS, "members@delta": [{"@odata.type": USER, "id": user(4), **REMOVED}]},
        {"id": ANALYSTS_EU, "members@delta": [{"@odata.type": USER, "id": user(5)}]},
    ]


def test_deleted_groups_and_members_appear_as_removed(emu, graph):
    _, delta_link = rounds(graph, "/groups/delta?$select=displayName,members")
    emu.directory(delete={"groups": [SALES_DL, ANALYSTS_EU], "users": [user(7)]})
    _, _, body = graph(delta_link)
    items = {g["id"]: g for g in body["value"]}
    assert items[SALES_DL] == {"id": SALES_DL, "@removed": {"reason": "deleted"}}  # distribution: gone for good
    assert items[ANALYSTS_EU] == {"id": ANALYSTS_EU, "@removed": {"reason": "changed"}}  # security: soft-deleted
    assert items[ANALYSTS]["members@delta"] == [{"@odata.type": GROUP, "id": ANALYSTS_EU, **REMOVED},
                                                {"@odata.type": USER, "id": user(7), **REMOVED}]
    assert set(items) == {SALES_DL, ANALYSTS_EU, ANALYSTS}


def test_new_group_comes_whole_and_untracked_property_changes_are_left_out(emu, graph):
    _, with_name = rounds(graph, "/groups/delta?$select=displayName,members")
    _, members_only = rounds(graph, "/groups/delta?$select=members")
    new = "b0000000-0000-4000-8000-0000000000aa"
    emu.directory(upsert={"groups": [
        {"id": new, "displayName": "New", "mailEnabled": False, "securityEnabled": True, "groupTypes": [], "members": [user(1)]},
        {"id": ETL_APPS, "displayName": "ETL Applications", "mailEnabled": False, "securityEnabled": True,
         "groupTypes": [], "members": [ETL_LOADER]},
    ]})
    _, _, body = graph(with_name)
    assert body["value"] == [{"displayName": "ETL Applications", "id": ETL_APPS},
                             {"displayName": "New", "id": new, "members@delta": [{"@odata.type": USER, "id": user(1)}]}]
    _, _, body = graph(members_only)
    assert body["value"] == [{"id": new, "members@delta": [{"@odata.type": USER, "id": user(1)}]}]


def test_latest_token_starts_from_now(emu, graph):
    status, _, body = graph("/groups/delta?$deltatoken=latest&$select=members")
    assert status == 200 and body["value"] == [] and "$deltatoken=" in body["@odata.deltaLink"]
    emu.directory(addMembers={ETL_APPS: [user(3)]})
    _, _, body = graph(body["@odata.deltaLink"])
    assert body["value"] == [{"id": ETL_APPS, "members@delta": [{"@odata.type": USER, "id": user(3)}]}]


def test_refused_tokens_answer_sync_state_not_found(emu, graph):
    expected = ("The sync state generation is not found. The delta token is expired and data must be synchronized again.")
    status, _, body = graph("/groups/delta?$deltatoken=not-a-token")
    assert status == 400 and body["error"]["code"] == "syncStateNotFound" and body["error"]["message"] == expected
    _, delta_link = rounds(graph, "/groups/delta?$select=members")
    emu.reset()
    status, _, body = graph(delta_link)
    assert status == 400 and body["error"]["code"] == "syncStateNotFound"
    _, delta_link = rounds(graph, "/groups/delta?$select=members")
    assert emu.call("POST", "/_emulator/delta/expire")[0] == 200
    status, _, body = graph(delta_link)
    assert status == 400 and body["error"]["code"] == "syncStateNotFound"
    assert emu.call("POST", "/_emulator/delta/expire", {"mode": "bogus"})[0] == 400


def test_resync_answers_410_with_a_location_that_restarts_the_round(emu, graph):
    flt = urllib.parse.quote(f"id eq '{ANALYSTS}'")
    status, _, first = graph(f"/groups/delta?$filter={flt}&$select=displayName,members")
    emu.call("POST", "/_emulator/delta/expire", {"mode": "resync"})
    status, headers, body = graph(first["@odata.deltaLink"])
    assert status == 410 and body["error"]["code"] == "resyncRequired"
    location = headers["Location"]
    assert location.startswith(emu.url + "/v1.0/groups/delta?") and location.endswith("$deltatoken=")
    status, _, again = graph(location)
    assert status == 200 and again["value"] == first["value"]


def test_faults_apply_to_the_delta_route(emu, graph):
    emu.faults(method="GET", path="groups/delta", status=429, count=1, retryAfter=2)
    status, headers, body = graph("/groups/delta?$select=members")
    assert status == 429 and headers["Retry-After"] == "2" and body["error"]["code"] == "TooManyRequests"
    assert graph("/groups/delta?$select=members")[0] == 200
    log = emu.requests()
    assert log["counts"]["GET graph /groups/delta"] == 2
    assert [r["status"] for r in log["requests"] if r["api"] == "graph"] == [429, 200]


def big_tenant() -> tuple[dict, str, list[str]]:
    tenant = json.loads((ROOT / "emulator/tenants/demo.json").read_text())
    big = [{"id": f"f0000000-0000-4000-8000-{n:012d}", "userPrincipalName": f"u{n}@contoso.com"} for n in range(2500)]
    tenant["users"] += big
    gid = "b0000000-0000-4000-8000-000000009999"
    tenant["groups"].insert(1, {"id": gid, "displayName": "Big", "mailEnabled": False, "securityEnabled": True,
                                "groupTypes": [], "members": [u["id"] for u in big]})
    return tenant, gid, [u["id"] for u in big]


def test_a_large_group_is_paged_over_occurrences_without_loss(tmp_path):
    tenant, gid, members = big_tenant()
    with EmulatorProcess(write_tenant(tmp_path, tenant)) as emu:
        auth = {"Authorization": f"Bearer {emu.token('https://graph.microsoft.com')}"}

        def get(link):
            return emu.call("GET", link.replace(emu.url, ""), headers=auth)

        status, _, body = get("/v1.0/groups/delta?$select=displayName,members")
        pages = [body]
        # a change mid-round does not shift the round's pages; it comes in the next round
        emu.directory(removeMembers={gid: [members[0], members[-1]]})
        while "@odata.nextLink" in body:
            link = body["@odata.nextLink"]
            assert link.startswith(emu.url + "/v1.0/groups/delta?$skiptoken=") and "$select" not in link
            status, _, body = get(link)
            assert status == 200
            pages.append(body)
        assert all("@odata.deltaLink" not in p for p in pages[:-1]) and "@odata.deltaLink" in pages[-1]
        occurrences = [g for p in pages for g in p["value"] if g["id"] == gid]
        # Data Platform's 2 members come first on page 1, so Big spans 498 + 4 x 500 + 2
        assert [len(g["members@delta"]) for g in occurrences] == [498, 500, 500, 500, 500, 2]
        assert all(g["displayName"] == "Big" for g in occurrences)
        assert all(sum(len(g.get("members@delta", [])) for g in p["value"]) <= 500 for p in pages)
        seen = [m["id"] for g in occurrences for m in g["members@delta"]]
        assert seen == members
        assert len(by_id(pages)) == 11
        _, _, body = get(pages[-1]["@odata.deltaLink"])
        assert body["value"] == [{"displayName": "Big", "id": gid, "members@delta": [
            {"@odata.type": USER, "id": members[0], **REMOVED}, {"@odata.type": USER, "id": members[-1], **REMOVED}]}]


def test_msgraph_sdk_reads_delta_pages(emulator_env, emu):
    """The SDK's own delta request builder (``/groups/delta()``) and its DeltaGetResponse."""
    from azure.identity import ManagedIdentityCredential
    from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
    from msgraph import GraphServiceClient
    from msgraph.generated.groups.delta.delta_request_builder import DeltaRequestBuilder
    from msgraph.graph_request_adapter import GraphRequestAdapter

    base = emulator_env["GRAPH_ENDPOINT"].rstrip("/") + "/v1.0"
    auth = AzureIdentityAuthenticationProvider(ManagedIdentityCredential(), scopes=["https://graph.microsoft.com/.default"],
                                               allowed_hosts=[urllib.parse.urlsplit(base).hostname])
    adapter = GraphRequestAdapter(auth)
    adapter.base_url = base
    client = GraphServiceClient(request_adapter=adapter)

    async def run():
        config = DeltaRequestBuilder.DeltaRequestBuilderGetRequestConfiguration(
            query_parameters=DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
                select=["displayName", "members"], filter=f"id eq '{DATA_PLATFORM}'"))
        first = await client.groups.delta.get(request_configuration=config)
        emu.directory(removeMembers={DATA_PLATFORM: [user(11)]})
        second = await client.groups.delta.with_url(first.odata_delta_link).get()
        return first, second

    first, second = asyncio.run(run())
    assert [g.display_name for g in first.value] == ["Data Platform"] and first.odata_next_link is None
    # the SDK keeps members@delta untyped in additional_data (ids parsed as UUIDs)
    assert [str(m["id"]) for m in first.value[0].additional_data["members@delta"]] == [ANALYSTS, user(11)]
    assert [g.id for g in second.value] == [DATA_PLATFORM]
    removed = second.value[0].additional_data["members@delta"]
    assert [(str(m["id"]), m["@removed"]["reason"]) for m in removed] == [(user(11), "deleted")]
    paths = [r["path"] for r in emu.requests()["requests"] if r["api"] == "graph"]
    assert paths == ["/v1.0/groups/delta()", "/v1.0/groups/delta"]
