"""Operator CLI: `python -m shared plan|apply|check|doctor|resolve|runs|grants|revoke|pending|approve|deny|demo`.

Settings come from the environment, or from `--env-file` (KEY=VALUE lines). Exit codes:
0 done / in sync; 1 failure; 2 writes pending (plan); 3 only holds or skips remain (plan), or an
apply that held or skipped something. Errors are one clear message, no traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from shared.core.errors import ConfigError, SyncError

EXIT_OK, EXIT_FAILED, EXIT_PENDING, EXIT_HELD = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    for noisy in ("azure", "httpx", "msal", "urllib3", "shared.engine.reconcile"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # A failed sign-in is reported once, as our own one-line error, not as azure-identity's essay.
    logging.getLogger("azure.identity").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    try:
        if args.env_file:
            load_env_file(args.env_file)
        if getattr(args, "config", None):
            os.environ["SYNC_CONFIG"] = args.config
        return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except SyncError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", help="read settings from KEY=VALUE lines before anything else")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (never prints tokens)")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_plan_options(cmd):
        cmd.add_argument("--config", help="sync config file or inline config (default: SYNC_CONFIG)")
        cmd.add_argument("--scope", help="a mapping name, cluster name or ID, or CLUSTER/DATABASE")
        cmd.add_argument("--format", choices=("text", "json"), default="text")
        return cmd

    with_plan_options(commands.add_parser(
        "plan", help="show what apply would do; exit 2 if writes are pending, 3 if only holds or skips remain",
    )).set_defaults(handler=cmd_plan)
    apply = with_plan_options(commands.add_parser("apply", help="perform the plan"))
    apply.add_argument("--approve-deletes", action="store_true", help="release removals held by the deletion guard")
    apply.set_defaults(handler=cmd_apply)
    check = commands.add_parser("check", help="validate the settings and the sync config, then exit")
    check.add_argument("--config")
    check.set_defaults(handler=cmd_check)
    doctor = commands.add_parser("doctor", help="check the identity's Graph roles, ARM actions and storage against "
                                 "the config; exit 0 only when everything it needs is there")
    doctor.add_argument("--config")
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    doctor.set_defaults(handler=cmd_doctor)
    resolve = commands.add_parser("resolve", help="resolve a UPN, object ID, app ID, group or FQN to a principal")
    resolve.add_argument("principal")
    resolve.set_defaults(handler=cmd_resolve)
    runs = commands.add_parser("runs", help="the latest runs from the audit table, or one run with its changes")
    runs.add_argument("run_id", nargs="?", help="show this run with its changes")
    runs.add_argument("--limit", type=int, default=20, help="how many runs to list (default 20)")
    runs.add_argument("--format", choices=("text", "json"), default="text")
    runs.set_defaults(handler=cmd_runs)
    grants = commands.add_parser("grants", help="list the onboarding grants in the ledger")
    grants.add_argument("--profile", help="only this profile's (also one no longer in the config)")
    grants.add_argument("--principal", help="only this principal's (UPN, object ID, app ID or FQN)")
    grants.add_argument("--format", choices=("text", "json"), default="text")
    grants.set_defaults(handler=cmd_grants)
    revoke = commands.add_parser("revoke", help="revoke one onboarding grant, as a revoke message would")
    revoke.add_argument("--profile", required=True, help="the grant's profile (also one no longer in the config)")
    revoke.add_argument("--principal", required=True, help="the grantee (UPN, object ID, app ID or FQN)")
    revoke.set_defaults(handler=cmd_revoke)
    pending = commands.add_parser("pending", help="onboarding grants waiting for approval")
    pending.add_argument("--status", choices=("pending", "approved", "granted", "denied", "expired", "all"),
                         default="pending", help="which grants to list (default: pending)")
    pending.add_argument("--format", choices=("text", "json"), default="text")
    pending.set_defaults(handler=cmd_pending)
    for verb, text in (("approve", "release a pending grant (the onboarding queue writes it)"),
                       ("deny", "reject a pending grant with a reason")):
        decide = commands.add_parser(verb, help=text)
        decide.add_argument("grant_id", help="the pending grant's ID (from `pending`)")
        decide.add_argument("--by", required=True, help="who decides (recorded in the audit; never the requester)")
        decide.add_argument("--reason", required=verb == "deny", help="why (required to deny)")
        decide.set_defaults(handler=cmd_decide, verb=verb)
    demo = commands.add_parser("demo", help="start the emulator with the demo tenant, then plan and apply")
    demo.set_defaults(handler=cmd_demo)
    return parser


def load_env_file(path: str) -> None:
    """KEY=VALUE lines (blank lines and # comments skipped); also reads local.settings.json's Values."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        os.environ.update({k: str(v) for k, v in json.loads(text).get("Values", {}).items()})
        return
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"{path}:{number}: expected KEY=VALUE, got '{line}'"], source="env file")
        os.environ[key.strip()] = value.strip()


