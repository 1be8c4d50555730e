"""Settings are read once, checked as a whole, and default to the chosen cloud."""
import pytest

from shared.core.errors import ConfigError
from shared.handlers.health import check
from shared.core.settings import Settings


def test_defaults_follow_the_public_cloud():
    settings = Settings.from_env({"SYNC_CONFIG": "config.yaml"})
    assert settings.arm_endpoint == "https://management.azure.com"
    assert settings.graph_endpoint == "https://graph.microsoft.com"
    assert settings.cloud.arm_scope == "https://management.azure.com/.default"
    assert settings.arm_polling_interval == 30 and settings.sync_schedule == "0 */30 * * * *"


@pytest.mark.parametrize("name, arm, graph", [
    ("AzureUSGovernment", "https://management.usgovcloudapi.net", "https://graph.microsoft.us"),
    ("china", "https://management.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
])
def test_a_sovereign_cloud_changes_every_endpoint(name, arm, graph):
    settings = Settings.from_env({"SYNC_CONFIG": "c", "AZURE_CLOUD": name})
    assert (settings.arm_endpoint, settings.graph_endpoint) == (arm, graph)
    assert settings.cloud.graph_scope == graph + "/.default"


def test_the_local_emulator_setting_lets_endpoints_name_loopback_and_keeps_the_audiences():
    settings = Settings.from_env({"SYNC_CONFIG": "c", "ARM_ENDPOINT": "https://127.0.0.1:8443/",
                                  "GRAPH_ENDPOINT": "https://127.0.0.1:8443", "LOCAL_EMULATOR": "true"})
    assert settings.arm_endpoint == "https://127.0.0.1:8443"
    assert settings.cloud.arm_scope == "https://management.azure.com/.default"


@pytest.mark.parametrize("cloud, key, endpoint", [
    ("AzureCloud", "ARM_ENDPOINT", "https://management.azure.com.evil.example"),
    ("AzureCloud", "ARM_ENDPOINT", "https://attacker.example/"),
    ("AzureCloud", "GRAPH_ENDPOINT", "https://graph.microsoft.us"),  # another cloud's host
    ("AzureUSGovernment", "ARM_ENDPOINT", "https://management.azure.com"),
    ("AzureCloud", "ARM_ENDPOINT", "https://127.0.0.1:8443"),  # loopback without LOCAL_EMULATOR
    ("AzureCloud", "GRAPH_ENDPOINT", "https://localhost"),
])
def test_tokens_go_only_to_the_clouds_own_hosts(cloud, key, endpoint):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SYNC_CONFIG": "c", "AZURE_CLOUD": cloud, key: endpoint})
    [problem] = caught.value.problems
    assert problem.startswith(f"{key}: ") and endpoint.split("//")[1].split(":")[0] not in problem.split("(")[0]


@pytest.mark.parametrize("cloud, key, endpoint", [
    ("AzureCloud", "ARM_ENDPOINT", "https://management.privatelink.azure.com"),  # listed private-link alias
    ("AzureCloud", "ARM_ENDPOINT", "https://MANAGEMENT.azure.com/"),
    ("AzureUSGovernment", "GRAPH_ENDPOINT", "https://dod-graph.microsoft.us"),
    ("AzureChinaCloud", "GRAPH_ENDPOINT", "https://microsoftgraph.chinacloudapi.cn"),
])
def test_the_clouds_own_hosts_and_listed_aliases_are_accepted(cloud, key, endpoint):
    settings = Settings.from_env({"SYNC_CONFIG": "c", "AZURE_CLOUD": cloud, key: endpoint})
    assert getattr(settings, key.lower()) == endpoint.rstrip("/")


def test_an_endpoint_problem_never_repeats_the_value():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SYNC_CONFIG": "c", "ARM_ENDPOINT": "https://user:s3cret@management.azure.com",
                           "GRAPH_ENDPOINT": "http://pw@graph.microsoft.com"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["ARM_ENDPOINT", "GRAPH_ENDPOINT"]
    assert "s3cret" not in str(caught.value) and "pw@" not in str(caught.value)


@pytest.mark.parametrize("cloud, suffix", [
    ("AzureCloud", "core.windows.net"), ("AzureUSGovernment", "core.usgovcloudapi.net"),
    ("AzureChinaCloud", "core.chinacloudapi.cn"),
])
def test_identity_based_storage_endpoints_follow_the_cloud(cloud, suffix):
    settings = Settings.from_env({"SYNC_CONFIG": "c", "AZURE_CLOUD": cloud, "AzureWebJobsStorage__accountName": "st1",
                                  "AzureWebJobsStorage__queueServiceUri": "https://q.example"})
    assert settings.storage["AzureWebJobsStorage__blobServiceUri"] == f"https://st1.blob.{suffix}"
    assert settings.storage["AzureWebJobsStorage__tableServiceUri"] == f"https://st1.table.{suffix}"
    assert settings.storage["AzureWebJobsStorage__queueServiceUri"] == "https://q.example"  # given ones are kept


def test_identity_based_storage_without_an_account_needs_every_service_uri():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SYNC_CONFIG": "c", "AzureWebJobsStorage__queueServiceUri": "https://q.example"})
    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__tableServiceUri"]


def test_every_bad_setting_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({
            "AZURE_CLOUD": "Mars", "ARM_ENDPOINT": "http://insecure", "ARM_POLLING_INTERVAL": "soon",
            "SYNC_SCHEDULE": "*/5 * * * *", "AZURE_TENANT_ID": "contoso", "MAX_PARALLEL_CLUSTERS": "0",
            "SYNC_DRY_RUN": "maybe",
        })
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "SYNC_CONFIG", "AZURE_CLOUD", "SYNC_SCHEDULE", "AZURE_TENANT_ID", "ARM_ENDPOINT",
        "ARM_POLLING_INTERVAL", "MAX_PARALLEL_CLUSTERS", "SYNC_DRY_RUN",
    ]
    assert "not an https:// URL" in problems[4] and "insecure" not in problems[4]


