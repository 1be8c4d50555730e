"""Kusto principal references: parsing, canonical form, error messages and the ARM triple."""
import string

import pytest
from hypothesis import given, strategies as st

from shared.core.errors import PrincipalError
from shared.core.principals import MSA_TENANT_ID, Principal, PrincipalKind, is_guid, parse_principal

USER, GROUP, APP, MSA = PrincipalKind.USER, PrincipalKind.GROUP, PrincipalKind.APP, PrincipalKind.MSA
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OBJECT_ID = "0b4a9c6e-58d1-4f1c-9c3e-2f1d1f0e8a11"
APP_ID = "4c7e82bd-6adb-46c3-b413-fdd44834c69b"

# One case per form in the table of "Referencing security principals" (Kusto docs), each
# written in a non-canonical spelling: (text, kind, identifier, tenant, canonical fqn).
REFERENCE_TABLE = [
    pytest.param("aaduser=imikeoein@Fabrikam.com", USER, "imikeoein@fabrikam.com", None,
                 "aaduser=imikeoein@fabrikam.com", id="user, implicit: UPN"),
    pytest.param(f"aaduser=imikeoein@fabrikam.com;{TENANT_ID.upper()}", USER, "imikeoein@fabrikam.com",
                 TENANT_ID, f"aaduser=imikeoein@fabrikam.com;{TENANT_ID}", id="user, explicit ID: UPN"),
    pytest.param(f"aaduser={OBJECT_ID.upper()};{TENANT_ID}", USER, OBJECT_ID, TENANT_ID,
                 f"aaduser={OBJECT_ID};{TENANT_ID}", id="user, explicit ID: ObjectID"),
    pytest.param("aaduser=imikeoein@fabrikam.com;Fabrikam.COM", USER, "imikeoein@fabrikam.com",
                 "fabrikam.com", "aaduser=imikeoein@fabrikam.com;fabrikam.com", id="user, explicit name: UPN"),
    pytest.param(f"aaduser={OBJECT_ID};fabrikam.com.", USER, OBJECT_ID, "fabrikam.com",
                 f"aaduser={OBJECT_ID};fabrikam.com", id="user, explicit name: ObjectID"),
    pytest.param("aadgroup=SG-Readers@FABRIKAM.com", GROUP, "SG-Readers@fabrikam.com", None,
                 "aadgroup=SG-Readers@fabrikam.com", id="group, implicit: GroupEmailAddress"),
    pytest.param(f"aadgroup=SGDisplayName;{TENANT_ID}", GROUP, "SGDisplayName", TENANT_ID,
                 f"aadgroup=SGDisplayName;{TENANT_ID}", id="group, explicit ID: GroupDisplayName"),
    pytest.param(f"aadgroup={OBJECT_ID};{TENANT_ID}", GROUP, OBJECT_ID, TENANT_ID,
                 f"aadgroup={OBJECT_ID};{TENANT_ID}", id="group, explicit ID: GroupObjectId"),
    pytest.param("aadgroup=SG Display Name;fabrikam.com", GROUP, "SG Display Name", "fabrikam.com",
                 "aadgroup=SG Display Name;fabrikam.com", id="group, explicit name: GroupDisplayName"),
    pytest.param(f"aadgroup={OBJECT_ID.upper()};FABRIKAM.com", GROUP, OBJECT_ID, "fabrikam.com",
                 f"aadgroup={OBJECT_ID};fabrikam.com", id="group, explicit name: GroupObjectId"),
    pytest.param(f"aadapp=Ingest Service;{TENANT_ID}", APP, "Ingest Service", TENANT_ID,
                 f"aadapp=Ingest Service;{TENANT_ID}", id="app, explicit ID: ApplicationDisplayName"),
    pytest.param(f"aadapp={APP_ID.upper()};{TENANT_ID}", APP, APP_ID, TENANT_ID,
                 f"aadapp={APP_ID};{TENANT_ID}", id="app, explicit ID: ApplicationId"),
    pytest.param("aadapp=Ingest Service;fabrikam.com", APP, "Ingest Service", "fabrikam.com",
                 "aadapp=Ingest Service;fabrikam.com", id="app, explicit name: ApplicationDisplayName"),
    pytest.param(f"aadapp={APP_ID};Fabrikam.com", APP, APP_ID, "fabrikam.com",
                 f"aadapp={APP_ID};fabrikam.com", id="app, explicit name: ApplicationId"),
    pytest.param("msauser=abbiatkins@Live.com", MSA, "abbiatkins@live.com", None,
                 "msauser=abbiatkins@live.com", id="MSA: UPN"),
]


