"""Deleted groups in the emulator as Graph has them: `GET /v1.0/directory/deletedItems/{id}` answers a
soft-deleted Microsoft 365 group to an app with Group.Read.All; a deleted security group is gone
for good (404), as Graph documents. GraphDirectory.deleted_group reads it through the real SDK."""
from __future__ import annotations

import pytest

from shared.app import build
from shared.core.permissions import graph_role_names
from shared.core.config import SyncConfig
from shared.core.settings import Settings

ANALYSTS = "b0000000-0000-4000-8000-000000000002"  # a security group
PHOENIX = "b0000000-0000-4000-8000-000000000007"  # a Microsoft 365 group (groupTypes Unified)


WITHOUT_GROUP_READ_ALL = [r for r in graph_role_names() if r != "Group.Read.All"]


@pytest.fixture
def without_group_read_all(emu):
    """The app's roles without Group.Read.All (which it needs only for Graph change notifications)."""
    emu.call("POST", "/_emulator/permissions", {"graph": WITHOUT_GROUP_READ_ALL})
    yield
    emu.call("POST", "/_emulator/permissions", {"graph": list(graph_role_names())})


@pytest.fixture
def group_read_all(emu):
    """The app's roles plus Group.Read.All, which reading a deleted group needs."""
    roles = graph_role_names()
    emu.call("POST", "/_emulator/permissions", {"graph": [*roles, "Group.Read.All"]})
    yield
    emu.call("POST", "/_emulator/permissions", {"graph": list(roles)})


@pytest.fixture
def graph(emu):
    token = emu.token("https://graph.microsoft.com")
    return lambda path: emu.call("GET", "/v1.0" + path, None, {"Authorization": f"Bearer {token}"})


def test_a_deleted_microsoft_365_group_is_in_deleted_items_and_a_security_group_is_not(emu, graph, group_read_all):
    status, _, body = graph(f"/directory/deletedItems/{PHOENIX}")
    assert status == 404 and body["error"]["code"] == "Request_ResourceNotFound"
    emu.directory(delete={"groups": [PHOENIX, ANALYSTS]})
    status, _, body = graph(f"/groups/{PHOENIX}")
    assert status == 404
    status, _, body = graph(f"/directory/deletedItems/{PHOENIX}")
    assert status == 200 and body["@odata.type"] == "#microsoft.graph.group" and body["id"] == PHOENIX
    assert body["displayName"] == "Project Phoenix" and body["deletedDateTime"].endswith("Z")
    assert body["@odata.context"].endswith("#directoryObjects/$entity")
    status, _, body = graph(f"/directory/deletedItems/{PHOENIX}?$select=id,deletedDateTime")
    assert status == 200 and set(body) == {"@odata.context", "@odata.type", "id", "deletedDateTime"}
    status, _, body = graph(f"/directory/deletedItems/{ANALYSTS}")
    assert status == 404
    emu.reset()
    assert graph(f"/directory/deletedItems/{PHOENIX}")[0] == 404


def test_without_group_read_all_a_deleted_group_is_refused(emu, graph, without_group_read_all):
    emu.directory(delete={"groups": [PHOENIX]})
    status, _, body = graph(f"/directory/deletedItems/{PHOENIX}")
    assert status == 403 and body["error"]["code"] == "Authorization_RequestDenied"


def test_graph_directory_tells_a_soft_deleted_group(emulator_env, emu, without_group_read_all):
    directory = build(Settings.from_env(require_config=False), config=SyncConfig()).directory
    emu.directory(delete={"groups": [PHOENIX, ANALYSTS]})
    assert directory.deleted_group(PHOENIX) is False  # refused without Group.Read.All: wait for a second 404
    emu.call("POST", "/_emulator/permissions", {"graph": [*graph_role_names(), "Group.Read.All"]})
    try:
        assert directory.deleted_group(PHOENIX) is True
        assert directory.deleted_group(ANALYSTS) is False
    finally:
        emu.call("POST", "/_emulator/permissions", {"graph": list(graph_role_names())})
