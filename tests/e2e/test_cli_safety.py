"""The CLI against the emulator and Azurite, default guard: plan exit codes (0 in sync, 2 writes
pending, 3 only holds or skips), a config change that converges, and the onboarding grants of a
removed profile listed and revoked."""
import json

from conftest import ADX_PROD
from test_cli import cli  # noqa: F401 (the fixture)

FINANCE = "b0000000-0000-4000-8000-000000000006"  # Finance Readers: emma and diego
EMMA, FRANK = "a0000000-0000-4000-8000-000000000005", "a0000000-0000-4000-8000-000000000006"


def mapping(name, database, role="Viewer"):
    return {"name": name, "group": FINANCE, "targets": [{"cluster": ADX_PROD, "database": database, "role": role}]}


def plan_json(cli, config, **settings):
    result = cli("plan", "--format", "json", config=config, **settings)
    return result.returncode, json.loads(result.stdout)


def test_plan_exits_0_2_or_3_and_apply_says_the_same(cli, e2e_emulator):
    config = {"version": 1, "guards": {"maxDeletes": 0}, "mappings": [mapping("finance-sales", "Sales")]}
    code, _ = plan_json(cli, config)
    assert code == 2  # writes pending
    assert cli("apply", config=config).returncode == 0
    assert plan_json(cli, config)[0] == 0  # in sync
    e2e_emulator.directory(removeMembers={FINANCE: [EMMA]})
    code, planned = plan_json(cli, config)
    assert code == 3 and [c["action"] for c in planned["changes"]] == ["hold"]  # only a hold remains
    applied = cli("apply", "--format", "json", config=config)
    assert applied.returncode == 3 and json.loads(applied.stdout)["status"] == "succeeded_with_holds"
    released = cli("apply", "--approve-deletes", "--format", "json", config=config)
    assert released.returncode == 0 and json.loads(released.stdout)["status"] == "succeeded"
    assert plan_json(cli, config)[0] == 0


def test_a_target_removed_from_the_config_gives_up_its_assignments(cli, azurite):
    storage = {"AzureWebJobsStorage": azurite.connection_string}
    before = {"version": 1, "mappings": [mapping("finance-sales", "Sales"), mapping("finance-telemetry", "Telemetry")]}
    after = {"version": 1, "mappings": [mapping("finance-sales", "Sales")]}
    assert cli("apply", config=before, **storage).returncode == 0
    code, planned = plan_json(cli, after, **storage)
    assert code == 2
    assert {(c["action"], c["scope"]["database"]) for c in planned["changes"]} == {("remove", "Telemetry")}
    assert f"aaduser={EMMA}" in {c["principal"].split(";")[0] for c in planned["changes"]}  # users by object ID
    applied = cli("apply", "--format", "json", config=after, **storage)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert plan_json(cli, after, **storage)[0] == 0
    assert plan_json(cli, before, **storage)[0] == 2  # they are gone: the old config would add them again


def test_the_grants_of_a_removed_profile_are_listed_and_revoked(cli, azurite, app_env, monkeypatch):
    from shared.app import build
    from shared.core.config import parse_config
    from shared.core.settings import Settings
    from shared.handlers.onboarding import handle

    storage = {"AzureWebJobsStorage": azurite.connection_string}
    ingest = {"targets": [{"cluster": ADX_PROD, "database": "Telemetry", "role": "Ingestor"}]}
    with_profile = {"version": 1, "mappings": [mapping("finance-sales", "Sales")], "profiles": {"ingest-e2e": ingest}}
    without = {"version": 1, "mappings": [mapping("finance-sales", "Sales")], "profiles": {"other": ingest}}
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    engine = build(Settings.from_env(), config=parse_config(with_profile))  # the onboarding function's engine
    body = json.dumps({"principal": "frank@contoso.com", "profile": "ingest-e2e", "id": "e2e-grant-1"})
    assert handle(engine, body, message_id="e2e-grant-1").status == "granted"

    listed = cli("grants", "--profile", "ingest-e2e", "--format", "json", config=without, **storage)
    assert listed.returncode == 0, listed.stderr
    (grant,) = json.loads(listed.stdout)
    assert grant["principal"].startswith(f"aaduser={FRANK}") and grant["role"] == "Ingestor"
    assert grant["offered"] is False
    text = cli("grants", "--principal", "frank@contoso.com", config=without, **storage).stdout
    assert "no longer offered by the config" in text

    revoked = cli("revoke", "--profile", "ingest-e2e", "--principal", "frank@contoso.com", config=without, **storage)
    assert revoked.returncode == 0 and revoked.stdout.startswith("revoked"), revoked.stdout + revoked.stderr
    assert json.loads(cli("grants", "--profile", "ingest-e2e", "--format", "json", config=without, **storage).stdout) == []
    again = cli("revoke", "--profile", "ingest-e2e", "--principal", "frank@contoso.com", config=without, **storage)
    assert again.returncode == 1 and "no grant of it" in again.stdout
