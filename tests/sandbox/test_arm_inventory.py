"""The ARM stand-in's reads, TLS, auth and api-versions, driven by the real Azure SDK clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.mgmt.network import NetworkManagementClient

from sandbox.arm.server import ArmServer
from sandbox.arm.state import DEFAULT_SEED
from sandbox.arm.testing import (
    StaticTokenCredential,
    client_options,
    compute_client,
    http_session,
    network_client,
)
from tests.shared import shared_dir

NETWORK = "2025-05-01"
COMPUTE = "2025-11-01"
RG = "rg-jit-demo"
SHARED = shared_dir()
EXAMPLES = SHARED / "azure-api-examples"
SPEC = SHARED / "azure-api-specs/network/networkSecurityGroup.2025-05-01.json"


@pytest.fixture
def arm(tmp_path: Path) -> Iterator[ArmServer]:
    with ArmServer(workdir=tmp_path) as server:
        yield server


@pytest.fixture
def network(arm: ArmServer) -> Iterator[NetworkManagementClient]:
    with network_client(arm, retry_total=0) as client:
        yield client


@pytest.fixture
def http(arm: ArmServer) -> Iterator[requests.Session]:
    with http_session(arm) as session:
        yield session


def nsg_path(arm: ArmServer, name: str = "nsg-web01", group: str = RG) -> str:
    return (
        f"/subscriptions/{arm.subscription_id}/resourceGroups/{group}"
        f"/providers/Microsoft.Network/networkSecurityGroups/{name}"
    )


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def spec_properties(definition: str) -> set[str]:
    """Property names the 2025-05-01 spec defines (with its allOf bases' common ones)."""
    spec = json.loads(SPEC.read_text())
    names = set(spec["definitions"][definition]["properties"])
    return names | {"id", "name", "type", "location", "tags"}


def test_vm_to_nic_to_nsg_chain_resolves_with_the_sdk(arm: ArmServer, network) -> None:
    with compute_client(arm) as compute:
        vm = compute.virtual_machines.get(RG, "vm-web01", api_version=COMPUTE)
    nic_id = vm.network_profile.network_interfaces[0].id
    nic_name = nic_id.rsplit("/", 1)[1]
    nic = network.network_interfaces.get(RG, nic_name, api_version=NETWORK)
    config = nic.ip_configurations[0]
    nsg = network.network_security_groups.get(
        RG, nic.network_security_group.id.rsplit("/", 1)[1], api_version=NETWORK
    )

    assert nic.virtual_machine.id == vm.id
    assert config.private_ip_address == "10.0.1.4"
    assert config.subnet.id.endswith("/virtualNetworks/vnet-jit-demo/subnets/snet-web")
    assert {rule.name for rule in nsg.security_rules} == {"allow-https", "jitbot-deny-vm-web01"}
    assert nsg.network_interfaces[0].id == nic.id
    assert vm.provisioning_state == "Succeeded" and vm.vm_id and vm.location == "westeurope"


def test_public_ip_and_subnet_give_address_and_prefix(arm: ArmServer, network) -> None:
    nic = network.network_interfaces.get(RG, "nic-web01", api_version=NETWORK)
    pip = network.public_ip_addresses.get(RG, "pip-web01", api_version=NETWORK)
    subnet = network.subnets.get(RG, "vnet-jit-demo", "snet-db", api_version=NETWORK)

    assert nic.ip_configurations[0].public_ip_address.id == pip.id
    assert pip.ip_address == "20.50.60.70"
    assert subnet.address_prefix == "10.0.2.0/24"
    assert subnet.network_security_group is None


def test_vms_list_by_group_and_by_subscription(arm: ArmServer) -> None:
    with compute_client(arm) as compute:
        in_group = {vm.name for vm in compute.virtual_machines.list(RG, api_version=COMPUTE)}
        everywhere = {vm.name for vm in compute.virtual_machines.list_all(api_version=COMPUTE)}

    assert in_group == everywhere == {"vm-web01", "vm-db01"}


def test_nsgs_list_by_group_and_by_subscription(network) -> None:
    in_group = {nsg.name for nsg in network.network_security_groups.list(RG, api_version=NETWORK)}
    everywhere = {nsg.name for nsg in network.network_security_groups.list_all(api_version=NETWORK)}

    assert in_group == everywhere == {"nsg-web01", "nsg-db01"}


def test_sdk_default_api_versions_are_accepted(arm: ArmServer, network) -> None:
    with compute_client(arm) as compute:
        assert compute.virtual_machines.get(RG, "vm-db01").name == "vm-db01"
    assert network.network_security_groups.get(RG, "nsg-db01").name == "nsg-db01"


def test_nsg_get_has_the_key_structure_of_the_example(arm: ArmServer, http) -> None:
    expected = example("network/NetworkSecurityGroups_Get.json")["responses"]["200"]["body"]
    body = http.get(f"{arm.url}{nsg_path(arm)}", params={"api-version": NETWORK}).json()

    assert set(expected) <= set(body) <= spec_properties("NetworkSecurityGroup") | {"etag"}
    assert set(expected["properties"]) <= set(body["properties"])
    assert set(body["properties"]) <= spec_properties("NetworkSecurityGroupPropertiesFormat")
    rule, expected_rule = (
        body["properties"]["securityRules"][0],
        expected["properties"]["securityRules"][0],
    )
    assert set(expected_rule) <= set(rule) <= spec_properties("SecurityRule")
    assert set(expected_rule["properties"]) <= set(rule["properties"])
    assert set(rule["properties"]) <= spec_properties("SecurityRulePropertiesFormat")


def test_default_security_rules_equal_the_examples(arm: ArmServer, http) -> None:
    expected = example("network/NetworkSecurityGroups_Get.json")["responses"]["200"]["body"]
    body = http.get(f"{arm.url}{nsg_path(arm)}", params={"api-version": NETWORK}).json()

    def shape(rules: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        return [(rule["name"], rule["properties"]) for rule in rules]

    defaults = body["properties"]["defaultSecurityRules"]
    assert shape(defaults) == shape(expected["properties"]["defaultSecurityRules"])
    assert all(
        rule["id"] == f"{body['id']}/defaultSecurityRules/{rule['name']}" for rule in defaults
    )


def test_nic_and_vm_have_the_key_structure_of_the_examples(arm: ArmServer, http) -> None:
    nic_example = example("network/NetworkInterfaces_Get.json")["responses"]["200"]["body"]
    vm_example = example("compute/VirtualMachines_Get.json")["responses"]["200"]["body"]
    group = f"{arm.url}/subscriptions/{arm.subscription_id}/resourceGroups/{RG}/providers"
    nic = http.get(
        f"{group}/Microsoft.Network/networkInterfaces/nic-web01", params={"api-version": NETWORK}
    ).json()
    vm = http.get(
        f"{group}/Microsoft.Compute/virtualMachines/vm-web01", params={"api-version": COMPUTE}
    ).json()

    needed = {"ipConfigurations", "networkSecurityGroup", "virtualMachine", "provisioningState"}
    assert needed <= set(nic["properties"]) <= set(nic_example["properties"]) | {"resourceGuid"}
    config_keys = set(nic_example["properties"]["ipConfigurations"][0]["properties"])
    assert set(nic["properties"]["ipConfigurations"][0]["properties"]) <= config_keys
    assert {"name", "id", "type", "location", "tags", "properties"} <= set(vm) <= set(vm_example)
    assert (
        {"vmId", "networkProfile", "provisioningState"}
        <= set(vm["properties"])
        <= set(vm_example["properties"])
    )


def test_ids_match_case_insensitively_and_keep_stored_casing(arm: ArmServer, http) -> None:
    shouting = nsg_path(arm, "NSG-WEB01", "RG-JIT-DEMO").replace(
        "networkSecurityGroups", "NETWORKSECURITYGROUPS"
    )
    body = http.get(f"{arm.url}{shouting}", params={"api-version": NETWORK}).json()

    assert body["id"] == nsg_path(arm)
    assert body["name"] == "nsg-web01"


def test_missing_resources_answer_arm_not_found_codes(arm: ArmServer, network) -> None:
    with pytest.raises(ResourceNotFoundError) as vm_missing, compute_client(arm) as compute:
        compute.virtual_machines.get(RG, "vm-nope", api_version=COMPUTE)
    with pytest.raises(ResourceNotFoundError) as group_missing:
        network.network_security_groups.get("rg-nope", "nsg-web01", api_version=NETWORK)
    with pytest.raises(ResourceNotFoundError) as rule_missing:
        network.security_rules.get(RG, "nsg-web01", "nope", api_version=NETWORK)
    with pytest.raises(ResourceNotFoundError) as parent_missing:
        network.security_rules.get(RG, "nsg-nope", "allow-https", api_version=NETWORK)

    assert vm_missing.value.error.code == "ResourceNotFound"
    assert group_missing.value.error.code == "ResourceGroupNotFound"
    assert rule_missing.value.error.code == "NotFound"
    assert parent_missing.value.error.code == "ParentResourceNotFound"


def test_other_subscription_is_not_found(arm: ArmServer) -> None:
    credential = StaticTokenCredential()
    other = "11111111-1111-1111-1111-111111111111"
    with NetworkManagementClient(credential, other, **client_options(arm)) as client:
        with pytest.raises(ResourceNotFoundError) as caught:
            client.network_security_groups.get(RG, "nsg-web01", api_version=NETWORK)
    assert caught.value.error.code == "SubscriptionNotFound"


def test_wrong_token_is_rejected_with_invalid_authentication_token(arm: ArmServer) -> None:
    with (
        network_client(arm, token="stolen") as client,
        pytest.raises(ClientAuthenticationError) as caught,
    ):
        client.network_security_groups.get(RG, "nsg-web01", api_version=NETWORK)
    assert caught.value.status_code == 401
    assert caught.value.error.code == "InvalidAuthenticationToken"


def test_missing_or_malformed_authorization_header_is_rejected(arm: ArmServer) -> None:
    url = f"{arm.url}{nsg_path(arm)}?api-version={NETWORK}"
    with http_session(arm, token=None) as anonymous:
        missing = anonymous.get(url)
        malformed = anonymous.get(url, headers={"Authorization": "Basic c2FuZGJveA=="})

    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "AuthenticationFailed")
    assert malformed.json()["error"]["code"] == "AuthenticationFailedInvalidHeader"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        pytest.param({}, "MissingApiVersionParameter", id="missing"),
        pytest.param({"api-version": "2099-01-01"}, "NoRegisteredProviderFound", id="unsupported"),
        pytest.param({"api-version": "latest"}, "InvalidApiVersionParameter", id="malformed"),
    ],
)
def test_api_version_errors(arm: ArmServer, http, query: dict[str, str], code: str) -> None:
    response = http.get(f"{arm.url}{nsg_path(arm)}", params=query)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    if code != "MissingApiVersionParameter":
        assert "2025-05-01" in response.json()["error"]["message"]


