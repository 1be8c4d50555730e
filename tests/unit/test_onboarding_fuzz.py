"""Fuzz the onboarding handler (Hypothesis) with the real config parser, over in-memory fakes.

Messages come from the schema and beyond it: wrong types, extra fields, huge and tiny values,
every Unicode plane, raw bytes, base64 or not, JSON nested too deep, duplicate IDs, shapes that
look like Graph change events (passed to shared.handlers.notifications), principals and
profiles across the whole policy space, expiries past and far future; some are delivered twice,
and some pending grants are approved (sometimes by their own requester). After every message:

1. the handler never raises (the fakes never fail transiently, so nothing here is transient);
2. every refused message is in `onboarding-rejected`, within the queue's size limit, with a reason;
3. no grant outside its profile's targets, kinds, tenants or duration is in the ledger or in ARM;
4. a grant of an approval profile writes nothing until it is approved;
5. a message delivered twice has the effect of once (no second write, the same ledger).

`make test` runs a bounded number of examples. The long run prints its totals:
    .venv/bin/python tests/unit/test_onboarding_fuzz.py [EXAMPLES]
    messages: N / grants_outside_policy: 0 / lost: 0
"""
from __future__ import annotations

import base64
import json
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from fakes import FakeAssignments, FakeDirectory, app, group, user  # noqa: E402
from shared.adapters.audit import MemoryAudit  # noqa: E402
from shared.adapters.ledger import MemoryLedger  # noqa: E402
from shared.adapters.queues import MAX_MESSAGE_BYTES, ONBOARDING, ONBOARDING_REJECTED, MemoryQueues, encode  # noqa: E402
from shared.core.config import HOME as HOME_ENTRY, parse_config  # noqa: E402
from shared.core.errors import NotFoundError  # noqa: E402
from shared.core.principals import PrincipalKind  # noqa: E402
from shared.core.scopes import ADMIN_ROLES  # noqa: E402
from shared.core.tenants import TenantResolver  # noqa: E402
from shared.engine.reconcile import Engine  # noqa: E402
from shared.handlers import onboarding  # noqa: E402

HOME = "11111111-1111-1111-1111-111111111111"
FABRIKAM = "22222222-2222-2222-2222-222222222222"
NORTHWIND = "33333333-3333-3333-3333-333333333333"
CLUSTER = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
APP_ID = "0000000a-0000-0000-0000-00000000000a"


def target(database, role):
    return {"cluster": CLUSTER, "database": database, "role": role}


CONFIG = {
    "mappings": [],
    "profiles": {
        "analyst": {"targets": [target("Sales", "Viewer")]},
        "partners": {"tenants": ["home", "fabrikam.com"], "principalKinds": ["user", "app"], "maxDuration": "P30D",
                     "targets": [target("Shared", "Viewer"), target("Sales", "Viewer")]},
        "consumers": {"allowConsumerAccounts": True, "maxDuration": "PT8H", "targets": [target("Public", "Viewer")]},
        "robots": {"principalKinds": ["app", "group"], "tenants": [NORTHWIND, "home"], "targets": [target("Telemetry", "Ingestor")]},
        "sales-admin": {"admin": True, "maxDuration": "P7D", "approval": True, "principalKinds": ["user", "group"],
                        "targets": [target("Sales", "Admin")]},
        "reviewed": {"approval": True, "targets": [target("Finance", "Viewer")]},
    },
    "onboarding": {"allowDirectTargets": True, "maxNewIdentityRetries": 1, "directTargets": [
        target("finance-strasse", "Viewer"), target("Telemetry", "Viewer"), target("Telemetry", "Admin")]},
}
PRINCIPALS = [
    "ann@contoso.com", "ANN@contoso.com", "bob@contoso.com", "anne@contoso.com",  # home users, and a typo
    "alice@fabrikam.com", "nina@northwind.example", "zoe@nowhere.example", "carol@outlook.com",
    "alice_fabrikam.com#EXT#@contoso.com", "Analysts", "Sales-DL", "sales-dl@contoso.com", APP_ID, "Robot",
    "00000001-0000-0000-0000-000000000000", "aaduser=ann@contoso.com", f"aadapp={APP_ID};{NORTHWIND}",
    f"aadgroup=00000000-0000-0000-0000-0000000000ee;{FABRIKAM}", "msauser=dave@hotmail.com",
]
REQUESTERS = ["hr-bot", "approver", "someone@contoso.com"]
IDS = ["m1", "m2", "m3", "hr-42"]


