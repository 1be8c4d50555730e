"""End-to-end fixtures: the emulator over the demo tenant, its environment and app settings."""
import json

import pytest

from emulator.testing import DEMO_TENANT, EmulatorProcess

ADX_PROD = ("/subscriptions/5b000000-0000-4000-8000-000000000001/resourceGroups/rg-data"
            "/providers/Microsoft.Kusto/clusters/adx-prod")
ONE_MAPPING = {
    "version": 1,
    "guards": {"maxDeletes": 5, "maxDeletePercent": 50},
    "mappings": [{
        "name": "analysts-sales", "group": "Analysts",
        "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": "Viewer"}],
    }],
}


@pytest.fixture(scope="session")
def e2e_emulator():
    with EmulatorProcess(DEMO_TENANT) as emu:
        yield emu


@pytest.fixture
def app_env(monkeypatch, e2e_emulator):
    """The emulator reset to the demo tenant, and the app's settings pointing at it."""
    e2e_emulator.reset()
    for key, value in e2e_emulator.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SYNC_CONFIG", json.dumps(ONE_MAPPING))
    monkeypatch.setenv("ARM_POLLING_INTERVAL", "0")
    monkeypatch.setenv("SYNC_SCHEDULE", "0 */30 * * * *")
    return e2e_emulator
