"""The sync-safety state machine (tests/statemachine.py) run long: many random histories over the
engine and the in-memory fakes, every invariant checked after every run.

    .venv/bin/python bench/statemachine.py [--histories N] [--steps N] [--seed N]

Prints `histories`, `steps`, `runs` and, last, `invariant_violations` (0, or 1 with the shrunk
counterexample above it: Hypothesis stops at the first one).
"""
import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]

from hypothesis import HealthCheck, seed, settings  # noqa: E402

from statemachine import IDENTITY, SyncMachine  # noqa: E402


def main() -> int:
    logging.disable(logging.CRITICAL)  # the app warns about every injected fault
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, default=2000, help="histories (Hypothesis examples) to try")
    parser.add_argument("--steps", type=int, default=60, help="rules per history at most")
    parser.add_argument("--seed", type=int, default=None, help="replay one exploration")
    args = parser.parse_args()
    if args.seed is not None:  # Hypothesis reads the seed from the machine class, not from runTest
        seed(args.seed)(SyncMachine)
    test = SyncMachine.TestCase
    test.settings = settings(max_examples=args.histories, stateful_step_count=args.steps, deadline=None,
                             database=None, suppress_health_check=list(HealthCheck))
    case = test("runTest")
    run = case.runTest
    started = time.monotonic()
    violations = 0
    try:
        run()
    except Exception:  # the counterexample, shrunk, as Hypothesis prints it
        traceback.print_exc()
        violations = 1
    print(f"identity_rules: {'on' if IDENTITY else 'off (rename, guests, exclude spellings wait for them)'}")
    print(f"seconds: {time.monotonic() - started:.0f}")
    print(f"runs: {SyncMachine.runs}")
    print(f"guard_holds_released: {SyncMachine.releases}")
    print(f"histories: {SyncMachine.histories}")
    print(f"steps: {SyncMachine.steps}")
    print(f"invariant_violations: {violations}")
    return violations


if __name__ == "__main__":
    sys.exit(main())