@pytest.mark.parametrize("text, kind, identifier, tenant, fqn", REFERENCE_TABLE)
def test_each_form_of_the_kusto_reference_table_parses_to_its_fields_and_formats_canonically(
        text, kind, identifier, tenant, fqn):
    principal = parse_principal(text)
    assert (principal.kind, principal.identifier, principal.tenant) == (kind, identifier, tenant)
    assert principal.fqn == fqn
    assert parse_principal(fqn) == principal


@pytest.mark.parametrize("text, fqn", [
    ("AADUSER=bob@fabrikam.com", "aaduser=bob@fabrikam.com"),
    ("  aaduser = Bob.Smith@FABRIKAM.COM ; Contoso.OnMicrosoft.com  ", "aaduser=Bob.Smith@fabrikam.com;contoso.onmicrosoft.com"),
    ("\taadGroup=\tSales Team\t;\tcontoso.com\n", "aadgroup=Sales Team;contoso.com"),
    ("AadApp = My App ; CONTOSO.com", "aadapp=My App;contoso.com"),
    ("MSAUSER=Carol@Outlook.COM", "msauser=Carol@outlook.com"),
    ("aaduser=hans@BÜCHER.example;Bücher.Example", "aaduser=hans@xn--bcher-kva.example;xn--bcher-kva.example"),
    ("aaduser=hans@xn--bcher-kva.example", "aaduser=hans@xn--bcher-kva.example"),
    ("aadgroup=a=b;contoso.com", "aadgroup=a=b;contoso.com"),
    ("aaduser=alice_fabrikam.com#EXT#@Contoso.onmicrosoft.com",
     "aaduser=alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"),
])
def test_prefix_case_whitespace_and_domain_spelling_are_normalized(text, fqn):
    assert parse_principal(text).fqn == fqn


def test_the_local_part_keeps_its_case_but_the_key_ignores_it():
    upper, lower = parse_principal("aaduser=Bob@fabrikam.com"), parse_principal("aaduser=bob@FABRIKAM.com")
    assert upper.identifier == "Bob@fabrikam.com"
    assert upper != lower
    assert upper.key == lower.key == ("user", "bob@fabrikam.com", "")


def test_the_key_tells_kinds_and_tenants_apart():
    keys = {parse_principal(text).key for text in (
        "aaduser=bob@fabrikam.com", "msauser=bob@fabrikam.com", "aaduser=bob@fabrikam.com;fabrikam.com",
        f"aaduser=bob@fabrikam.com;{TENANT_ID}", "aadgroup=bob@fabrikam.com")}
    assert len(keys) == 5


