"""Tests for jitcore.rbac over the real Azure role definitions kept in shared/.

The role files are read at test time from ``shared/azure-builtin-roles`` beside the
repository (or ``$JITBOT_SHARED_DIR``). Without them the tests fail rather than skip:
what they pin is precisely how jitbot reads Microsoft's definitions.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitcore.rbac import (
    CONFIGURE_ACTIONS,
    EVERYONE_PRINCIPAL_ID,
    JIT_INITIATE_ACTION,
    JIT_POLICY_READ_ACTION,
    JIT_POLICY_WRITE_ACTION,
    PUBLIC_IP_READ_ACTION,
    READ_ACTIONS,
    REQUEST_ACTIONS,
    VM_READ_ACTION,
    VM_WRITE_ACTION,
    AccessDecision,
    DenyAssignment,
    Permission,
    RoleAssignment,
    RoleDefinition,
    action_matches,
    condition_constrains,
    evaluate,
    patterns_overlap,
    request_actions,
    requirement_alternatives,
)

SUB_ID = "a925f2f7-5c63-4b7b-8799-25a5f97bc3b2"
SUB = f"/subscriptions/{SUB_ID}"
OTHER_SUB = "/subscriptions/0c3e1b2a-9d8f-4e7a-b6c5-d4e3f2a1b0c9"
MG = "mg-platform"
MG_ID = f"/providers/Microsoft.Management/managementGroups/{MG}"
RG1 = f"{SUB}/resourceGroups/rg1"
RG10 = f"{SUB}/resourceGroups/rg10"
VM = f"{RG1}/providers/Microsoft.Compute/virtualMachines/vm1"
VM10 = f"{RG1}/providers/Microsoft.Compute/virtualMachines/vm10"
VM_IN_RG10 = f"{RG10}/providers/Microsoft.Compute/virtualMachines/vm1"

USER = "6f2c1d9e-3b4a-4c5d-8e7f-0a1b2c3d4e5f"
GROUP = "b7e4a1c2-5d6f-4a8b-9c0d-1e2f3a4b5c6d"
OTHER = "c8f5b2d3-6e7a-4b9c-8d1e-2f3a4b5c6d7e"

JIT_ROLE_GUID = "5d1d2a1e-7c6f-4b0e-9a3b-0c1d2e3f4a5b"
JIT_ROLE = "JIT Access Role"

ROLE_ASSIGNMENTS_WRITE = "Microsoft.Authorization/roleAssignments/write"
NIC_READ = "Microsoft.Network/networkInterfaces/read"
JIT_POLICY_CHILD_READ = "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read"
NIC_CHILD_READ = "Microsoft.Network/networkInterfaces/*/read"
NETWORK_READ = "Microsoft.Network/*/read"
VM_LOGIN = "Microsoft.Compute/virtualMachines/login/action"
VM_LOGIN_AS_ADMIN = "Microsoft.Compute/virtualMachines/loginAsAdmin/action"

# The constrained-delegation form Azure documents: only roleAssignments write and delete
# are constrained, so every other action is granted as if there were no condition.
DELEGATION_CONDITION = (
    "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/write'})) OR "
    "(@Request[Microsoft.Authorization/roleAssignments:RoleDefinitionId] "
    "ForAnyOfAnyValues:GuidEquals{acdd72a7-3385-48ef-bd42-f606fba81ae7})) AND "
    "((!(ActionMatches{'Microsoft.Authorization/roleAssignments/delete'})) OR "
    "(@Resource[Microsoft.Authorization/roleAssignments:RoleDefinitionId] "
    "ForAnyOfAnyValues:GuidEquals{acdd72a7-3385-48ef-bd42-f606fba81ae7}))"
)
ATTRIBUTE_CONDITION = "@Resource[Microsoft.Compute/virtualMachines:tags.env] StringEquals 'dev'"


# Loading the shared data


def _shared_dir() -> Path:
    """shared/ beside the repository, else $JITBOT_SHARED_DIR; fail (not skip) without."""
    candidates: list[Path] = []
    parents = Path(__file__).resolve().parents
    if len(parents) > 3:
        candidates.append(parents[3] / "shared")
    if os.environ.get("JITBOT_SHARED_DIR"):
        candidates.append(Path(os.environ["JITBOT_SHARED_DIR"]))
    for candidate in candidates:
        if (candidate / "azure-builtin-roles" / "roles.json").is_file():
            return candidate
    pytest.fail(
        "shared/azure-builtin-roles not found beside the repository nor in "
        f"$JITBOT_SHARED_DIR (looked in {[str(c) for c in candidates]})"
    )


def _read_json(*parts: str) -> Any:
    return json.loads(_shared_dir().joinpath(*parts).read_text(encoding="utf-8"))


@functools.cache
def _roles() -> dict[str, RoleDefinition]:
    """Every role of the three files, by role name. The custom role gets a GUID and a
    subscription, as Azure would give it on creation."""
    entries = [
        *_read_json("azure-builtin-roles", "roles.json"),
        *_read_json("azure-builtin-roles", "roles-extra.json"),
    ]
    custom = (
        _shared_dir()
        .joinpath("azure-builtin-roles", "jit-least-privileged-role.json")
        .read_text(encoding="utf-8")
        .replace("{roleDefinitionId}", JIT_ROLE_GUID)
        .replace("{subscriptionId}", SUB_ID)
    )
    entries.append(json.loads(custom))
    definitions = [RoleDefinition.from_arm(entry) for entry in entries]
    return {definition.role_name: definition for definition in definitions}


def _role(name: str) -> RoleDefinition:
    return _roles()[name]


def _custom_role(name: str, *permissions: Permission) -> RoleDefinition:
    guid = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    return RoleDefinition(
        id=f"{SUB}/providers/Microsoft.Authorization/roleDefinitions/{guid}",
        name=guid,
        role_name=name,
        role_type="CustomRole",
        permissions=permissions,
        assignable_scopes=(SUB,),
    )


def _assign(
    role: str | RoleDefinition,
    *,
    scope: str = SUB,
    principal: str = USER,
    condition: str | None = None,
    condition_version: str | None = None,
    eligible: bool = False,
) -> RoleAssignment:
    definition = role if isinstance(role, RoleDefinition) else _role(role)
    key = f"{definition.name}|{scope}|{principal}|{condition}|{eligible}"
    guid = uuid.uuid5(uuid.NAMESPACE_URL, key)
    return RoleAssignment(
        id=f"{scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments/{guid}",
        scope=scope,
        role_definition_id=definition.id,
        principal_id=principal,
        principal_type="User",
        condition=condition,
        condition_version=condition_version,
        eligible=eligible,
    )


def _deny(
    actions: Sequence[str],
    *,
    scope: str = SUB,
    principals: Sequence[str] = (EVERYONE_PRINCIPAL_ID,),
    excluded: Sequence[str] = (),
    not_actions: Sequence[str] = (),
    child_scopes: bool = True,
) -> DenyAssignment:
    key = f"{actions}|{scope}|{principals}|{excluded}|{not_actions}|{child_scopes}"
    guid = uuid.uuid5(uuid.NAMESPACE_URL, key)
    return DenyAssignment(
        id=f"{scope.rstrip('/')}/providers/Microsoft.Authorization/denyAssignments/{guid}",
        scope=scope,
        permissions=(Permission(actions=tuple(actions), not_actions=tuple(not_actions)),),
        principals=tuple(principals),
        exclude_principals=tuple(excluded),
        does_not_apply_to_child_scopes=not child_scopes,
    )


def _check(
    assignments: Iterable[RoleAssignment],
    required: Iterable[str],
    *,
    denies: Iterable[DenyAssignment] = (),
    principals: Sequence[str] = (USER,),
    resource: str = VM,
    management_groups: Sequence[str] = (),
    extra_definitions: Sequence[RoleDefinition] = (),
    data: bool = False,
) -> AccessDecision:
    return evaluate(
        resource,
        principals,
        list(assignments),
        [*_roles().values(), *extra_definitions],
        list(denies),
        list(required),
        management_groups,
        data_actions=data,
    )


# The action sets


def test_action_sets_are_the_strings_of_defenders_documentation() -> None:
    assert REQUEST_ACTIONS == (
        "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action",
        "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Network/networkInterfaces/*/read",
    )
    assert PUBLIC_IP_READ_ACTION == "Microsoft.Network/publicIPAddresses/read"
    assert CONFIGURE_ACTIONS == (
        "Microsoft.Security/locations/jitNetworkAccessPolicies/write",
        "Microsoft.Compute/virtualMachines/write",
    )
    assert READ_ACTIONS == (
        "Microsoft.Security/locations/jitNetworkAccessPolicies/read",
        "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action",
        "Microsoft.Security/policies/read",
        "Microsoft.Security/pricings/read",
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Network/*/read",
    )
    readme = _shared_dir().joinpath("azure-builtin-roles", "README.md").read_text("utf-8")
    for action in {*REQUEST_ACTIONS, PUBLIC_IP_READ_ACTION, *CONFIGURE_ACTIONS, *READ_ACTIONS}:
        assert f"`{action}`" in readme


def test_request_actions_add_public_ip_read_only_when_the_vm_has_a_public_ip() -> None:
    assert request_actions(False) == REQUEST_ACTIONS
    assert request_actions(True) == (*REQUEST_ACTIONS, PUBLIC_IP_READ_ACTION)


def test_jit_least_privileged_role_lists_only_actions_of_the_documented_sets() -> None:
    (block,) = _role(JIT_ROLE).permissions
    documented = {a.lower() for a in (*READ_ACTIONS, *request_actions(True))}
    assert {a.lower() for a in block.actions} <= documented


# Roles that matter for JIT, over the real definitions


@pytest.mark.parametrize("public_ip", [False, True], ids=["private-ip", "public-ip"])
def test_jit_access_role_can_request(public_ip: bool) -> None:
    decision = _check([_assign(JIT_ROLE)], request_actions(public_ip))

    assert decision.allowed
    assert decision.missing == ()


def test_jit_access_role_cannot_configure() -> None:
    decision = _check([_assign(JIT_ROLE)], CONFIGURE_ACTIONS)

    assert decision.missing == CONFIGURE_ACTIONS


def test_jit_access_role_lacks_only_pricings_read_of_the_read_set() -> None:
    decision = _check([_assign(JIT_ROLE)], READ_ACTIONS)

    assert decision.missing == ("Microsoft.Security/pricings/read",)


def test_reader_can_read_all_but_initiate_and_cannot_request() -> None:
    read = _check([_assign("Reader")], READ_ACTIONS)
    request = _check([_assign("Reader")], request_actions(True))

    assert read.missing == (JIT_INITIATE_ACTION,)
    assert not request.allowed
    assert request.missing == (JIT_INITIATE_ACTION,)


def test_security_reader_reads_security_but_lacks_initiate_vm_and_network_reads() -> None:
    read = _check([_assign("Security Reader")], READ_ACTIONS)
    request = _check([_assign("Security Reader")], request_actions(False))

    assert read.held == (
        JIT_POLICY_READ_ACTION,
        "Microsoft.Security/policies/read",
        "Microsoft.Security/pricings/read",
    )
    assert read.missing == (JIT_INITIATE_ACTION, VM_READ_ACTION, NETWORK_READ)
    assert not request.allowed
    assert request.missing == (JIT_INITIATE_ACTION, VM_READ_ACTION, NIC_CHILD_READ)


def test_virtual_machine_contributor_alone_cannot_request_for_lack_of_security_actions() -> None:
    decision = _check([_assign("Virtual Machine Contributor")], request_actions(True))

    assert not decision.allowed
    assert decision.missing == (JIT_INITIATE_ACTION, JIT_POLICY_CHILD_READ)
    assert decision.held == (VM_READ_ACTION, NIC_CHILD_READ, PUBLIC_IP_READ_ACTION)


@pytest.mark.parametrize("role", ["Owner", "Contributor"])
def test_owner_and_contributor_can_request_read_and_configure(role: str) -> None:
    for required in (request_actions(True), READ_ACTIONS, CONFIGURE_ACTIONS):
        assert _check([_assign(role)], required).allowed


def test_security_admin_can_initiate_but_lacks_virtual_machine_read() -> None:
    decision = _check([_assign("Security Admin")], request_actions(True))

    assert JIT_INITIATE_ACTION in decision.held
    assert JIT_POLICY_CHILD_READ in decision.held
    assert decision.missing == (VM_READ_ACTION, NIC_CHILD_READ, PUBLIC_IP_READ_ACTION)


def test_security_admin_with_jit_access_role_can_request() -> None:
    decision = _check([_assign("Security Admin"), _assign(JIT_ROLE)], request_actions(True))

    assert decision.allowed


def test_granted_by_names_every_role_and_scope_that_grants_an_action() -> None:
    decision = _check([_assign("Owner"), _assign("Reader", scope=RG1)], [VM_READ_ACTION])

    assert decision.granted_by == {VM_READ_ACTION: [("Owner", SUB), ("Reader", RG1)]}


# The derived-expectations table of shared/azure-builtin-roles/README.md

TABLE_COLUMNS: tuple[tuple[str, bool], ...] = (
    (JIT_INITIATE_ACTION, False),
    (JIT_POLICY_READ_ACTION, False),
    (JIT_POLICY_WRITE_ACTION, False),
    (VM_READ_ACTION, False),
    ("Microsoft.Network/networkSecurityGroups/securityRules/write", False),
    (ROLE_ASSIGNMENTS_WRITE, False),
    (VM_LOGIN, True),
    (VM_LOGIN_AS_ADMIN, True),
)

# Cells as the README prints them. "-*" is the undocumented case of
# virtualMachines/*/read against virtualMachines/read: decided "not granted", by Azure's
# own character rule (the pattern needs a segment between virtualMachines and read).
# "Y (conditioned)" is granted by the definition, but its ABAC condition constrains that
# very action, so an assignment of the role is not counted for it.
DERIVED_TABLE: dict[str, tuple[str, ...]] = {
    "Owner": ("Y", "Y", "Y", "Y", "Y", "Y", "-", "-"),
    "Contributor": ("Y", "Y", "Y", "Y", "Y", "-", "-", "-"),
    "Reader": ("-", "Y", "-", "Y", "-", "-", "-", "-"),
    "User Access Administrator": ("-", "Y", "-", "Y", "-", "Y", "-", "-"),
    "Security Admin": ("Y", "Y", "Y", "-", "-", "-", "-", "-"),
    "Security Reader": ("-", "Y", "-", "-", "-", "-", "-", "-"),
    "Virtual Machine Contributor": ("-", "-", "-", "Y", "-", "-", "-", "-"),
    "Network Contributor": ("-", "-", "-", "-", "Y", "-", "-", "-"),
    "Virtual Machine Administrator Login": ("-", "-", "-", "-*", "-", "-", "Y", "Y"),
    "Virtual Machine User Login": ("-", "-", "-", "-*", "-", "-", "Y", "-"),
    "Desktop Virtualization Virtual Machine Contributor": ("-", "-", "-", "Y", "-", "-", "-", "-"),
    "Desktop Virtualization Power On Off Contributor": ("-", "-", "-", "Y", "-", "-", "-", "-"),
    "Desktop Virtualization User": ("-", "-", "-", "-", "-", "-", "-", "-"),
    "Classic Virtual Machine Contributor": ("-", "-", "-", "-", "-", "-", "-", "-"),
    "Role Based Access Control Administrator": ("-", "Y", "-", "Y", "-", "Y", "-", "-"),
    "Virtual Machine Local User Login": ("-", "-", "-", "-", "-", "-", "-", "-"),
    "Virtual Machine Data Access Administrator (preview)": (
        "-",
        "-",
        "-",
        "-*",
        "-",
        "Y (conditioned)",
        "-",
        "-",
    ),
    "Security Manager (Legacy)": ("Y", "Y", "Y", "-", "-", "-", "-", "-"),
    "JIT Access Role (custom)": ("Y", "Y", "-", "Y", "-", "-", "-", "-"),
}


def _table_role(row_name: str) -> RoleDefinition:
    return _role(JIT_ROLE if row_name == "JIT Access Role (custom)" else row_name)


@pytest.mark.parametrize(("row_name", "cells"), DERIVED_TABLE.items(), ids=list(DERIVED_TABLE))
def test_derived_expectations_table_holds(row_name: str, cells: tuple[str, ...]) -> None:
    definition = _table_role(row_name)
    assignment = _assign(definition)
    wrong: list[str] = []
    for (action, data), cell in zip(TABLE_COLUMNS, cells, strict=True):
        decision = _check([assignment], [action], data=data)
        granted_by_definition = cell in ("Y", "Y (conditioned)")
        counted = cell == "Y"
        skipped = (assignment.id,) if cell == "Y (conditioned)" else ()
        if definition.grants(action, data=data) is not granted_by_definition:
            wrong.append(f"{action}: definition grant should be {granted_by_definition}")
        if decision.allowed is not counted or decision.skipped_conditional != skipped:
            wrong.append(f"{action}: {cell!r} but got {decision}")
    assert wrong == []


def test_derived_expectations_table_is_the_readme_table() -> None:
    readme = _shared_dir().joinpath("azure-builtin-roles", "README.md").read_text("utf-8")
    section = readme.split("### Derived expectations", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    parsed = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        parsed[cells[0]] = tuple(cells[1:])
    assert parsed == DERIVED_TABLE


def test_derived_expectations_table_covers_every_role_in_the_files() -> None:
    assert {_table_role(name).role_name for name in DERIVED_TABLE} == set(_roles())
    assert len(_roles()) == 15 + 3 + 1


# Matching


def test_action_matching_is_case_insensitive() -> None:
    shouting = _custom_role(
        "Shouting",
        Permission(actions=("MICROSOFT.SECURITY/locations/JITNETWORKACCESSPOLICIES/*/Action",)),
    )
    decision = _check(
        [_assign(shouting)],
        ["microsoft.security/LOCATIONS/jitnetworkaccesspolicies/INITIATE/action"],
        extra_definitions=[shouting],
    )

    assert decision.allowed


def test_contributor_not_actions_written_in_title_case_still_remove_role_assignment_write() -> None:
    assert not _check([_assign("Contributor")], [ROLE_ASSIGNMENTS_WRITE]).allowed
    assert not _check(
        [_assign("Contributor")], ["MICROSOFT.AUTHORIZATION/ELEVATEACCESS/ACTION"]
    ).allowed


@pytest.mark.parametrize(
    ("pattern", "action", "expected"),
    [
        ("Microsoft.Compute/virtual*/read", VM_READ_ACTION, True),
        ("Microsoft.Compute/virtual*/read", "Microsoft.Compute/virtualMachineScaleSets/read", True),
        ("Microsoft.Compute/virtual*/read", "Microsoft.Compute/disks/read", False),
        ("Microsoft.Security/locations/jit*Policies/initiate/action", JIT_INITIATE_ACTION, True),
        (
            "Microsoft.Security/locations/jit*Policies/initiate/action",
            JIT_POLICY_READ_ACTION,
            False,
        ),
        ("Microsoft.Compute/*/read", "Microsoft.Compute/virtualMachines/extensions/read", True),
        ("*/read", VM_READ_ACTION, True),
        ("*", VM_WRITE_ACTION, True),
    ],
)
def test_wildcard_matches_anywhere_in_a_segment_and_across_slashes(
    pattern: str, action: str, expected: bool
) -> None:
    assert action_matches(pattern, action) is expected


def test_wildcard_in_the_middle_of_a_segment_grants_through_evaluate() -> None:
    partial = _custom_role(
        "Partial",
        Permission(actions=("Microsoft.Security/locations/jit*/initiate/action", "*/virt*s/read")),
    )
    decision = _check(
        [_assign(partial)],
        [JIT_INITIATE_ACTION, VM_READ_ACTION, "Microsoft.Compute/disks/read"],
        extra_definitions=[partial],
    )

    assert decision.held == (JIT_INITIATE_ACTION, VM_READ_ACTION)
    assert decision.missing == ("Microsoft.Compute/disks/read",)


@pytest.mark.parametrize(
    ("pattern", "action"),
    [
        ("Microsoft.Compute/virtualMachines", VM_READ_ACTION),
        (VM_READ_ACTION, VM_READ_ACTION + "x"),
        (VM_READ_ACTION, "x" + VM_READ_ACTION),
        ("Microsoft.Compute/*/read", "Microsoft.Compute/read"),
    ],
)
def test_patterns_must_match_the_whole_action(pattern: str, action: str) -> None:
    assert not action_matches(pattern, action)


def test_role_wildcard_read_under_virtual_machines_does_not_grant_virtual_machine_read() -> None:
    """The README's rule 3 edge case, decided against the grant (fails closed)."""
    login = _role("Virtual Machine Administrator Login")

    assert not action_matches("Microsoft.Compute/virtualMachines/*/read", VM_READ_ACTION)
    assert login.grants("Microsoft.Compute/virtualMachines/extensions/read")
    assert not _check([_assign(login)], [VM_READ_ACTION]).allowed


