"""No token or secret in any log line, at any level, through a whole sync and its failures."""
import logging

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
