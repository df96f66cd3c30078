"""Defender for Cloud JIT policies and pricings on the ARM stand-in, through the real
azure-mgmt-security client: shapes against the official examples, Defender's validation,
the asynchronous NSG changes of an initiate, expiry, supersede and the plan check."""

from __future__ import annotations

import copy
import datetime
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.security import SecurityCenter
from azure.mgmt.security.v2020_01_01 import models as jit
from azure.mgmt.security.v2024_01_01 import models as pricing_models

from sandbox.arm import security
from sandbox.arm.server import ArmServer
from sandbox.arm.state import read_seed
from sandbox.arm.testing import http_session, security_client
from tests.shared import shared_dir

JIT_API = "2020-01-01"
PRICING_API = "2024-01-01"
RG = "rg-jit-demo"
OTHER_RG = "rg-jit-other"
LOCATION = "westeurope"
OTHER_LOCATION = "northeurope"
POLICY = "default"
APPLY_DELAY = 0.3
WAIT = 30.0


def jit_seed() -> dict[str, Any]:
    """The default seed plus what the tests need: a subnet NSG on snet-web, a VM in another
    location, a resource group with its own VM, and a VM with a long name."""
    seed = read_seed(None)
    group = seed["resourceGroups"][0]
    group["networkSecurityGroups"].append({"name": "nsg-snet-web", "securityRules": []})
    for subnet in group["virtualNetworks"][0]["subnets"]:
        if subnet["name"] == "snet-web":
            subnet["networkSecurityGroup"] = "nsg-snet-web"
    group["networkInterfaces"] += [
        {"name": "nic-north01", "subnet": "vnet-jit-demo/subnets/snet-db",
         "privateIPAddress": "10.0.2.9", "networkSecurityGroup": "nsg-db01",
         "location": OTHER_LOCATION},
        {"name": "nic-long", "subnet": "vnet-jit-demo/subnets/snet-db",
         "privateIPAddress": "10.0.2.10", "networkSecurityGroup": "nsg-db01"},
        {"name": "nic-bare01", "subnet": "vnet-jit-demo/subnets/snet-db",
         "privateIPAddress": "10.0.2.11"},
    ]  # fmt: skip
    group["virtualMachines"] += [
        {"name": "vm-north01", "location": OTHER_LOCATION, "networkInterfaces": ["nic-north01"]},
        {"name": "vm-" + "x" * 46, "networkInterfaces": ["nic-long"]},
        {"name": "vm-bare01", "networkInterfaces": ["nic-bare01"]},
    ]
    seed["resourceGroups"].append(
        {
            "name": OTHER_RG,
            "location": LOCATION,
            "networkSecurityGroups": [{"name": "nsg-other01"}],
            "virtualNetworks": [
                {
                    "name": "vnet-other",
                    "addressPrefixes": ["10.9.0.0/16"],
                    "subnets": [{"name": "snet-other", "addressPrefix": "10.9.1.0/24"}],
                }
            ],
            "networkInterfaces": [
                {
                    "name": "nic-other01",
                    "subnet": "vnet-other/subnets/snet-other",
                    "privateIPAddress": "10.9.1.4",
                    "networkSecurityGroup": "nsg-other01",
                }
            ],
            "virtualMachines": [{"name": "vm-other01", "networkInterfaces": ["nic-other01"]}],
        }
    )
    return seed


@pytest.fixture
def arm(tmp_path: Path) -> Iterator[ArmServer]:
    with ArmServer(seed=jit_seed(), workdir=tmp_path, jit_apply_delay=APPLY_DELAY) as server:
        yield server


@pytest.fixture
def client(arm: ArmServer) -> Iterator[SecurityCenter]:
    with security_client(arm, retry_total=0) as sdk:
        yield sdk


@pytest.fixture
def http(arm: ArmServer) -> Iterator[requests.Session]:
    with http_session(arm) as session:
        yield session


# ---------------------------------------------------------------------------------- helpers


def vm_id(arm: ArmServer, name: str = "vm-web01", group: str = RG) -> str:
    return (
        f"/subscriptions/{arm.subscription_id}/resourceGroups/{group}"
        f"/providers/Microsoft.Compute/virtualMachines/{name}"
    )


def nsg_id(arm: ArmServer, name: str = "nsg-web01", group: str = RG) -> str:
    return (
        f"/subscriptions/{arm.subscription_id}/resourceGroups/{group}"
        f"/providers/Microsoft.Network/networkSecurityGroups/{name}"
    )


def policy_url(arm: ArmServer, name: str = POLICY, suffix: str = "", api: str = JIT_API) -> str:
    return (
        f"{arm.url}/subscriptions/{arm.subscription_id}/resourceGroups/{RG}/providers"
        f"/Microsoft.Security/locations/{LOCATION}/jitNetworkAccessPolicies/{name}{suffix}"
        f"?api-version={api}"
    )


