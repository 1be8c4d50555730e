"""infra/, checked offline: the ARM template's resources, its app settings against what the app
reads, the custom role against the app's ARM actions, the Graph roles script against its Graph
roles, and the alerts against the telemetry's names."""
import json
import re
import subprocess
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider

from shared.adapters.telemetry import OpenTelemetry
from shared.core.permissions import arm_action_names, graph_role_names
from shared.core.settings import Settings
from shared.handlers.http_api import HttpSettings
from test_deployment import binding_settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = json.loads((ROOT / "infra" / "main.json").read_text())
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
LOCAL_ONLY = {
    "FUNCTIONS_WORKER_RUNTIME": "set by functionAppConfig.runtime on Flex Consumption, which refuses the setting",
    "AzureWebJobsFeatureFlags": "worker indexing is the default on Flex Consumption",
    "AzureWebJobsStorage": "Azure uses the identity-based AzureWebJobsStorage__* settings",
    "LOCAL_EMULATOR": "never in Azure: it lets tokens go to loopback hosts",
    "WEBSITE_AUTH_ENABLED": "App Service sets it itself when its authentication (Easy Auth) is on",
}


def resources(template):
    for resource in template.get("resources", []):
        yield resource
        yield from resources(resource.get("properties", {}).get("template", {}))


def of_type(kind):
    return [r for r in resources(TEMPLATE) if r["type"] == kind]


def app_settings():
    [site] = of_type("Microsoft.Web/sites")
    return {s["name"]: s["value"] for s in site["properties"]["siteConfig"]["appSettings"]}


class Recording(dict):
    """An environment that remembers which keys the app asked for."""

    def __init__(self):
        super().__init__(SYNC_CONFIG="c")
        self.read = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_every_resource_has_a_type_and_an_api_version():
    assert TEMPLATE["$schema"].endswith("deploymentTemplate.json#")
    for resource in resources(TEMPLATE):
        assert re.match(r"^[\w.]+/[\w/]+$", resource["type"]), resource
        assert re.match(r"^\d{4}-\d{2}-\d{2}(-preview)?$", resource["apiVersion"]), resource


def test_a_flex_consumption_python_311_app_with_a_user_assigned_identity():
    [plan] = of_type("Microsoft.Web/serverfarms")
    [site] = of_type("Microsoft.Web/sites")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert site["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert site["identity"]["type"] == "UserAssigned"
    assert of_type("Microsoft.ManagedIdentity/userAssignedIdentities") and of_type("Microsoft.Insights/components")


def test_the_app_settings_cover_every_setting_the_app_reads_and_the_sample():
    env = Recording()
    Settings.from_env(env)
    HttpSettings.from_env(env)
    read = env.read | {"AZURE_CLIENT_ID"}  # read by the wiring for the managed identity
    assert read <= set(SAMPLE), sorted(read - set(SAMPLE))
    settings = app_settings()
    missing = (read | set(SAMPLE)) - set(LOCAL_ONLY) - set(settings)
    assert not missing, f"not set by infra/main.json: {sorted(missing)}"
    assert not set(LOCAL_ONLY) & set(settings)


def test_every_binding_setting_and_connection_is_set_by_the_template():
    expressions, connections = binding_settings()
    settings = app_settings()
    assert expressions and expressions <= set(settings)
    for connection in connections:  # identity-based: <connection>__accountName
        assert f"{connection}__accountName" in settings


def test_host_storage_is_identity_based_with_the_roles_the_host_needs():
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert {"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__clientId"} <= set(settings)
    descriptions = {r["properties"]["description"] for r in of_type("Microsoft.Authorization/roleAssignments")}
    assert {f"Kusto access sync: {role}" for role in (
        "Storage Blob Data Owner", "Storage Queue Data Contributor", "Storage Queue Data Reader",
        "Storage Queue Data Message Processor", "Storage Table Data Contributor")} <= descriptions


def test_the_custom_role_has_exactly_the_apps_arm_actions_and_is_assigned_on_the_clusters():
    role = json.loads((ROOT / "infra" / "kusto-sync-role.json").read_text())
    assert sorted(role["Actions"]) == sorted(arm_action_names())
    assert role["NotActions"] == [] and role["DataActions"] == []
    assert "infra/kusto-sync-role.json" in (ROOT / "infra" / "deploy.sh").read_text()
    [on_clusters] = [r for r in of_type("Microsoft.Authorization/roleAssignments")
                     if r["scope"].startswith("[format('Microsoft.Kusto/clusters/")]
    assert "kusto_sync" not in json.dumps(on_clusters)  # the role is the custom one, passed in by ID


def test_the_graph_roles_script_grants_exactly_the_apps_graph_roles():
    out = subprocess.run(["bash", str(ROOT / "infra" / "grant-graph-roles.sh"),
                          "00000000-0000-0000-0000-000000000001", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    granted = [line.split()[1] for line in out.splitlines() if line.startswith("grant ")]
    assert sorted(granted) == sorted(graph_role_names())


def test_the_alerts_query_names_the_telemetry_emits():
    telemetry = OpenTelemetry(meter_provider=MeterProvider())
    emitted = {i.name for i in (*telemetry.counters.values(), telemetry.runs, telemetry.subscription_expires_in)} | {
        "kusto_sync.run", "kusto_sync.run.started", "kusto_sync.scope", "kusto_sync.write",
        "kusto_sync.run_id", "kusto_sync.trigger", "kusto_sync.result"}
    alerts = of_type("Microsoft.Insights/scheduledQueryRules")
    assert len(alerts) == 6
    for alert in alerts:
        [criterion] = alert["properties"]["criteria"]["allOf"]
        names = set(re.findall(r'"(kusto_sync\.[\w.]+)"', criterion["query"]))
        assert names and names <= emitted, (alert["name"], names - emitted)
