"""Issue case 5 through the CLI, with the default guard: the guard stops accidents, not
offboarding, so one leaver of two is removed by `apply` (not held) and the run says succeeded."""
import json

from conftest import ADX_PROD
from test_cli import cli  # noqa: F401 (the fixture)

FINANCE = "b0000000-0000-4000-8000-000000000006"  # Finance Readers: emma and diego
EMMA = "a0000000-0000-4000-8000-000000000005"
CONFIG = {"version": 1, "mappings": [  # no guards: the defaults
    {"name": "finance-sales", "group": FINANCE, "targets": [{"cluster": ADX_PROD, "database": "Sales", "role": "Viewer"}]}]}


def test_the_default_guard_removes_one_leaver_of_two(cli, e2e_emulator):
    assert cli("apply", config=CONFIG).returncode == 0
    e2e_emulator.directory(removeMembers={FINANCE: [EMMA]})
    planned = json.loads(cli("plan", "--format", "json", config=CONFIG).stdout)["changes"]
    assert [c["action"] for c in planned] == ["remove"]
    assert EMMA in planned[0]["principal"] or "emma@contoso.com" in planned[0]["principal"]
    applied = cli("apply", "--format", "json", config=CONFIG)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    report = json.loads(applied.stdout)
    assert report["status"] == "succeeded" and report["counts"] == {"succeeded": 1}
    assert cli("plan", config=CONFIG).returncode == 0  # in sync
