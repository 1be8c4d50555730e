"""Storage queue adapter: send messages the way the Functions queue trigger reads them.

Functions decodes queue messages as base64 by default (host.json `messageEncoding`), so every
message is sent base64-encoded. Used for `reconcile-requests` (HTTP apply runs), `cluster-jobs`
(one cluster's writes of a run, and their continuations), for
`onboarding-rejected` (permanent failures, with the reason) and for delayed re-delivery.

A queue message holds at most 64 KiB of stored text (Azure Storage "Put Message"); base64 makes
that 48 KiB of body. Both queues here refuse a bigger body before sending, as the service would.
"""
from __future__ import annotations

import json
from typing import Any, Protocol

from shared.core.errors import PermanentError, TransientError

RECONCILE_REQUESTS = "reconcile-requests"
CLUSTER_JOBS = "cluster-jobs"  # one message per cluster with writes: {"jobId": ...}
ONBOARDING = "onboarding"
ONBOARDING_REJECTED = "onboarding-rejected"
MAX_MESSAGE_BYTES = 64 * 1024 // 4 * 3
"""The largest body (UTF-8 bytes) that fits a queue message once base64-encoded: 49,152."""


class MessageTooLargeError(PermanentError):
    """The body does not fit a queue message."""


def encode(body: dict[str, Any] | str) -> str:
    """The text a body is sent as (JSON with ASCII escapes), checked against the queue's limit."""
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(f"a {size}-byte body does not fit a queue message (at most {MAX_MESSAGE_BYTES})")
    return text


class Queues(Protocol):
    def send(self, queue: str, body: dict[str, Any] | str, *, delay_seconds: int = 0) -> None: ...


class MemoryQueues:
    """Queues in memory, for tests of the engine and handlers: `sent[queue]` lists (body, delay)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[Any, int]]] = {}

    def send(self, queue: str, body: dict[str, Any] | str, *, delay_seconds: int = 0) -> None:
        encode(body)
        self.sent.setdefault(queue, []).append((body, delay_seconds))


class StorageQueues:
    """Azure Storage queues (Azurite locally); queues are created on first use."""

    def __init__(self, storage: dict[str, str], credential=None):
        self._storage = storage
        self._credential = credential
        self._clients: dict[str, Any] = {}

    def _client(self, queue: str):
        client = self._clients.get(queue)
        if client is None:
            from azure.core.exceptions import ResourceExistsError
            from azure.storage.queue import QueueClient, TextBase64EncodePolicy

            connection = self._storage.get("AzureWebJobsStorage")
            if connection:
                client = QueueClient.from_connection_string(
                    connection, queue, message_encode_policy=TextBase64EncodePolicy()
                )
            else:
                client = QueueClient(self._storage["AzureWebJobsStorage__queueServiceUri"], queue, credential=self._credential,
                                     message_encode_policy=TextBase64EncodePolicy())
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            self._clients[queue] = client
        return client

    def probe(self, queue: str) -> None:
        """Whether the queue answers (the doctor): raises what the service answered otherwise."""
        from shared.adapters.tables import probe

        probe(lambda: self._client(queue).get_queue_properties(), f"queue {queue}")

    def send(self, queue: str, body: dict[str, Any] | str, *, delay_seconds: int = 0) -> None:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError

        text = encode(body)
        try:
            self._client(queue).send_message(text, visibility_timeout=delay_seconds or None)
        except (HttpResponseError, ServiceRequestError) as error:
            raise TransientError(f"could not send to queue {queue}: {error}") from error
