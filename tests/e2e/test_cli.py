"""The operator CLI end to end: `python -m shared ...` in a subprocess, its settings pointing at the emulator.

Each test checks the contract an operator (or a script) relies on: the exit code, JSON on stdout,
and on failure one line on stderr that gives the reason, without a traceback.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ADX_PROD

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "emulator" / "tenants" / "demo-config.yaml"
HOME = "11111111-0000-4000-8000-000000000001"
FABRIKAM = "22222222-0000-4000-8000-000000000002"
MSA = "9188040d-6c67-4c5b-b112-36a304b66dad"
ADX_DEV = ("/subscriptions/5b000000-0000-4000-8000-000000000002/resourceGroups/rg-dev"
           "/providers/Microsoft.Kusto/clusters/adx-dev")
PLAN_ITEM_KEYS = {"action", "scope", "role", "principal", "principalType", "tenantId", "reason"}
# App settings that must come from the test alone, whatever the developer's shell holds.
_OWN_KEYS = ("SYNC_", "HOME_TENANT_DOMAINS", "AZURE_CLOUD", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
             "MSI_", "AzureWebJobsStorage", "ARM_", "GRAPH_", "IDENTITY_")


@pytest.fixture
def cli(e2e_emulator, tmp_path):
    """run(*args, config=...) -> CompletedProcess of `python -m shared`, on a freshly reset emulator."""
    e2e_emulator.reset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_KEYS)}
    env.update(e2e_emulator.env)
    env["ARM_POLLING_INTERVAL"] = "0"
    env["PYTHONPATH"] = str(ROOT)

    def run(*args: str, config=DEMO_CONFIG, **settings: str) -> subprocess.CompletedProcess:
        if isinstance(config, dict):
            path = tmp_path / "config.json"
            path.write_text(json.dumps(config), encoding="utf-8")
            config = path
        return subprocess.run([sys.executable, "-m", "shared", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env=env | {"SYNC_CONFIG": str(config)} | settings)

    return run


def failed_with(result: subprocess.CompletedProcess, reason: str) -> bool:
    return result.returncode != 0 and reason in result.stderr and "Traceback" not in result.stderr


# -- resolve -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("adele@contoso.com", {"fqn": f"aaduser=a0000000-0000-4000-8000-000000000001;{HOME}", "principalType": "User",
                           "principalId": "a0000000-0000-4000-8000-000000000001", "tenantId": HOME,
                           "userPrincipalName": "adele@contoso.com"}),
    ("alice_fabrikam.com#EXT#@contoso.onmicrosoft.com",  # the demo config has guests: home
     {"fqn": f"aaduser=alice@fabrikam.com;{FABRIKAM}", "principalType": "User",
      "principalId": "alice@fabrikam.com", "tenantId": FABRIKAM}),
    ("carol@outlook.com", {"fqn": "msauser=carol@outlook.com", "principalType": "User",
                           "principalId": "carol@outlook.com", "tenantId": MSA}),
    ("e0000000-0000-4000-8000-000000000002",
     {"fqn": f"aadapp=e0000000-0000-4000-8000-000000000002;{HOME}", "principalType": "App",
      "principalId": "e0000000-0000-4000-8000-000000000002", "tenantId": HOME}),
    ("finance-readers@contoso.com",
     {"fqn": f"aadgroup=b0000000-0000-4000-8000-000000000006;{HOME}", "principalType": "Group",
      "principalId": "b0000000-0000-4000-8000-000000000006", "tenantId": HOME}),
    ("aaduser=Bob@Fabrikam.com;fabrikam.com",
     {"fqn": f"aaduser=Bob@fabrikam.com;{FABRIKAM}", "principalType": "User",
      "principalId": "Bob@fabrikam.com", "tenantId": FABRIKAM}),
])
def test_resolve_prints_the_principal_as_json(cli, text, expected):
    result = cli("resolve", text)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert {key: printed[key] for key in expected} == expected


@pytest.mark.parametrize("text, reason", [
    ("sales@contoso.com", "Sales-DL (mail sales@contoso.com) is a distribution group"),
    ("Project Phoenix", "Microsoft 365 group that is not security-enabled"),
    ("someone@unknown.example", "domain unknown.example belongs to no Entra tenant"),
    ("aadfoo=bob@contoso.com", "unknown principal prefix 'aadfoo'"),
    ("aaduser=bob@contoso.com;a;b", "more than one ';'"),
    ("nobody@contoso.com", "no user or group in the home tenant has the address nobody@contoso.com"),
])
def test_resolve_fails_with_the_reason(cli, text, reason):
    result = cli("resolve", text)
    assert result.returncode == 1
    assert failed_with(result, reason), result.stderr
    assert result.stdout == ""


# -- plan and apply ------------------------------------------------------------------------------

def test_plan_of_the_demo_tenant_exits_2_with_json_items(cli):
    result = cli("plan", "--format", "json")
    assert result.returncode == 2, result.stderr
    items = json.loads(result.stdout)["changes"]
    assert items and all(PLAN_ITEM_KEYS <= set(item) for item in items)
    assert {item["action"] for item in items} <= {"add", "update", "remove", "hold", "skip"}
    assert all(item["scope"]["cluster"] in (ADX_PROD, ADX_DEV) for item in items)
    by_principal = {item["principal"]: item for item in items if item["action"] == "add"}
    alice = by_principal[f"aaduser=alice@fabrikam.com;{FABRIKAM}"]
    assert (alice["role"], alice["principalType"], alice["tenantId"]) == ("Viewer", "User", FABRIKAM)
    assert alice["scope"] == {"cluster": ADX_PROD, "database": "Sales"}
    assert by_principal["msauser=carol@outlook.com"]["tenantId"] == MSA
    skipped = [item for item in items if item["action"] == "skip"]
    assert any("Sales-DL" in item["reason"] and "distribution group" in item["reason"] for item in skipped)


def test_the_demo_connects_its_event_hub_and_leaves_terraforms_connection_alone(cli):
    planned = cli("plan")
    line = next(line for line in planned.stdout.splitlines() if "dataConnection ks-device-events-" in line)
    assert line.startswith("+ adx-prod/Telemetry dataConnection ") and "[adx-sync] -> DeviceEvents" in line
    assert any(line.startswith("? adx-prod/Telemetry dataConnection tf-app-logs ") for line in planned.stdout.splitlines())
    applied = cli("apply", "--format", "json")  # the demo's distribution group stays a skip
    assert json.loads(applied.stdout)["status"] == "partially_skipped", applied.stdout + applied.stderr
    (result,) = [c for c in json.loads(applied.stdout)["changes"] if c.get("dataConnection")]
    assert (result["action"], result["result"], result["dataConnection"]["kind"]) == ("add", "succeeded", "EventHub")
    replanned = json.loads(cli("plan", "--format", "json").stdout)
    assert not [c for c in replanned["changes"] if c.get("dataConnection")]
    assert [d["dataConnection"]["name"] for d in replanned["dataConnections"]["drift"]] == ["tf-app-logs"]


def test_apply_then_plan_exits_0_when_nothing_is_pending(cli):
    config = {"version": 1, "mappings": [
        {"name": "eu-telemetry", "group": "Analysts-EU",  # a foreign guest and a Microsoft account
         "targets": [{"cluster": ADX_PROD, "database": "Telemetry", "role": "Viewer"}]},
        {"name": "finance-sales", "group": "finance-readers@contoso.com",
         "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": "Viewer"}]},
        {"name": "platform-sandbox", "group": "Data Platform", "mode": "group",
         "targets": [{"cluster": ADX_DEV, "database": "Sandbox", "role": "User"}]},
    ]}
    assert cli("plan", config=config).returncode == 2
    applied = cli("apply", "--format", "json", config=config)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    replanned = cli("plan", "--format", "json", config=config)
    assert replanned.returncode == 0, replanned.stdout
    assert json.loads(replanned.stdout)["changes"] == []


def test_plan_exits_3_when_only_skips_or_holds_remain(cli):
    applied = cli("apply")
    assert applied.returncode == 3, applied.stdout + applied.stderr  # partially_skipped: not a failure
    assert "partially_skipped" in applied.stdout
    result = cli("plan", "--format", "json")
    assert result.returncode == 3, result.stdout  # the distribution-group mapping is skipped every time
    assert {item["action"] for item in json.loads(result.stdout)["changes"]} <= {"hold", "skip"}


# -- check ---------------------------------------------------------------------------------------

def test_check_reports_every_problem_of_a_bad_config_and_exits_1(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join([
        "version: 1",
        "guards:",
        "  maxDeletes: -3",
        "mappings:",
        "  - name: one",
        "    targets:",
        "      - cluster: not-a-cluster-id",
        "        role: Emperor",
        "  - name: one",
        "    group: Analysts",
        "    targets: []",
    ]), encoding="utf-8")
    result = cli("check", config=bad)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    for fragment in ("maxDeletes", "mappings[0].group", "not-a-cluster-id", "Emperor",
                     "mappings[1].targets", "duplicate mapping name 'one'"):
        assert fragment in result.stderr, result.stderr


def test_check_accepts_the_demo_config(cli):
    result = cli("check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_runs_lists_the_audited_runs_and_shows_one_with_its_changes(cli, azurite):
    config = {"version": 1, "mappings": [{"name": "finance-sales", "group": "finance-readers@contoso.com",
                                          "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": "Viewer"}]}]}
    storage = {"config": config, "AzureWebJobsStorage": azurite.connection_string}
    applied = cli("apply", "--format", "json", **storage)
    assert applied.returncode == 0, applied.stderr
    run_id = json.loads(applied.stdout)["runId"]
    listed = cli("runs", "--format", "json", **storage)
    assert run_id in [r["runId"] for r in json.loads(listed.stdout)]
    shown = cli("runs", run_id, **storage)
    assert shown.returncode == 0
    assert f"add adx-prod/Sales Viewer aaduser=a0000000-0000-4000-8000-000000000005;{HOME} (emma@contoso.com)" in shown.stdout
    assert failed_with(cli("runs", "no-such-run", **storage), "no run no-such-run")


def test_runs_without_storage_says_why(cli):
    assert failed_with(cli("runs"), "AzureWebJobsStorage: not set")


# -- identity and unknowns with the default guard (issue cases 1 and 2) ---------------------------

ADELE, BOB, CHRISTIE, EMMA = (f"a0000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3, 5))
ANALYSTS, ANALYSTS_EU = "b0000000-0000-4000-8000-000000000002", "b0000000-0000-4000-8000-000000000003"
SALES_VIEWERS = {"name": "analysts-sales", "group": ANALYSTS,
                 "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": "Viewer"}]}


def test_every_exclude_spelling_keeps_its_person_out_of_reach(cli, e2e_emulator):
    from shared.core.plan import assignment_name
    from shared.core.principals import Principal, PrincipalKind
    from shared.core.scopes import Scope

    # adele already holds Admin under the name the app gave it when it still wrote users by UPN
    sales = Scope(ADX_PROD, "Sales")
    by_upn = Principal(PrincipalKind.USER, "adele@contoso.com", HOME)
    e2e_emulator.clusters(put=[{"subscriptionId": sales.subscription_id, "resourceGroup": sales.resource_group,
                                "cluster": sales.cluster_name, "database": "Sales", "role": "Admin",
                                "name": assignment_name("ks-", sales, "Admin", by_upn), "principalId": "adele@contoso.com",
                                "principalType": "User", "tenantId": HOME}])
    config = {"version": 1, "mappings": [SALES_VIEWERS], "exclude": [
        "aaduser=adele@contoso.com",  # a UPN with no tenant
        "aaduser=bob@contoso.com;contoso.com",  # the tenant by domain name
        f"aaduser={CHRISTIE};{HOME}",  # the object ID
    ]}
    result = cli("plan", "--format", "json", config=config)
    assert result.returncode == 2, result.stderr
    changes = json.loads(result.stdout)["changes"]
    touched = {item["principal"].split("=")[1].split(";")[0] for item in changes}
    assert touched.isdisjoint({ADELE, BOB, CHRISTIE, "adele@contoso.com"}), changes
    assert {item["action"] for item in changes} == {"add"} and len(changes) == 3  # the three guests


def test_a_one_time_passcode_guest_is_skipped_alone_and_the_rest_of_the_mapping_is_planned(cli, e2e_emulator):
    config = {"version": 1, "guests": "home", "mappings": [SALES_VIEWERS]}
    assert cli("apply", config=config).returncode == 0
    otp = "a0000000-0000-4000-8000-0000000000a1"
    e2e_emulator.directory(upsert={"users": [{"id": otp, "userPrincipalName": "x_gmail.com#EXT#@contoso.onmicrosoft.com",
                                              "displayName": "X (one-time passcode)", "mail": "x@gmail.com",
                                              "userType": "Guest"}]},
                           addMembers={ANALYSTS: [otp, EMMA]}, removeMembers={ANALYSTS_EU: [BOB]})
    result = cli("plan", "--format", "json", config=config)
    assert result.returncode == 2, result.stderr
    changes = {(item["action"], item["principal"].split("=")[1].split(";")[0]): item
               for item in json.loads(result.stdout)["changes"]}
    assert set(changes) == {("skip", otp), ("add", EMMA), ("remove", BOB)}
    assert "gmail.com belongs to no Entra tenant" in changes["skip", otp]["reason"]


def test_doctor_exits_0_on_the_demo_tenant_and_names_what_is_taken_away(cli, e2e_emulator):
    ok = cli("doctor")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok graph User.Read.All" in ok.stdout and "ok arm adx-prod" in ok.stdout
    e2e_emulator.permissions(graph=["GroupMember.Read.All", "User.ReadBasic.All", "Application.Read.All",
                                    "CrossTenantInformation.ReadBasic.All"])
    missing = cli("doctor", "--format", "json")
    assert missing.returncode == 1
    report = json.loads(missing.stdout)
    (check,) = [c for c in report["checks"] if c["status"] != "ok"]
    assert report["ok"] is False and check["subject"] == "User.Read.All" and "User.Read.All" in check["fix"]
    assert "skipDisabledAccounts" in check["detail"]
