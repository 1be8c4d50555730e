"""Onboarding throughput: messages per second through the `onboard` function, and the latency from
dequeue to the assignment being visible in ARM.

Starts Azurite and the emulator (demo tenant; every assignment operation stays in progress for
`--lro-seconds` of wall time, 0.2 by default, polled every 0.05 s), enqueues MESSAGES grants of
one profile (one database of one cluster, so every write goes through that cluster's blob lease)
for distinct guest users, base64-encoded as Functions expects. Like the host (host.json batchSize 8,
newBatchThreshold 4), at most eight messages are handled at once and the next four are fetched as
soon as four workers are free; each is passed to the function as the host would, then deleted.
A grant's latency ends when the handler returns: its write is a finished ARM operation, so the
assignment is visible then; every assignment is checked in the emulator's state at the end.

With a non-zero `--lro-seconds` the cluster takes one write per operation time at most, so the
figure is bounded by 1 / lro_seconds (`serial_bound_per_s`): it then measures how close onboarding
gets to Kusto's serial limit, not the app's own overhead (`--lro-seconds 0` measures that).

Prints `name: value` lines; the last one is `onboard_per_s`.
Run: .venv/bin/python bench/onboarding.py [MESSAGES] [--lro-seconds S]
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from azure.functions.queue import QueueMessage  # noqa: E402
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy  # noqa: E402

from azurite import Azurite  # noqa: E402
from emulator.testing import DEMO_TENANT, EmulatorProcess  # noqa: E402

CLUSTER = "/subscriptions/5b000000-0000-4000-8000-000000000001/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
CONFIG = {
    "version": 1,
    "mappings": [],
    "profiles": {"analyst": {"tenants": ["home", "fabrikam.com"],
                             "targets": [{"cluster": CLUSTER, "database": "Sales", "role": "Viewer"}]}},
}
WORKERS = 8


def main(messages: int, lro_seconds: float) -> None:
    azurite = Azurite()
    try:
        with EmulatorProcess(DEMO_TENANT, "--lro-seconds", str(lro_seconds)) as emu:
            os.environ.update(emu.env)
            polling = "0.05" if lro_seconds else "0"
            os.environ.update({"SYNC_CONFIG": json.dumps(CONFIG), "ARM_POLLING_INTERVAL": polling,
                               "SYNC_SCHEDULE": "0 */30 * * * *", "AzureWebJobsStorage": azurite.connection_string})
            import function_app

            onboard = function_app.onboard.build().get_user_function()
            queue = QueueClient.from_connection_string(
                azurite.connection_string, "onboarding", message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy())
            queue.create_queue()
            people = [f"person{i:05d}@fabrikam.com" for i in range(messages)]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda who: queue.send_message(json.dumps({"principal": who, "profile": "analyst"})), people))
            onboard(QueueMessage(id="warm-up", body=json.dumps({"principal": "grace@contoso.com", "profile": "analyst"}).encode()))

            latencies: list[float] = []

            def work(message, received: float) -> None:
                try:
                    onboard(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=message.dequeue_count))
                    latencies.append(time.perf_counter() - received)
                    queue.delete_message(message)
                finally:
                    free.release()

            started = time.perf_counter()
            free = threading.Semaphore(WORKERS)
            with ThreadPoolExecutor(WORKERS) as pool:
                while True:
                    # Like the host: fetch the next batch once half of the workers are free.
                    for _ in range(WORKERS // 2):
                        free.acquire()
                    batch = list(queue.receive_messages(max_messages=WORKERS // 2, visibility_timeout=300))
                    received = time.perf_counter()
                    for _ in range(WORKERS // 2 - len(batch)):
                        free.release()
                    if not batch:
                        break
                    for message in batch:
                        pool.submit(work, message, received)
            elapsed = time.perf_counter() - started

            cluster = next(c for c in emu.state()["clusters"] if c["name"] == "adx-prod")
            visible = {a["principalId"] for a in cluster["databasePrincipalAssignments"]["Sales"]}
            missing = sum(who not in visible for who in people)
    finally:
        azurite.stop()
    print(f"messages: {messages}")
    print(f"workers: {WORKERS}")
    print(f"lro_seconds: {lro_seconds:g}")
    if lro_seconds:
        print(f"serial_bound_per_s: {1 / lro_seconds:.1f}")
    print(f"elapsed_s: {elapsed:.1f}")
    print(f"missing_assignments: {missing}")
    print(f"p50_visible_ms: {statistics.median(latencies) * 1000:.0f}")
    print(f"p95_visible_ms: {statistics.quantiles(latencies, n=20)[-1] * 1000:.0f}")
    print(f"onboard_per_s: {messages / elapsed:.1f}")
    if missing:
        sys.exit(1)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("messages", nargs="?", type=int, default=200)
    parser.add_argument("--lro-seconds", type=float, default=0.2)
    args = parser.parse_args()
    main(args.messages, args.lro_seconds)
