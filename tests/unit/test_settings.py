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


def test_explicit_endpoints_override_the_cloud_but_keep_its_audiences():
    settings = Settings.from_env({"SYNC_CONFIG": "c", "ARM_ENDPOINT": "https://127.0.0.1:8443/",
                                  "GRAPH_ENDPOINT": "https://127.0.0.1:8443"})
    assert settings.arm_endpoint == "https://127.0.0.1:8443"
    assert settings.cloud.arm_scope == "https://management.azure.com/.default"


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
    assert "not an https:// URL" in problems[4]


def test_health_reports_problems_without_values():
    status, body = check({"SYNC_CONFIG": '{"mappings": [], "bogus": 1}'})
    assert status == 503 and body["status"] == "unhealthy"
    assert any("bogus" in p for p in body["problems"])


def test_health_reports_the_config_version_when_valid():
    status, body = check({"SYNC_CONFIG": "examples/sync-config.yaml", "AzureWebJobsStorage": "secret-value"})
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