BAD_REFERENCES = [
    ("", "empty principal reference"),
    ("   ", "empty principal reference"),
    ("bob@x.com", "missing '=' in 'bob@x.com': expected <prefix>=<identifier>[;<tenant>], "
                  "e.g. aaduser=bob@contoso.com"),
    ("aaduserx=bob@x.com", "unknown principal prefix 'aaduserx' in 'aaduserx=bob@x.com'; "
                           "expected one of aaduser, aadgroup, aadapp, msauser"),
    ("=bob@x.com", "unknown principal prefix '' in '=bob@x.com'; expected one of aaduser, aadgroup, aadapp, msauser"),
    ("aaduser=bob@x.com;contoso.com;more", "more than one ';' in 'aaduser=bob@x.com;contoso.com;more': "
                                           "expected <prefix>=<identifier>[;<tenant>]"),
    ("aaduser=;contoso.com", "empty identifier in 'aaduser=;contoso.com'"),
    ("aadgroup=  ", "empty identifier in 'aadgroup='"),
    ("aaduser=bob@x.com;", "empty tenant in 'aaduser=bob@x.com;'"),
    ("aaduser=bob", "'bob' is not a user principal name (name@domain)"),
    ("aaduser=bob@", "'bob@' is not a user principal name (name@domain): '' is not a domain name: Empty domain"),
    ("aaduser=@x.com", "'@x.com' is not a user principal name (name@domain)"),
    ("aaduser=a@b@x.com", "'a@b@x.com' is not a user principal name (name@domain)"),
    ("aaduser=bob smith@x.com", "'bob smith@x.com' is not a user principal name (name@domain)"),
    ("aaduser=bob@localhost", "'bob@localhost' is not a user principal name (name@domain): "
                              "'localhost' is not a domain name: it needs at least two labels, like contoso.com"),
    ("aaduser=bob@x_y.com", "'bob@x_y.com' is not a user principal name (name@domain): "
                            "'x_y.com' is not a domain name: Codepoint U+005F at position 2 of 'x_y' not allowed"),
    ("aaduser=bob;contoso.com", "'bob' is neither a user principal name (name@domain) nor an object id (GUID)"),
    (f"aaduser={OBJECT_ID}", f"aaduser reference 'aaduser={OBJECT_ID}' needs a tenant, since Kusto cannot "
                             "infer one from an object id: aaduser=<ObjectId>;<TenantId|TenantName>"),
    ("aadgroup=Sales", "aadgroup reference 'aadgroup=Sales' needs a tenant, since Kusto infers one only from "
                       "a group email: aadgroup=<GroupEmail> or aadgroup=<DisplayName|ObjectId>;<TenantId|TenantName>"),
    (f"aadgroup={OBJECT_ID}", f"aadgroup reference 'aadgroup={OBJECT_ID}' needs a tenant, since Kusto infers "
                              "one only from a group email: aadgroup=<GroupEmail> or "
                              "aadgroup=<DisplayName|ObjectId>;<TenantId|TenantName>"),
    ("aadapp=1234", "aadapp reference 'aadapp=1234' needs a tenant: aadapp=<AppId|DisplayName>;<TenantId|TenantName>"),
    (f"aadapp={APP_ID}", f"aadapp reference 'aadapp={APP_ID}' needs a tenant: "
                         "aadapp=<AppId|DisplayName>;<TenantId|TenantName>"),
    ("aaduser=bob@x.com;not a tenant!", "tenant 'not a tenant!' is neither a GUID nor a domain name"),
    ("aadapp=My App;contoso", "tenant 'contoso' is neither a GUID nor a domain name"),
    ("aadapp=My App;1.2.3.4", "tenant '1.2.3.4' is neither a GUID nor a domain name"),
    ("msauser=carol@outlook.com;contoso.com",
     "msauser reference 'msauser=carol@outlook.com;contoso.com' takes no tenant: msauser=<UPN>"),
    ("msauser=carol", "'carol' is not a user principal name (name@domain)"),
    (f"msauser={OBJECT_ID}", f"'{OBJECT_ID}' is not a user principal name (name@domain)"),
]


@pytest.mark.parametrize("text, message", BAD_REFERENCES)
def test_bad_references_are_refused_with_an_exact_message(text, message):
    with pytest.raises(PrincipalError) as raised:
        parse_principal(text)
    assert str(raised.value) == message