class Directory(FakeDirectory):
    """The fake directory with users by UPN and one service principal."""

    def __init__(self):
        super().__init__(tenants={"fabrikam.com": FABRIKAM, "northwind.example": NORTHWIND})
        self.users = {
            "ann@contoso.com": user("00000001-0000-0000-0000-000000000000", "ann@contoso.com"),
            "bob@contoso.com": user("00000002-0000-0000-0000-000000000000", "bob@contoso.com"),
            "alice_fabrikam.com#ext#@contoso.com": user("00000003-0000-0000-0000-000000000000",
                                                        "alice_fabrikam.com#EXT#@contoso.com", user_type="Guest",
                                                        mail="alice@fabrikam.com"),
        }
        self.add_group(group("00000008-0000-0000-0000-000000000000", "Analysts"), [])
        self.add_group(group("00000009-0000-0000-0000-000000000000", "Sales-DL", security=False, mail_enabled=True,
                             mail="sales-dl@contoso.com"), [])
        self.robot = app("0000000b-0000-0000-0000-00000000000b", APP_ID, "Robot")

    def find_user(self, ref):
        found = self.users.get(ref.casefold()) or next(
            (u for u in self.users.values() if u.id == ref.casefold()), None)
        if found is None:
            raise NotFoundError(f"no user {ref}")
        return found

    def find_service_principal(self, ref):
        if ref.casefold() in (APP_ID, self.robot.id, "robot"):
            return self.robot
        raise NotFoundError(f"no service principal {ref}")


def world() -> Engine:
    directory = Directory()
    tenants = TenantResolver(directory, home_tenant_id=HOME, home_domains=["contoso.com"])
    return Engine(parse_config(CONFIG), directory, FakeAssignments(), tenants, HOME, audit=MemoryAudit(),
                  ledger=MemoryLedger(), queues=MemoryQueues(), sleep=lambda s: None, retry_budget_seconds=0)


# --- what the fuzzer sends --------------------------------------------------------------------------

NOW = datetime(2031, 6, 1, 12, 0, tzinfo=timezone.utc)
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
times = st.sampled_from([
    (NOW + timedelta(hours=1)).isoformat(), (NOW + timedelta(days=6)).isoformat(), (NOW + timedelta(days=29)).isoformat(),
    (NOW + timedelta(days=400)).isoformat(), (NOW - timedelta(days=1)).isoformat(), "9999-12-31T23:30:00-01:00",
    "0001-01-01T00:30:00+01:00", "2031-06-01T12:00:00", "tomorrow", "",
]) | st.datetimes(timezones=st.just(timezone.utc)).map(datetime.isoformat)
texts = st.text(max_size=40) | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
target_choices = st.sampled_from([
    target("finance-strasse", "Viewer"), target("\ufb01nance-stra\u00dfe", "Viewer"), target("FINANCE-STRASSE", "viewer"),
    target("Telemetry", "Viewer"), target("Telemetry", "Admin"), target("Sales", "Viewer"),
    {"cluster": CLUSTER, "role": "AllDatabasesAdmin"}, {"cluster": "adx-prod", "role": "Viewer"},
])
targets = st.lists(target_choices | anything, min_size=0, max_size=3)

PROFILES = [*CONFIG["profiles"], "ghost", "Analyst"]
GOOD = ["ann@contoso.com", "bob@contoso.com", "alice@fabrikam.com", "carol@outlook.com", APP_ID, "Analysts"]
soon = st.sampled_from([(NOW + timedelta(hours=h)).isoformat() for h in (1, 7, 100, 160, 600)])
sane = st.fixed_dictionaries({"principal": st.sampled_from(GOOD) | st.sampled_from(PRINCIPALS),
                              "requestedBy": st.sampled_from(REQUESTERS)}, optional={
    "version": st.just(1),
    "id": st.sampled_from(IDS),
    "action": st.sampled_from(["grant", "grant", "grant", "revoke"]),
    "principalType": st.sampled_from(["User", "App", "Group"]),
    "expiresAt": soon | soon | times,
    "reason": st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=30),
    "issuedAt": st.sampled_from([(NOW - timedelta(minutes=m)).isoformat() for m in (0, 1, 5, 60)]),
    "sequence": st.integers(min_value=0, max_value=5),
})
chosen = st.one_of(*[st.fixed_dictionaries({"profile": st.sampled_from(PROFILES)})] * 3,
                   st.fixed_dictionaries({"targets": st.lists(target_choices, min_size=1, max_size=3)}))
