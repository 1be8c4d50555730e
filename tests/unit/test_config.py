"""The sync config: loading, validation (every problem at once, with its path) and selectors."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from shared.core.config import (parse_duration, 
    Guards, Mapping, Onboarding, Ownership, Target, load_config, parse_config, resolve_selector,
)
from shared.core.errors import ConfigError
from shared.core.principals import parse_principal
from shared.core.scopes import Scope

SUB = "00000000-0000-0000-0000-000000000001"
PROD = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-prod"
TEST = f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.Kusto/clusters/adx-test"
OTHER_PROD = "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/rg/providers/Microsoft.Kusto/clusters/adx-prod"
APP = "aadapp=11111111-2222-3333-4444-555555555555;contoso.com"

FULL_YAML = f"""
version: 1
ownership:
  prefix: "ks-"
  adopt: false
guards:
  maxDeletes: 20
  maxDeletePercent: 25
guests: home
fullSyncEvery: 12
exclude:
  - "{APP}"
mappings:
  - name: analysts-sales
    group: "Analysts"
    mode: members
    include: users
    skipDisabledAccounts: true
    targets:
      - cluster: {PROD}
        database: Sales
        role: Viewer
profiles:
  analyst:
    admin: false
    targets: [ {{cluster: {PROD}, database: Sales, role: Viewer}} ]
onboarding:
  allowDirectTargets: false
  directTargets: [ {{cluster: {PROD}, database: Sales, role: User}} ]
  maxNewIdentityRetries: 6