def test_health_names_the_wrong_config_key():
    status, body = check({"SYNC_CONFIG": '{"mappings": [], "bogus": 1}', "SYNC_SCHEDULE": "0 */30 * * * *"})
    assert status == 503 and body["status"] == "unhealthy"
    assert body["source"] == "SYNC_CONFIG" and "bogus" in body["invalid"]


def test_health_names_the_wrong_settings_never_their_values():
    status, body = check({
        "SYNC_CONFIG": "config/sync-config.yaml", "SYNC_SCHEDULE": "0 */30 * * * *",
        "ARM_ENDPOINT": "https://user:s3cret@attacker.example", "AZURE_TENANT_ID": "tenant-s3cret",
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountKey=s3cret",
    })
    assert status == 503
    assert body["source"] == "app settings" and body["invalid"] == ["AZURE_TENANT_ID", "ARM_ENDPOINT"]
    assert "s3cret" not in str(body) and "attacker" not in str(body)


def test_health_reports_a_binding_setting_the_host_cannot_resolve():
    status, body = check({"SYNC_CONFIG": "config/sync-config.yaml"})
    assert status == 503 and body["invalid"] == ["SYNC_SCHEDULE"]


def test_health_reports_the_config_version_when_valid():
    status, body = check({"SYNC_CONFIG": "config/sync-config.yaml", "AzureWebJobsStorage": "secret-value",
                          "SYNC_SCHEDULE": "0 */30 * * * *"})
    assert status == 200 and len(body["configVersion"]) == 12
    assert "secret-value" not in str(body)


def test_the_run_deadline_comes_from_the_function_timeout_less_a_margin_or_from_the_setting():
    from shared.core.settings import run_deadline

    assert run_deadline("00:10:00") == 540 and run_deadline("00:05:00") == 240
    assert run_deadline("00:01:00") == 30  # never less than half the timeout
    assert run_deadline("-1") is None and run_deadline(None) is None
    assert Settings.from_env({"SYNC_CONFIG": "c"}).run_deadline_seconds is None
    assert Settings.from_env({"SYNC_CONFIG": "c", "RUN_DEADLINE_SECONDS": "15"}).run_deadline_seconds == 15


def test_the_lease_renewal_period_is_a_setting_bounded_by_half_the_lease():
    assert Settings.from_env({"SYNC_CONFIG": "c", "LEASE_RENEW_SECONDS": "0.2"}).lease_renew_seconds == 0.2
    with pytest.raises(ConfigError, match="LEASE_RENEW_SECONDS: 20 is above 15"):
        Settings.from_env({"SYNC_CONFIG": "c", "LEASE_RENEW_SECONDS": "20"})


def test_health_answers_503_even_when_the_config_cannot_be_loaded_at_all(monkeypatch):
    import shared.core.config

    def missing_parser(value):
        raise ModuleNotFoundError("No module named 'yaml'")

    monkeypatch.setattr(shared.core.config, "load_config", missing_parser)
    status, body = check({"SYNC_CONFIG": "config/sync-config.yaml", "SYNC_SCHEDULE": "0 */30 * * * *"})
    assert (status, body["invalid"], body["error"]) == (503, ["SYNC_CONFIG"], "ModuleNotFoundError")
