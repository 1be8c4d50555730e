"""Apply at the serial limit: one big change over several clusters, through the real path.

The emulator keeps every assignment operation in progress for LRO_SECONDS of wall time (and its
cluster busy meanwhile, as Kusto does), so a cluster takes at most one write per LRO_SECONDS: for N
adds spread over K clusters the serial bound is N/K x LRO_SECONDS. The run goes as in Azure:

1. the timer function (`sync_schedule`, host storage in Azurite) plans and queues one job per
   cluster on `cluster-jobs`;
2. WORKERS processes, sharing that Azurite, each run the `apply_cluster_job` function as the host
   would on instances added at scale-out: they run the `warmup` function first, then poll the
   queue (backing off at random from 100 ms to host.json's maxPollingInterval while it is empty, as
   the host does), hold up to host.json's batchSize messages on threads, fetch more once no more
   than newBatchThreshold are left, delete a message when the function returns, and make a failed
   one visible again;
3. the parent run's rolled-up status (GET /api/runs/{id}) is polled until it is final.

`wall_s` runs from the timer's start to the run's final status; the `last_job_*` lines split it
along the job that finished last (the timer's plan, the job's pick-up, its own plan and lease, its
writes, the end of the job, the status poll seeing it), and `cpu_s_*` say where the CPU went.
`max_concurrent_writes_per_cluster` is read from the emulator's operation history (start and end
of every operation). A second case gives every job a RUN_DEADLINE_SECONDS deadline shorter than
its work: its parts end `incomplete`, their continuations finish, and `lost_writes` counts wanted
assignments missing at the end.

Prints `name: value` lines; the last one is `apply_efficiency` (bound_s / wall_s).
Run: .venv/bin/python bench/apply.py [--lro-seconds 0.2] [--writes 400] [--clusters 4] [--workers 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

HOME = "11111111-0000-4000-8000-000000000001"
SUB = "5b000000-0000-4000-8000-000000000001"


def cluster_id(k: int) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-{k}"


def world(writes: int, clusters: int) -> tuple[dict, dict]:
    """A tenant with one group of writes/clusters users per cluster, and a config mapping each."""
    per = writes // clusters
    users = [{"id": f"a0000000-0000-4000-8000-{i:012d}", "userPrincipalName": f"user{i}@contoso.com"}
             for i in range(per * clusters)]
    groups = [{"id": f"b0000000-0000-4000-8000-{k:012d}", "displayName": f"team-{k}", "mailEnabled": False,
               "securityEnabled": True, "groupTypes": [],
               "members": [u["id"] for u in users[k * per:(k + 1) * per]]} for k in range(clusters)]
    tenant = {
        "tenant": {"id": HOME, "domains": ["contoso.com"]}, "users": users, "groups": groups,
        "clusters": [{"subscriptionId": SUB, "resourceGroup": "rg-data", "name": f"adx-{k}", "databases": ["Sales"],
                      "principalAssignments": [], "databasePrincipalAssignments": {"Sales": []}}
                     for k in range(clusters)],
    }
    config = {"version": 1, "mappings": [
        {"name": f"team-{k}", "group": f"team-{k}",
         "targets": [{"cluster": cluster_id(k), "database": "Sales", "role": "Viewer"}]} for k in range(clusters)]}
    return tenant, config


def worker() -> None:
    """One Functions instance: run cluster-jobs messages through `apply_cluster_job` until told to stop."""
    from azure.functions.queue import QueueMessage
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy

    import function_app
    from shared.adapters.queues import CLUSTER_JOBS

    host = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    batch, threshold = host["batchSize"], host["newBatchThreshold"]
    h, m, s = (float(x) for x in host["maxPollingInterval"].split(":"))
    max_poll = h * 3600 + m * 60 + s
    from azure.functions.warmup import WarmUpContext

    function_app.warmup.build().get_user_function()(WarmUpContext())  # as the host does on an added instance
    Path(f"{os.environ['BENCH_STOP_FILE']}.ready.{os.getpid()}").touch()
    apply_job = function_app.apply_cluster_job.build().get_user_function()
    queue = QueueClient.from_connection_string(os.environ["AzureWebJobsStorage"], CLUSTER_JOBS,
                                               message_decode_policy=TextBase64DecodePolicy())
    in_flight = threading.Semaphore(batch)
    stop = Path(os.environ["BENCH_STOP_FILE"])
    trace = Path(os.environ["BENCH_TRACE_FILE"])

    def run(message) -> None:
        received = time.monotonic()
        try:
            apply_job(QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=message.dequeue_count))
            queue.delete_message(message)
        except Exception:  # the host retries it: visible again
            queue.update_message(message, visibility_timeout=0)
        finally:
            in_flight.release()
            with trace.open("a") as out:  # one short line per append: lines from threads do not mix
                out.write(json.dumps({"job": json.loads(message.content).get("jobId"), "received": received,
                                      "returned": time.monotonic()}) + "\n")

    wait, exponent = 0.1, 0
    with ThreadPoolExecutor(batch) as pool:
        while not stop.exists():
            free = sum(1 for _ in iter(lambda: in_flight.acquire(blocking=False), False))
            if batch - free > threshold:  # more than newBatchThreshold still running: not yet
                for _ in range(free):
                    in_flight.release()
                time.sleep(0.05)
                continue
            try:
                got = list(queue.receive_messages(max_messages=max(free, 1), visibility_timeout=600)) if free else []
            except Exception:
                got = []
            for _ in range(free - len(got)):
                in_flight.release()
            for message in got:
                pool.submit(run, message)
            # The host's delays between polls (the Storage extension's RandomizedExponentialBackoffStrategy,
            # in Azure/azure-sdk-for-net): 100 ms after messages; after an empty poll 100 ms plus
            # 2^(n-1) x 100 ms, +-20 % at random, n growing until maxPollingInterval is reached.
            if got:
                wait, exponent = 0.1, 1
            elif wait != max_poll:
                wait = 0.1 + random.uniform(0.8, 1.2) * 2 ** (exponent - 1) * 0.1 if exponent else 0.1
                wait, exponent = (wait, exponent + 1) if wait < max_poll else (max_poll, exponent)
            time.sleep(wait)


def case(emu, azurite, config: dict, workers: int, deadline: float | None, polling: float) -> dict:
    """One timer run processed by `workers` worker processes; its figures."""
    from shared import app as wiring
    from shared.handlers import runs

    from azure.data.tables import TableClient, TableServiceClient

    from shared.adapters.audit import RUNS_TABLE
    from shared.engine.delta import TABLE

    emu.reset()
    TableServiceClient.from_connection_string(azurite.connection_string).delete_table(TABLE)  # a full read each case
    env = dict(os.environ) | emu.env | {
        "SYNC_CONFIG": json.dumps(config), "ARM_POLLING_INTERVAL": str(polling),
        "SYNC_SCHEDULE": "0 */30 * * * *", "AzureWebJobsStorage": azurite.connection_string,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }
    if deadline:
        env["RUN_DEADLINE_SECONDS"] = str(deadline)
    os.environ.clear()
    os.environ.update(env)
    wiring._cache.clear()
    with tempfile.TemporaryDirectory() as folder:
        stop, trace = Path(folder) / "stop", Path(folder) / "trace"
        env["BENCH_STOP_FILE"], env["BENCH_TRACE_FILE"] = str(stop), str(trace)
        procs = [subprocess.Popen([sys.executable, __file__, "--worker"], env=env, cwd=ROOT) for _ in range(workers)]
        time.sleep(3)  # let the workers import the app and start polling, as warm instances do
        while len(list(Path(folder).glob("stop.ready.*"))) < workers:  # a loaded machine may need longer
            time.sleep(0.1)
        import function_app
        from azure.functions.timer import TimerRequest

        emu.clear_requests()
        watched = [psutil.Process(p.pid) for p in procs] + [psutil.Process(), psutil.Process(emu.process.pid),
                                                            psutil.Process(azurite.process.pid)]
        cpu_before = [_cpu(p) for p in watched]
        started = time.monotonic()
        function_app.sync_schedule.build().get_user_function()(TimerRequest(past_due=False))
        engine = wiring.engine()
        parent = engine.audit.list_runs(limit=1)[0]
        job_rows = TableClient.from_connection_string(azurite.connection_string, RUNS_TABLE)
        while True:
            # The job rows' statuses alone until none runs: the rolled-up run reads every change
            # (400 rows, recorded as intended before the writes), which every 50 ms would cost this
            # process and Azurite seconds of the CPU the workers need.
            rows = list(job_rows.query_entities("PartitionKey eq @p", parameters={"p": f"jobs-{parent['runId']}"},
                                                select=["status", "jobIndex"]))
            if len({r["jobIndex"] for r in rows}) == len(parent["jobs"]) and \
                    not any(r["status"] in ("queued", "running") for r in rows):
                rolled = runs.rolled_up(engine.audit, engine.audit.get_run(parent["runId"]))
                if rolled["status"] not in ("queued", "running"):
                    break
            time.sleep(0.05)
        wall = time.monotonic() - started
        cpu = [_cpu(p) - before for p, before in zip(watched, cpu_before)]
        stop.touch()
        for proc in procs:
            proc.wait(timeout=60)
        handled = {t["job"]: t for t in map(json.loads, trace.read_text().splitlines())}
    operations = emu.operations()
    by_cluster: dict[str, list[tuple[float, int]]] = {}
    for op in operations:
        by_cluster.setdefault(op["cluster"], []).extend([(op["started"], 1), (op["ended"] or 1e18, -1)])
    overlap, gaps = 0, []
    for name in by_cluster:
        ops = sorted((op for op in operations if op["cluster"] == name), key=lambda op: op["started"])
        gaps += [b["started"] - a["ended"] for a, b in zip(ops, ops[1:]) if a["ended"]]
    for events in by_cluster.values():
        level = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            level += step
            overlap = max(overlap, level)
    refused = sum(1 for r in emu.requests()["requests"] if r["method"] in ("PUT", "DELETE") and r["status"] == 409)
    state = {c["name"]: {a["principalId"] for a in c["databasePrincipalAssignments"]["Sales"]} for c in emu.state()["clusters"]}
    jobs = rolled.get("clusterJobs", [])
    spans = [op["ended"] - op["started"] for op in operations if op["ended"]]
    return {"status": rolled["status"], "wall": wall, "gap_ms": 1000 * sum(gaps) / max(len(gaps), 1),
            "op_ms": 1000 * sum(spans) / max(len(spans), 1), "load": os.getloadavg()[0], "overlap": overlap, "refused": refused, "state": state,
            "parts": len(jobs), "incomplete": sum(j["status"] == "incomplete" for j in jobs),
            "writes": sum(1 for op in operations if op["status"] == "Succeeded"),
            "path": _critical_path(engine.audit.jobs(parent["runId"]), handled, operations, started, started + wall),
            "cpu": {"workers": sum(cpu[:workers]), "bench": cpu[workers], "emulator": cpu[workers + 1],
                    "azurite": cpu[workers + 2], "wall": wall}}


def _cpu(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _critical_path(jobs: list[dict], handled: dict, operations: list[dict], started: float, ended: float) -> dict:
    """Where the wall time of the job that finished last went, as consecutive spans that add up to
    wall_s (monotonic clocks are one clock on one machine; the audit's wall-clock times are mapped
    onto it): the timer's plan until that job was queued, its pick-up by a worker, its own plan and
    lease, its writes, the end of its job after the last write, and the status poll seeing it."""
    to_monotonic = time.monotonic() - time.time()
    last = max((j for j in jobs if j["runId"] in handled), key=lambda j: handled[j["runId"]]["returned"])
    name = last["cluster"].rsplit("/", 1)[-1]
    ops = [op for op in operations if op["cluster"] == name and op["ended"]]
    first_part = min((j for j in jobs if j["cluster"] == last["cluster"]), key=lambda j: int(j["part"]))
    first_queued = first_part["startedMs"] / 1000 + to_monotonic
    trace = handled[first_part["runId"]]
    return {"timer_plan_s": first_queued - started, "pickup_s": trace["received"] - first_queued,
            "plan_and_lease_s": min(op["started"] for op in ops) - trace["received"],
            "writes_s": max(op["ended"] for op in ops) - min(op["started"] for op in ops),
            "job_end_s": handled[last["runId"]]["returned"] - max(op["ended"] for op in ops),
            "status_seen_s": ended - handled[last["runId"]]["returned"], "writes": len(ops)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--lro-seconds", type=float, default=0.2)
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=15.0)
    parser.add_argument("--polling-interval", type=float, default=0.05,
                        help="ARM_POLLING_INTERVAL: the emulator sends no Retry-After under a second left")
    args = parser.parse_args()
    if args.worker:
        worker()
        return

    from azurite import Azurite
    from emulator.testing import EmulatorProcess, write_tenant

    tenant, config = world(args.writes, args.clusters)
    per = args.writes // args.clusters
    # A user is granted by UPN or by object ID (depending on the app's principal identity): either counts.
    expected = {f"adx-{k}": [{f"user{i}@contoso.com", f"a0000000-0000-4000-8000-{i:012d}"}
                             for i in range(k * per, (k + 1) * per)] for k in range(args.clusters)}
    azurite = Azurite()
    try:
        with tempfile.TemporaryDirectory() as folder, \
                EmulatorProcess(write_tenant(folder, tenant), "--lro-seconds", str(args.lro_seconds)) as emu:
            full = case(emu, azurite, config, args.workers, None, args.polling_interval)
            timed = case(emu, azurite, config, args.workers, args.deadline, args.polling_interval)
    finally:
        azurite.stop()
    bound = per * args.lro_seconds
    lost = sum(1 for name, want in expected.items() for ids in want if not ids & timed["state"].get(name, set()))
    missing = sum(1 for name, want in expected.items() for ids in want if not ids & full["state"].get(name, set()))
    print(f"writes: {full['writes']}")
    print(f"clusters: {args.clusters}")
    print(f"workers: {args.workers}")
    print(f"lro_seconds: {args.lro_seconds}")
    print(f"run_status: {full['status']}")
    print(f"missing_assignments: {missing}")
    print(f"arm_polling_interval_s: {args.polling_interval:g}")
    print(f"refused_writes_409: {full['refused']}")
    print(f"mean_operation_ms: {full['op_ms']:.0f}")
    print(f"mean_gap_between_writes_ms: {full['gap_ms']:.0f}")
    print(f"load_average_1min: {full['load']:.1f}")
    path, cpu = full["path"], full["cpu"]
    # The job that finished last, span by span: these add up to wall_s.
    for key in ("timer_plan_s", "pickup_s", "plan_and_lease_s", "writes_s", "job_end_s", "status_seen_s"):
        print(f"last_job_{key}: {path[key]:.2f}")
    print(f"last_job_ms_per_write: {1000 * path['writes_s'] / max(path['writes'], 1):.0f}")
    for key in ("workers", "emulator", "azurite", "bench"):
        print(f"cpu_s_{key}: {cpu[key]:.1f}")
    print(f"cpu_busy_cores: {sum(cpu[k] for k in ('workers', 'emulator', 'azurite', 'bench')) / cpu['wall']:.2f}")
    print(f"max_concurrent_writes_per_cluster: {max(full['overlap'], timed['overlap'])}")
    print(f"deadline_s: {args.deadline:g}")
    print(f"deadline_job_parts: {timed['parts']}")
    print(f"deadline_parts_incomplete: {timed['incomplete']}")
    print(f"deadline_run_status: {timed['status']}")
    print(f"deadline_wall_s: {timed['wall']:.1f}")
    print(f"lost_writes: {lost}")
    print(f"bound_s: {bound:.1f}")
    print(f"wall_s: {full['wall']:.1f}")
    print(f"apply_efficiency: {bound / full['wall']:.2f}")
    if missing or lost or max(full["overlap"], timed["overlap"]) > 1:
        sys.exit(1)


if __name__ == "__main__":
    main()