def pricing_url(arm: ArmServer, plan: str = "VirtualMachines") -> str:
    sub = f"/subscriptions/{arm.subscription_id}"
    return f"{arm.url}{sub}/providers/Microsoft.Security/pricings/{plan}"


def port_rule(number: int = 22, **overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "number": number,
        "protocol": "TCP",
        "allowedSourceAddressPrefix": "*",
        "maxRequestAccessDuration": "PT3H",
    }
    rule.update(overrides)
    return {key: value for key, value in rule.items() if value is not None}


def policy_body(*machines: tuple[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "kind": "Basic",
        "properties": {"virtualMachines": [{"id": vm, "ports": ports} for vm, ports in machines]},
    }


def put_policy(
    client: SecurityCenter,
    *machines: tuple[str, list[dict[str, Any]]],
    name: str = POLICY,
    group: str = RG,
    location: str = LOCATION,
) -> jit.JitNetworkAccessPolicy:
    model = jit.JitNetworkAccessPolicy.from_dict(policy_body(*machines))
    return client.jit_network_access_policies.create_or_update(group, location, name, model)


def initiate(
    client: SecurityCenter,
    vm: str,
    number: int = 22,
    seconds: float = 600,
    source: str | None = "203.0.113.7",
    name: str = POLICY,
) -> jit.JitNetworkAccessRequest:
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    port = jit.JitNetworkAccessPolicyInitiatePort(
        number=number, end_time_utc=end, allowed_source_address_prefix=source
    )
    body = jit.JitNetworkAccessPolicyInitiateRequest(
        virtual_machines=[jit.JitNetworkAccessPolicyInitiateVirtualMachine(id=vm, ports=[port])],
        justification="deploy hotfix",
    )
    return client.jit_network_access_policies.initiate(RG, LOCATION, name, body)


def defender_rules(arm: ArmServer, nsg: str) -> list[dict[str, Any]]:
    return [r for r in arm.snapshot_nsg(nsg) if r["name"].startswith("SecurityCenter-JITRule")]


def by_access(arm: ArmServer, nsg: str, access: str) -> list[dict[str, Any]]:
    return [r for r in defender_rules(arm, nsg) if r["properties"]["access"] == access]


def request_ports(client: SecurityCenter) -> list[jit.JitNetworkAccessRequestPort]:
    policy = client.jit_network_access_policies.get(RG, LOCATION, POLICY)
    return [port for request in policy.requests for vm in request.virtual_machines
            for port in vm.ports]  # fmt: skip


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def example(name: str) -> dict[str, Any]:
    path = shared_dir() / "azure-api-examples" / "security" / name
    return json.loads(path.read_text())


def shape(value: Any, path: str = "") -> set[str]:
    """Every key path of a JSON value (list items share ``[]``)."""
    if isinstance(value, dict):
        paths = set()
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            paths |= {child} | shape(item, child)
        return paths
    if isinstance(value, list):
        return set().union(*(shape(item, f"{path}[]") for item in value)) if value else set()
    return set()


def refusal(response: requests.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    assert set(error) >= {"code", "message"}
    return response.status_code, error["code"], error["message"]


# ---------------------------------------------------------------------------------- shapes


def test_sdk_sends_the_api_versions_the_stand_in_accepts(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule()]))
    client.pricings.get(f"subscriptions/{arm.subscription_id}", "VirtualMachines")
    queries = {entry["path"].rsplit("/", 1)[-1]: entry["query"] for entry in arm.requests()}
    assert queries[POLICY] == f"api-version={JIT_API}"
    assert queries["VirtualMachines"] == f"api-version={PRICING_API}"


def test_create_answers_like_the_example(
    arm: ArmServer, client: SecurityCenter, http: requests.Session
) -> None:
    body = copy.deepcopy(example("JitNetworkAccessPolicies_CreateOrUpdate.json"))
    request_body = body["parameters"]["body"]
    for vm in request_body["properties"]["virtualMachines"]:
        vm["id"] = vm_id(arm)
    response = http.put(policy_url(arm), json=request_body)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = body["responses"]["200"]["body"]
    # The request history is Defender's own: a PUT cannot write it.
    assert answer["properties"]["requests"] == []
    expected_shape = {p for p in shape(expected) if "requests[]" not in p}
    assert shape(answer) == expected_shape
    assert answer["properties"]["virtualMachines"] == request_body["properties"]["virtualMachines"]
    assert answer["id"] == policy_url(arm).split("?")[0].removeprefix(arm.url)
    assert (answer["name"], answer["type"], answer["location"], answer["kind"]) == (
        POLICY,
        "Microsoft.Security/locations/jitNetworkAccessPolicies",
        LOCATION,
        "Basic",
    )