def test_not_actions_remove_actions_from_their_own_block() -> None:
    decision = _check([_assign("Contributor")], [ROLE_ASSIGNMENTS_WRITE, JIT_POLICY_WRITE_ACTION])

    assert decision.missing == (ROLE_ASSIGNMENTS_WRITE,)


def test_not_actions_are_not_a_deny_for_another_role() -> None:
    decision = _check(
        [_assign("Contributor"), _assign("Role Based Access Control Administrator")],
        [ROLE_ASSIGNMENTS_WRITE],
    )

    assert decision.allowed
    assert decision.granted_by == {
        ROLE_ASSIGNMENTS_WRITE: [("Role Based Access Control Administrator", SUB)]
    }


def test_not_actions_are_not_a_deny_for_another_block_of_the_same_role() -> None:
    two_blocks = _custom_role(
        "Two blocks",
        Permission(actions=("*",), not_actions=("Microsoft.Security/*",)),
        Permission(actions=(JIT_INITIATE_ACTION,)),
    )
    decision = _check(
        [_assign(two_blocks)],
        [JIT_INITIATE_ACTION, JIT_POLICY_READ_ACTION],
        extra_definitions=[two_blocks],
    )

    assert decision.held == (JIT_INITIATE_ACTION,)
    assert decision.missing == (JIT_POLICY_READ_ACTION,)


