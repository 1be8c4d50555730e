"""Telemetry an operator can alert on: OpenTelemetry traces and metrics of runs, scopes and writes.

The engine calls three hooks: `run(report)` around a run, `write(change, do)` around each write,
and `carry(fn)` to hand the current trace context to its worker threads; whoever finds a run
abandoned may call `abandoned(run_record)`. `NoTelemetry`, the default, does nothing and imports
nothing, so a cold start without Application Insights pays nothing. `OpenTelemetry` talks to the
OpenTelemetry API; `for_settings()` picks it when APPLICATIONINSIGHTS_CONNECTION_STRING is set,
configuring the Azure Monitor distro unless the Functions worker already did
(PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true).

Spans: `kusto_sync.run.started` (a marker, ended at once) and `kusto_sync.run` (one per run),
`kusto_sync.scope` (one per scope of the run's plan, the scope's writes nested in it),
`kusto_sync.write` (one per write, the SDK's HTTP spans nested in it through azure-core's
tracing). Metric names and the alerts built on them are listed in docs/operations.md.
"""
from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator, Protocol

PREFIX = "kusto_sync"
# A run that read everything and dispatched its writes to cluster jobs ends "queued": its read
# succeeded, and the jobs report their own outcome (trigger "job").
SUCCESSFUL = ("succeeded", "succeeded_with_holds", "queued")


class Telemetry(Protocol):
    def run(self, report) -> ContextManager[None]: ...
    def write(self, change, do: Callable[[Any], Any]): ...
    def carry(self, fn: Callable) -> Callable: ...
    def abandoned(self, run: dict) -> None: ...
    def graph_subscription(self, expires: float | None) -> None: ...


class NoTelemetry:
    """The default: every hook is free."""

    @contextmanager
    def run(self, report) -> Iterator[None]:
        yield

    def write(self, change, do: Callable[[Any], Any]):
        return do(change)

    def carry(self, fn: Callable) -> Callable:
        return fn

    def abandoned(self, run: dict) -> None:
        pass

    def graph_subscription(self, expires: float | None) -> None:
        pass


def for_settings(app_insights: bool, worker_configures: bool):
    """OpenTelemetry when Application Insights is configured, otherwise NoTelemetry."""
    return _azure_monitor(worker_configures) if app_insights else NoTelemetry()


@functools.cache
def _azure_monitor(worker_configures: bool) -> "OpenTelemetry":
    """Configured once per process: the distro installs global providers."""
    if not worker_configures:  # otherwise the Functions worker has called it, and twice is an error
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor()  # reads APPLICATIONINSIGHTS_CONNECTION_STRING itself
    return OpenTelemetry()


_current_run: contextvars.ContextVar["_RunTrace | None"] = contextvars.ContextVar("kusto_sync_run", default=None)