def test_get_and_lists_answer_like_the_examples_once_a_request_was_made(
    arm: ArmServer, client: SecurityCenter, http: requests.Session
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22, protocol="*"), port_rule(3389, protocol="*")]))
    initiate(client, vm_id(arm), 3389)
    wait_for(lambda: request_ports(client)[0].status == "Initiated", "the port to open")

    got = http.get(policy_url(arm)).json()
    assert shape(got) == shape(
        example("JitNetworkAccessPolicies_Get.json")["responses"]["200"]["body"]
    )
    sub = f"{arm.url}/subscriptions/{arm.subscription_id}"
    listed = http.get(
        f"{sub}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version={JIT_API}"
    )
    by_region = http.get(
        f"{sub}/resourceGroups/{RG}/providers/Microsoft.Security/locations/{LOCATION}"
        f"/jitNetworkAccessPolicies?api-version={JIT_API}"
    )
    for response, name in (
        (listed, "JitNetworkAccessPolicies_List.json"),
        (by_region, "JitNetworkAccessPolicies_ListByResourceGroupAndRegion.json"),
    ):
        assert response.status_code == 200
        assert shape(response.json()) == shape(example(name)["responses"]["200"]["body"])
        assert response.json()["value"] == [got]
    request = got["properties"]["requests"][0]
    assert request["requestor"] == "jitbot-sandbox-app"
    assert request["justification"] == "deploy hotfix"
    assert request["virtualMachines"][0]["ports"][0]["status"] == "Initiated"
    assert request["virtualMachines"][0]["ports"][0]["statusReason"] == "UserRequested"


def test_initiate_answers_202_with_the_request_as_initiating(
    arm: ArmServer, http: requests.Session, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(3389, protocol="*")]))
    sent = copy.deepcopy(example("JitNetworkAccessPolicies_Initiate.json"))
    body = sent["parameters"]["body"]
    body["virtualMachines"][0]["id"] = vm_id(arm)
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    body["virtualMachines"][0]["ports"][0]["endTimeUtc"] = end.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"] = "*"
    before = datetime.datetime.now(datetime.timezone.utc)
    response = http.post(policy_url(arm, suffix="/initiate"), json=body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert shape(answer) == shape(sent["responses"]["202"]["body"])
    port = answer["virtualMachines"][0]["ports"][0]
    assert (port["status"], port["statusReason"], port["number"]) == (
        "Initiating",
        "UserRequested",
        3389,
    )
    start = security.parse_time(answer["startTimeUtc"])
    assert start is not None and before - datetime.timedelta(seconds=1) <= start
    assert security.parse_time(port["endTimeUtc"]) == end
    assert answer["requestor"] == "jitbot-sandbox-app"
    assert answer["justification"] == sent["parameters"]["body"]["justification"]


def test_list_by_subscription_region_group_and_group_with_region(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule()]))
    put_policy(client, (vm_id(arm, "vm-north01"), [port_rule()]), location=OTHER_LOCATION)
    put_policy(client, (vm_id(arm, "vm-other01", OTHER_RG), [port_rule()]), group=OTHER_RG)
    policies = client.jit_network_access_policies

    def ids(items: Any) -> set[str]:
        return {(p.id.split("/resourceGroups/")[1].split("/")[0], p.location) for p in items}

    everything = {(RG, LOCATION), (RG, OTHER_LOCATION), (OTHER_RG, LOCATION)}
    assert ids(policies.list()) == everything
    assert ids(policies.list_by_region(LOCATION)) == {(RG, LOCATION), (OTHER_RG, LOCATION)}
    assert ids(policies.list_by_resource_group(RG)) == {(RG, LOCATION), (RG, OTHER_LOCATION)}
    assert ids(policies.list_by_resource_group_and_region(RG, OTHER_LOCATION)) == {
        (RG, OTHER_LOCATION)
    }


# ---------------------------------------------------------------------------------- deny rules


def test_create_writes_deny_rules_after_existing_rules_for_the_port(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22), port_rule(8443, protocol="UDP")]))
    denies = {
        r["properties"]["destinationPortRange"]: r for r in by_access(arm, nsg_id(arm), "Deny")
    }
    assert set(denies) == {"22", "8443"}
    seeded = {r["name"]: r for r in arm.snapshot_nsg(nsg_id(arm))}
    # jitbot-deny-vm-web01 (priority 1000) already covers 22: Defender's deny goes after it.
    assert (
        denies["22"]["properties"]["priority"]
        > seeded["jitbot-deny-vm-web01"]["properties"]["priority"]
    )
    for port, protocol in (("22", "Tcp"), ("8443", "Udp")):
        props = denies[port]["properties"]
        assert props["protocol"] == protocol
        assert props["sourceAddressPrefix"] == "*"
        assert props["destinationAddressPrefix"] == "10.0.1.4"
        assert props["direction"] == "Inbound"
    # The subnet's NSG gets the same rules.
    subnet = by_access(arm, nsg_id(arm, "nsg-snet-web"), "Deny")
    assert sorted(r["properties"]["destinationPortRange"] for r in subnet) == ["22", "8443"]
    # With no rule covering the ports there, the denies take 1000 and the next free one.
    assert {r["properties"]["priority"] for r in subnet} == {1000, 1001}