def test_control_plane_wildcard_never_grants_data_actions() -> None:
    owner = _check([_assign("Owner")], [VM_LOGIN], data=True)
    login = _check([_assign("Virtual Machine User Login")], [VM_LOGIN], data=True)
    login_as_control_action = _check([_assign("Virtual Machine User Login")], [VM_LOGIN])

    assert not owner.allowed
    assert owner.data_plane
    assert login.allowed
    assert not login_as_control_action.allowed


# Wildcard requirements


def test_requirement_alternatives_read_the_type_read_idiom_only_for_a_resource_type() -> None:
    assert requirement_alternatives(JIT_POLICY_CHILD_READ) == (
        JIT_POLICY_CHILD_READ,
        JIT_POLICY_READ_ACTION,
    )
    assert requirement_alternatives(NIC_CHILD_READ) == (NIC_CHILD_READ, NIC_READ)
    assert requirement_alternatives(NETWORK_READ) == (NETWORK_READ,)
    assert requirement_alternatives(VM_READ_ACTION) == (VM_READ_ACTION,)


def test_wildcard_requirement_is_held_by_a_pattern_covering_all_it_names() -> None:
    for role in ("Reader", "Network Contributor", JIT_ROLE):
        assert _check([_assign(role)], [NETWORK_READ]).allowed, role
    assert action_matches("*/read", NETWORK_READ)
    assert action_matches("Microsoft.Network/*", NETWORK_READ)
    assert action_matches(NETWORK_READ, NIC_CHILD_READ)


