"""No token, secret, key or query string in any log line, at any level, or in any audit row: through
a whole sync and its failures, and through HTTP requests that carry a function key (`?code=`)."""
import json
import logging
import uuid

from azure.data.tables import TableServiceClient

import function_app
from shared import app as wiring
from shared.adapters import audit as audit_module
from test_http import http, http_env, receive  # noqa: F401 - http_env is a fixture
from test_timer_sync import run_timer


def test_a_sync_logs_no_token_and_no_identity_secret_even_at_debug(app_env, caplog):
    app_env.faults(method="GET", path="transitiveMembers", status=503, count=1, retryAfter=1)
    app_env.faults(method="PUT", path="principalAssignments", status=400, count=1)
    with caplog.at_level(logging.DEBUG):
        run_timer()
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 20  # the SDKs did log at debug level
    assert app_env.env["IDENTITY_HEADER"] not in text
    assert "eyJ" not in text  # the start of every JWT (base64 of '{"')
    assert "Bearer ey" not in text


def test_http_requests_carrying_a_function_key_log_and_audit_no_key(http_env, azurite, caplog, monkeypatch):
    key = "fnkey-" + uuid.uuid4().hex
    with caplog.at_level(logging.DEBUG):
        resp = http("reconcile", "POST", f"/api/reconcile?code={key}", {"mode": "apply"}, params={"code": key})
        run_id = json.loads(resp.get_body())["runId"]
        function_app.run_reconcile.build().get_user_function()(receive(azurite.connection_string, run_id))
        http("get_run", url=f"/api/runs/{run_id}?code={key}", route_params={"id": run_id}, params={"code": key})
        http("list_runs", url=f"/api/runs?code={key}", params={"code": key})
        http("health", url=f"/api/health?code={key}", params={"code": key})
        monkeypatch.setattr(wiring, "engine", lambda environ=None: 1 / 0)  # an unexpected failure is logged
        failed = http("reconcile", "POST", f"/api/reconcile?code={key}&sig={key}", {"mode": "plan"},
                      params={"code": key, "sig": key})
    assert resp.status_code == 202 and failed.status_code == 500
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "POST /api/reconcile failed" in logged
    assert key not in logged and "code=" not in logged and "sig=" not in logged
    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    rows = [row for name in (audit_module.RUNS_TABLE, audit_module.CHANGES_TABLE)
            for row in tables.get_table_client(name).list_entities()]
    assert len(rows) > 3 and key not in json.dumps(rows, default=str)
