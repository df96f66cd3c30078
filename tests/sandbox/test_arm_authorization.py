"""The ARM stand-in's Microsoft.Authorization and Graph reads, driven by the real clients:
azure-mgmt-authorization (2022-04-01) and jitbot's own Graph and authorization adapters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from jitcore import rbac
from jitcore.access import VIEW_ACTIONS
from jitcore.azure.authorization import AuthorizationGateway, authorization_client
from jitcore.azure.clients import AzureTarget
from jitcore.azure.identity import GraphDirectory
from jitcore.errors import CloudError
from sandbox.arm.server import ArmServer
from sandbox.arm.testing import StaticTokenCredential, http_session
from tests.shared import shared_dir

SHARED = shared_dir()
EXAMPLES = SHARED / "azure-api-examples" / "authorization"
API = "2022-04-01"
ALICE = "a11ce000-0000-4000-8000-000000000001"
GINA = "9ea00000-0000-4000-8000-00000000000a"
OSCAR = "0a5ca400-0000-4000-8000-000000000009"
REQUESTERS = "9a0c0000-0000-4000-8000-000000000021"
SRE_TEAM = "9a0c0000-0000-4000-8000-000000000022"
JIT_ROLE = "0f4a5c1e-6d2b-4e8f-9a37-5b1c2d3e4f60"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmServer]:
    with ArmServer(workdir=tmp_path_factory.mktemp("arm")) as server:
        yield server


@pytest.fixture(scope="module")
def target(arm: ArmServer) -> AzureTarget:
    return AzureTarget(
        subscription_id=arm.subscription_id,
        credential=StaticTokenCredential(),
        base_url=arm.url,
        ca_bundle=arm.ca_path,
        polling_interval=0,
        retry_total=0,
    )


@pytest.fixture(scope="module")
def client(target: AzureTarget) -> Iterator[Any]:
    with authorization_client(target) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def graph(arm: ArmServer) -> Iterator[GraphDirectory]:
    directory = GraphDirectory(StaticTokenCredential(), arm.url, arm.ca_path, retry_total=0)
    yield directory
    directory.close()


@pytest.fixture
def http(arm: ArmServer) -> Iterator[requests.Session]:
    with http_session(arm) as session:
        yield session


def rg(arm: ArmServer) -> str:
    return f"/subscriptions/{arm.subscription_id}/resourceGroups/rg-jit-demo"


def vm(arm: ArmServer, name: str = "vm-web01") -> str:
    return f"{rg(arm)}/providers/Microsoft.Compute/virtualMachines/{name}"


def assigned(client: Any, scope: str, filter: str | None = None) -> list[tuple[str, str, str]]:
    items = client.role_assignments.list_for_scope(scope.lstrip("/"), filter=filter)
    return sorted((a.principal_id, a.role_definition_id.rsplit("/", 1)[-1], a.scope) for a in items)


def test_assigned_to_lists_the_users_assignments_above_the_vm(arm: ArmServer, client: Any) -> None:
    found = assigned(client, vm(arm), f"assignedTo('{ALICE}')")

    assert found == [(ALICE, JIT_ROLE, rg(arm))]


def test_assigned_to_includes_assignments_of_groups_the_user_is_in_through_nesting(
    arm: ArmServer, client: Any
) -> None:
    found = assigned(client, vm(arm), f"assignedTo('{GINA}')")

    assert found == [(REQUESTERS, JIT_ROLE, rg(arm))]


def test_without_a_filter_assignments_below_the_scope_are_listed_and_at_scope_drops_them(
    arm: ArmServer, client: Any
) -> None:
    subscription = f"/subscriptions/{arm.subscription_id}"

    everything = assigned(client, subscription)
    at_or_above = assigned(client, subscription, "atScope()")

    assert {scope for _, _, scope in everything} == {subscription, rg(arm)}
    assert {scope for _, _, scope in at_or_above} == {subscription}


def test_principal_id_eq_lists_that_principal_only(arm: ArmServer, client: Any) -> None:
    assert assigned(client, vm(arm), f"principalId eq '{SRE_TEAM}'") == []
    assert [p for p, _, _ in assigned(client, vm(arm), f"principalId eq '{REQUESTERS}'")] == [
        REQUESTERS
    ]


def test_the_list_has_the_shape_of_the_official_example(
    arm: ArmServer, http: requests.Session
) -> None:
    example = json.loads((EXAMPLES / "RoleAssignments_ListForScope.json").read_text())
    [expected] = example["responses"]["200"]["body"]["value"]

    response = http.get(
        f"{arm.url}{vm(arm)}/providers/Microsoft.Authorization/roleAssignments",
        params={"api-version": API, "$filter": f"assignedTo('{ALICE}')"},
    )

    [item] = response.json()["value"]
    assert set(expected) <= set(item)
    assert set(expected["properties"]) <= set(item["properties"])
    assert item["id"].startswith(rg(arm) + "/providers/Microsoft.Authorization/roleAssignments/")


def test_an_unsupported_filter_is_a_400(arm: ArmServer, client: Any) -> None:
    with pytest.raises(HttpResponseError) as failed:
        assigned(client, vm(arm), "roleDefinitionId eq 'x'")
    assert failed.value.status_code == 400


def test_a_missing_resource_scope_is_a_404(arm: ArmServer, client: Any) -> None:
    with pytest.raises(ResourceNotFoundError):
        assigned(client, vm(arm, "vm-nope"), f"assignedTo('{ALICE}')")


def test_role_definitions_by_id_in_both_forms_are_the_real_built_in_ones(
    arm: ArmServer, client: Any
) -> None:
    roles = json.loads((SHARED / "azure-builtin-roles" / "roles.json").read_text())
    [reader] = [r for r in roles if r["name"] == READER]

    tenant = client.role_definitions.get_by_id(
        f"/providers/Microsoft.Authorization/roleDefinitions/{READER}"
    )
    sub = client.role_definitions.get_by_id(
        f"/subscriptions/{arm.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{READER}"
    )

    assert tenant.id == reader["id"] and sub.id.startswith(f"/subscriptions/{arm.subscription_id}/")
    assert tenant.role_name == sub.role_name == "Reader"
    assert [p.actions for p in sub.permissions] == [["*/read"]]


def test_a_custom_role_is_found_within_its_assignable_scopes_only(
    arm: ArmServer, client: Any
) -> None:
    in_sub = client.role_definitions.get(f"subscriptions/{arm.subscription_id}", JIT_ROLE)
    assert in_sub.role_name == "JIT Access Role" and in_sub.role_type == "CustomRole"

    with pytest.raises(ResourceNotFoundError):
        client.role_definitions.get_by_id(
            f"/providers/Microsoft.Authorization/roleDefinitions/{JIT_ROLE}"
        )


def test_role_definitions_list_filters_by_name_and_type(arm: ArmServer, client: Any) -> None:
    scope = f"subscriptions/{arm.subscription_id}"

    by_name = list(client.role_definitions.list(scope, filter="roleName eq 'Security Reader'"))
    custom = list(client.role_definitions.list(scope, filter="type eq 'CustomRole'"))

    assert [d.role_name for d in by_name] == ["Security Reader"]
    assert [d.role_name for d in custom] == ["JIT Access Role"]


def test_deny_assignments_at_scope_reach_the_vm_below_them(arm: ArmServer, client: Any) -> None:
    [deny] = client.deny_assignments.list_for_scope(vm(arm).lstrip("/"), filter="atScope()")

    assert deny.scope == rg(arm)
    assert [p.id for p in deny.principals] == [OSCAR]
    assert deny.permissions[0].actions == [
        "Microsoft.Security/locations/jitNetworkAccessPolicies/*"
    ]


def test_graph_finds_users_by_mail_upn_or_object_id_ignoring_case(graph: GraphDirectory) -> None:
    by_mail = graph.find_user("ALICE@example.com")
    by_id = graph.find_user(ALICE)

    assert by_mail is not None and by_mail == by_id
    assert (by_mail.object_id, by_mail.user_principal_name) == (ALICE, "alice@example.com")
    assert graph.find_user("nobody@example.com") is None
    assert graph.find_user("00000000-0000-4000-8000-0000000000ff") is None


def test_graph_lists_groups_through_nesting_across_pages(
    arm: ArmServer, http: requests.Session
) -> None:
    directory = GraphDirectory(StaticTokenCredential(), arm.url, arm.ca_path, retry_total=0)
    try:
        assert sorted(directory.transitive_group_ids(GINA)) == [REQUESTERS, SRE_TEAM]
    finally:
        directory.close()

    page = http.get(f"{arm.url}/v1.0/users/{GINA}/transitiveMemberOf", params={"$top": "1"}).json()
    assert len(page["value"]) == 1 and "$skiptoken=1" in page["@odata.nextLink"]


def test_graph_refuses_a_missing_token_and_an_unsupported_filter(
    arm: ArmServer, http: requests.Session
) -> None:
    anonymous = requests.get(f"{arm.url}/v1.0/users", verify=arm.ca_path, timeout=5)
    unsupported = http.get(f"{arm.url}/v1.0/users", params={"$filter": "startswith(mail,'a')"})

    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert unsupported.status_code == 400
    assert unsupported.json()["error"]["code"] == "Request_UnsupportedQuery"


@pytest.mark.parametrize(
    ("user", "groups", "allowed"),
    [
        pytest.param(ALICE, (), True, id="jit-role"),
        pytest.param(GINA, (REQUESTERS, SRE_TEAM), True, id="jit-role-through-groups"),
        pytest.param(GINA, (), False, id="group-ids-are-needed"),
        pytest.param(OSCAR, (), False, id="owner-but-denied"),
    ],
)
def test_the_gateway_decides_from_what_the_stand_in_serves(
    arm: ArmServer, target: AzureTarget, user: str, groups: tuple[str, ...], allowed: bool
) -> None:
    gateway = AuthorizationGateway(target)
    try:
        decision = gateway.decide(vm(arm), user, groups, rbac.request_actions(True))
    finally:
        gateway.close()

    assert decision.allowed is allowed


def test_the_gateway_reports_azure_refusing_as_a_cloud_error(
    arm: ArmServer, target: AzureTarget
) -> None:
    arm.add_fault(
        method="GET", path_contains="roleAssignments", status=403, code="AuthorizationFailed"
    )
    gateway = AuthorizationGateway(target)
    try:
        with pytest.raises(CloudError, match="AuthorizationFailed"):
            gateway.decide(vm(arm), ALICE, (), VIEW_ACTIONS)
    finally:
        gateway.close()
        arm.clear_faults()


def test_deleting_a_role_assignment_revokes_it(tmp_path: Path) -> None:
    with ArmServer(workdir=tmp_path) as arm:
        target = AzureTarget(arm.subscription_id, StaticTokenCredential(), arm.url, arm.ca_path)
        with authorization_client(target) as client:
            scope = rg(arm).lstrip("/")
            [item] = client.role_assignments.list_for_scope(
                scope, filter=f"principalId eq '{ALICE}'"
            )

            deleted = client.role_assignments.delete(scope, item.name)
            again = client.role_assignments.delete(scope, item.name)

            assert deleted.id == item.id and again is None
            assert assigned(client, vm(arm), f"assignedTo('{ALICE}')") == []
