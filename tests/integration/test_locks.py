"""The per-cluster blob lease against Azurite: two holders never overlap."""
import threading
import time
import uuid

import pytest
from azure.storage.blob import ContainerClient

from shared.adapters.locks import BlobLeaseLocks, ClusterBusyError, blob_name

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


def test_the_lease_is_renewed_period_after_period_and_stays_ours(locks_factory, azurite):
    locks = locks_factory(renew_seconds=0.1)
    with locks.hold(CLUSTER) as lease:
        time.sleep(0.65)
        assert locks.renewals >= 4 and not lease.lost
        with pytest.raises(ClusterBusyError):  # still ours: nobody else gets it
            with locks_factory(wait_seconds=0).hold(CLUSTER):
                pass


def steal(locks, cluster: str) -> None:
    """Break the cluster's lease and take it, as another instance whose lease ran out might."""
    from azure.storage.blob import BlobLeaseClient

    blob = locks._container.get_blob_client(blob_name(cluster))
    BlobLeaseClient(blob).break_lease(lease_break_period=0)
    BlobLeaseClient(blob).acquire(lease_duration=15)


def test_a_stolen_lease_is_lost_at_the_next_renewal(locks_factory):
    locks = locks_factory(renew_seconds=0.1)
    with locks.hold(CLUSTER) as lease:
        steal(locks, CLUSTER)
        deadline = time.monotonic() + 2
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.lost and "renewal failed" in lease.reason


def test_a_stolen_lease_stops_the_writer_mid_job(locks_factory):
    """The engine over fakes of Graph and ARM, with the real blob lease: writes stop once it is stolen."""
    from fakes import FakeAssignments, FakeDirectory, group, user
    from shared.core.config import parse_config
    from shared.core.tenants import TenantResolver
    from shared.engine.reconcile import Engine

    home = "11111111-1111-1111-1111-111111111111"
    directory = FakeDirectory()
    directory.add_group(group("00000008-0000-0000-0000-000000000000", "Analysts"), [
        user(f"0000000{i}-0000-0000-0000-000000000000", f"u{i}@contoso.com") for i in range(1, 9)])
    config = parse_config({"mappings": [{"name": "analysts", "group": "Analysts",
                                         "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}]})
    arm = FakeAssignments()
    arm.write_seconds = 0.1
    locks = locks_factory(renew_seconds=0.1)
    tenants = TenantResolver(directory, home_tenant_id=home, home_domains=["contoso.com"])
    stolen = threading.Timer(0.25, steal, args=(locks, CLUSTER))
    stolen.start()
    report = Engine(config, directory, arm, tenants, home, locks=locks).run(trigger="test")
    stolen.join()
    assert report.status == "incomplete"
    written = len(arm.writes)
    assert 1 <= written < 8
    assert all("lease" in r.error for r in report.results if r.status == "pending")
    assert len([r for r in report.results if r.status == "pending"]) == 8 - written
