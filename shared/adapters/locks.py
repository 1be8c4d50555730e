"""One writer per cluster across invocations and instances: a blob lease per cluster.

Kusto fails concurrent management operations on one cluster (409 / ServiceIsInMaintenance), and
the timer, a manual run and an onboarding message can all want to write at once, possibly on
different instances. Each cluster gets a blob in the host storage account; whoever holds its lease
writes. The lease is renewed in the background while held, and expires by itself if the holder dies.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from collections import defaultdict
from typing import Callable, Iterator, Protocol

from shared.core.errors import TransientError

log = logging.getLogger(__name__)

CONTAINER = "kusto-sync-locks"
LEASE_SECONDS = 30  # blob leases last 15-60 s; renewed every LEASE_SECONDS / 3 while held


class Locks(Protocol):
    """One writer per cluster across invocations (a blob lease in production)."""

    def hold(self, cluster_id: str): ...


class InProcessLocks:
    """Locks for a single process: enough for the CLI and for tests of the engine."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, cluster_id: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks[cluster_id.casefold()]
        with lock:
            yield


class ClusterBusyError(TransientError):
    """Another run holds the cluster's lease for longer than we are willing to wait."""


class BlobLeaseLocks:
    """Locks over blob leases in one container (created on first use)."""

    def __init__(self, container_client, *, wait_seconds: float = 120.0, poll_seconds: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep):
        self._container = container_client
        self._wait_seconds = wait_seconds
        self._poll_seconds = poll_seconds
        self._sleep = sleep
        self._ready = False
        self._blobs: dict[str, object] = {}
        self._local = InProcessLocks()

    @classmethod
    def from_storage_settings(cls, storage: dict[str, str], credential=None, **kwargs) -> "BlobLeaseLocks":
        from azure.storage.blob import ContainerClient

        connection = storage.get("AzureWebJobsStorage")
        if connection:
            return cls(ContainerClient.from_connection_string(connection, CONTAINER), **kwargs)
        return cls(ContainerClient(storage["AzureWebJobsStorage__blobServiceUri"], CONTAINER, credential=credential), **kwargs)

    def _blob(self, cluster_id: str):
        from azure.core.exceptions import ResourceExistsError

        blob = self._blobs.get(cluster_id.casefold())
        if blob is not None:
            return blob
        if not self._ready:
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass
            self._ready = True
        name = hashlib.sha256(cluster_id.casefold().encode()).hexdigest()[:32]
        blob = self._container.get_blob_client(name)
        try:
            blob.upload_blob(cluster_id.encode(), overwrite=False)
        except ResourceExistsError:
            pass
        self._blobs[cluster_id.casefold()] = blob
        return blob

    @contextmanager
    def hold(self, cluster_id: str) -> Iterator[None]:
        """Hold the cluster's lease for the duration of the block, waiting up to wait_seconds for it.

        Callers in this process queue on an in-process lock first: only one of them polls the lease
        (once per poll interval), and the next takes over the moment the previous one is done.
        """
        with self._local.hold(cluster_id), self._lease(cluster_id):
            yield

    @contextmanager
    def _lease(self, cluster_id: str) -> Iterator[None]:
        from azure.core.exceptions import HttpResponseError

        blob = self._blob(cluster_id)
        deadline = time.monotonic() + self._wait_seconds
        while True:
            try:
                lease = blob.acquire_lease(lease_duration=LEASE_SECONDS)
                break
            except HttpResponseError as error:
                if error.status_code != 409:
                    raise TransientError(f"cannot lease the lock of {cluster_id}: {error.message}") from error
                if time.monotonic() >= deadline:
                    raise ClusterBusyError(
                        f"another run is writing to {cluster_id}; waited {self._wait_seconds:g}s"
                    ) from error
                self._sleep(self._poll_seconds)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lease, stop), daemon=True, name="lease-renew")
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                lease.release()
            except HttpResponseError as error:
                log.warning("could not release the lock of %s (it expires by itself): %s", cluster_id, error.message)

    @staticmethod
    def _renew(lease, stop: threading.Event) -> None:
        while not stop.wait(LEASE_SECONDS / 3):
            try:
                lease.renew()
            except Exception as error:  # the write loop must not die with the renewer
                log.warning("lease renewal failed: %s", error)
