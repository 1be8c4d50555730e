"""Data connections made by onboarding: a profile's templates filled in from the message's
`dataConnections` field, kept in the ledger while the grant lasts, removed with a revoke.

A message names each template it fills in and gives only the fields the profile lists in
`fromMessage`; anything else is refused with the reason (shared.handlers.onboarding turns that into
a rejection). The values are checked like the config's (shared.core.connections).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.adapters.ledger import OnboardedConnection
from shared.core.connections import ConnectionChange, DataConnection, connection_name, instance_name
from shared.core.errors import PermanentError
from shared.core.plan import Action, Policy
from shared.core.principals import Principal
from shared.engine.reconcile import READ_CONCURRENCY, Engine

FIELD = "dataConnections"


def declared(engine: Engine, profile: str, body: dict, principal: Principal) -> list[DataConnection]:
    """The connections this grant makes, or PermanentError with every problem of the message's field."""
    templates = engine.config.connection_templates.get(profile, ())
    given = body.get(FIELD)
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise PermanentError(f"{FIELD}: must be an object of template name -> fields")
    known = {t.name: t for t in templates}
    problems = [f"{FIELD}.{name}: profile {profile} has no data connection template of that name "
                f"(templates: {', '.join(known) or 'none'})" for name in given if name not in known]
    made = []
    for template in templates:
        try:
            made.append(template.instantiate(given.get(template.name, {}), principal.key))
        except ValueError as error:
            problems += error.args[0]
    for connection in made:  # one consumer group per source, the config's connections included
        for other in engine.config.data_connections:
            if other.identity[1:] == connection.identity[1:]:
                problems.append(f"{FIELD}: consumer group '{connection.get('consumerGroup')}' of {connection.source} "
                                f"is already used by the config's data connection {other.name}")
    if problems:
        raise PermanentError("invalid data connections: " + "; ".join(problems))
    return made


def record(engine: Engine, connections: list[DataConnection], profile: str, principal: Principal,
           message_id: str) -> list[OnboardedConnection | None]:
    """Write the ledger rows (first: a sync in between makes the same connection); returns the
    rows they replace, for `restore`."""
    scopes = {c.scope for c in connections}
    before = {(o.connection.scope, o.row_key): o for o in engine.ledger.connections(scopes)} if scopes else {}
    rows = [OnboardedConnection(c, profile, principal.fqn, message_id) for c in connections]
    previous = [before.get((row.connection.scope, row.row_key)) for row in rows]
    for row in rows:
        engine.ledger.record_connection(row)
    return previous


def restore(engine: Engine, connections: list[DataConnection], previous: list[OnboardedConnection | None],
            profile: str, principal: Principal) -> None:
    for connection, before in zip(connections, previous):
        if before is None:
            engine.ledger.remove_connection(OnboardedConnection(connection, profile, principal.fqn, ""))
        else:
            engine.ledger.record_connection(before)


def changes(engine: Engine, connections: list[DataConnection], policy: Policy) -> list[ConnectionChange]:
    """What making these connections takes (add, update, or a skip Kusto's validation asks for)."""
    names = {connection_name(policy.prefix, c.scope, c.name).casefold() for c in connections}
    return [c for c in _plan(engine, {c.scope for c in connections}, policy)
            if c.name.casefold() in names and c.action is not Action.REMOVE]


def revoke(engine: Engine, profile: str, principal: Principal, policy: Policy) -> list[ConnectionChange]:
    """Drop the principal's onboarded connections of this profile from the ledger; return their removals."""
    templates = engine.config.connection_templates.get(profile, ())
    scopes = {t.scope for t in templates}
    if not scopes:
        return []
    rows = [o for o in engine.ledger.connections(scopes)
            if o.profile == profile and (o.principal == principal.fqn or _made_for(o, templates, principal))]
    for row in rows:
        engine.ledger.remove_connection(row)
    names = {connection_name(policy.prefix, o.connection.scope, o.connection.name).casefold() for o in rows}
    return [c for c in _plan(engine, {o.connection.scope for o in rows}, policy)
            if c.name.casefold() in names and c.action is Action.REMOVE]


def _made_for(row: OnboardedConnection, templates, principal: Principal) -> bool:
    """Whether the row is one of this principal's (its name carries the principal's hash)."""
    return any(row.connection.name == instance_name(t.name, principal.key) for t in templates)


def _plan(engine: Engine, scopes: set, policy: Policy) -> list[ConnectionChange]:
    if not scopes:
        return []
    with ThreadPoolExecutor(max_workers=READ_CONCURRENCY, thread_name_prefix="read") as pool:
        return list(engine.plan_connections(engine.connection_listings(sorted(scopes), pool), policy, pool).changes)
