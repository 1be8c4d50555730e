"""Graph notifications over in-memory fakes: bounded work per message, clientState, lifecycle events."""
import json
from dataclasses import replace

import pytest

from fakes import group, user
from shared.core.config import parse_config
from shared.handlers import notifications
from shared.handlers.onboarding import MAX_BYTES
from test_onboarding import ANALYSTS, CLUSTER, CONFIG, HOME, cloud_event, eng, rejected, send  # noqa: F401

OPS = "0000000a-0000-0000-0000-000000000000"
TWO_MAPPINGS = CONFIG | {"mappings": CONFIG["mappings"] + [
    {"name": "ops", "group": "Ops", "targets": [{"cluster": CLUSTER, "database": "Telemetry", "role": "Viewer"}]}]}
TARGET = ("EventGrid:?azuresubscriptionid=5b000000-0000-4000-8000-000000000001&resourcegroup=rg-events"
          "&partnertopic=kusto-sync-groups&location=westeurope")


@pytest.fixture(autouse=True)
def fresh():
    notifications._last_run.clear()
    notifications._groups.clear()


def tiny(n, group_id=ANALYSTS):
    """A group event (Event Grid schema) cut to what the handler reads, so that 49 fit in 8 KiB."""
    return {"eventType": "Microsoft.Graph.GroupUpdated", "data": {"resourceData": {"id": group_id}, "tenantId": HOME}}


def member_reads(eng):
    return [c for c in eng.directory.calls if c[0] == "transitive_members"]


def runs(eng):
    return [(r["trigger"], r["scope"]) for r in eng.audit.runs.values()]


def test_49_events_for_one_group_in_one_message_read_it_once(eng):
    body = json.dumps([tiny(n) for n in range(49)], separators=(",", ":"))
    assert len(body) <= MAX_BYTES
    outcome = send(eng, body)
    assert outcome.status == "reconciled" and outcome.detail == "1 mapping run(s)"
    assert len(member_reads(eng)) == 1 and runs(eng) == [("graph-notification", "analysts")]


def test_more_events_than_the_cap_become_one_run_over_every_affected_mapping(eng):
    eng = replace(eng, config=parse_config(TWO_MAPPINGS))
    eng.directory.add_group(group(OPS, "Ops"), [user("00000005-0000-0000-0000-000000000000", "ops@contoso.com")])
    events = [tiny(n, ANALYSTS if n % 2 else OPS) for n in range(notifications.MAX_EVENTS + 1)]
    assert send(eng, events).detail == "1 mapping run(s)"
    assert runs(eng) == [("graph-notification", "analysts, ops")]
    assert len(member_reads(eng)) == 2  # each group once
    notifications._last_run.clear()
    assert send(eng, events[:notifications.MAX_EVENTS]).detail == "2 mapping run(s)"  # at the cap: one run each


def test_with_a_client_state_set_a_mismatched_or_missing_one_is_rejected_with_the_reason(eng, monkeypatch):
    monkeypatch.setenv("GRAPH_EVENTS_TARGET", TARGET)
    monkeypatch.setenv("GRAPH_EVENTS_CLIENT_STATE", "the-secret")
    assert send(eng, cloud_event()).status == "rejected"  # its clientState is "x"
    assert "does not match GRAPH_EVENTS_CLIENT_STATE" in rejected(eng)[0]["reason"]
    assert "the-secret" not in json.dumps(rejected(eng))
    assert send(eng, tiny(1)).status == "rejected"
    assert "carries no clientState" in rejected(eng)[1]["reason"]
    good = cloud_event()
    good["data"]["clientState"] = "the-secret"
    assert send(eng, good).detail == "1 mapping run(s)" and len(rejected(eng)) == 2


def test_without_the_setting_client_state_is_not_checked(eng):
    assert send(eng, cloud_event()).detail == "1 mapping run(s)"


def test_a_missed_event_reads_every_mapping_in_full(eng):
    missed = {"id": "l1", "type": "Microsoft.Graph.SubscriptionMissed", "specversion": "1.0",
              "data": {"lifecycleEvent": "missed", "subscriptionId": "s1", "tenantId": HOME, "clientState": "x"}}
    assert send(eng, [missed, missed]).detail == "1 mapping run(s)"  # the same lifecycle event once
    assert runs(eng) == [("graph-lifecycle:full", None)]
    assert eng.delta_state.load() is not None  # a new quick-cycle baseline


def test_lifecycle_events_about_the_subscription_are_ignored_while_the_feature_is_off(eng):
    reauth = {"id": "l2", "type": "Microsoft.Graph.SubscriptionReauthorizationRequired", "specversion": "1.0",
              "data": {"lifecycleEvent": "reauthorizationRequired", "subscriptionId": "s1", "tenantId": HOME}}
    assert send(eng, reauth).detail == "0 mapping run(s)" and eng.audit.runs == {}


def test_an_unknown_lifecycle_event_is_rejected(eng):
    odd = {"id": "l3", "specversion": "1.0", "type": "Microsoft.Graph.SubscriptionSomething",
           "data": {"lifecycleEvent": "somethingNew", "tenantId": HOME}}
    assert send(eng, odd).status == "rejected" and "somethingNew" in rejected(eng)[0]["reason"]
