"""The queue adapter against Azurite: messages arrive base64-encoded, as Functions reads them."""
import base64
import json
import uuid

from azure.storage.queue import QueueClient

from shared.adapters.queues import StorageQueues


def test_messages_are_sent_base64_encoded_and_delays_hide_them(azurite):
    name = f"q{uuid.uuid4().hex[:8]}"
    queues = StorageQueues({"AzureWebJobsStorage": azurite.connection_string})
    queues.send(name, {"runId": "r1"})
    queues.send(name, "later", delay_seconds=60)
    raw = QueueClient.from_connection_string(azurite.connection_string, name)
    received = [m.content for m in raw.receive_messages()]
    assert [json.loads(base64.b64decode(c)) for c in received] == [{"runId": "r1"}]
