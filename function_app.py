"""Azure Functions entry points (v2 programming model). Triggers only: each turns its binding
into a call into `shared` and the result into a log line or a response."""
import json
import logging

import azure.functions as func

from shared.app import engine
from shared.settings import Settings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
log = logging.getLogger("function_app")


@app.function_name("sync_schedule")
@app.timer_trigger(arg_name="timer", schedule="%SYNC_SCHEDULE%", run_on_startup=False, use_monitor=True)
def sync_schedule(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.warning("sync_schedule is running late (past due); running now")
    report = engine().run(trigger="timer", dry_run=Settings.from_env().dry_run)
    log.info("sync %s %s: %s", report.run_id, report.status, report.counts())


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.health import check

    status, body = check()
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")
