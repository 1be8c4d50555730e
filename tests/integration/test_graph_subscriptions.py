"""GraphSubscriptions against the emulator's Graph `subscriptions`, through msgraph-sdk's request
adapter: create, list, renew, reauthorize, delete, and the validation Graph applies."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shared.adapters.directory import GraphDirectory
from shared.adapters.graph_subscriptions import GraphSubscriptions
from shared.core.errors import NotFoundError, PermanentError
from shared.core.subscriptions import MAX_MINUTES, new_expiry

TARGET = ("EventGrid:?azuresubscriptionid=5b000000-0000-4000-8000-000000000001&resourcegroup=rg-events"
          "&partnertopic=kusto-sync-groups&location=westeurope")


@pytest.fixture
def port(emulator_env):
    from azure.identity import ManagedIdentityCredential

    graph = GraphDirectory(ManagedIdentityCredential(), endpoint=emulator_env["GRAPH_ENDPOINT"],
                           scope="https://graph.microsoft.com/.default")
    yield GraphSubscriptions(graph)
    graph.close()


def now():
    return datetime.now(timezone.utc)


def test_a_subscription_is_created_listed_renewed_reauthorized_and_deleted(port, emu):
    created = port.create(TARGET, "s3cret", new_expiry(now()))
    assert created.is_for(TARGET) and created.lifecycle_notification_url == TARGET
    assert timedelta(minutes=MAX_MINUTES - 11) < created.expires - now() <= timedelta(minutes=MAX_MINUTES)
    assert [s.id for s in port.list()] == [created.id]
    assert emu.subscriptions()[0]["clientState"] == "s3cret"

    emu.expire_subscription(3600)
    renewed = port.renew(created.id, new_expiry(now()))
    assert renewed.id == created.id and renewed.expires - now() > timedelta(days=28)

    emu.lifecycle("reauthorizationRequired")
    assert emu.subscriptions()[0]["needsReauthorization"] is True
    port.reauthorize(created.id)
    assert emu.subscriptions()[0]["needsReauthorization"] is False

    port.delete(created.id)
    assert port.list() == []
    with pytest.raises(NotFoundError):
        port.renew(created.id, new_expiry(now()))
    assert emu.requests()["counts"]["PATCH graph /subscriptions/{id}"] == 2


def test_graph_refuses_an_expiry_beyond_41760_minutes(port):
    with pytest.raises(PermanentError, match="41760 minutes"):
        port.create(TARGET, "s3cret", now() + timedelta(minutes=MAX_MINUTES + 5))


@pytest.mark.parametrize("url, problem", [
    ("EventGrid:?azuresubscriptionid=5b000000-0000-4000-8000-000000000001&resourcegroup=rg", "lacks partnertopic, location"),
    ("http://example.com/hook", "https"),
])
def test_graph_refuses_a_malformed_notification_url(port, url, problem):
    with pytest.raises(PermanentError, match=problem):
        port.create(url, "s3cret", new_expiry(now()))


def test_an_expired_subscription_is_gone(port, emu):
    created = port.create(TARGET, "s3cret", new_expiry(now()))
    emu.expire_subscription(0, created.id)
    assert port.list() == []
    with pytest.raises(NotFoundError):
        port.reauthorize(created.id)
