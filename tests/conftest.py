"""Fixtures shared by every test layer: Azurite for queues, blobs and tables."""
import pytest

from azurite import Azurite


@pytest.fixture(scope="session")
def azurite():
    server = Azurite()
    yield server
    server.stop()