def test_put_replaces_the_whole_list_and_read_modify_write_keeps_the_other_vms(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]), (vm_id(arm, "vm-db01"), [port_rule(3389)]))
    db_rules = defender_rules(arm, nsg_id(arm, "nsg-db01"))
    assert len(db_rules) == 1

    current = client.jit_network_access_policies.get(RG, LOCATION, POLICY)
    web = next(vm for vm in current.virtual_machines if vm.id.endswith("vm-web01"))
    web.ports = [jit.JitNetworkAccessPortRule.from_dict(port_rule(2222))]
    client.jit_network_access_policies.create_or_update(RG, LOCATION, POLICY, current)

    after = client.jit_network_access_policies.get(RG, LOCATION, POLICY)
    assert {
        vm.id.rsplit("/", 1)[1]: [p.number for p in vm.ports] for vm in after.virtual_machines
    } == {
        "vm-web01": [2222],
        "vm-db01": [3389],
    }
    assert defender_rules(arm, nsg_id(arm, "nsg-db01")) == db_rules
    web_ports = [r["properties"]["destinationPortRange"] for r in defender_rules(arm, nsg_id(arm))]
    assert web_ports == ["2222"]

    put_policy(client, (vm_id(arm, "vm-db01"), [port_rule(3389)]))
    assert defender_rules(arm, nsg_id(arm)) == []
    assert defender_rules(arm, nsg_id(arm, "nsg-db01")) == db_rules


def test_delete_removes_defenders_rules_and_a_second_delete_is_harmless(
    arm: ArmServer, client: SecurityCenter, http: requests.Session
) -> None:
    before = arm.snapshot_nsg(nsg_id(arm))
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    initiate(client, vm_id(arm))
    wait_for(lambda: len(by_access(arm, nsg_id(arm), "Allow")) == 1, "the allow rule")
    client.jit_network_access_policies.delete(RG, LOCATION, POLICY)
    assert arm.snapshot_nsg(nsg_id(arm)) == before
    assert defender_rules(arm, nsg_id(arm, "nsg-snet-web")) == []
    assert http.delete(policy_url(arm)).status_code == 204
    with pytest.raises(HttpResponseError) as caught:
        client.jit_network_access_policies.get(RG, LOCATION, POLICY)
    assert caught.value.status_code == 404


# ---------------------------------------------------------------------------------- validation


LONG_VM = "vm-" + "x" * 46  # 49 characters
DURATION = "JitPolicyInvalidMaxRequestAccessDuration"
SOURCE = "JitPolicyInvalidSourceAddress"


@pytest.mark.parametrize(
    ("vm", "ports", "code"),
    [
        ("vm-missing", [port_rule()], "JitPolicyVirtualMachineNotFound"),
        ("other-group", [port_rule()], "JitPolicyVirtualMachineOutOfScope"),
        ("vm-north01", [port_rule()], "JitPolicyVirtualMachineOutOfScope"),
        ("vm-web01", [port_rule(0)], "JitPolicyInvalidPort"),
        ("vm-web01", [port_rule(65536)], "JitPolicyInvalidPort"),
        ("vm-web01", [], "JitPolicyInvalidPort"),
        ("vm-web01", [port_rule(22), port_rule(22)], "JitPolicyDuplicatePort"),
        ("vm-web01", [port_rule(protocol="ICMP")], "JitPolicyInvalidProtocol"),
        ("vm-web01", [port_rule(maxRequestAccessDuration="PT4M")], DURATION),
        ("vm-web01", [port_rule(maxRequestAccessDuration="PT24H1S")], DURATION),
        ("vm-web01", [port_rule(maxRequestAccessDuration="3h")], DURATION),
        ("vm-web01", [port_rule(allowedSourceAddressPrefixes=["10.0.0.0/8"])], SOURCE),
        ("vm-web01", [port_rule(allowedSourceAddressPrefix=None)], SOURCE),
        ("vm-web01", [port_rule(allowedSourceAddressPrefix="10.0.0.5/8")], SOURCE),
        (
            "vm-web01",
            [port_rule(allowedSourceAddressPrefix=None, allowedSourceAddressPrefixes=["*"])],
            SOURCE,
        ),
        (LONG_VM, [port_rule()], "JitPolicyNameTooLong"),
        ("vm-bare01", [port_rule()], "JitPolicyVirtualMachineWithoutNetworkSecurityGroup"),
    ],
)
def test_invalid_policies_are_refused_and_change_nothing(
    arm: ArmServer, http: requests.Session, vm: str, ports: list[dict[str, Any]], code: str
) -> None:
    target = vm_id(arm, "vm-other01", OTHER_RG) if vm == "other-group" else vm_id(arm, vm)
    nsgs = [nsg_id(arm), nsg_id(arm, "nsg-db01"), nsg_id(arm, "nsg-snet-web")]
    before = [arm.snapshot_nsg(nsg) for nsg in nsgs]
    # 8 characters of policy name + 49 of VM name = 57 > 56.
    name = "policy-8" if vm == LONG_VM else POLICY
    response = http.put(policy_url(arm, name), json=policy_body((target, ports)))
    status, got, message = refusal(response)
    assert (status, got) == (400, code), message
    assert [arm.snapshot_nsg(nsg) for nsg in nsgs] == before
    assert http.get(policy_url(arm, name)).status_code == 404


