"""Telemetry of a sync, read back through OpenTelemetry's in-memory exporter and metric reader."""
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fakes import FakeAssignments, FakeDirectory, group, user
from shared.adapters.telemetry import NoTelemetry, OpenTelemetry, for_settings
from shared.core.config import parse_config
from shared.core.errors import PermanentError
from shared.core.plan import Assignment
from shared.core.principals import Principal, PrincipalKind
from shared.core.scopes import Scope
from shared.core.tenants import TenantResolver
from shared.engine.reconcile import Engine

HOME = "11111111-1111-1111-1111-111111111111"
PROD = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
TEST = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-test"
SALES, SANDBOX, LOGS = Scope(PROD, "Sales"), Scope(TEST, "Sandbox"), Scope(PROD, "Logs")


@pytest.fixture
def otel():
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = OpenTelemetry(tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader]))
    return telemetry, spans, reader


class FailingAssignments(FakeAssignments):
    """Refuses one principal's adds in one scope, whichever thread writes first."""

    failing = (SANDBOX, "00000002-0000-0000-0000-000000000000")

    def create_assignment(self, scope, name, role, principal):
        if self.failing == (scope, principal.object_id):
            raise PermanentError("refused")
        super().create_assignment(scope, name, role, principal)


def sync_world(telemetry, *, ghosts=True):
    """Two users into Sales and Sandbox; Logs maps a group that does not exist (a skip); one
    unowned assignment (drift); one write that fails."""
    directory = FakeDirectory()
    directory.add_group(group("00000008-0000-0000-0000-000000000000", "Analysts"), [
        user("00000001-0000-0000-0000-000000000000", "ann@contoso.com"),
        user("00000002-0000-0000-0000-000000000000", "bob@contoso.com"),
    ])
    cfg = parse_config({"mappings": [
        {"name": "analysts", "group": "Analysts", "targets": [
            {"cluster": PROD, "database": "Sales", "role": "Viewer"},
            {"cluster": TEST, "database": "Sandbox", "role": "Viewer"}]},
        {"name": "ghosts", "group": "Ghosts", "targets": [{"cluster": PROD, "database": "Logs", "role": "Viewer"}]},
    ][:2 if ghosts else 1]})
    arm = FailingAssignments()
    carl = Principal(PrincipalKind.USER, "carl@contoso.com", HOME)
    arm.state.setdefault(SALES, {})["manual"] = Assignment(SALES, "Viewer", carl, "manual")
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(cfg, directory, arm, tenants, HOME, sleep=lambda s: None, retry_budget_seconds=0,
                  telemetry=telemetry)


def points(reader):
    out = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = metric.data.data_points
    return out


def test_a_sync_produces_run_scope_and_write_spans_and_the_metric_points(otel):
    telemetry, spans, reader = otel
    report = sync_world(telemetry).run(trigger="timer:full")
    assert report.status == "partially failed"

    finished = spans.get_finished_spans()
    [run] = [s for s in finished if s.name == "kusto_sync.run"]
    [started] = [s for s in finished if s.name == "kusto_sync.run.started"]
    assert started.attributes["kusto_sync.run_id"] == report.run_id and started.end_time <= run.start_time
    assert run.attributes["kusto_sync.trigger"] == "timer:full"
    assert run.attributes["kusto_sync.status"] == "partially failed"
    assert run.attributes["kusto_sync.run_id"] == report.run_id
    scopes = {s.attributes["kusto_sync.scope"]: s for s in finished if s.name == "kusto_sync.scope"}
    assert set(scopes) == {str(SALES), str(SANDBOX), str(LOGS)}
    assert {k: s.attributes["kusto_sync.result"] for k, s in scopes.items()} == {
        str(SALES): "succeeded", str(SANDBOX): "failed", str(LOGS): "skipped"}
    assert scopes[str(SALES)].attributes["kusto_sync.drift"] == 1
    assert all(s.parent.span_id == run.context.span_id for s in scopes.values())
    writes = [s for s in finished if s.name == "kusto_sync.write"]
    assert sorted((w.attributes["kusto_sync.scope"], w.attributes["kusto_sync.action"], w.attributes["kusto_sync.result"])
                  for w in writes) == [(str(SALES), "add", "succeeded")] * 2 + [
        (str(SANDBOX), "add", "failed"), (str(SANDBOX), "add", "succeeded")]
    for write in writes:  # nested in their scope's span although written on a worker thread
        assert write.parent.span_id == scopes[write.attributes["kusto_sync.scope"]].context.span_id

    metrics = points(reader)
    by_cluster = lambda name: {p.attributes["cluster"]: p.value for p in metrics[name]}  # noqa: E731
    assert by_cluster("kusto_sync.adds") == {PROD: 2, TEST: 1}
    assert by_cluster("kusto_sync.failures") == {TEST: 1}
    assert by_cluster("kusto_sync.skips") == {PROD: 1}
    assert by_cluster("kusto_sync.drift") == {PROD: 1}
    assert [(p.attributes, p.value) for p in metrics["kusto_sync.runs"]] == [
        ({"status": "partially failed", "trigger": "timer:full"}, 1)]
    assert [p.count for p in metrics["kusto_sync.run.duration"]] == [1]
    assert sum(p.count for p in metrics["kusto_sync.write.duration"]) == 4
    assert "kusto_sync.full_sync.age" not in metrics  # no successful full sync yet


def test_a_successful_full_sync_starts_the_age_gauge_and_a_dry_run_counts_no_changes(otel):
    telemetry, _, reader = otel
    engine = sync_world(telemetry, ghosts=False)
    engine.run(trigger="timer:full", dry_run=True)
    metrics = points(reader)
    assert "kusto_sync.adds" not in metrics and "kusto_sync.full_sync.age" not in metrics
    engine.assignments.failing = None
    assert engine.run(trigger="timer:full").status == "succeeded"
    [age] = points(reader)["kusto_sync.full_sync.age"]
    assert 0 <= age.value < 60


def test_without_application_insights_nothing_is_configured():
    assert isinstance(for_settings(False, False), NoTelemetry)
    assert isinstance(for_settings(False, True), NoTelemetry)


def test_when_the_worker_configures_azure_monitor_the_app_only_uses_it():
    telemetry = for_settings(True, True)  # configure_azure_monitor() would need a real connection string
    assert isinstance(telemetry, OpenTelemetry) and for_settings(True, True) is telemetry


def test_an_abandoned_run_is_counted_as_a_run_and_as_abandoned(otel):
    telemetry, _, reader = otel
    telemetry.abandoned({"runId": "r1", "trigger": "timer:full", "status": "abandoned"})
    metrics = points(reader)
    assert [p.value for p in metrics["kusto_sync.runs.abandoned"]] == [1]
    assert [p.attributes["status"] for p in metrics["kusto_sync.runs"]] == ["abandoned"]


def test_the_graph_subscription_gauge_counts_down_from_the_last_expiry_seen(otel):
    import time

    telemetry, _, reader = otel
    telemetry.graph_subscription(time.time() + 3600)
    telemetry.graph_subscription(None)  # a later run that could not see it keeps the last expiry
    [left] = points(reader)["kusto_sync.graph_subscription.expires_in"]
    assert 3500 < left.value <= 3600
