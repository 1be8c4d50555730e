"""Start Azurite (the local Azure Storage emulator from npm) on free ports for the tests."""
from __future__ import annotations

import re
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Azurite's documented development account; a public, well-known value, not a secret.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (http://\S+)")


class Azurite:
    """Azurite in memory on ephemeral ports; `.connection_string` points at all three services."""

    def __init__(self) -> None:
        binary = ROOT / "node_modules" / ".bin" / "azurite"
        if not binary.exists():
            raise RuntimeError("Azurite is not installed: run `make test` (it runs `npm ci`)")
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        self.process = subprocess.Popen(
            [str(binary), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
             "--blobPort", "0", "--queuePort", "0", "--tablePort", "0"],
            cwd=self._workdir.name, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.endpoints: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while len(self.endpoints) < 3:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"Azurite exited with {self.process.wait()}")
            if match := _LISTENING.search(line):
                self.endpoints[match[1]] = match[2]
            if time.monotonic() > deadline:
                raise RuntimeError("Azurite did not start within 30 s")

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.endpoints['Blob']}/{ACCOUNT};"
            f"QueueEndpoint={self.endpoints['Queue']}/{ACCOUNT};"
            f"TableEndpoint={self.endpoints['Table']}/{ACCOUNT};"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(2)  # it waits for idle keep-alive connections; nothing to keep
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._workdir.cleanup()