def test_policy_and_vm_names_of_exactly_56_characters_are_accepted(
    arm: ArmServer, http: requests.Session
) -> None:
    response = http.put(
        policy_url(arm, "policy7"), json=policy_body((vm_id(arm, LONG_VM), [port_rule()]))
    )
    assert response.status_code == 200, response.text


def test_a_policy_of_the_plural_form_is_kept_as_given(
    arm: ArmServer, client: SecurityCenter
) -> None:
    prefixes = ["198.51.100.0/24", "203.0.113.7"]
    put_policy(
        client,
        (
            vm_id(arm),
            [port_rule(allowedSourceAddressPrefix=None, allowedSourceAddressPrefixes=prefixes)],
        ),
    )
    policy = client.jit_network_access_policies.get(RG, LOCATION, POLICY)
    port = policy.virtual_machines[0].ports[0]
    assert (port.allowed_source_address_prefixes, port.allowed_source_address_prefix) == (
        prefixes,
        None,
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"kind": "Basic"}, "InvalidRequestFormat"),
        ({"properties": {"virtualMachines": "vm-web01"}}, "InvalidRequestFormat"),
        (
            {"properties": {"virtualMachines": [{"id": "vm-web01", "ports": []}]}},
            "JitPolicyInvalidVirtualMachine",
        ),
        (
            {"properties": {"virtualMachines": [{"ports": [port_rule()]}]}},
            "JitPolicyInvalidVirtualMachine",
        ),
    ],
)
def test_wrong_shapes_get_arm_error_bodies(
    arm: ArmServer, http: requests.Session, body: dict[str, Any], code: str
) -> None:
    status, got, _message = refusal(http.put(policy_url(arm), json=body))
    assert (status, got) == (400, code)
    status, got, _message = refusal(http.put(policy_url(arm), data=b"{not json"))
    assert (status, got) == (400, "InvalidRequestFormat")


def test_a_vm_already_in_another_policy_is_refused(arm: ArmServer, client: SecurityCenter) -> None:
    put_policy(client, (vm_id(arm), [port_rule()]))
    with pytest.raises(HttpResponseError) as caught:
        put_policy(client, (vm_id(arm), [port_rule()]), name="second")
    assert caught.value.error.code == "JitPolicyVirtualMachineInAnotherPolicy"


def test_other_api_versions_are_refused(arm: ArmServer, http: requests.Session) -> None:
    body = policy_body((vm_id(arm), [port_rule()]))
    status, code, _message = refusal(http.put(policy_url(arm, api="2015-06-01-preview"), json=body))
    assert (status, code) == (400, "NoRegisteredProviderFound")
    pricing = pricing_url(arm)
    status, code, _message = refusal(http.get(f"{pricing}?api-version={JIT_API}"))
    assert (status, code) == (400, "NoRegisteredProviderFound")
    status, code, _message = refusal(http.get(pricing))
    assert (status, code) == (400, "MissingApiVersionParameter")


# ---------------------------------------------------------------------------------- initiate


