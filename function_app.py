"""Azure Functions entry points (v2 programming model). Triggers only: each turns its binding
into a call into `shared` and the result into a log line or a response."""
import logging

import azure.functions as func
from azure.functions.warmup import WarmUpContext  # not re-exported by azure-functions 1.26, though listed

from shared.app import engine
from shared.adapters.queues import CLUSTER_JOBS, ONBOARDING, RECONCILE_REQUESTS
from shared.core.settings import Settings

# The HTTP and queue handlers are imported on their first call: a cold start for the timer should
# not pay for modules it never runs.

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("function_app")


@app.function_name("sync_schedule")
@app.timer_trigger(arg_name="timer", schedule="%SYNC_SCHEDULE%", run_on_startup=False, use_monitor=True)
def sync_schedule(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("sync_schedule is running late (past due); running now")
    settings = Settings.from_env()
    # The host always has its storage: the writes go to one queued job per cluster. Without it
    # (tests calling the function directly) they are made here.
    report = engine().sync(trigger="timer", dry_run=settings.dry_run, jobs=settings.has_storage)
    log.info("sync %s %s: %s", report.run_id, report.status, report.counts())
    from shared.handlers import onboarding

    expired = onboarding.expire_pending(engine())
    if expired:
        log.info("%d onboarding grant(s) expired waiting for approval", len(expired))


@app.function_name("warmup")
@app.warm_up_trigger(arg_name="warmup")
def warmup(warmup: WarmUpContext) -> None:
    # Called by the host on an instance added at scale-out (Premium and Flex Consumption plans).
    from shared import app as wiring

    wiring.warm()


@app.function_name("graph_subscription")
# Hourly, fixed: a %SETTING% schedule would stop the whole app from starting where it is not set.
@app.timer_trigger(arg_name="timer", schedule="0 7 * * * *", run_on_startup=False, use_monitor=True)
def graph_subscription(timer: func.TimerRequest) -> None:
    from shared.handlers import subscriptions

    outcome = subscriptions.run_timer()
    log.info("graph subscription: %s (%s)", outcome.action, outcome.detail)


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.health(http_api.Request.of(req)))


@app.function_name("reconcile")
@app.route(route="reconcile", methods=["POST"])
def reconcile(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.reconcile(http_api.Request.of(req)))


@app.function_name("run_reconcile")
@app.queue_trigger(arg_name="msg", queue_name=RECONCILE_REQUESTS, connection="AzureWebJobsStorage")
def run_reconcile(msg: func.QueueMessage) -> None:
    from shared.handlers import runs

    runs.run_reconcile(msg.get_body(), dequeue_count=msg.dequeue_count or 1, jobs=Settings.from_env(require_config=False).has_storage)


@app.function_name("apply_cluster_job")
@app.queue_trigger(arg_name="msg", queue_name=CLUSTER_JOBS, connection="AzureWebJobsStorage")
def apply_cluster_job(msg: func.QueueMessage) -> None:
    from shared.handlers import jobs

    jobs.run_cluster_job(msg.get_body(), dequeue_count=msg.dequeue_count or 1)


@app.function_name("onboard")
@app.queue_trigger(arg_name="msg", queue_name=ONBOARDING, connection="AzureWebJobsStorage")
def onboard(msg: func.QueueMessage) -> None:
    from shared.handlers import onboarding

    outcome = onboarding.handle(engine(), msg.get_body(), message_id=msg.id, dequeue_count=msg.dequeue_count or 1,
                                enqueued=getattr(msg, "insertion_time", None))
    log.info("onboarding message %s: %s (%s)", outcome.message_id, outcome.status, outcome.detail)


@app.function_name("get_run")
@app.route(route="runs/{id}", methods=["GET"])
def get_run(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.get_run(http_api.Request.of(req)))


@app.function_name("list_runs")
@app.route(route="runs", methods=["GET"])
def list_runs(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.list_runs(http_api.Request.of(req)))


@app.function_name("list_grants")
@app.route(route="grants", methods=["GET"])
def list_grants(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.list_grants(http_api.Request.of(req)))


@app.function_name("approve_grant")
@app.route(route="grants/{id}/approve", methods=["POST"])
def approve_grant(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.approve_grant(http_api.Request.of(req)))


@app.function_name("deny_grant")
@app.route(route="grants/{id}/deny", methods=["POST"])
def deny_grant(req: func.HttpRequest) -> func.HttpResponse:
    from shared.handlers import http_api

    return _respond(http_api.deny_grant(http_api.Request.of(req)))


def _respond(result) -> func.HttpResponse:
    return func.HttpResponse(result.body, status_code=result.status, headers=dict(result.headers),
                             mimetype=result.content_type, charset="utf-8")
