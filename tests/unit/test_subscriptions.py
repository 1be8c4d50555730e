"""The Graph subscription's lifecycle: settings, the pure decision, and the handler over a fake Graph."""
from datetime import datetime, timedelta, timezone

import pytest

from fakes import FakeSubscriptions
from shared.core.errors import ConfigError
from shared.core.settings import Settings
from shared.core.subscriptions import MAX_MINUTES, RENEW_BEFORE, Subscription, decide, event_grid_problems, health
from shared.handlers import subscriptions

NOW = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
TARGET = ("EventGrid:?azuresubscriptionid=5b000000-0000-4000-8000-000000000001&resourcegroup=rg-events"
          "&partnertopic=kusto-sync-groups&location=westeurope")
SETTINGS = Settings.from_env({"SYNC_CONFIG": "c", "GRAPH_EVENTS_TARGET": TARGET, "GRAPH_EVENTS_CLIENT_STATE": "s3cret"})


def sub(sid, expires_in, *, target=TARGET, lifecycle=True):
    return Subscription(sid, "groups", "updated,deleted", target, target if lifecycle else None, NOW + expires_in)


def test_the_target_must_be_the_event_grid_form_graph_expects():
    assert event_grid_problems(TARGET) == []
    assert event_grid_problems("https://example.com/hook") == [
        "must have the form EventGrid:?azuresubscriptionid=<guid>&resourcegroup=<name>&partnertopic=<name>&location=<region name>"]
    assert event_grid_problems("EventGrid:?azuresubscriptionid=nope&resourcegroup=rg&partnertopic=t1&location=West Europe&x=1") == [
        "unknown parameter 'x'", "'azuresubscriptionid' must be an Azure subscription GUID",
        "'partnertopic' must be a partner topic name (3-50 letters, digits and hyphens)",
        "'location' must be an Azure region name such as westeurope (not a display name)"]


def test_settings_need_a_client_state_with_the_target_and_keep_it_out_of_repr():
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"SYNC_CONFIG": "c", "GRAPH_EVENTS_TARGET": "EventGrid:?x=1"})
    assert any(p.startswith("GRAPH_EVENTS_CLIENT_STATE: missing") for p in error.value.problems)
    assert any(p.startswith("GRAPH_EVENTS_TARGET: ") for p in error.value.problems)
    assert "s3cret" not in repr(SETTINGS)
    assert Settings.from_env({"SYNC_CONFIG": "c"}).graph_events_target is None


def test_decide_creates_renews_keeps_and_replaces():
    assert decide([], TARGET, NOW).create
    assert decide([sub("a", timedelta(days=20))], TARGET, NOW).renew is False
    renew = decide([sub("a", RENEW_BEFORE - timedelta(minutes=1))], TARGET, NOW)
    assert renew.keep.id == "a" and renew.renew
    old = decide([sub("a", timedelta(days=20), lifecycle=False)], TARGET, NOW)
    assert old.create and [s.id for s in old.delete] == ["a"]
    other = sub("x", timedelta(days=20), target=TARGET.replace("kusto-sync-groups", "someone-else"))
    dup = decide([sub("a", timedelta(days=3)), sub("b", timedelta(days=20)), other], TARGET, NOW)
    assert dup.keep.id == "b" and [s.id for s in dup.delete] == ["a"]


def test_health_warns_within_a_day():
    assert health(sub("a", timedelta(days=2)), NOW)[0]
    healthy, why = health(sub("a", timedelta(hours=23)), NOW)
    assert not healthy and "within a day" in why
    assert not health(None, NOW)[0]


def test_maintain_creates_with_the_maximum_then_leaves_it_then_renews_near_expiry():
    graph = FakeSubscriptions()
    first = subscriptions.maintain(graph, SETTINGS, now=NOW)
    assert first.action == "created"
    assert timedelta(minutes=MAX_MINUTES - 11) < first.subscription.expires - NOW <= timedelta(minutes=MAX_MINUTES)
    assert subscriptions.maintain(graph, SETTINGS, now=NOW + timedelta(days=10)).action == "unchanged"
    later = subscriptions.maintain(graph, SETTINGS, now=NOW + timedelta(days=15))
    assert later.action == "renewed" and later.subscription.id == first.subscription.id
    assert [c[0] for c in graph.calls] == ["list", "create", "list", "list", "renew"]


def test_with_the_setting_unset_nothing_is_called():
    graph = FakeSubscriptions()
    unset = Settings.from_env({"SYNC_CONFIG": "c"})
    assert subscriptions.maintain(graph, unset, now=NOW).action == "disabled"
    assert subscriptions.status(None, unset, port=graph)["configured"] is False
    assert graph.calls == []


def test_reauthorization_of_a_vanished_subscription_makes_a_new_one():
    graph = FakeSubscriptions()
    graph.add("a", TARGET, NOW + timedelta(days=20))
    assert subscriptions.on_lifecycle(None, "reauthorizationRequired", "a", SETTINGS, port=graph, now=NOW).action == "reauthorized"
    del graph.items["a"]
    again = subscriptions.on_lifecycle(None, "reauthorizationRequired", "a", SETTINGS, port=graph, now=NOW)
    assert again.action == "created" and graph.reauthorized == ["a"]


def test_status_reports_id_expiry_and_health():
    graph = FakeSubscriptions()
    graph.add("a", TARGET, NOW + timedelta(hours=5))
    report = subscriptions.status(None, SETTINGS, port=graph, now=NOW)
    assert report == {"configured": True, "healthy": False, "id": "a", "expirationDateTime": "2030-01-01T17:00:00Z",
                      "detail": "Graph subscription a expires 2030-01-01T17:00:00Z, within a day, and was not renewed"}