class OpenTelemetry:
    """Traces and metrics through the OpenTelemetry API (global providers unless given)."""

    def __init__(self, tracer_provider=None, meter_provider=None):
        from opentelemetry import metrics, trace

        self._trace = trace
        self.tracer = trace.get_tracer(PREFIX, tracer_provider=tracer_provider)
        meter = metrics.get_meter(PREFIX, meter_provider=meter_provider)
        counter = meter.create_counter
        self.counters = {
            "add": counter(f"{PREFIX}.adds", "{assignment}", "assignments added"),
            "remove": counter(f"{PREFIX}.removes", "{assignment}", "owned assignments removed"),
            "update": counter(f"{PREFIX}.updates", "{connection}", "data connections updated"),
            "hold": counter(f"{PREFIX}.holds", "{assignment}", "removals held by the deletion guard"),
            "skip": counter(f"{PREFIX}.skips", "{scope}", "scopes skipped because something was unknown"),
            "drift": counter(f"{PREFIX}.drift", "{assignment}", "assignments the app does not own"),
            "failed": counter(f"{PREFIX}.failures", "{write}", "writes that failed"),
            "abandoned": counter(f"{PREFIX}.runs.abandoned", "{run}", "runs whose heartbeat lapsed"),
        }
        self.runs = counter(f"{PREFIX}.runs", "{run}", "finished runs, by status and trigger")
        self.run_duration = meter.create_histogram(f"{PREFIX}.run.duration", "s", "run duration")
        self.write_duration = meter.create_histogram(f"{PREFIX}.write.duration", "s", "write latency, retries included")
        self._last_full_sync: float | None = None
        meter.create_observable_gauge(f"{PREFIX}.full_sync.age", [self._full_sync_age], "s",
                                      "seconds since the last successful full sync seen by this process")
        self._subscription_expires: float | None = None
        self.subscription_expires_in = meter.create_observable_gauge(
            f"{PREFIX}.graph_subscription.expires_in", [self._subscription_left], "s",
            "seconds until the Graph subscription for group events expires, as last seen by this process")

    def graph_subscription(self, expires: float | None) -> None:
        """The Graph subscription's expiry (epoch seconds) as the timer last saw it. Kept when a
        later run cannot see it: the gauge then keeps counting down, and the alert fires."""
        if expires is not None:
            self._subscription_expires = expires

    def _subscription_left(self, options):
        from opentelemetry.metrics import Observation

        if self._subscription_expires is None:
            return []
        return [Observation(self._subscription_expires - time.time())]

    def _full_sync_age(self, options):
        from opentelemetry.metrics import Observation

        if self._last_full_sync is None:
            return []
        return [Observation(time.time() - self._last_full_sync)]

    @contextmanager
    def run(self, report) -> Iterator[None]:
        attributes = {f"{PREFIX}.run_id": report.run_id, f"{PREFIX}.trigger": report.trigger,
                      f"{PREFIX}.dry_run": report.dry_run}
        started = time.monotonic()
        # Spans are exported when they end, and a run whose process dies never ends its span: this
        # marker, ended at once, is what lets an alert find runs that started and never finished.
        self.tracer.start_span(f"{PREFIX}.run.started", attributes=attributes).end()
        with self.tracer.start_as_current_span(f"{PREFIX}.run", attributes=attributes) as span:
            trace = _RunTrace(self, span)
            token = _current_run.set(trace)
            try:
                yield
            finally:
                _current_run.reset(token)
                trace.end(report)
                self._count(report, time.monotonic() - started)

    def _count(self, report, seconds: float) -> None:
        status, trigger = report.status, report.trigger
        self.runs.add(1, {"status": status, "trigger": trigger})
        self.run_duration.record(seconds, {"status": status, "trigger": trigger})
        if trigger.endswith(":full") and status in SUCCESSFUL and not report.dry_run:
            self._last_full_sync = time.time()
        if report.dry_run:
            return  # a plan is not a change: only runs that apply feed the change counters
        counts = Counter()
        for result in report.results:
            key = "failed" if result.status == "failed" else result.change.action.value
            if result.status in ("succeeded", "failed", "held", "skipped"):
                counts[(key, result.change.scope.cluster)] += 1
        for drift in report.plan.drift:
            counts[("drift", drift.scope.cluster)] += 1
        for (key, cluster), n in counts.items():
            if key in self.counters:
                self.counters[key].add(n, {"cluster": cluster})

    def write(self, change, do: Callable[[Any], Any]):
        trace = _current_run.get()
        parent = trace.scope_context(change.scope) if trace else None
        attributes = {f"{PREFIX}.cluster": change.scope.cluster, f"{PREFIX}.scope": str(change.scope),
                      f"{PREFIX}.action": change.action.value}
        role = getattr(change, "role", None)  # a data-connection change has a name instead
        attributes.update({f"{PREFIX}.role": role} if role else {f"{PREFIX}.data_connection": change.name})
        started = time.monotonic()
        with self.tracer.start_as_current_span(f"{PREFIX}.write", context=parent, attributes=attributes) as span:
            result = do(change)
            span.set_attribute(f"{PREFIX}.result", result.status)
            span.set_attribute(f"{PREFIX}.attempts", result.attempts)
            if result.status == "failed":
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, result.error))
        self.write_duration.record(time.monotonic() - started, {
            "cluster": change.scope.cluster, "action": change.action.value, "result": result.status})
        return result

    def abandoned(self, run: dict) -> None:
        """Count a run found abandoned (its heartbeat lapsed): `run` is its audit record."""
        self.counters["abandoned"].add(1, {"trigger": run.get("trigger", "")})
        self.runs.add(1, {"status": "abandoned", "trigger": run.get("trigger", "")})

    def carry(self, fn: Callable) -> Callable:
        """`fn`, run in the caller's context (current span and run) from whichever thread calls it."""
        context = contextvars.copy_context()
        return lambda *args, **kwargs: context.copy().run(fn, *args, **kwargs)


class _RunTrace:
    """One run's span and its scope spans, opened at a scope's first write and ended with the run."""

    def __init__(self, telemetry: OpenTelemetry, span):
        self.telemetry, self.span = telemetry, span
        self.scopes: dict[Any, Any] = {}
        self.lock = threading.Lock()

    def scope_context(self, scope):
        trace = self.telemetry._trace
        with self.lock:
            span = self.scopes.get(scope)
            if span is None:
                span = self.scopes[scope] = self._scope_span(scope)
        return trace.set_span_in_context(span)

    def _scope_span(self, scope):
        trace = self.telemetry._trace
        return self.telemetry.tracer.start_span(
            f"{PREFIX}.scope", context=trace.set_span_in_context(self.span),
            attributes={f"{PREFIX}.cluster": scope.cluster, f"{PREFIX}.scope": str(scope)})

    def end(self, report) -> None:
        by_scope: dict[Any, Counter] = {scope: Counter() for scope in report.plan.scopes}
        for result in report.results:
            by_scope.setdefault(result.change.scope, Counter())[result.status] += 1
            by_scope[result.change.scope][result.change.action.value] += 1
        for drift in report.plan.drift:
            by_scope.setdefault(drift.scope, Counter())["drift"] += 1
        for scope, counts in sorted(by_scope.items(), key=lambda item: str(item[0])):
            span = self.scopes.get(scope) or self._scope_span(scope)
            result = ("failed" if counts["failed"] else "incomplete" if counts["pending"] else
                      "skipped" if counts["skip"] else "held" if counts["hold"] else
                      "planned" if report.dry_run else "succeeded")
            span.set_attribute(f"{PREFIX}.result", result)
            for key in ("add", "update", "remove", "hold", "skip", "drift", "failed"):
                span.set_attribute(f"{PREFIX}.{key}", counts[key])
            span.end()
        counts = report.counts()
        self.span.set_attribute(f"{PREFIX}.status", report.status)
        for key, value in counts.items():
            self.span.set_attribute(f"{PREFIX}.{key.replace(' ', '_')}", value)
        if report.status not in SUCCESSFUL:
            self.span.set_status(self.telemetry._trace.Status(self.telemetry._trace.StatusCode.ERROR, report.status))
