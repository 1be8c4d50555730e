"""Fixtures for integration tests against the local emulator (real SDKs, loopback TLS)."""
from __future__ import annotations

import pytest

from emulator.testing import DEMO_TENANT, EmulatorProcess


@pytest.fixture(scope="session")
def emulator():
    """One emulator process over the demo tenant for the whole session."""
    with EmulatorProcess(DEMO_TENANT) as emu:
        yield emu


@pytest.fixture
def emu(emulator):
    """The session emulator, reset to the demo tenant (state, faults and request log)."""
    emulator.reset()
    return emulator


@pytest.fixture
def emulator_env(monkeypatch, emu):
    """The emulator's KEY=VALUE environment set into os.environ for this test."""
    for key, value in emu.env.items():
        monkeypatch.setenv(key, value)
    return emu.env