def test_initiate_opens_the_ports_after_a_delay_above_the_deny_rules(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    arm.jit_apply_delay = 3.0  # long enough to see the request before Defender acts
    answer = initiate(client, vm_id(arm), source="203.0.113.7")
    assert answer.virtual_machines[0].ports[0].status == "Initiating"
    assert by_access(arm, nsg_id(arm), "Allow") == []
    assert [p.status for p in request_ports(client)] == ["Initiating"]

    wait_for(lambda: [p.status for p in request_ports(client)] == ["Initiated"], "Initiated")
    for nsg in (nsg_id(arm), nsg_id(arm, "nsg-snet-web")):
        (allow,) = by_access(arm, nsg, "Allow")
        (deny,) = by_access(arm, nsg, "Deny")
        props = allow["properties"]
        assert props["sourceAddressPrefix"] == "203.0.113.7"
        assert props["destinationAddressPrefix"] == "10.0.1.4"
        assert props["destinationPortRange"] == "22"
        assert props["protocol"] == "Tcp"
        assert props["priority"] < deny["properties"]["priority"]


def test_without_a_source_defender_opens_for_the_callers_own_address(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    answer = initiate(client, vm_id(arm), source=None)
    assert answer.virtual_machines[0].ports[0].allowed_source_address_prefix == "127.0.0.1"
    wait_for(lambda: len(by_access(arm, nsg_id(arm), "Allow")) == 1, "the allow rule")
    (allow,) = by_access(arm, nsg_id(arm), "Allow")
    assert allow["properties"]["sourceAddressPrefix"] == "127.0.0.1"


def test_the_port_closes_at_its_end_time(arm: ArmServer, client: SecurityCenter) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    initiate(client, vm_id(arm), seconds=2)
    wait_for(lambda: len(by_access(arm, nsg_id(arm), "Allow")) == 1, "the allow rule")
    wait_for(lambda: by_access(arm, nsg_id(arm), "Allow") == [], "the allow rule to go")
    (port,) = request_ports(client)
    assert (port.status, port.status_reason) == ("Revoked", "Expired")
    assert by_access(arm, nsg_id(arm, "nsg-snet-web"), "Allow") == []
    assert len(by_access(arm, nsg_id(arm), "Deny")) == 1


def test_a_newer_request_for_the_same_port_revokes_the_older(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22), port_rule(3389)]))
    initiate(client, vm_id(arm), 22, source="198.51.100.1")
    initiate(client, vm_id(arm), 3389, source="198.51.100.1")
    wait_for(lambda: len(by_access(arm, nsg_id(arm), "Allow")) == 2, "two allow rules")
    initiate(client, vm_id(arm), 22, source="198.51.100.2")
    wait_for(lambda: request_ports(client)[-1].status == "Initiated", "the newer request")
    first, other, newer = request_ports(client)
    assert (first.status, first.status_reason) == ("Revoked", "NewerRequestInitiated")
    assert (other.status, newer.status) == ("Initiated", "Initiated")
    sources = sorted(
        (r["properties"]["destinationPortRange"], r["properties"]["sourceAddressPrefix"])
        for r in by_access(arm, nsg_id(arm), "Allow")
    )
    assert sources == [("22", "198.51.100.2"), ("3389", "198.51.100.1")]


@pytest.mark.parametrize(
    ("allowed", "requested", "accepted"),
    [
        ({"allowedSourceAddressPrefix": "*"}, "198.51.100.0/24", True),
        ({"allowedSourceAddressPrefix": "203.0.113.0/24"}, "203.0.113.0/24", True),
        ({"allowedSourceAddressPrefix": "203.0.113.0/24"}, "203.0.113.7", False),
        ({"allowedSourceAddressPrefix": "203.0.113.7"}, "203.0.113.8", False),
        ({"allowedSourceAddressPrefix": "203.0.113.0/24"}, None, False),
        (
            {
                "allowedSourceAddressPrefix": None,
                "allowedSourceAddressPrefixes": ["10.1.0.0/16", "203.0.113.7"],
            },
            "203.0.113.7",
            True,
        ),
        (
            {"allowedSourceAddressPrefix": None, "allowedSourceAddressPrefixes": ["10.1.0.0/16"]},
            "10.1.2.3",
            False,
        ),
    ],
)
def test_the_requested_source_must_match_an_allowed_prefix_exactly(
    arm: ArmServer,
    client: SecurityCenter,
    allowed: dict[str, Any],
    requested: str | None,
    accepted: bool,
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22, **allowed)]))
    if accepted:
        answer = initiate(client, vm_id(arm), source=requested)
        assert answer.virtual_machines[0].ports[0].allowed_source_address_prefix == requested
        return
    with pytest.raises(HttpResponseError) as caught:
        initiate(client, vm_id(arm), source=requested)
    assert caught.value.status_code == 400
    assert caught.value.error.code == "JitRequestSourceAddressNotAllowed"
    assert request_ports(client) == []