def test_a_non_string_is_refused_as_a_principal_error():
    with pytest.raises(PrincipalError, match="must be a string, not NoneType"):
        parse_principal(None)


def test_the_constructor_normalizes_like_the_parser():
    assert Principal(USER, " Bob@FABRIKAM.com ", "Contoso.COM") == parse_principal("aaduser=Bob@fabrikam.com;contoso.com")
    assert Principal("group", OBJECT_ID.upper(), TENANT_ID.upper()).fqn == f"aadgroup={OBJECT_ID};{TENANT_ID}"


@pytest.mark.parametrize("args, message", [
    ((APP, "My App"), "aadapp reference 'aadapp=My App' needs a tenant: aadapp=<AppId|DisplayName>;<TenantId|TenantName>"),
    ((GROUP, "a;b", "contoso.com"), "identifier 'a;b' must not contain ';'"),
    ((USER, "bob@x.com", ""), "empty tenant in 'aaduser=bob@x.com;'"),
    ((MSA, "carol@outlook.com", MSA_TENANT_ID),
     f"msauser reference 'msauser=carol@outlook.com;{MSA_TENANT_ID}' takes no tenant: msauser=<UPN>"),
    (("robot", "x"), "unknown principal kind 'robot'; expected one of user, group, app, msa"),
])
def test_the_constructor_refuses_what_the_parser_refuses(args, message):
    with pytest.raises(PrincipalError) as raised:
        Principal(*args)
    assert str(raised.value) == message


def test_object_ids_are_lower_case_guids_and_known_from_an_object_id_reference():
    assert parse_principal(f"aaduser={OBJECT_ID.upper()};contoso.com").object_id == OBJECT_ID
    assert parse_principal(f"aadapp={APP_ID};contoso.com").object_id is None  # an app id is no object id
    assert Principal(USER, "bob@x.com", object_id=OBJECT_ID.upper()).object_id == OBJECT_ID
    with pytest.raises(PrincipalError, match="object id 'nope' of 'aaduser=bob@x.com' is not a GUID"):
        Principal(USER, "bob@x.com", object_id="nope")


def test_display_name_and_object_id_do_not_take_part_in_equality():
    plain = parse_principal("aaduser=bob@x.com")
    assert Principal(USER, "bob@x.com", display_name="Bob", object_id=OBJECT_ID) == plain


@pytest.mark.parametrize("text, arm", [
    ("aaduser=bob@fabrikam.com", ("bob@fabrikam.com", "User", None)),
    (f"aaduser=bob@fabrikam.com;{TENANT_ID}", ("bob@fabrikam.com", "User", TENANT_ID)),
    (f"aaduser={OBJECT_ID};fabrikam.com", (OBJECT_ID, "User", "fabrikam.com")),
    ("aadgroup=readers@fabrikam.com", ("readers@fabrikam.com", "Group", None)),
    (f"aadgroup={OBJECT_ID};{TENANT_ID}", (OBJECT_ID, "Group", TENANT_ID)),
    (f"aadgroup=Readers;{TENANT_ID}", ("Readers", "Group", TENANT_ID)),
    (f"aadapp={APP_ID};{TENANT_ID}", (APP_ID, "App", TENANT_ID)),
    ("aadapp=Ingest Service;fabrikam.com", ("Ingest Service", "App", "fabrikam.com")),
    ("msauser=carol@outlook.com", ("carol@outlook.com", "User", MSA_TENANT_ID)),
])
def test_to_arm_and_from_arm_round_trip_for_every_kind(text, arm):
    principal = parse_principal(text)
    assert principal.to_arm() == arm
    assert Principal.from_arm(*arm) == principal


def test_from_arm_reads_an_msa_user_and_keeps_the_read_only_fields():
    principal = Principal.from_arm("carol@outlook.com", "User", MSA_TENANT_ID.upper(),
                                   principal_name="Carol", aad_object_id=OBJECT_ID)
    assert principal.fqn == "msauser=carol@outlook.com"
    assert principal.principal_type == "User"
    assert (principal.display_name, principal.object_id) == ("Carol", OBJECT_ID)