def test_compute_api_version_of_network_is_refused_for_vms(arm: ArmServer) -> None:
    with compute_client(arm) as compute, pytest.raises(HttpResponseError) as caught:
        compute.virtual_machines.get(RG, "vm-web01", api_version=NETWORK)
    assert caught.value.error.code == "NoRegisteredProviderFound"
    assert "2025-11-01" in caught.value.error.message


def test_certificate_is_trusted_only_through_the_sandbox_ca(arm: ArmServer) -> None:
    url = f"{arm.url}{nsg_path(arm)}?api-version={NETWORK}"
    headers = {"Authorization": "Bearer sandbox-token"}
    with requests.Session() as session:
        with pytest.raises(requests.exceptions.SSLError):
            session.get(url, headers=headers)
        by_name = session.get(
            url.replace("127.0.0.1", "localhost"), headers=headers, verify=arm.ca_path
        )

    assert by_name.status_code == 200
    assert Path(arm.ca_path).parent == Path(arm.ca_path).parent.resolve()


def test_seed_can_be_a_dict_and_bad_seeds_name_the_problem(tmp_path: Path) -> None:
    seed = json.loads(DEFAULT_SEED.read_text())
    group = seed["resourceGroups"][0]
    with ArmServer(seed, workdir=tmp_path) as arm:
        assert arm.subscription_id == "00000000-0000-0000-0000-00000000a11c"

    dangling = json.loads(json.dumps(seed))
    dangling["resourceGroups"][0]["networkInterfaces"][0]["networkSecurityGroup"] = "nsg-gone"
    invalid = json.loads(json.dumps(seed))
    invalid["resourceGroups"][0]["networkSecurityGroups"][0]["securityRules"][0]["properties"][
        "priority"
    ] = 1000
    with pytest.raises(ValueError, match="nsg-gone"):
        ArmServer(dangling)
    with pytest.raises(ValueError, match="SecurityRuleConflict"):
        ArmServer(invalid)
    with pytest.raises(ValueError, match="subscriptionId"):
        ArmServer({"resourceGroups": [group]})


def test_snapshot_of_an_unknown_nsg_is_a_lookup_error(arm: ArmServer) -> None:
    with pytest.raises(LookupError):
        arm.snapshot_nsg(nsg_path(arm, "nsg-gone"))