def print_plan(the_plan, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(the_plan.as_json(), indent=2))
    else:
        print("\n".join(the_plan.describe()))


def cmd_plan(args) -> int:
    from shared.app import engine

    the_plan = engine().plan(args.scope)
    print_plan(the_plan, args.format)
    if the_plan.writes:
        return EXIT_PENDING
    return EXIT_HELD if the_plan.pending else EXIT_OK


def cmd_apply(args) -> int:
    from shared.app import engine

    report = engine().run(args.scope, trigger="cli", approve_deletes=args.approve_deletes)
    if args.format == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        for result in report.results:
            error = f": {result.error}" if result.status == "failed" else ""
            print(f"{result.change.describe()} -> {result.status}{error}")
        for line in report.plan.describe_unowned():
            print(line)
        print(f"run {report.run_id}: {report.status} {report.counts()}")
    if report.status == "succeeded":
        return EXIT_OK
    return EXIT_HELD if report.status in ("succeeded_with_holds", "partially_skipped") else EXIT_FAILED


def cmd_check(args) -> int:
    from shared.core.config import load_config, reference_warnings
    from shared.core.settings import Settings

    settings = Settings.from_env()
    config = load_config(settings.sync_config)
    for warning in reference_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"settings ok; config {config.version} ok: {len(config.mappings)} mapping(s), "
          f"{len(config.scopes())} scope(s), {len(config.profiles)} profile(s)")
    return EXIT_OK


def cmd_doctor(args) -> int:
    from shared.app import engine
    from shared.core.settings import Settings
    from shared.handlers.doctor import diagnose

    report = diagnose(engine(), Settings.from_env())
    if args.format == "json":
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_resolve(args) -> int:
    from shared.app import build
    from shared.core.config import SyncConfig, load_config
    from shared.engine.resolve import resolve_principal
    from shared.core.settings import Settings

    settings = Settings.from_env(require_config=False)
    config = load_config(settings.sync_config) if settings.sync_config else SyncConfig()
    built = build(settings, config=config)
    principal = resolve_principal(args.principal, built.directory, built.tenants, built.home_tenant_id,
                                  guests=config.guests)
    principal_id, principal_type, tenant_id = principal.to_arm()
    print(json.dumps({
        "fqn": principal.fqn, "principalType": principal_type, "principalId": principal_id,
        "tenantId": tenant_id, "kind": principal.kind.value, "displayName": principal.display_name,
        "objectId": principal.object_id, "userPrincipalName": principal.upn,
    }, indent=2))
    return EXIT_OK


def cmd_runs(args) -> int:
    from shared.app import engine
    from shared.core.settings import Settings

    if not Settings.from_env().has_storage:
        raise ConfigError(["AzureWebJobsStorage: not set; runs are audited in its Table storage"], source="app settings")
    audit = engine().audit
    if args.run_id:
        run = audit.get_run(args.run_id)
        if run is None:
            print(f"error: no run {args.run_id}", file=sys.stderr)
            return EXIT_FAILED
        if args.format == "json":
            print(json.dumps(run, indent=2))
        else:
            print(f"run {run['runId']} ({run['trigger']}) {run['status']} {run.get('counts')}; started {run['started']}")
            for change in run.get("changes", []):
                scope = change["scope"]["cluster"].rsplit("/", 1)[-1] + (f"/{change['scope']['database']}" if change["scope"].get("database") else "")
                error = f": {change['error']}" if change.get("error") and change["result"] == "failed" else ""
                name = f" ({change['principalName']})" if change.get("principalName") else ""
                print(f"  {change['action']} {scope} {change['role']} {change['principal']}{name} -> {change['result']}{error}")
        return EXIT_OK
    runs = audit.list_runs(args.limit)
    if args.format == "json":
        print(json.dumps(runs, indent=2))
        return EXIT_OK
    for run in runs:
        print(f"{run['runId']}  {run['trigger']:<20} {run['status']:<17} {run.get('counts')}")
    return EXIT_OK