@pytest.mark.parametrize(
    ("vm", "number", "seconds", "code"),
    [
        ("vm-db01", 22, 600, "JitRequestVirtualMachineNotInPolicy"),
        ("vm-web01", 3389, 600, "JitRequestPortNotInPolicy"),
        ("vm-web01", 22, -5, "JitRequestInvalidEndTime"),
        ("vm-web01", 22, 3 * 3600 + 60, "JitRequestDurationTooLong"),
    ],
)
def test_initiates_outside_the_policy_are_refused(
    arm: ArmServer, client: SecurityCenter, vm: str, number: int, seconds: float, code: str
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    with pytest.raises(HttpResponseError) as caught:
        initiate(client, vm_id(arm, vm), number, seconds=seconds)
    assert (caught.value.status_code, caught.value.error.code) == (400, code)
    time.sleep(APPLY_DELAY * 2)
    assert by_access(arm, nsg_id(arm), "Allow") == []
    assert request_ports(client) == []


def test_initiate_on_a_missing_policy_is_404(arm: ArmServer, client: SecurityCenter) -> None:
    with pytest.raises(HttpResponseError) as caught:
        initiate(client, vm_id(arm))
    assert caught.value.status_code == 404


# ---------------------------------------------------------------------------------- pricings


def test_pricing_answers_like_the_example(
    arm: ArmServer, client: SecurityCenter, http: requests.Session
) -> None:
    expected = example("Pricings_Get_VirtualMachines.json")["responses"]["200"]["body"]
    url = pricing_url(arm)
    answer = http.get(f"{url}?api-version={PRICING_API}").json()
    assert set(answer) == set(expected)
    assert set(answer["properties"]) == set(expected["properties"])
    assert answer["id"] == url.removeprefix(arm.url)
    got = client.pricings.get(f"subscriptions/{arm.subscription_id}", "VirtualMachines")
    assert (got.pricing_tier, got.sub_plan) == ("Standard", "P2")
    free = client.pricings.get(f"subscriptions/{arm.subscription_id}", "SqlServers")
    assert (free.pricing_tier, free.sub_plan) == ("Free", None)


def test_without_plan_2_policies_and_initiates_are_refused(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    scope = f"subscriptions/{arm.subscription_id}"
    updated = client.pricings.update(
        scope, "VirtualMachines", pricing_models.Pricing(pricing_tier="Standard", sub_plan="P1")
    )
    assert updated.sub_plan == "P1"
    assert client.pricings.get(scope, "VirtualMachines").sub_plan == "P1"
    for attempt in (
        lambda: initiate(client, vm_id(arm)),
        lambda: put_policy(client, (vm_id(arm), [port_rule(3389)])),
    ):
        with pytest.raises(HttpResponseError) as caught:
            attempt()
        assert (caught.value.status_code, caught.value.error.code) == (
            400,
            "JitRequiresDefenderForServersPlan2",
        )


def test_a_seed_can_leave_the_subscription_without_defender(tmp_path: Path) -> None:
    seed = jit_seed()
    del seed["defender"]["pricings"]
    with (
        ArmServer(seed=seed, workdir=tmp_path) as arm,
        security_client(arm, retry_total=0) as client,
    ):
        got = client.pricings.get(f"subscriptions/{arm.subscription_id}", "VirtualMachines")
        assert got.pricing_tier == "Free"
        with pytest.raises(HttpResponseError) as caught:
            put_policy(client, (vm_id(arm), [port_rule()]))
        assert caught.value.error.code == "JitRequiresDefenderForServersPlan2"


def test_a_seeded_policy_writes_its_deny_rules(tmp_path: Path) -> None:
    seed = jit_seed()
    seed["resourceGroups"][0]["jitNetworkAccessPolicies"] = [
        {"name": POLICY, "virtualMachines": [{"id": "vm-db01", "ports": [port_rule(22)]}]}
    ]
    with pytest.raises(ValueError, match="JitPolicyInvalidVirtualMachine"):
        ArmServer(seed=seed, workdir=tmp_path)
    seed["resourceGroups"][0]["jitNetworkAccessPolicies"][0]["virtualMachines"][0]["id"] = (
        f"/subscriptions/{seed['subscriptionId']}/resourceGroups/{RG}"
        "/providers/Microsoft.Compute/virtualMachines/vm-db01"
    )
    with ArmServer(seed=seed, workdir=tmp_path) as arm, security_client(arm) as client:
        assert len(by_access(arm, nsg_id(arm, "nsg-db01"), "Deny")) == 1
        assert client.jit_network_access_policies.get(RG, LOCATION, POLICY).virtual_machines


# ---------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "code"),
    [(403, "AuthorizationFailed"), (403, "RequestDisallowedByPolicy"), (429, None), (503, None)],
)
def test_faults_apply_to_initiate(
    arm: ArmServer, client: SecurityCenter, status: int, code: str | None
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    policy_id = policy_url(arm).split("?")[0].removeprefix(arm.url)
    arm.add_fault(**security.fault(status, code, scope=policy_id))
    with pytest.raises(HttpResponseError) as caught:
        initiate(client, vm_id(arm))
    assert caught.value.status_code == status
    if code:
        assert caught.value.error.code == code
    answer = initiate(client, vm_id(arm))
    assert answer.virtual_machines[0].ports[0].status == "Initiating"


def test_an_authorization_fault_names_the_action_and_hits_only_its_operation(
    arm: ArmServer, client: SecurityCenter
) -> None:
    arm.add_fault(**security.fault(403, operation="write", times=None))
    with pytest.raises(HttpResponseError) as caught:
        put_policy(client, (vm_id(arm), [port_rule(22)]))
    assert caught.value.status_code == 403
    assert caught.value.error.code == "AuthorizationFailed"
    assert "Microsoft.Security/locations/jitNetworkAccessPolicies/write" in caught.value.message
    assert list(client.jit_network_access_policies.list()) == []


def test_an_end_time_just_inside_the_maximum_duration_is_accepted(
    arm: ArmServer, client: SecurityCenter
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22, maxRequestAccessDuration="PT5M")]))
    answer = initiate(client, vm_id(arm), seconds=5 * 60 - 2)
    assert answer.virtual_machines[0].ports[0].status == "Initiating"
    with pytest.raises(HttpResponseError) as caught:
        initiate(client, vm_id(arm), seconds=5 * 60 + 2)
    assert caught.value.error.code == "JitRequestDurationTooLong"