"""

FULL_JSON = json.dumps({
    "onboarding": {"maxNewIdentityRetries": 6, "allowDirectTargets": False,
                   "directTargets": [{"role": "User", "database": "Sales", "cluster": PROD}]},
    "profiles": {"analyst": {"targets": [{"cluster": PROD, "database": "Sales", "role": "Viewer"}], "admin": False}},
    "mappings": [{"targets": [{"role": "Viewer", "database": "Sales", "cluster": PROD}], "group": "Analysts",
                  "name": "analysts-sales", "mode": "members", "include": "users", "skipDisabledAccounts": True}],
    "exclude": [APP], "fullSyncEvery": 12, "guests": "home",
    "guards": {"maxDeletePercent": 25, "maxDeletes": 20}, "ownership": {"adopt": False, "prefix": "ks-"},
    "version": 1,
})


def target(cluster: str = PROD, role: str = "Viewer", **more) -> dict:
    return {"cluster": cluster, "database": "Sales", "role": role} | more


def mapping(name: str = "analysts", **keys) -> dict:
    return {"name": name, "group": "Analysts", "targets": [target()]} | keys


def problems_of(data) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


# --- a valid config ------------------------------------------------------------------------------

def test_the_full_example_loads_with_every_value():
    config = load_config(FULL_YAML)
    sales = Scope(PROD, "Sales")
    assert config.mappings == (
        Mapping("analysts-sales", "Analysts", "members", "users", True, (Target(sales, "Viewer"),)),
    )
    assert config.ownership == Ownership("ks-", False)
    assert config.guards == Guards(20, 25.0)
    assert (config.guests, config.full_sync_every) == ("home", 12)
    assert config.exclude == (parse_principal(APP),)
    assert config.profiles["analyst"].admin is False
    assert config.profiles["analyst"].targets == (Target(sales, "Viewer"),)
    assert config.onboarding == Onboarding(False, (Target(sales, "User"),), 6)
    assert len(config.version) == 12 and int(config.version, 16) >= 0


def test_the_same_config_in_json_with_other_key_order_has_the_same_version():
    assert load_config(FULL_JSON) == load_config(FULL_YAML)
    assert load_config(FULL_JSON).version == load_config(FULL_YAML).version


def test_the_version_changes_with_the_content_but_not_with_defaults_written_out():
    minimal = parse_config({"mappings": [mapping()]})
    spelled_out = parse_config({"version": 1, "guards": {"maxDeletes": 20}, "mappings": [mapping(mode="members")]})
    changed = parse_config({"mappings": [mapping(targets=[target(role="User")])]})
    assert minimal.version == spelled_out.version
    assert minimal.version != changed.version


def test_every_optional_key_has_its_default():
    config = parse_config({"mappings": [{"name": "m", "group": "G", "targets": [{"cluster": PROD, "role": "AllDatabasesViewer"}]}]})
    assert config.guards == Guards(max_deletes=20, max_delete_percent=25.0)
    assert config.ownership == Ownership(prefix="ks-", adopt=False)
    assert (config.guests, config.full_sync_every, config.exclude, config.profiles) == ("host", 12, (), {})
    assert config.onboarding == Onboarding(allow_direct_targets=False, direct_targets=(), max_new_identity_retries=6)
    (m,) = config.mappings
    assert (m.mode, m.include, m.skip_disabled_accounts) == ("members", "users", True)
    assert m.targets == (Target(Scope(PROD), "AllDatabasesViewer"),)
    assert (m.includes_users, m.includes_apps) == (True, False)


@pytest.mark.parametrize("mode, include, users, apps", [
    ("members", "users", True, False),
    ("members", "apps", False, True),
    ("members", "both", True, True),
    ("group", None, False, False),
])
def test_includes_users_and_apps_follow_mode_and_include(mode, include, users, apps):
    keys = {"mode": mode} | ({"include": include} if include else {})
    (m,) = parse_config({"mappings": [mapping(**keys)]}).mappings
    assert (m.includes_users, m.includes_apps) == (users, apps)


def test_roles_are_accepted_in_any_case_and_stored_canonically():
    config = parse_config({"mappings": [mapping(targets=[
        target(role="unrestrictedviewer"), {"cluster": PROD, "role": "ALLDATABASESMONITOR"}])]})
    assert [t.role for t in config.mappings[0].targets] == ["UnrestrictedViewer", "AllDatabasesMonitor"]


def test_mappings_may_be_empty_when_profiles_are_defined():
    config = parse_config({"mappings": [], "profiles": {"analyst": {"targets": [target()]}}})
    assert config.mappings == () and list(config.profiles) == ["analyst"]


def test_an_admin_profile_may_grant_admin_roles():
    config = parse_config({"profiles": {"dba": {"admin": True, "maxDuration": "P30D", "approval": True, "targets": [
        target(role="admin"), {"cluster": PROD, "role": "AllDatabasesAdmin"}]}}})
    assert [t.role for t in config.profiles["dba"].targets] == ["Admin", "AllDatabasesAdmin"]


def test_a_profile_grants_home_tenant_users_only_by_default():
    profile = parse_config({"profiles": {"analyst": {"targets": [target()]}}}).profiles["analyst"]
    assert (profile.principal_kinds, profile.tenants, profile.allow_consumer_accounts) == (("user",), ("home",), False)
    assert (profile.max_duration, profile.approval) == (None, False)


def test_a_profiles_policy_is_read_and_spelled_canonically():
    profile = parse_config({"profiles": {"partners": {
        "targets": [target()], "principalKinds": ["user", "app"], "maxDuration": "p1dt12h",
        "tenants": ["home", "Fabrikam.COM", "AAAAAAAA-0000-0000-0000-000000000000"], "allowConsumerAccounts": True,
    }}}).profiles["partners"]
    assert profile.tenants == ("home", "fabrikam.com", "aaaaaaaa-0000-0000-0000-000000000000")
    assert profile.max_duration == timedelta(days=1, hours=12) and profile.to_dict()["maxDuration"] == "P1DT12H"


@pytest.mark.parametrize("text, expected", [
    ("P30D", timedelta(days=30)), ("PT8H", timedelta(hours=8)), ("P2W", timedelta(days=14)),
    ("P1DT12H30M", timedelta(days=1, hours=12, minutes=30)), ("P", None), ("PT", None), ("30 days", None),
    ("P1Y", None), ("PT0M", timedelta(0)),
])
def test_durations_are_iso_8601_weeks_days_hours_minutes(text, expected):
    assert parse_duration(text) == expected


def test_an_admin_profile_needs_a_bounded_duration_and_approval_every_problem_at_once():
    assert problems_of({"profiles": {
        "dba": {"admin": True, "targets": [target(role="Admin")]},
        "ops": {"admin": True, "maxDuration": "P31D", "approval": False, "targets": [target(role="Admin")]},
    }}) == [
        "profiles.dba.maxDuration: is required for an admin profile (at most P30D)",
        "profiles.dba.approval: must be true for an admin profile: a person approves every admin grant",
        "profiles.ops.maxDuration: P31D is longer than the P30D an admin profile may grant",
        "profiles.ops.approval: must be true for an admin profile: a person approves every admin grant",
    ]


def test_profile_policy_typos_are_reported_with_their_path():
    assert problems_of({"profiles": {"p": {
        "targets": [target()], "principalKinds": ["users", "app", "app"], "tenants": [], "maxDuration": "30d",
        "allowConsumerAccount": True}}, "onboarding": {"approvalTimeout": "P0D"}}) == [
        "profiles.p.allowConsumerAccount: unknown key; did you mean 'allowConsumerAccounts'? (allowed: admin, "
        "targets, principalKinds, tenants, allowConsumerAccounts, maxDuration, approval)",
        "profiles.p.principalKinds[0]: 'users' is not one of user, app, group",
        "profiles.p.principalKinds[2]: duplicate of 'app'",
        "profiles.p.tenants: must list at least one entry (leave the key out for the default)",
        "profiles.p.maxDuration: '30d' is not an ISO 8601 duration of weeks, days, hours or minutes (e.g. P30D, PT8H, P1DT12H)",
        "onboarding.approvalTimeout: 'P0D' is not an ISO 8601 duration of weeks, days, hours or minutes (e.g. P30D, PT8H, P1DT12H)",
    ]


def test_direct_targets_are_the_allow_list_when_allowed():
    config = parse_config({"mappings": [mapping()], "onboarding": {"allowDirectTargets": True, "directTargets": [target()]}})
    assert config.onboarding.direct_targets == (Target(Scope(PROD, "Sales"), "Viewer"),)


def test_the_effective_config_round_trips_through_to_dict():
    config = load_config(FULL_YAML)
    again = parse_config(config.to_dict())
    assert again == config and again.version == config.version
    grouped = parse_config({"mappings": [mapping(mode="group")]})
    assert parse_config(grouped.to_dict()) == grouped


def test_scopes_and_clusters_are_distinct_and_sorted():
    config = parse_config({"mappings": [
        mapping("a", targets=[target(TEST), target(PROD), {"cluster": PROD, "role": "AllDatabasesViewer"}]),
        mapping("b", targets=[target(PROD.upper().replace("MICROSOFT.KUSTO", "Microsoft.Kusto"), role="User")]),
    ]})
    assert config.scopes() == (Scope(PROD), Scope(PROD, "Sales"), Scope(TEST, "Sales"))
    assert config.clusters() == (PROD, TEST)


def test_the_config_is_hashable_and_immutable():
    config = load_config(FULL_YAML)
    assert hash(config) == hash(load_config(FULL_JSON))
    with pytest.raises(AttributeError):
        config.guests = "host"  # type: ignore[misc]


# --- every rule, with its path -------------------------------------------------------------------

TOP_KEYS = "version, ownership, guards, guests, fullSyncEvery, exclude, mappings, profiles, onboarding, dataConnections"
MAPPING_KEYS = "name, group, mode, include, skipDisabledAccounts, targets"
DB_ROLES = "Admin, Ingestor, Monitor, User, UnrestrictedViewer, Viewer"
CLUSTER_ROLES = "AllDatabasesAdmin, AllDatabasesViewer, AllDatabasesMonitor"
BAD_ID = "'/subscriptions/x/clusters/adx' is not a Kusto cluster resource ID " \
         "(/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Kusto/clusters/<name>)"
PREFIX_RULE = "must be 1-20 characters of A-Z a-z 0-9 - and start with a letter"


@pytest.mark.parametrize("data, problem", [
    # unknown keys, at every level
    ({"mappings": [mapping()], "mapings": []},
     f"mapings: unknown key; did you mean 'mappings'? (allowed: {TOP_KEYS})"),
    ({"mappings": [mapping(owner="x")]}, f"mappings[0].owner: unknown key (allowed: {MAPPING_KEYS})"),
    ({"mappings": [mapping(targets=[target(scope="x")])]},
     "mappings[0].targets[0].scope: unknown key (allowed: cluster, database, role)"),
    ({"mappings": [mapping()], "guards": {"maxDelete": 3}},
     "guards.maxDelete: unknown key; did you mean 'maxDeletes'? (allowed: maxDeletes, maxDeletePercent, deleteFloor)"),
    ({"mappings": [mapping()], "ownership": {"name": "x"}}, "ownership.name: unknown key (allowed: prefix, adopt)"),
    ({"mappings": [mapping()], "onboarding": {"retries": 1}},
     "onboarding.retries: unknown key (allowed: allowDirectTargets, directTargets, maxNewIdentityRetries, approvalTimeout)"),
    ({"profiles": {"p": {"targets": [target()], "roles": []}}}, "profiles.p.roles: unknown key (allowed: admin, targets, principalKinds, tenants, "
     "allowConsumerAccounts, maxDuration, approval)"),
    # wrong types
    (["mappings"], "(top level): must be a mapping, got list"),
    ({"mappings": {"name": "x"}}, "mappings: must be a list, got mapping"),
    ({"mappings": ["analysts"]}, "mappings[0]: must be a mapping, got string 'analysts'"),
    ({"mappings": [mapping(targets=[PROD])]}, f"mappings[0].targets[0]: must be a mapping, got string '{PROD}'"),
    ({"mappings": [mapping()], "guards": {"maxDeletes": "20"}}, "guards.maxDeletes: must be an integer, got string '20'"),
    ({"mappings": [mapping()], "guards": {"maxDeletes": True}}, "guards.maxDeletes: must be an integer, got boolean True"),
    ({"mappings": [mapping()], "guards": {"maxDeletes": 2.5}}, "guards.maxDeletes: must be an integer, got number 2.5"),
    ({"mappings": [mapping()], "ownership": {"adopt": "yes"}}, "ownership.adopt: must be a boolean, got string 'yes'"),
    ({"mappings": [mapping()], "guards": None}, "guards: must be a mapping, got null"),
    ({"mappings": [mapping(group=7)]}, "mappings[0].group: must be a string, got integer 7"),
    ({"mappings": [mapping(skipDisabledAccounts="no")]},
     "mappings[0].skipDisabledAccounts: must be a boolean, got string 'no'"),
    ({"mappings": [mapping()], "exclude": APP}, f"exclude: must be a list, got string '{APP}'"),
    ({"mappings": [mapping()], "exclude": [42]}, "exclude[0]: must be a string, got integer 42"),
    ({"mappings": [mapping()], "profiles": ["analyst"]}, "profiles: must be a mapping, got list"),
    # required keys and empty lists
    ({}, "mappings: must list at least one mapping (it may be empty only when profiles or dataConnections are defined)"),
    ({"mappings": []}, "mappings: must list at least one mapping (it may be empty only when profiles or dataConnections are defined)"),
    ({"mappings": [{"group": "G", "targets": [target()]}]}, "mappings[0].name: is required"),
    ({"mappings": [{"name": "m", "targets": [target()]}]}, "mappings[0].group: is required"),
    ({"mappings": [{"name": "m", "group": "G"}]}, "mappings[0].targets: must list at least one target"),
    ({"mappings": [mapping(targets=[])]}, "mappings[0].targets: must list at least one target"),
    ({"mappings": [mapping(targets=[{"cluster": PROD}])]}, "mappings[0].targets[0].role: is required"),
    ({"mappings": [mapping(targets=[{"database": "Sales", "role": "Viewer"}])]}, "mappings[0].targets[0].cluster: is required"),
    ({"profiles": {"p": {"admin": False}}}, "profiles.p.targets: must list at least one target"),
    ({"mappings": [mapping()], "onboarding": {"allowDirectTargets": True}},
     "onboarding.directTargets: must list at least one target when allowDirectTargets is true"),
    # values
    ({"version": 2, "mappings": [mapping()]}, "version: must be 1 (the only version), got 2"),
    ({"version": "1", "mappings": [mapping()]}, "version: must be an integer, got string '1'"),
    ({"mappings": [mapping()], "ownership": {"prefix": "1ks-"}}, f"ownership.prefix: '1ks-' {PREFIX_RULE}"),
    ({"mappings": [mapping()], "ownership": {"prefix": "ks_"}}, f"ownership.prefix: 'ks_' {PREFIX_RULE}"),
    ({"mappings": [mapping()], "ownership": {"prefix": ""}}, f"ownership.prefix: '' {PREFIX_RULE}"),
    ({"mappings": [mapping()], "ownership": {"prefix": "k" * 21}}, f"ownership.prefix: '{'k' * 21}' {PREFIX_RULE}"),
    ({"mappings": [mapping()], "guards": {"maxDeletes": -1}}, "guards.maxDeletes: must be >= 0, got -1"),
    ({"mappings": [mapping()], "guards": {"maxDeletePercent": 100.5}},
     "guards.maxDeletePercent: must be between 0 and 100, got 100.5"),
    ({"mappings": [mapping()], "guards": {"maxDeletePercent": -1}}, "guards.maxDeletePercent: must be between 0 and 100, got -1"),
    ({"mappings": [mapping()], "guests": "guest"}, "guests: 'guest' is not one of home, host"),
    ({"mappings": [mapping()], "fullSyncEvery": 0}, "fullSyncEvery: must be >= 1, got 0"),
    ({"mappings": [mapping()], "onboarding": {"maxNewIdentityRetries": -2}},
     "onboarding.maxNewIdentityRetries: must be >= 0, got -2"),
    ({"mappings": [mapping(name="sales analysts")]},
     "mappings[0].name: 'sales analysts' must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    ({"mappings": [mapping(name="x" * 65)]}, f"mappings[0].name: '{'x' * 65}' must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    ({"mappings": [mapping(group="  ")]}, "mappings[0].group: must not be empty"),
    ({"mappings": [mapping(mode="nested")]}, "mappings[0].mode: 'nested' is not one of members, group"),
    ({"mappings": [mapping(include="guests")]}, "mappings[0].include: 'guests' is not one of users, apps, both"),
    ({"mappings": [mapping(mode="group", include="users")]},
     "mappings[0].include: only applies to mode 'members' (this mapping has mode 'group')"),
    ({"mappings": [mapping(mode="group", skipDisabledAccounts=True)]},
     "mappings[0].skipDisabledAccounts: only applies to mode 'members' (this mapping has mode 'group')"),
    ({"mappings": [mapping(), mapping("b"), mapping("Analysts")]},
     "mappings[2].name: duplicate mapping name 'Analysts' (first at mappings[0])"),
    ({"mappings": [mapping(targets=[target(), target(PROD.lower(), role="viewer", database="sales")])]},
     "mappings[0].targets[1]: duplicate of mappings[0].targets[0] (adx-prod/Sales Viewer)"),
    # roles per scope
    ({"mappings": [mapping(targets=[target(role="Admins")])]},
     f"mappings[0].targets[0].role: 'Admins' is not a database role ({DB_ROLES})"),
    ({"mappings": [mapping(targets=[target(role="AllDatabasesViewer")])]},
     f"mappings[0].targets[0].role: 'AllDatabasesViewer' is not a database role ({DB_ROLES})"),
    ({"mappings": [mapping(targets=[{"cluster": PROD, "role": "Viewer"}])]},
     f"mappings[0].targets[0].role: 'Viewer' is not a cluster role ({CLUSTER_ROLES})"),
    ({"mappings": [mapping(targets=[target(database="")])]}, "mappings[0].targets[0].database: must not be empty"),
    ({"profiles": {"analyst": {"targets": [target(role="admin")]}}},
     "profiles.analyst.targets[0].role: 'Admin' is an admin role; "
     "only profiles with admin: true may grant it (profiles.analyst.admin)"),
    ({"profiles": {"ops": {"admin": False, "targets": [{"cluster": PROD, "role": "AllDatabasesAdmin"}]}}},
     "profiles.ops.targets[0].role: 'AllDatabasesAdmin' is an admin role; "
     "only profiles with admin: true may grant it (profiles.ops.admin)"),
    ({"profiles": {"new analyst": {"targets": [target()]}}},
     "profiles.new analyst: profile name 'new analyst' must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    # cluster resource IDs
    ({"mappings": [mapping(targets=[target("/subscriptions/x/clusters/adx")])]},
     f"mappings[0].targets[0].cluster: {BAD_ID}"),
    ({"mappings": [mapping()], "onboarding": {"directTargets": [target("/subscriptions/x/clusters/adx")]}},
     f"onboarding.directTargets[0].cluster: {BAD_ID}"),
])
def test_each_rule_reports_its_problem_with_its_path(data, problem):
    assert problems_of(data) == [problem]


@pytest.mark.parametrize("reference", ["bogus=1", "aadapp=11111111-2222-3333-4444-555555555555", "aaduser=bob"])
def test_a_bad_excluded_principal_is_reported_with_the_principal_parsers_message(reference):
    with pytest.raises(ValueError) as caught:
        parse_principal(reference)
    assert problems_of({"mappings": [mapping()], "exclude": [APP, reference]}) == [f"exclude[1]: {caught.value}"]


def test_excluded_principals_are_parsed_and_deduplicated():
    config = parse_config({"mappings": [mapping()], "exclude": [APP, APP.upper().replace("AADAPP", "aadapp"),
                                                                "msauser=carol@outlook.com"]})
    assert [p.fqn for p in config.exclude] == [APP, "msauser=carol@outlook.com"]


def test_every_problem_is_listed_in_one_error():
    data = {
        "version": 3,
        "guests": "away",
        "guards": {"maxDeletes": -5},
        "exclude": ["bogus=1"],
        "mappings": [
            mapping(targets=[target(role="Admins"), target("/subscriptions/x/clusters/adx")]),
            {"name": "analysts", "group": "G", "mode": "group", "include": "apps", "targets": []},
        ],
        "profiles": {"analyst": {"targets": [target(role="Admin")]}},
        "surprise": True,
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="sync.yaml")
    error = caught.value
    assert [p.split(":")[0] for p in error.problems] == [
        "surprise", "version", "guards.maxDeletes", "guests", "exclude[0]",
        "mappings[0].targets[0].role", "mappings[0].targets[1].cluster",
        "mappings[1].include", "mappings[1].targets", "mappings[1].name",
        "profiles.analyst.targets[0].role",
    ]
    assert error.source == "sync.yaml"
    assert str(error).startswith("sync.yaml has 11 problem(s):\n  - surprise: unknown key")


# --- loading ---------------------------------------------------------------------------------------

def test_inline_json_and_inline_yaml_are_told_apart():
    assert load_config('  {"mappings": [{"name": "m", "group": "G", "targets": '
                       f'[{{"cluster": "{PROD}", "role": "AllDatabasesViewer"}}]}}]}}').mappings[0].name == "m"
    assert load_config(f"mappings: [{{name: m, group: G, targets: [{{cluster: {PROD}, role: AllDatabasesViewer}}]}}]"
                       ).mappings[0].name == "m"


@pytest.mark.parametrize("name, text", [
    ("sync.yaml", FULL_YAML), ("sync.yml", FULL_YAML), ("sync.json", FULL_JSON), ("sync.conf", FULL_YAML)])
def test_a_config_file_is_read_by_its_extension(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert load_config(str(path)) == load_config(FULL_YAML)


def test_problems_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "sync.yaml"
    path.write_text("mappings: [{name: m, group: G, targets: [{cluster: /c, role: x}]}]\nguests: away\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.source == str(path)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "guests", "mappings[0].targets[0].cluster", "mappings[0].targets[0].role"]
    assert str(caught.value).startswith(f"{path} has 3 problem(s):")


def test_a_missing_file_is_reported_with_its_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(missing))
    assert caught.value.problems == [f"config file not found: {missing}"]


def test_a_yaml_syntax_error_gives_line_and_column():
    with pytest.raises(ConfigError) as caught:
        load_config("version: 1\nmappings: name: a\n")
    assert caught.value.problems == ["invalid YAML at line 2, column 15: mapping values are not allowed here"]
    assert caught.value.source == "inline config"


def test_a_yaml_key_given_twice_is_an_error_not_a_silent_override():
    with pytest.raises(ConfigError) as caught:
        load_config("mappings: []\nguests: home\nguests: host\n", source="SYNC_CONFIG")
    assert caught.value.problems == ["invalid YAML at line 3, column 1: duplicate key 'guests'"]
    assert caught.value.source == "SYNC_CONFIG"


def test_a_json_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "sync.json"
    path.write_text('{\n  "mappings": [,]\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.problems == ["invalid JSON at line 2, column 16: Expecting value"]


def test_a_json_key_given_twice_is_an_error():
    with pytest.raises(ConfigError) as caught:
        load_config('{"guests": "home", "guests": "host"}')
    assert caught.value.problems == ["invalid JSON: duplicate key 'guests'"]


@pytest.mark.parametrize("value, problem", [
    ("   ", "no config given (the value is empty)"),
    ("# only a comment\n", "the config is empty"),
])
def test_an_empty_config_is_an_error(value, problem):
    with pytest.raises(ConfigError) as caught:
        load_config(value)
    assert caught.value.problems == [problem]


def test_the_shipped_example_validates():
    example = Path(__file__).resolve().parents[2] / "config" / "sync-config.yaml"
    config = load_config(str(example))
    assert config.mappings and config.profiles


# --- selectors -------------------------------------------------------------------------------------

SELECTABLE = {"mappings": [
    mapping("sales-viewers", targets=[target(), target(TEST)]),
    mapping("sales-users", group="Engineers", targets=[target(role="User"), target(PROD, database="Ops")]),
    mapping("prod-monitor", group="SRE", targets=[{"cluster": PROD, "role": "AllDatabasesMonitor"}]),
]}


def selected(selector):
    selection = resolve_selector(parse_config(SELECTABLE), selector)
    return ({m.name: [str(t.scope) + " " + t.role for t in m.targets] for m in selection.mappings},
            sorted(str(s) for s in selection.scopes))


def test_no_selector_selects_everything():
    config = parse_config(SELECTABLE)
    selection = resolve_selector(config, None)
    assert selection.mappings == config.mappings
    assert selection.scopes == frozenset(config.scopes())
    assert resolve_selector(config, "  ") == selection
    assert resolve_selector(config, None).mappings == config.mappings


@pytest.mark.parametrize("selector", ["adx-prod/Sales", "ADX-PROD/sales", f"{PROD}/Sales", f"{PROD}/databases/Sales",
                                      f"{PROD.lower()}/Sales/", "adx-prod/databases/Sales"])
def test_a_database_selector_keeps_only_the_targets_in_that_database(selector):
    assert selected(selector) == (
        {"sales-viewers": ["adx-prod/Sales Viewer"], "sales-users": ["adx-prod/Sales User"]}, ["adx-prod/Sales"])


@pytest.mark.parametrize("selector", ["adx-prod", PROD, PROD.upper()])
def test_a_cluster_selector_keeps_every_scope_of_that_cluster(selector):
    assert selected(selector) == (
        {"sales-viewers": ["adx-prod/Sales Viewer"],
         "sales-users": ["adx-prod/Sales User", "adx-prod/Ops Viewer"],
         "prod-monitor": ["adx-prod AllDatabasesMonitor"]},
        ["adx-prod", "adx-prod/Ops", "adx-prod/Sales"])


def test_a_mapping_selector_covers_its_scopes_with_every_mapping_that_targets_them():
    # Reconciling adx-test/Sales alone must not treat another mapping's grants there as undesired.
    assert selected("sales-viewers") == (
        {"sales-viewers": ["adx-prod/Sales Viewer", "adx-test/Sales Viewer"],
         "sales-users": ["adx-prod/Sales User"]},
        ["adx-prod/Sales", "adx-test/Sales"])
    assert selected("PROD-MONITOR") == ({"prod-monitor": ["adx-prod AllDatabasesMonitor"]}, ["adx-prod"])


def test_an_unknown_selector_lists_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        resolve_selector(parse_config(SELECTABLE), "adx-dev/Sales")
    assert caught.value.problems == [
        "unknown selector 'adx-dev/Sales'; valid selectors: adx-prod, adx-prod/Ops, adx-prod/Sales, adx-test, "
        "adx-test/Sales, prod-monitor, sales-users, sales-viewers "
        "(or a cluster resource ID, optionally followed by /DATABASE)"]


def test_a_cluster_name_used_in_two_subscriptions_must_be_given_by_id():
    config = parse_config({"mappings": [mapping("a"), mapping("b", targets=[target(OTHER_PROD)])]})
    with pytest.raises(ConfigError, match="ambiguous"):
        resolve_selector(config, "adx-prod/Sales")
    assert [m.name for m in resolve_selector(config, f"{OTHER_PROD}/Sales").mappings] == ["b"]