def _ledger_engine():
    from shared.app import engine
    from shared.core.settings import Settings

    if not Settings.from_env().has_storage:
        raise ConfigError(["AzureWebJobsStorage: not set; onboarding grants are kept in its Table storage"],
                          source="app settings")
    return engine()


def cmd_grants(args) -> int:
    from shared.core.plan import same_principal
    from shared.engine.resolve import resolve_principal

    eng = _ledger_engine()
    grants = eng.ledger.all_grants()
    if args.profile:
        grants = [g for g in grants if g.profile.casefold() == args.profile.casefold()]
    if args.principal:
        who = resolve_principal(args.principal, eng.directory, eng.tenants, eng.home_tenant_id)
        grants = [g for g in grants if same_principal(who, g.principal)]
    grants.sort(key=lambda g: (g.profile, g.scope, g.role.casefold(), g.principal.fqn))
    if args.format == "json":
        print(json.dumps([{
            "profile": g.profile, "scope": g.scope.as_json(), "role": g.role, "principal": g.principal.fqn,
            "messageId": g.message_id, "expiresAt": g.expires_at, "revokedAt": g.revoked_at, "ended": g.ended(),
            "offered": eng.config.offers(g.profile, g.scope, g.role),
        } for g in grants], indent=2))
        return EXIT_OK
    for g in grants:
        notes = [f"expires {g.expires_at}" if g.expires_at else "no expiry"]
        if g.revoked_at:
            notes.append(f"revoked {g.revoked_at}, removal pending")
        elif g.expired():
            notes.append("expired, removal pending")
        if not eng.config.offers(g.profile, g.scope, g.role):
            notes.append("no longer offered by the config")
        print(f"{g.profile} {g.scope} {g.role} {g.principal.fqn} (message {g.message_id}; {'; '.join(notes)})")
    print(f"{len(grants)} grant(s)")
    return EXIT_OK


def cmd_revoke(args) -> int:
    from shared.engine.reconcile import new_run_id
    from shared.handlers.onboarding import handle

    eng = _ledger_engine()
    message_id = f"cli-{new_run_id()}"
    body = {"action": "revoke", "principal": args.principal, "profile": args.profile, "id": message_id,
            "requestedBy": "python -m shared revoke"}
    outcome = handle(eng, json.dumps(body), message_id=message_id)
    print(f"{outcome.status}: {outcome.detail}")
    return EXIT_FAILED if outcome.status == "rejected" else EXIT_OK


def cmd_pending(args) -> int:
    from shared.app import engine
    from shared.handlers import onboarding

    found = onboarding.list_pending(engine(), None if args.status == "all" else args.status)
    if args.format == "json":
        print(json.dumps([p.as_json() for p in found], indent=2))
        return EXIT_OK
    for p in found:
        print(f"{p.id}  {p.status:<8} {p.profile} for {p.principal.fqn} (message {p.message_id}, requested by "
              f"{p.requested_by or '?'} at {p.requested}, until {p.deadline})")
    return EXIT_OK


def cmd_decide(args) -> int:
    from shared.app import engine
    from shared.handlers import onboarding

    try:
        if args.verb == "approve":
            decided = onboarding.approve(engine(), args.grant_id, approver=args.by, reason=args.reason)
        else:
            decided = onboarding.deny(engine(), args.grant_id, approver=args.by, reason=args.reason)
    except onboarding.ApprovalError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{decided.id} {decided.status} by {decided.decided_by}")
    return EXIT_OK


def cmd_demo(args) -> int:
    from emulator.testing import EmulatorProcess

    root = Path(__file__).resolve().parents[2]  # the repository: shared/handlers/cli.py
    with EmulatorProcess(root / "emulator" / "tenants" / "demo.json") as emu:
        os.environ.update(emu.env)
        os.environ.update({
            "SYNC_CONFIG": str(root / "emulator" / "tenants" / "demo-config.yaml"),
            "ARM_POLLING_INTERVAL": "0",
        })
        print(f"emulator ready at {emu.url} (demo tenant)\n", flush=True)
        print("== plan ==", flush=True)
        cmd_plan(argparse.Namespace(scope=None, format="text"))
        print("\n== apply ==", flush=True)
        apply_exit = cmd_apply(argparse.Namespace(scope=None, format="text", approve_deletes=False))
        print("\n== plan again (expect only drift and held items) ==", flush=True)
        cmd_plan(argparse.Namespace(scope=None, format="text"))
        return apply_exit