def test_a_full_nsg_refuses_the_policy_and_keeps_its_rules(
    arm: ArmServer, client: SecurityCenter, http: requests.Session
) -> None:
    # Filling the subnet's NSG to Azure's limit directly in the store is the quick way there;
    # the NIC's NSG gets its deny rule first, so the refusal must also undo that one.
    with arm.store.lock:
        nsg = arm.store.get(nsg_id(arm, "nsg-snet-web"))
        assert nsg is not None
        for index in range(1000):
            name = f"filler-{index}"
            properties = {
                "protocol": "Tcp",
                "sourcePortRange": "*",
                "destinationPortRange": str(10000 + index),
                "sourceAddressPrefix": "*",
                "destinationAddressPrefix": "*",
                "access": "Allow",
                "priority": 100 + index,
                "direction": "Inbound",
            }
            nsg["rules"][name] = {"name": name, "properties": properties}
    before = [arm.snapshot_nsg(nsg_id(arm)), arm.snapshot_nsg(nsg_id(arm, "nsg-snet-web"))]
    status, code, _message = refusal(
        http.put(policy_url(arm), json=policy_body((vm_id(arm), [port_rule(22)])))
    )
    assert (status, code) == (400, "SecurityRuleCountLimitReached")
    after = [arm.snapshot_nsg(nsg_id(arm)), arm.snapshot_nsg(nsg_id(arm, "nsg-snet-web"))]
    assert after == before
    assert http.get(policy_url(arm)).status_code == 404


# ---------------------------------------------------------------------------------- pure logic


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT5M", datetime.timedelta(minutes=5)),
        ("PT3H", datetime.timedelta(hours=3)),
        ("PT1H30M", datetime.timedelta(minutes=90)),
        ("P1D", datetime.timedelta(days=1)),
        ("PT90S", datetime.timedelta(seconds=90)),
        ("PT", None),
        ("P1DT", None),
        ("P1Y", None),
        ("3h", None),
        ("", None),
        (180, None),
    ],
)
def test_durations_are_read_as_iso_8601(text: Any, expected: datetime.timedelta | None) -> None:
    assert security.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2018-07-12T09:53:03.3658798Z", (2018, 7, 12, 9, 53, 3, 365879)),
        ("2018-07-12T09:53:03Z", (2018, 7, 12, 9, 53, 3, 0)),
        ("2018-07-12T11:53:03.5+02:00", (2018, 7, 12, 9, 53, 3, 500000)),
        ("2018-07-12 09:53:03", (2018, 7, 12, 9, 53, 3, 0)),
        ("2018-13-12T09:53:03Z", None),
        ("yesterday", None),
        (None, None),
    ],
)
def test_times_are_read_in_utc_with_any_fraction(
    text: Any, expected: tuple[int, ...] | None
) -> None:
    parsed = security.parse_time(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed == datetime.datetime(*expected, tzinfo=datetime.timezone.utc)


def test_times_are_written_with_seven_fraction_digits() -> None:
    moment = datetime.datetime(2018, 7, 12, 8, 53, 3, 365879, tzinfo=datetime.timezone.utc)
    assert security.format_time(moment) == "2018-07-12T08:53:03.3658790Z"


def test_the_sandbox_state_dump_includes_policies_as_json(
    arm: ArmServer, client: SecurityCenter, http: requests.Session
) -> None:
    put_policy(client, (vm_id(arm), [port_rule(22)]))
    initiate(client, vm_id(arm))
    wait_for(lambda: len(by_access(arm, nsg_id(arm), "Allow")) == 1, "the allow rule")
    dump = http.get(f"{arm.url}/sandbox/state").json()
    (policy,) = [r for r in dump["resources"] if r["type"] == security.POLICY_TYPE]
    assert policy["requests"][0]["virtualMachines"][0]["ports"][0]["status"] == "Initiated"