def test_wildcard_requirement_is_not_held_by_concrete_reads_alone() -> None:
    many_reads = _custom_role(
        "Many reads",
        Permission(actions=(NIC_READ, PUBLIC_IP_READ_ACTION, "Microsoft.Network/read")),
    )
    decision = _check([_assign(many_reads)], [NETWORK_READ], extra_definitions=[many_reads])

    assert not decision.allowed


def test_type_child_read_requirement_is_held_by_the_type_read() -> None:
    type_read = _custom_role("Type read", Permission(actions=(JIT_POLICY_READ_ACTION, NIC_READ)))
    decision = _check(
        [_assign(type_read)],
        [JIT_POLICY_CHILD_READ, NIC_CHILD_READ],
        extra_definitions=[type_read],
    )

    assert decision.allowed


def test_requirement_listed_verbatim_in_a_role_is_held() -> None:
    verbatim = _custom_role("Verbatim", Permission(actions=REQUEST_ACTIONS))
    decision = _check([_assign(verbatim)], REQUEST_ACTIONS, extra_definitions=[verbatim])

    assert decision.allowed


def test_not_action_removing_part_of_a_wildcard_requirement_withholds_it() -> None:
    carved = _custom_role(
        "Carved",
        Permission(
            actions=(NETWORK_READ,),
            not_actions=("Microsoft.Network/networkInterfaces/ipConfigurations/read",),
        ),
    )
    decision = _check([_assign(carved)], [NETWORK_READ], extra_definitions=[carved])

    assert not decision.allowed


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Microsoft.Network/*/read", "Microsoft.Network/networkInterfaces/*/read", True),
        ("Microsoft.Authorization/*/Write", "Microsoft.Network/*/read", False),
        ("*/delete", "*/read", False),
        ("a*b", "*c*", True),
        ("Microsoft.Network/*", "*/read", True),
    ],
)
def test_patterns_overlap_when_some_action_matches_both(a: str, b: str, expected: bool) -> None:
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected


def _brute_force_overlap(a: str, b: str) -> bool:
    # A shortest common action needs no more characters than both patterns' literals,
    # or one when both are all stars (action names are never empty).
    literals = len(a.replace("*", "")) + len(b.replace("*", ""))
    for size in range(1, max(literals, 1) + 1):
        for letters in itertools.product("ab/", repeat=size):
            text = "".join(letters)
            if action_matches(a, text) and action_matches(b, text):
                return True
    return False


_short_patterns = st.text(alphabet="ab/*", min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(a=_short_patterns, b=_short_patterns)
def test_patterns_overlap_agrees_with_exhaustive_search(a: str, b: str) -> None:
    assert patterns_overlap(a, b) is _brute_force_overlap(a, b)


# Scopes


@pytest.mark.parametrize(
    ("scope", "management_groups"),
    [
        ("/", ()),
        (MG_ID, (MG,)),
        (MG_ID, (MG_ID,)),
        (MG_ID.upper(), ("tenant-root", MG)),
        (SUB, ()),
        (RG1, ()),
        (RG1 + "/", ()),
        (VM, ()),
    ],
    ids=["root", "mg-by-name", "mg-by-id", "mg-any-case", "sub", "rg", "rg-trailing", "vm"],
)
def test_assignment_at_the_resource_or_an_ancestor_applies(
    scope: str, management_groups: tuple[str, ...]
) -> None:
    decision = _check(
        [_assign("Owner", scope=scope)], [JIT_INITIATE_ACTION], management_groups=management_groups
    )

    assert decision.allowed


@pytest.mark.parametrize(
    ("scope", "resource", "management_groups"),
    [
        (RG10, VM, ()),
        (RG1, VM_IN_RG10, ()),
        (VM10, VM, ()),
        (VM, VM10, ()),
        (OTHER_SUB, VM, ()),
        (f"{OTHER_SUB}/resourceGroups/rg1", VM, ()),
        (MG_ID, VM, ("mg-other",)),
        (MG_ID, VM, ()),
        (f"{VM}/extensions/ama", VM, ()),
    ],
    ids=[
        "sibling-rg10",
        "sibling-rg1",
        "sibling-vm10",
        "sibling-vm1",
        "other-sub",
        "same-rg-name-other-sub",
        "mg-not-above",
        "mg-unknown",
        "child-resource",
    ],
)
def test_assignment_elsewhere_does_not_apply(
    scope: str, resource: str, management_groups: tuple[str, ...]
) -> None:
    decision = _check(
        [_assign("Owner", scope=scope)],
        [JIT_INITIATE_ACTION],
        resource=resource,
        management_groups=management_groups,
    )

    assert not decision.allowed


def test_scopes_and_principals_compare_case_insensitively() -> None:
    assignment = RoleAssignment(
        id=f"{RG1.upper()}/providers/Microsoft.Authorization/roleAssignments/x",
        scope=RG1.upper(),
        role_definition_id=_role(JIT_ROLE).id.upper(),
        principal_id=USER.upper(),
    )
    decision = _check([assignment], REQUEST_ACTIONS, resource=VM.lower())

    assert decision.allowed


# Principals and groups


def test_role_given_to_a_group_counts_for_its_members() -> None:
    assignment = _assign(JIT_ROLE, principal=GROUP)

    member = _check([assignment], REQUEST_ACTIONS, principals=(USER, GROUP))
    outsider = _check([assignment], REQUEST_ACTIONS, principals=(USER,))

    assert member.allowed
    assert not outsider.allowed


def test_role_given_to_another_principal_does_not_count() -> None:
    decision = _check([_assign("Owner", principal=OTHER)], REQUEST_ACTIONS)

    assert not decision.allowed
    assert decision.granted_by == {}


# Deny assignments


def test_deny_assignment_beats_owner() -> None:
    deny = _deny([JIT_INITIATE_ACTION], scope=RG1)

    decision = _check([_assign("Owner")], REQUEST_ACTIONS, denies=[deny])

    assert not decision.allowed
    assert decision.missing == (JIT_INITIATE_ACTION,)
    assert decision.denied == ((JIT_INITIATE_ACTION, deny.id),)
    assert decision.granted_by[JIT_INITIATE_ACTION] == [("Owner", SUB)]


def test_deny_assignment_is_reported_even_where_no_role_grants() -> None:
    deny = _deny(["Microsoft.Security/*"])

    decision = _check([_assign("Reader")], [JIT_INITIATE_ACTION], denies=[deny])

    assert decision.denied == ((JIT_INITIATE_ACTION, deny.id),)


def test_deny_assignment_to_a_group_of_the_principal_applies() -> None:
    deny = _deny(["*"], principals=(GROUP,))

    member = _check([_assign("Owner")], [VM_READ_ACTION], denies=[deny], principals=(USER, GROUP))
    outsider = _check([_assign("Owner")], [VM_READ_ACTION], denies=[deny])

    assert not member.allowed
    assert outsider.allowed


def test_deny_assignment_excluding_the_principal_does_not_apply() -> None:
    deny = _deny(["*"], excluded=(USER,))

    decision = _check([_assign("Owner")], REQUEST_ACTIONS, denies=[deny])

    assert decision.allowed
    assert decision.denied == ()


def test_deny_assignment_excluding_a_group_of_the_principal_does_not_apply() -> None:
    deny = _deny(["*"], principals=(USER,), excluded=(GROUP,))

    decision = _check([_assign("Owner")], REQUEST_ACTIONS, denies=[deny], principals=(USER, GROUP))

    assert decision.allowed


def test_deny_assignment_to_another_principal_does_not_apply() -> None:
    deny = _deny(["*"], principals=(OTHER,))

    assert _check([_assign("Owner")], REQUEST_ACTIONS, denies=[deny]).allowed


def test_deny_assignment_not_applying_to_child_scopes_spares_the_vm_below() -> None:
    at_rg = _deny(["*"], scope=RG1, child_scopes=False)
    at_vm = _deny(["*"], scope=VM, child_scopes=False)

    below = _check([_assign("Owner")], REQUEST_ACTIONS, denies=[at_rg])
    at_the_vm = _check([_assign("Owner")], REQUEST_ACTIONS, denies=[at_vm])

    assert below.allowed
    assert not at_the_vm.allowed


def test_deny_assignment_at_a_sibling_scope_does_not_apply() -> None:
    deny = _deny(["*"], scope=RG10)

    assert _check([_assign("Owner")], REQUEST_ACTIONS, denies=[deny]).allowed


def test_deny_assignment_not_actions_spare_the_excluded_actions() -> None:
    deny = _deny(["*"], not_actions=[JIT_INITIATE_ACTION])

    decision = _check([_assign("Owner")], [JIT_INITIATE_ACTION, VM_READ_ACTION], denies=[deny])

    assert decision.held == (JIT_INITIATE_ACTION,)
    assert decision.denied == ((VM_READ_ACTION, deny.id),)


def test_deny_assignment_touching_part_of_a_wildcard_requirement_withholds_it() -> None:
    deny = _deny(["Microsoft.Network/networkInterfaces/ipConfigurations/read"])

    decision = _check([_assign("Reader")], [NETWORK_READ], denies=[deny])

    assert not decision.allowed


def test_deny_assignment_of_data_actions_applies_to_data_plane_only() -> None:
    deny = DenyAssignment(
        id=f"{SUB}/providers/Microsoft.Authorization/denyAssignments/login",
        scope=SUB,
        permissions=(Permission(data_actions=("Microsoft.Compute/virtualMachines/*",)),),
        principals=(EVERYONE_PRINCIPAL_ID,),
    )
    assignments = [_assign("Owner"), _assign("Virtual Machine Administrator Login")]

    assert not _check(assignments, [VM_LOGIN], denies=[deny], data=True).allowed
    assert _check(assignments, [VM_WRITE_ACTION], denies=[deny]).allowed


# Conditions and PIM


def test_conditional_assignment_is_not_counted_and_is_reported() -> None:
    assignment = _assign("Owner", condition=ATTRIBUTE_CONDITION, condition_version="2.0")

    decision = _check([assignment], REQUEST_ACTIONS)

    assert not decision.allowed
    assert decision.skipped_conditional == (assignment.id,)
    assert decision.granted_by == {}


def test_condition_guarding_only_other_actions_is_counted() -> None:
    assignment = _assign("Owner", condition=DELEGATION_CONDITION, condition_version="2.0")

    decision = _check([assignment], REQUEST_ACTIONS)

    assert decision.allowed
    assert decision.skipped_conditional == ()


def test_condition_guarding_a_checked_action_withholds_that_action_only() -> None:
    assignment = _assign("Owner", condition=DELEGATION_CONDITION)

    decision = _check([assignment], [ROLE_ASSIGNMENTS_WRITE, VM_READ_ACTION])

    assert decision.held == (VM_READ_ACTION,)
    assert decision.missing == (ROLE_ASSIGNMENTS_WRITE,)
    assert decision.skipped_conditional == (assignment.id,)


def test_role_definition_condition_withholds_the_action_it_guards() -> None:
    role = _role("Virtual Machine Data Access Administrator (preview)")
    assignment = _assign(role)

    decision = _check([assignment], [ROLE_ASSIGNMENTS_WRITE, NIC_READ])

    assert role.grants(ROLE_ASSIGNMENTS_WRITE)
    assert decision.held == (NIC_READ,)
    assert decision.skipped_conditional == (assignment.id,)


@pytest.mark.parametrize(
    ("condition", "version", "constrains"),
    [
        (None, None, False),
        ("", None, False),
        (DELEGATION_CONDITION, None, False),
        (DELEGATION_CONDITION, "2.0", False),
        (DELEGATION_CONDITION, "1.0", True),
        (ATTRIBUTE_CONDITION, "2.0", True),
        (
            "(!(ActionMatches{'a/b'} OR ActionMatches{'c/d'})) OR (@Request[x] StringEquals 'y')",
            None,
            False,
        ),
        ("NOT ActionMatches{'a/b'} || @Request[x] StringEquals 'y'", None, False),
        (
            "(!(ActionMatches{'Microsoft.Security/*'})) OR (@Request[x] StringEquals 'y')",
            None,
            True,
        ),
        (
            "(!(ActionMatches{'a/b'})) OR (@Request[x] StringEquals 'y') AND @Resource[z] Exists",
            None,
            True,
        ),
        (
            "(!(ActionMatches{'a/b'} AND NOT SubOperationMatches{'s'})) OR (@Request[x] Exists)",
            None,
            True,
        ),
        ("((!(ActionMatches{'a/b'})) OR (@Request[x] StringEquals 'y (')", None, True),
        ("(!(ActionMatches{'a/b'}))) OR (x)", None, True),
    ],
    ids=[
        "none",
        "empty",
        "delegation-default-version",
        "delegation-2.0",
        "unknown-version",
        "attribute-only",
        "or-of-action-matches",
        "not-keyword-and-symbols",
        "guard-matches-the-action",
        "unguarded-clause",
        "sub-operation",
        "unbalanced-parenthesis",
        "stray-parenthesis",
    ],
)
def test_condition_is_understood_only_when_it_guards_other_actions(
    condition: str | None, version: str | None, constrains: bool
) -> None:
    assert condition_constrains(condition, version, JIT_INITIATE_ACTION) is constrains


def test_pim_eligible_assignment_never_counts() -> None:
    decision = _check([_assign("Owner", eligible=True)], REQUEST_ACTIONS)

    assert not decision.allowed
    assert decision.granted_by == {}


def test_pim_eligibility_instance_from_arm_is_marked_eligible() -> None:
    guid = "0f1e2d3c-4b5a-4968-8776-655443322110"
    item = {
        "id": f"{SUB}/providers/Microsoft.Authorization/roleEligibilityScheduleInstances/{guid}",
        "name": guid,
        "type": "Microsoft.Authorization/roleEligibilityScheduleInstances",
        "properties": {
            "scope": SUB,
            "roleDefinitionId": _role("Owner").id,
            "principalId": USER,
            "principalType": "User",
            "status": "Provisioned",
            "memberType": "Direct",
        },
    }

    assignment = RoleAssignment.from_arm(item)

    assert assignment.eligible
    assert not _check([assignment], [VM_READ_ACTION]).allowed


# ARM shapes and definitions


def test_role_assignments_from_the_api_example_apply_down_to_the_resource() -> None:
    example = _read_json(
        "azure-api-examples", "authorization", "RoleAssignments_ListForResource.json"
    )
    items = example["responses"]["200"]["body"]["value"]
    assignments = [RoleAssignment.from_arm(item) for item in items]
    account = f"{SUB}/resourceGroups/testrg/providers/Microsoft.DocumentDb/databaseAccounts/"
    account += "test-db-account"
    reader_like = RoleDefinition(
        id="/providers/Microsoft.Authorization/roleDefinitions/0b5fe924-9a61-425c-96af-cfe6e287ca2d",
        name="0b5fe924-9a61-425c-96af-cfe6e287ca2d",
        role_name="Example role",
        permissions=(Permission(actions=("Microsoft.DocumentDb/*/read",)),),
    )

    decision = evaluate(
        account,
        ["ce2ce14e-85d7-4629-bdbc-454d0519d987"],
        assignments,
        [reader_like],
        [],
        ["Microsoft.DocumentDB/databaseAccounts/read"],
    )

    assert [a.scope for a in assignments] == [SUB, f"{SUB}/resourceGroups/testrg", account]
    assert assignments[0].principal_type == "User"
    assert decision.allowed
    assert [scope for _, scope in decision.granted_by[decision.held[0]]] == [
        a.scope for a in assignments
    ]


def test_role_definition_from_the_api_example_keeps_both_planes() -> None:
    example = _read_json("azure-api-examples", "authorization", "RoleDefinitions_GetById.json")

    definition = RoleDefinition.from_arm(example["responses"]["200"]["body"])

    assert definition.role_name == "Role name"
    assert definition.role_type == "roletype"
    assert definition.permissions == (
        Permission(actions=("action",), data_actions=("dataAction",)),
    )
    assert definition.assignable_scopes == ("/subscriptions/subId",)


def test_role_file_entries_keep_type_conditions_and_duplicates() -> None:
    owner = _role("Owner")
    data_access = _role("Virtual Machine Data Access Administrator (preview)")
    desktop = _role("Desktop Virtualization Virtual Machine Contributor")

    assert owner.role_type == "BuiltInRole"
    assert _role(JIT_ROLE).role_type == "CustomRole"
    assert data_access.permissions[0].condition_version == "2.0"
    assert desktop.permissions[0].actions.count("Microsoft.Network/networkSecurityGroups/read") == 2


def test_definitions_are_found_by_guid_in_tenant_or_subscription_form() -> None:
    assignment = RoleAssignment(
        id=f"{SUB}/providers/Microsoft.Authorization/roleAssignments/r",
        scope=SUB,
        role_definition_id=f"{SUB}/providers/Microsoft.Authorization/roleDefinitions/"
        + _role("Reader").name.upper(),
        principal_id=USER,
    )

    assert _check([assignment], [VM_READ_ACTION]).granted_by == {VM_READ_ACTION: [("Reader", SUB)]}


def test_assignment_of_an_unknown_definition_is_reported_not_counted() -> None:
    assignment = RoleAssignment(
        id=f"{SUB}/providers/Microsoft.Authorization/roleAssignments/u",
        scope=SUB,
        role_definition_id="/providers/Microsoft.Authorization/roleDefinitions/unknown-guid",
        principal_id=USER,
    )

    decision = _check([assignment], [VM_READ_ACTION])

    assert not decision.allowed
    assert decision.unknown_definitions == (assignment.role_definition_id,)


def test_deny_assignment_from_arm_reads_principals_and_child_scope_flag() -> None:
    item = {
        "id": f"{RG1}/providers/Microsoft.Authorization/denyAssignments/d1",
        "name": "d1",
        "type": "Microsoft.Authorization/denyAssignments",
        "properties": {
            "denyAssignmentName": "Managed app lock",
            "permissions": [{"actions": ["*"], "notActions": ["*/read"]}],
            "scope": RG1,
            "doNotApplyToChildScopes": True,
            "principals": [{"id": EVERYONE_PRINCIPAL_ID, "type": "SystemDefined"}],
            "excludePrincipals": [{"id": GROUP, "type": "Group"}],
            "isSystemProtected": True,
        },
    }

    deny = DenyAssignment.from_arm(item)

    assert deny.principals == (EVERYONE_PRINCIPAL_ID,)
    assert deny.exclude_principals == (GROUP,)
    assert deny.does_not_apply_to_child_scopes
    assert deny.name == "Managed app lock"
    assert deny.permissions[0].not_actions == ("*/read",)


def test_assignment_without_scope_takes_it_from_its_id() -> None:
    item = {
        "id": f"{RG1}/providers/Microsoft.Authorization/roleAssignments/a",
        "properties": {"roleDefinitionId": _role("Owner").id, "principalId": USER},
    }

    assert RoleAssignment.from_arm(item).scope == RG1


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: RoleAssignment.from_arm({"id": "/a", "properties": {"scope": SUB}}), "None"),
        (lambda: RoleAssignment.from_arm({"id": "/a", "properties": "oops"}), "oops"),
        (
            lambda: RoleDefinition.from_arm(
                {
                    "id": "/providers/Microsoft.Authorization/roleDefinitions/g1",
                    "name": "g2",
                    "properties": {"roleName": "R"},
                }
            ),
            "g2",
        ),
        (
            lambda: RoleDefinition.from_arm(
                {"name": "g", "properties": {"roleName": "R", "permissions": {"actions": []}}}
            ),
            "actions",
        ),
        (lambda: Permission(actions=("Microsoft.Compute/virtualMachines/ read",)), " read"),
        (lambda: Permission.from_arm({"actions": "*"}), "'*'"),
        (
            lambda: DenyAssignment.from_arm(
                {"id": "/d", "properties": {"scope": "/", "doNotApplyToChildScopes": "false"}}
            ),
            "'false'",
        ),
        (lambda: _check([], [VM_READ_ACTION], resource="vm1"), "vm1"),
        (lambda: _check([], [VM_READ_ACTION], resource=RG1 + "//x"), "//x"),
        (lambda: _check([], [VM_READ_ACTION], resource=MG_ID), "managementGroups"),
        (lambda: _check([], [VM_READ_ACTION], principals=()), "principal_ids"),
        (lambda: _check([], [VM_READ_ACTION], principals=USER), USER),
        (lambda: _check([], []), "required_actions"),
        (lambda: _check([], ["not an action"]), "not an action"),
        (
            lambda: _check([], [VM_READ_ACTION], management_groups=("/subscriptions/x",)),
            "/subscriptions/x",
        ),
        (lambda: _check([], [VM_READ_ACTION], management_groups=MG), MG),
        (lambda: _check(["not an assignment"], [VM_READ_ACTION]), "not an assignment"),  # type: ignore[list-item]
    ],
)
def test_invalid_input_raises_value_error_naming_the_value(build: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("*", r"\*")):
        build()


