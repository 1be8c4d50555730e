"""Cold start: how much does the first plan cost on top of importing the SDKs at all?

Each figure is the median of 5 fresh processes, timed inside the child (interpreter start-up excluded):
- imports_floor_ms: `import azure.functions, azure.identity, azure.mgmt.kusto, msgraph` alone;
- first_plan_ms: import function_app, build the clients and compute the first plan of the demo
  tenant against the emulator (token, Graph reads, ARM lists included).
Last line: coldstart_ratio = first_plan_ms / imports_floor_ms (target <= 1.5).

The app's own modules are byte-compiled first (`make bytecode`, as a deployment package should
be: the SDKs in site-packages are compiled by pip, and without bytecode every cold start would
compile the app again, which is unfair to compare and slow in production on a read-only package).

Run: .venv/bin/python bench/coldstart.py
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.testing import EmulatorProcess  # noqa: E402

RUNS = 5
FLOOR = """
import time
t = time.perf_counter()
import azure.functions, azure.identity, azure.mgmt.kusto, msgraph
print((time.perf_counter() - t) * 1000)
"""
FIRST_PLAN = """
import time
t = time.perf_counter()
import function_app
from shared.app import engine
plan = engine().plan()
elapsed = (time.perf_counter() - t) * 1000
assert plan.changes, "the demo tenant should need changes"
print(elapsed)
"""


def child_ms(code: str, env: dict[str, str]) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                    "shared", "function_app.py"], cwd=ROOT, check=True)
    with EmulatorProcess(ROOT / "emulator" / "tenants" / "demo.json") as emu:
        env = os.environ | emu.env | {
            "SYNC_CONFIG": str(ROOT / "emulator" / "tenants" / "demo-config.yaml"),
            "ARM_POLLING_INTERVAL": "0",
        }
        floor, first = [], []
        for _ in range(RUNS):  # interleaved, so machine noise hits both series alike
            floor.append(child_ms(FLOOR, env))
            first.append(child_ms(FIRST_PLAN, env))
    floor_ms, first_ms = statistics.median(floor), statistics.median(first)
    print(f"imports_floor_ms: {floor_ms:.0f}")
    print(f"first_plan_ms: {first_ms:.0f}")
    print(f"coldstart_ratio: {first_ms / floor_ms:.2f}")


if __name__ == "__main__":
    main()
