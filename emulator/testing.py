"""Test helper: run the emulator as a subprocess and drive its admin routes.

    with EmulatorProcess("emulator/tenants/demo.json") as emu:
        os.environ.update(emu.env)
        emu.faults(method="GET", path="/transitiveMembers", status=429, count=2, retryAfter=0)
        ...
        emu.requests()["counts"]
"""
from __future__ import annotations

import json
import os
import queue
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

DEMO_TENANT = Path(__file__).parent / "tenants" / "demo.json"
ENV_KEYS = ("ARM_ENDPOINT", "GRAPH_ENDPOINT", "IDENTITY_ENDPOINT", "IDENTITY_HEADER",
            "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "AZURE_TENANT_ID", "LOCAL_EMULATOR")


class EmulatorError(RuntimeError):
    """The emulator did not start, or an admin call failed (``status`` and ``body`` set)."""

    def __init__(self, message, status=None, body=None):
        super().__init__(message)
        self.status = status
        self.body = body


def write_tenant(directory, data: dict, name: str = "tenant.json") -> Path:
    """Write a tenant file into ``directory`` (e.g. pytest's tmp_path) and return its path."""
    path = Path(directory) / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


class EmulatorProcess:
    """``python -m emulator --tenant FILE --port 0`` as a context manager.

    Attributes once started: ``env`` (the KEY=VALUE lines it printed), ``url``, ``ca_file``,
    ``process``."""

    def __init__(self, tenant=DEMO_TENANT, *extra_args: str, timeout: float = 30.0):
        self.tenant = Path(tenant)
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self._stderr = None
        self._ssl: ssl.SSLContext | None = None

    # -- lifecycle
    def start(self) -> "EmulatorProcess":
        self._stderr = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "emulator", "--tenant", str(self.tenant), "--port", "0", *self.extra_args]
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=root, env=env)
        lines: queue.Queue = queue.Queue()

        def pump():
            for line in self.process.stdout:
                lines.put(line.rstrip("\n"))
                if line.strip() == "ready":
                    break
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise EmulatorError(f"emulator not ready after {self.timeout}s; stderr:\n{self.stderr()}") from None
            if line is None or line == "ready":
                break
            key, sep, value = line.partition("=")
            if sep:
                self.env[key] = value
        if line is None:
            self.process.wait(timeout=5)
            raise EmulatorError(f"emulator exited with {self.process.returncode}; stderr:\n{self.stderr()}")
        self._ssl = ssl.create_default_context(cafile=self.ca_file)
        return self

    def stop(self) -> int | None:
        """Terminate the process (SIGTERM, then kill) and return its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def __enter__(self):
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return self.env["ARM_ENDPOINT"]

    @property
    def ca_file(self) -> str:
        return self.env["REQUESTS_CA_BUNDLE"]

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl

    # -- HTTP
    def call(self, method: str, path: str, body=None, headers: dict | None = None):
        """(status, headers, parsed JSON body or None) for any route; never raises on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=60) as resp:
                raw, status, hdrs = resp.read(), resp.status, resp.headers
        except urllib.error.HTTPError as err:
            raw, status, hdrs = err.read(), err.code, err.headers
        return status, hdrs, (json.loads(raw) if raw else None)

    def _admin(self, method: str, path: str, body=None):
        status, _, parsed = self.call(method, "/_emulator/" + path, body)
        if status >= 400:
            raise EmulatorError(f"{method} /_emulator/{path} -> {status}: {parsed}", status, parsed)
        return parsed

    def token(self, resource: str = "https://management.azure.com") -> str:
        """An access token from the managed-identity endpoint."""
        status, _, body = self.call("GET", f"/msi/token?api-version=2019-08-01&resource={urllib.request.quote(resource, safe='')}",
                                    headers={"X-IDENTITY-HEADER": self.env["IDENTITY_HEADER"]})
        if status != 200:
            raise EmulatorError(f"token request -> {status}: {body}", status, body)
        return body["access_token"]

    # -- admin helpers
    def faults(self, *specs: dict, **spec):
        """Add faults: ``faults(method="GET", path="transitiveMembers", status=429, count=1, retryAfter=1)``
        or ``faults({...}, {...})``. Returns the stored faults."""
        items = list(specs) + ([spec] if spec else [])
        return self._admin("POST", "faults", items)["faults"]

    def list_faults(self) -> list[dict]:
        return self._admin("GET", "faults")["faults"]

    def clear_faults(self):
        self._admin("DELETE", "faults")

    def requests(self) -> dict:
        return self._admin("GET", "requests")

    def clear_requests(self):
        self._admin("DELETE", "requests")

    def state(self) -> dict:
        return self._admin("GET", "state")

    def reset(self):
        return self._admin("POST", "reset")

    def directory(self, **body):
        """Change the directory: upsert / delete / addMembers / removeMembers."""
        return self._admin("POST", "directory", body)

    def clusters(self, **body):
        """Put/delete assignments directly: ``clusters(put=[...], delete=[...])``."""
        return self._admin("POST", "clusters", body)

    def permissions(self, **body):
        """The managed identity's permissions: ``permissions()`` reads them; ``permissions(graph=[roles],
        arm={cluster: {"actions": [...], "notActions": [...]}})`` replaces the parts named."""
        return self._admin("POST", "permissions", body) if body else self._admin("GET", "permissions")

    def lro(self, **settings):
        """Change how long operations take from now on: ``lro(seconds=0.2, polls=0, retryAfter=None)``."""
        return self._admin("POST", "lro", settings)

    def operations(self) -> list[dict]:
        """Every ARM operation with its cluster, start and end (monotonic seconds), oldest first."""
        return self._admin("GET", "operations")["operations"]

    def subscriptions(self) -> list[dict]:
        """Every Graph subscription the emulator holds (expired ones included), clientState and all."""
        return self._admin("GET", "subscriptions")["subscriptions"]

    def lifecycle(self, event: str, subscription_id: str | None = None) -> dict:
        """Make Graph send a lifecycle event (reauthorizationRequired, subscriptionRemoved or missed)
        for the subscription (the only one when not named): {event, delivered, status}."""
        body = {"lifecycleEvent": event} | ({"id": subscription_id} if subscription_id else {})
        return self._admin("POST", "subscriptions/lifecycle", body)

    def expire_subscription(self, in_seconds: float = 0, subscription_id: str | None = None) -> dict:
        """Move a subscription's expiry to now + in_seconds (0 or less: expired, gone)."""
        body = {"inSeconds": in_seconds} | ({"id": subscription_id} if subscription_id else {})
        return self._admin("POST", "subscriptions/expire", body)

    def event_grid(self, queue_url: str | None) -> None:
        """The storage queue (URL with a SAS) the partner topic's event subscription delivers to."""
        self._admin("POST", "eventgrid", {"queueUrl": queue_url})

    def event_grid_events(self) -> list[dict]:
        return self._admin("GET", "eventgrid")["events"]