beyond = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([2, "1", True]) | anything,
    "id": texts | anything,
    "action": st.just("delete") | anything,
    "principal": texts | anything,
    "principalType": st.just("Robot") | anything,
    "profile": texts | anything,
    "targets": targets,
    "expiresAt": times | anything,
    "reason": texts | st.text(min_size=1000, max_size=1100),
    "requestedBy": texts | st.none(),
    "sequence": st.integers(min_value=-2, max_value=2**64) | anything,
    "_attempt": st.integers(min_value=-1, max_value=3) | anything,
    "_enqueued": times | anything,
    "role": st.just("Admin"),
    "extra": anything,
    "eventType": st.sampled_from(["Microsoft.Graph.GroupUpdated", "Microsoft.Graph.UserUpdated"]) | anything,
})
# Mostly messages a producer could send (so grants happen), the rest broken every way.
messages = st.one_of(*[st.builds(lambda a, b: a | b, sane, chosen)] * 4, st.builds(lambda a, b, c: a | b | c, sane, chosen, beyond))


@st.composite
def bodies(draw) -> bytes | str:
    """A queue body: a message as JSON (ASCII-escaped or not, base64 or not), or anything else."""
    kind = draw(st.sampled_from(["json"] * 6 + ["base64", "bytes", "deep", "huge", "list"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(min_value=500, max_value=4000))
        return "[" * depth + "]" * depth
    message = draw(messages)
    if kind == "huge":
        message["reason"] = draw(st.sampled_from(["\u00e9", "x", "\U0001f600", "\u2028"])) * draw(
            st.integers(min_value=7000, max_value=16000))
    text = json.dumps([message] if kind == "list" else message, ensure_ascii=draw(st.booleans()))
    if kind == "base64":
        text = base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()
    return text if draw(st.booleans()) else text.encode("utf-8", "surrogatepass")


# --- the invariants ---------------------------------------------------------------------------------

class Tally(Counter):
    """messages, grants_outside_policy, lost (and the outcomes, for the long run's report)."""


def outside_policy(engine: Engine) -> list[str]:
    """Every ledger grant and every assignment that the config's policy does not allow."""
    config, problems = engine.config, []
    allowed_tenants = {HOME_ENTRY: HOME, "fabrikam.com": FABRIKAM}
    approved = {(p.principal.key, p.profile) for p in engine.ledger.pending() if p.status in ("approved", "granted")}
    granted = engine.ledger.grants({g.scope for g in engine.ledger.granted.values()})
    for grant in granted:
        if grant.profile == onboarding.DIRECT:
            direct = [t for t in config.onboarding.direct_targets if t.role not in ADMIN_ROLES]
            profile = onboarding.Profile(onboarding.DIRECT, False, tuple(direct))
        else:
            profile = config.profiles.get(grant.profile)
        if profile is None:
            problems.append(f"{grant}: no such profile")
            continue
        exact = [(t.scope.cluster, t.scope.database, t.role) for t in profile.targets]
        if (grant.scope.cluster, grant.scope.database, grant.role) not in exact:
            problems.append(f"{grant}: not one of the profile's targets as configured")
        principal = grant.principal
        if principal.kind is PrincipalKind.MSA:
            if not profile.allow_consumer_accounts:
                problems.append(f"{grant}: a consumer account")
        else:
            kind = {PrincipalKind.USER: "user", PrincipalKind.APP: "app", PrincipalKind.GROUP: "group"}[principal.kind]
            tenants = {allowed_tenants.get(t, t) for t in profile.tenants}
            if kind not in profile.principal_kinds or principal.tenant not in tenants:
                problems.append(f"{grant}: kind {kind} / tenant {principal.tenant} outside the profile")
        if profile.max_duration is not None and (
                grant.expires_at is None or datetime.fromisoformat(grant.expires_at) > NOW + profile.max_duration):
            problems.append(f"{grant}: expires {grant.expires_at}, beyond {profile.max_duration}")
        if profile.approval and (principal.key, profile.name) not in approved:
            problems.append(f"{grant}: granted without approval")
    wanted = {(g.scope, g.role, g.principal.key) for g in granted}
    for scope, found in engine.assignments.state.items():
        for assignment in found.values():
            if (scope, assignment.role, assignment.principal.key) not in wanted:
                problems.append(f"{assignment}: an assignment no grant in the ledger wants")
    return problems


def deliver(engine: Engine, body: bytes | str, tally: Tally, message_id: str, dequeue_count: int = 1):
    """Handle one body and check invariants 1 and 2; returns the outcome (None when it raised)."""
    rejected_before = len(engine.queues.sent.get(ONBOARDING_REJECTED, []))
    try:
        outcome = onboarding.handle(engine, body, message_id=message_id, dequeue_count=dequeue_count, now=NOW)
    except Exception as error:  # invariant 1: nothing here is transient
        tally["lost"] += 1
        raise AssertionError(f"the handler raised {error!r} for {body[:300]!r}") from error
    tally[f"outcome_{outcome.status}"] += 1
    new = engine.queues.sent.get(ONBOARDING_REJECTED, [])[rejected_before:]
    if outcome.status == "rejected":  # invariant 2
        if len(new) != 1 or not new[0][0]["reason"] or len(encode(new[0][0]).encode()) > MAX_MESSAGE_BYTES:
            tally["lost"] += 1
            raise AssertionError(f"a refused message was not delivered whole: {outcome.detail[:300]}")
    elif new:
        raise AssertionError(f"a {outcome.status} message also sent a rejection: {new[0][0]['reason'][:300]}")
    return outcome


def exercise(engine: Engine, script: list[tuple[bytes | str, bool, bool]], tally: Tally) -> None:
    """Deliver each body (twice when asked), approve a pending grant when asked, checking every invariant."""
    for number, (body, twice, approve) in enumerate(script):
        tally["messages"] += 1
        writes = len(engine.assignments.writes)
        outcome = deliver(engine, body, tally, f"q{number}")
        if outcome.status == "pending" and len(engine.assignments.writes) != writes:  # invariant 4
            raise AssertionError("a pending grant wrote to ARM")
        if twice:  # invariant 5
            writes, ledger = len(engine.assignments.writes), dict(engine.ledger.granted)
            deliver(engine, body, tally, f"q{number}", dequeue_count=2)
            if len(engine.assignments.writes) != writes or engine.ledger.granted != ledger:
                raise AssertionError(f"delivering {outcome.status} message q{number} again had an effect")
        if approve:
            waiting = onboarding.list_pending(engine)
            if waiting:
                try:
                    onboarding.approve(engine, waiting[0].id, approver="approver")
                except onboarding.ApprovalError as error:
                    assert error.kind == "self-approval", error
                for released, _ in engine.queues.sent.pop(ONBOARDING, []):
                    deliver(engine, json.dumps(released), tally, f"q{number}-released")
        problems = outside_policy(engine)  # invariant 3
        tally["grants_outside_policy"] += len(problems)
        assert not problems, problems


scripts = st.lists(st.tuples(bodies(), st.booleans(), st.booleans()), min_size=1, max_size=8)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scripts)
def test_no_message_raises_is_lost_or_grants_outside_the_policy(script):
    exercise(world(), script, Tally())


def test_the_fuzzers_principals_cover_the_policy_space():
    """A grant of each kind of outcome the invariants talk about happens at least once."""
    engine, tally = world(), Tally()
    script = [json.dumps(m) for m in (
        {"principal": "ann@contoso.com", "profile": "analyst"},
        {"principal": "alice@fabrikam.com", "profile": "partners"},
        {"principal": "carol@outlook.com", "profile": "consumers"},
        {"principal": APP_ID, "profile": "robots"},
        # an admin profile: the group by object ID (a display name is refused for admin roles)
        {"principal": "00000008-0000-0000-0000-000000000000", "profile": "sales-admin", "requestedBy": "hr-bot"},
        {"principal": "alice@fabrikam.com", "profile": "analyst"},
    )]
    exercise(engine, [(body, True, True) for body in script], tally)
    assert tally["outcome_granted"] >= 4 and tally["outcome_pending"] == 2 and tally["outcome_rejected"] >= 1


def long_run(examples: int) -> Tally:
    """Run `examples` scripts; the totals over all of them."""
    tally = Tally()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(scripts)
    def run(script):
        exercise(world(), script, tally)

    run()
    return tally


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)  # every rejection logs a warning: thousands of lines
    total = long_run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    for name in sorted(k for k in total if k.startswith("outcome_")):
        print(f"{name}: {total[name]}")
    print(f"messages: {total['messages']}")
    print(f"grants_outside_policy: {total['grants_outside_policy']}")
    print(f"lost: {total['lost']}")
