"""The per-cluster blob lease against Azurite: two holders never overlap."""
import threading
import time
import uuid

import pytest
from azure.storage.blob import ContainerClient

from shared.adapters.locks import BlobLeaseLocks, ClusterBusyError

CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"


@pytest.fixture
def locks_factory(azurite):
    container = f"locks-{uuid.uuid4().hex[:8]}"

    def make(**kwargs):
        client = ContainerClient.from_connection_string(azurite.connection_string, container)
        return BlobLeaseLocks(client, poll_seconds=0.05, **kwargs)

    return make


def test_two_holders_of_one_cluster_never_overlap(locks_factory):
    first, second = locks_factory(), locks_factory()
    timeline = []

    def work(locks, name):
        with locks.hold(CLUSTER):
            timeline.append((name, "in"))
            time.sleep(0.3)
            timeline.append((name, "out"))

    threads = [threading.Thread(target=work, args=(l, n)) for l, n in ((first, "a"), (second, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [step for _, step in timeline] == ["in", "out", "in", "out"]
    assert timeline[0][0] == timeline[1][0]


def test_different_clusters_do_not_wait_for_each_other(locks_factory):
    locks = locks_factory(wait_seconds=0)
    with locks.hold(CLUSTER):
        with locks.hold(CLUSTER.replace("adx-prod", "adx-dev")):
            pass


def test_a_busy_cluster_is_a_transient_error_after_the_wait(locks_factory):
    holder, waiter = locks_factory(), locks_factory(wait_seconds=0.2)
    with holder.hold(CLUSTER):
        with pytest.raises(ClusterBusyError, match="another run is writing"):
            with waiter.hold(CLUSTER):
                pass
    with waiter.hold(CLUSTER):
        pass
