"""The policy file's optional `principals` map: Slack user id -> Entra ID user."""

from __future__ import annotations

from pathlib import Path

import pytest

from jitcore.policy import (
    PolicyError,
    load_policy_file,
    load_principal_mappings,
    parse_policies,
    principal_mappings,
)

POLICY = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22}],
    "approvers": ["U0APPROVR1"],
    "approval_channel": "C0OPS12345",
}


def test_a_file_without_principals_maps_nobody() -> None:
    assert principal_mappings({"policies": [POLICY]}) == {}


def test_principals_map_member_ids_to_a_upn_or_an_object_id(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(
        "policies:\n"
        "  - {name: web-admin, vms: [vm-web01], ports: [{port: 22}], approvers: [U0APPROVR1],\n"
        "     approval_channel: C0OPS12345}\n"
        "principals:\n"
        "  U0NOEMAIL1: dave@example.com\n"
        "  U0NOMATCH1: da5e0000-0000-4000-8000-000000000005\n",
        encoding="utf-8",
    )

    assert load_principal_mappings(path) == {
        "U0NOEMAIL1": "dave@example.com",
        "U0NOMATCH1": "da5e0000-0000-4000-8000-000000000005",
    }
    assert [p.name for p in load_policy_file(path)] == ["web-admin"]


@pytest.mark.parametrize(
    ("principals", "expected"),
    [
        pytest.param({"dave": "dave@example.com"}, "not a Slack user id", id="not-a-member-id"),
        pytest.param({"U0NOEMAIL1": "Dave Example"}, "neither a userPrincipalName", id="a-name"),
    ],
)
def test_a_bad_mapping_is_refused_naming_it(principals: dict[str, str], expected: str) -> None:
    data = {"policies": [POLICY], "principals": principals}

    with pytest.raises(PolicyError, match=f"principals: .*{expected}"):
        principal_mappings(data)
    with pytest.raises(PolicyError, match=expected):
        parse_policies(data)
