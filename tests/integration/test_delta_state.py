"""The quick cycles' state and full-read requests in Table storage (Azurite)."""
import uuid

from azure.data.tables import TableServiceClient

from shared.engine.delta import DeltaState, TableStateStore


def test_the_state_round_trips_whatever_its_size_and_a_full_read_request_is_kept_apart(azurite):
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    store = TableStateStore(service.get_table_client(f"state{uuid.uuid4().hex[:8]}"))
    assert store.load() is None and store.full_read_requested() == 0
    groups = {f"group-{i}": f"{i:08d}-0000-0000-0000-000000000000" for i in range(2000)}  # > one 64 KiB property
    state = DeltaState("v1", ["link-1"], groups, cycles=3, full_started_ms=1_800_000_000_000)
    store.save(state)
    store.request_full_read(1_800_000_000_500)
    store.save(state)  # a cycle saving its state does not touch the request
    assert store.load() == state and store.full_read_requested() == 1_800_000_000_500