# Properties


_SCOPES = ("/", MG_ID, SUB, RG1, RG10, VM, VM10, OTHER_SUB)
_PRINCIPALS = (USER, GROUP, OTHER)
_CONDITIONS = (None, DELEGATION_CONDITION, ATTRIBUTE_CONDITION)
_ACTIONS = (
    *request_actions(True),
    *CONFIGURE_ACTIONS,
    *READ_ACTIONS,
    ROLE_ASSIGNMENTS_WRITE,
    NIC_READ,
)
_DENY_PATTERNS = (*_ACTIONS, "*", "*/read", "Microsoft.Network/*", "Microsoft.Security/*/read")

_assignments = st.builds(
    lambda role, scope, principal, condition, eligible: _assign(
        _table_role(role), scope=scope, principal=principal, condition=condition, eligible=eligible
    ),
    st.sampled_from(tuple(DERIVED_TABLE)),
    st.sampled_from(_SCOPES),
    st.sampled_from(_PRINCIPALS),
    st.sampled_from(_CONDITIONS),
    st.booleans(),
)
_denies = st.builds(
    lambda actions, not_actions, scope, principals, excluded, child_scopes: _deny(
        actions,
        scope=scope,
        principals=principals,
        excluded=excluded,
        not_actions=not_actions,
        child_scopes=child_scopes,
    ),
    st.lists(st.sampled_from(_DENY_PATTERNS), min_size=1, max_size=3),
    st.lists(st.sampled_from(_DENY_PATTERNS), max_size=2),
    st.sampled_from(_SCOPES),
    st.lists(st.sampled_from((*_PRINCIPALS, EVERYONE_PRINCIPAL_ID)), min_size=1, max_size=2),
    st.lists(st.sampled_from(_PRINCIPALS), max_size=1),
    st.booleans(),
)
_required = st.lists(st.sampled_from(_ACTIONS), min_size=1, max_size=6)
_caller = st.sampled_from(((USER,), (USER, GROUP)))


