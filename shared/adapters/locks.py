"""One writer per cluster across invocations and instances: a blob lease per cluster.

Kusto fails concurrent management operations on one cluster (409 / ServiceIsInMaintenance), and
the timer, a manual run and an onboarding message can all want to write at once, possibly on
different instances. Each cluster gets a blob in the host storage account; whoever holds its lease
writes. The lease is renewed in the background while held, and expires by itself if the holder dies.

Holding is not enough: a renewal can fail, and a lease can be broken and taken by someone else. So
`hold` yields a `Lease` that the writer asks before every write; the moment a renewal fails (or the
last good renewal is older than the lease could last) it is `lost` and the writer stops.
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
LEASE_SECONDS = 30  # blob leases last 15-60 s
RENEW_SECONDS = 10.0  # default renewal period (LEASE_RENEW_SECONDS): a third of the lease


class Lease:
    """A held lock, as its writer sees it: `lost` (with `reason`) once it can no longer be trusted."""

    def __init__(self, *, seconds: float = float("inf")) -> None:
        self._lost = threading.Event()
        self.reason: str | None = None
        self.seconds = seconds
        self._renewed = time.monotonic()

    @property
    def lost(self) -> bool:
        if not self._lost.is_set() and time.monotonic() - self._renewed >= self.seconds:
            self.lose(f"the lease was not renewed for {self.seconds:g}s and may have expired")
        return self._lost.is_set()

    def renewed(self) -> None:
        self._renewed = time.monotonic()

    def lose(self, reason: str) -> None:
        if not self._lost.is_set():
            self.reason = reason
            self._lost.set()


class Locks(Protocol):
    """One writer per cluster across invocations (a blob lease in production)."""

    def hold(self, cluster_id: str): ...  # a context manager yielding a Lease


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
            yield Lease()


def blob_name(cluster_id: str) -> str:
    """The lock blob of a cluster (resource IDs are too long and case-insensitive for blob names)."""
    return hashlib.sha256(cluster_id.casefold().encode()).hexdigest()[:32]


class ClusterBusyError(TransientError):
    """Another run holds the cluster's lease for longer than we are willing to wait."""


class BlobLeaseLocks:
    """Locks over blob leases in one container (created on first use)."""

    def __init__(self, container_client, *, wait_seconds: float = 120.0, poll_seconds: float = 1.0,
                 renew_seconds: float = RENEW_SECONDS, sleep: Callable[[float], None] = time.sleep):
        if not 0 < renew_seconds <= LEASE_SECONDS / 2:
            raise ValueError(f"renew_seconds must be above 0 and at most {LEASE_SECONDS / 2:g}")
        self._container = container_client
        self._renew_seconds = renew_seconds
        self.renewals = 0  # successful renewals, for tests and logs
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

    def probe(self) -> None:
        """Whether the lock container answers (the doctor): raises what the service answered otherwise."""
        from shared.adapters.tables import probe

        def exists() -> None:
            from azure.core.exceptions import ResourceExistsError

            try:
                self._container.create_container()
            except ResourceExistsError:
                self._container.get_container_properties()

        probe(exists, f"container {CONTAINER}")

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
        blob = self._container.get_blob_client(blob_name(cluster_id))
        try:
            blob.upload_blob(cluster_id.encode(), overwrite=False)
        except ResourceExistsError:
            pass
        self._blobs[cluster_id.casefold()] = blob
        return blob

    @contextmanager
    def hold(self, cluster_id: str) -> Iterator[Lease]:
        """Hold the cluster's lease for the duration of the block, waiting up to wait_seconds for it.

        Callers in this process queue on an in-process lock first: only one of them polls the lease
        (once per poll interval), and the next takes over the moment the previous one is done.
        """
        with self._local.hold(cluster_id), self._lease(cluster_id) as held:
            yield held

    @contextmanager
    def _lease(self, cluster_id: str) -> Iterator[Lease]:
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
        stop, held = threading.Event(), Lease(seconds=LEASE_SECONDS - 1)  # 1 s for the renewal's own latency
        renewer = threading.Thread(target=self._renew, args=(lease, held, stop, cluster_id), daemon=True,
                                   name="lease-renew")
        renewer.start()
        try:
            yield held
        finally:
            stop.set()
            renewer.join()
            try:
                lease.release()
            except HttpResponseError as error:
                log.warning("could not release the lock of %s (it expires by itself): %s", cluster_id, error.message)

    def _renew(self, lease, held: Lease, stop: threading.Event, cluster_id: str) -> None:
        """Renew every renew_seconds until stopped; the first failure loses the lease for good.

        A lease whose renewal failed may still be ours for a while, or may already be someone
        else's (broken and acquired): the writer cannot tell, so it stops either way.
        """
        while not stop.wait(self._renew_seconds):
            try:
                lease.renew()
            except Exception as error:  # the write loop must not die with the renewer
                log.warning("lease of %s lost: renewal failed: %s", cluster_id, error)
                held.lose(f"the lease on {cluster_id} was lost (renewal failed: {error})")
                return
            held.renewed()
            self.renewals += 1
