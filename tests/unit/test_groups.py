"""Group classification: Kusto accepts security-enabled groups only."""
import pytest

from shared.core.errors import DistributionGroupError, PrincipalError
from shared.core.principals import GroupKind, classify_group, ensure_security_group


# The table in FACTS.md ("Telling groups apart"), one case per row and variant.
@pytest.mark.parametrize("group_types, mail_enabled, security_enabled, kind", [
    pytest.param([], False, True, GroupKind.SECURITY, id="security group"),
    pytest.param([], True, True, GroupKind.MAIL_ENABLED_SECURITY, id="mail-enabled security group"),
    pytest.param(["Unified"], True, True, GroupKind.M365_SECURITY, id="Microsoft 365 group, security-enabled"),
    pytest.param(["Unified"], True, False, GroupKind.M365, id="Microsoft 365 group, not security-enabled"),
    pytest.param([], True, False, GroupKind.DISTRIBUTION, id="distribution group"),
    pytest.param(["DynamicMembership"], False, True, GroupKind.SECURITY, id="dynamic security group"),
    pytest.param(["DynamicMembership", "unified"], True, False, GroupKind.M365, id="dynamic Microsoft 365 group"),
])
def test_each_row_of_the_group_table_is_classified(group_types, mail_enabled, security_enabled, kind):
    assert classify_group(mail_enabled=mail_enabled, security_enabled=security_enabled,
                          group_types=group_types) is kind


def test_a_group_with_neither_flag_fits_no_group_type():
    with pytest.raises(PrincipalError, match="fits no Entra group type"):
        classify_group(mail_enabled=False, security_enabled=False, group_types=[])


def _group(name, mail, mail_enabled, security_enabled, group_types=()):
    return {"id": "5a1e5d1c-3b7e-4f5e-9d0a-1b2c3d4e5f60", "displayName": name, "mail": mail,
            "mailEnabled": mail_enabled, "securityEnabled": security_enabled, "groupTypes": list(group_types)}


@pytest.mark.parametrize("group, kind", [
    (_group("Kusto Readers", None, False, True), GroupKind.SECURITY),
    (_group("Kusto Admins", "kusto-admins@contoso.com", True, True), GroupKind.MAIL_ENABLED_SECURITY),
    (_group("Data Team", "data@contoso.com", True, True, ["Unified"]), GroupKind.M365_SECURITY),
    ({"id": "5a1e5d1c-3b7e-4f5e-9d0a-1b2c3d4e5f60", "securityEnabled": True, "groupTypes": None},
     GroupKind.SECURITY),
])
def test_security_enabled_groups_are_accepted(group, kind):
    assert ensure_security_group(group) is kind


@pytest.mark.parametrize("group, message", [
    (_group("Sales-DL", "sales@contoso.com", True, False),
     "group Sales-DL (mail sales@contoso.com) is a distribution group (mailEnabled, not securityEnabled); "
     "Kusto accepts only security groups"),
    (_group("Marketing", "marketing@contoso.com", True, False, ["Unified"]),
     "group Marketing (mail marketing@contoso.com) is a Microsoft 365 group that is not security-enabled; "
     "Kusto accepts only security groups"),
    (_group("Odd", None, False, False),
     "group Odd (id 5a1e5d1c-3b7e-4f5e-9d0a-1b2c3d4e5f60) is neither mail-enabled nor security-enabled; "
     "Kusto accepts only security groups"),
    ({"id": "5a1e5d1c-3b7e-4f5e-9d0a-1b2c3d4e5f60", "mailEnabled": True},
     "group 5a1e5d1c-3b7e-4f5e-9d0a-1b2c3d4e5f60 is a distribution group (mailEnabled, not securityEnabled); "
     "Kusto accepts only security groups"),
])
def test_groups_that_are_not_security_enabled_are_refused_with_the_rule(group, message):
    with pytest.raises(DistributionGroupError) as raised:
        ensure_security_group(group)
    assert str(raised.value) == message
