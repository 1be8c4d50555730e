"""The sync-safety state machine (tests/statemachine.py), bounded for the normal suite: a fixed
set of short histories, so that it takes seconds and never flakes; `make statemachine` runs it long."""
from hypothesis import HealthCheck, settings

from statemachine import SyncMachine

SyncMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
)
TestSyncSafety = SyncMachine.TestCase