def test_from_arm_treats_an_empty_tenant_as_none_and_matches_the_type_loosely():
    assert Principal.from_arm("bob@x.com", "user", "", aad_object_id="") == parse_principal("aaduser=bob@x.com")


def test_from_arm_refuses_an_unknown_principal_type():
    with pytest.raises(PrincipalError) as raised:
        Principal.from_arm("bob@x.com", "ServicePrincipal", TENANT_ID)
    assert str(raised.value) == ("unknown principalType 'ServicePrincipal' for principal 'bob@x.com'; "
                                 "expected App, Group or User")


def test_is_guid_takes_only_the_8_4_4_4_12_form():
    assert is_guid(TENANT_ID) and is_guid(TENANT_ID.upper())
    assert not any(is_guid(text) for text in (f"{{{TENANT_ID}}}", TENANT_ID.replace("-", ""),
                                              f"{TENANT_ID}\n", "", None))


# Generated valid references, in random spellings.
_labels = st.sampled_from(["contoso", "FABRIKAM", "bücher", "Straße", "xn--bcher-kva", "tailspin-toys",
                           "onmicrosoft", "co", "münchen", "a1"])
_domains = st.builds(lambda labels, top: ".".join([*labels, top]),
                     st.lists(_labels, min_size=1, max_size=3), st.sampled_from(["com", "ORG", "de", "uk"]))
_guids = st.builds(lambda uuid, upper: str(uuid).upper() if upper else str(uuid), st.uuids(), st.booleans())
_upns = st.builds("{}@{}".format, st.text(string.ascii_letters + string.digits + "._-+'#!~é", min_size=1,
                                          max_size=12), _domains)
_names = st.text(min_size=1, max_size=20).filter(lambda name: name.strip() and ";" not in name)
_tenants = st.one_of(_guids, _domains)
_pad = st.sampled_from(["", " ", "\t", "  \n"])


@st.composite
def _references(draw) -> str:
    prefix, identifier, tenant = draw(st.one_of(
        st.tuples(st.just("aaduser"), _upns, st.none() | _tenants),
        st.tuples(st.just("aaduser"), _guids, _tenants),
        st.tuples(st.just("aadgroup"), _upns, st.none() | _tenants),
        st.tuples(st.just("aadgroup"), _guids | _names, _tenants),
        st.tuples(st.just("aadapp"), _guids | _names, _tenants),
        st.tuples(st.just("msauser"), _upns, st.none()),
    ))
    prefix = "".join(c.upper() if draw(st.booleans()) else c for c in prefix)
    pad = lambda text: f"{draw(_pad)}{text}{draw(_pad)}"  # noqa: E731
    return pad(f"{pad(prefix)}={pad(identifier)}" + ("" if tenant is None else f";{pad(tenant)}"))


@given(_references())
def test_every_valid_reference_parses_to_a_stable_canonical_form(text):
    principal = parse_principal(text)
    again = parse_principal(principal.fqn)
    assert again == principal and again.fqn == principal.fqn
    assert Principal(principal.kind, principal.identifier, principal.tenant) == principal
    assert Principal.from_arm(*principal.to_arm()) == principal


@given(st.one_of(
    st.text(),
    st.builds("{}={}".format, st.sampled_from(["aaduser", "aadgroup", "aadapp", "msauser"]), st.text()),
    st.builds("{}={}@{};{}".format, st.sampled_from(["aaduser", "aadgroup", "aadapp", "msauser"]),
              st.text(), st.text(), st.text()),
))
def test_arbitrary_text_raises_nothing_but_principal_error_and_what_parses_is_stable(text):
    try:
        principal = parse_principal(text)
    except PrincipalError:
        return
    assert parse_principal(principal.fqn) == principal