def _held(
    assignments: list[RoleAssignment],
    denies: list[DenyAssignment],
    required: list[str],
    principals: tuple[str, ...],
) -> set[str]:
    decision = _check(
        assignments, required, denies=denies, principals=principals, management_groups=(MG,)
    )
    return set(decision.held)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    assignments=st.lists(_assignments, max_size=5),
    denies=st.lists(_denies, max_size=2),
    extra=_denies,
    required=_required,
    principals=_caller,
)
def test_adding_a_deny_assignment_never_adds_a_held_action(
    assignments: list[RoleAssignment],
    denies: list[DenyAssignment],
    extra: DenyAssignment,
    required: list[str],
    principals: tuple[str, ...],
) -> None:
    before = _held(assignments, denies, required, principals)
    after = _held(assignments, [*denies, extra], required, principals)

    assert after <= before


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    assignments=st.lists(_assignments, max_size=5),
    denies=st.lists(_denies, max_size=2),
    extra=_assignments,
    required=_required,
    principals=_caller,
)
def test_adding_an_assignment_never_removes_a_held_action(
    assignments: list[RoleAssignment],
    denies: list[DenyAssignment],
    extra: RoleAssignment,
    required: list[str],
    principals: tuple[str, ...],
) -> None:
    before = _held(assignments, denies, required, principals)
    after = _held([*assignments, extra], denies, required, principals)

    assert after >= before
