"""Identity-based host storage: `AzureWebJobsStorage__clientId` picks the managed identity that signs
in to storage, as it does for the Functions host (the emulator's token endpoint checks client_id)."""
import pytest
from azure.core.exceptions import ClientAuthenticationError

from shared.app import storage_credential
from shared.core.settings import Settings

STORAGE_SCOPE = "https://storage.azure.com/.default"


def storage_settings(env, **storage):
    return Settings.from_env({**env, "SYNC_CONFIG": "c", "AzureWebJobsStorage__accountName": "st1",
                              **{f"AzureWebJobsStorage__{k}": v for k, v in storage.items()}})


def test_azurewebjobsstorage_clientid_selects_the_storage_identity(emulator_env, emu):
    identity = emu.state()["managedIdentity"]["appId"]
    emu.clear_requests()
    storage_credential(storage_settings(emulator_env, clientId=identity), credential=None).get_token(STORAGE_SCOPE)
    [request] = [r for r in emu.requests()["requests"] if r["api"] == "identity"]
    assert f"client_id={identity}" in request["query"]
    with pytest.raises(ClientAuthenticationError):  # another identity's ID is really sent, and refused
        storage_credential(storage_settings(emulator_env, clientId="e0000000-0000-4000-8000-0000000000ff"),
                           credential=None).get_token(STORAGE_SCOPE)


def test_without_a_clientid_storage_uses_the_apps_credential(emulator_env):
    app_credential = object()
    assert storage_credential(storage_settings(emulator_env), app_credential) is app_credential
