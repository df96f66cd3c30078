"""Azure Firewalls on the ARM stand-in: shapes against the official examples, long-running
PUTs, ETags, conflicts and the validation of classic NAT rule collections."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import NetworkManagementClient

from sandbox.arm.server import ArmServer
from sandbox.arm.state import DEFAULT_SEED
from sandbox.arm.testing import http_session, network_client
from tests.shared import shared_dir

NETWORK = "2025-05-01"
RG = "rg-jit-demo"
FIREWALL_SEED = DEFAULT_SEED.parent / "firewall.json"
CLASSIC = "fw-classic01"
MANAGED = "fw-managed01"


@pytest.fixture
def arm(tmp_path: Path) -> Iterator[ArmServer]:
    with ArmServer(seed=FIREWALL_SEED, workdir=tmp_path) as server:
        yield server


@pytest.fixture
def network(arm: ArmServer) -> Iterator[NetworkManagementClient]:
    with network_client(arm, retry_total=0) as client:
        yield client


@pytest.fixture
def http(arm: ArmServer) -> Iterator[requests.Session]:
    with http_session(arm) as session:
        yield session


def firewall_url(arm: ArmServer, name: str = CLASSIC, group: str = RG) -> str:
    return (
        f"{arm.url}/subscriptions/{arm.subscription_id}/resourceGroups/{group}"
        f"/providers/Microsoft.Network/azureFirewalls/{name}?api-version={NETWORK}"
    )


def example(name: str) -> dict[str, Any]:
    path = shared_dir() / "azure-api-examples" / "network" / name
    return json.loads(path.read_text())


def spec_properties(definition: str) -> set[str]:
    spec_path = shared_dir() / "azure-api-specs" / "network" / "azureFirewall.2025-05-01.json"
    spec = json.loads(spec_path.read_text())
    names = set(spec["definitions"][definition]["properties"])
    return names | {"id", "name", "type", "location", "tags"}


def current(http: requests.Session, arm: ArmServer, name: str = CLASSIC) -> dict[str, Any]:
    response = http.get(firewall_url(arm, name))
    assert response.status_code == 200, response.text
    return response.json()


def as_put_body(firewall: dict[str, Any]) -> dict[str, Any]:
    """A GET body as a PUT body (read-only properties are ignored by the service anyway)."""
    return copy.deepcopy(firewall)


def put_and_settle(http: requests.Session, url: str, body: dict[str, Any]) -> requests.Response:
    response = http.put(url, json=body)
    if response.status_code in (200, 201):
        status_url = response.headers["Azure-AsyncOperation"]
        while http.get(status_url).json()["status"] == "InProgress":
            pass
    return response


def with_nat_collection(firewall: dict[str, Any], collection: dict[str, Any]) -> dict[str, Any]:
    body = as_put_body(firewall)
    body["properties"]["natRuleCollections"].append(collection)
    return body


def nat_collection(
    name: str = "jitbot-jit", priority: int = 65000, **rule_changes: Any
) -> dict[str, Any]:
    """A valid DNAT collection for fw-classic01; a rule value of None removes the key."""
    rule: dict[str, Any] = {
        "name": "ssh-r7",
        "description": "jitbot r7 until 2030-01-01T00:00:00Z for vm-app01",
        "sourceAddresses": ["203.0.113.7"],
        "destinationAddresses": ["20.60.70.80"],
        "destinationPorts": ["50022"],
        "protocols": ["TCP"],
        "translatedAddress": "10.2.1.4",
        "translatedPort": "22",
    }
    for key, value in rule_changes.items():
        if value is None:
            rule.pop(key, None)
        else:
            rule[key] = value
    return {
        "name": name,
        "properties": {"priority": priority, "action": {"type": "Dnat"}, "rules": [rule]},
    }


def without_volatile(value: Any) -> Any:
    """JSON without ETags, provisioning states and allocated private addresses."""
    if isinstance(value, dict):
        return {
            key: without_volatile(item)
            for key, item in value.items()
            if key not in ("etag", "provisioningState", "privateIPAddress")
        }
    if isinstance(value, list):
        return [without_volatile(item) for item in value]
    return value


# ---------------------------------------------------------------------------------- shapes


EXAMPLE_SEED: dict[str, Any] = {
    "subscriptionId": "subid",
    "resourceGroups": [
        {
            "name": "rg1",
            "location": "West US",
            "virtualNetworks": [
                {
                    "name": "vnet2",
                    "addressPrefixes": ["10.0.0.0/16"],
                    "subnets": [{"name": "AzureFirewallSubnet", "addressPrefix": "10.0.0.0/26"}],
                }
            ],
            "publicIPAddresses": [{"name": "pipName", "ipAddress": "1.2.3.4"}],
        }
    ],
}


@pytest.fixture
def example_arm(tmp_path: Path) -> Iterator[ArmServer]:
    """The subscription the official examples describe (subid/rg1, vnet2, pipName 1.2.3.4)."""
    with ArmServer(seed=EXAMPLE_SEED, workdir=tmp_path) as server:
        yield server


def test_get_example_put_back_reads_exactly_as_the_get_example(example_arm: ArmServer) -> None:
    expected = example("AzureFirewalls_Get.json")["responses"]["200"]["body"]
    url = firewall_url(example_arm, "azurefirewall", "rg1")
    with http_session(example_arm) as http:
        created = put_and_settle(http, url, expected)
        body = http.get(url).json()

    assert created.status_code == 201
    assert without_volatile(body) == without_volatile(expected)
    assert body["etag"].startswith('W/"')
    assert body["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] == (
        "10.0.0.4"
    )


def test_create_or_update_example_answers_the_example_shape(example_arm: ArmServer) -> None:
    operation = example("AzureFirewalls_CreateOrUpdate.json")
    request_body = operation["parameters"]["parameters"]
    expected = operation["responses"]["200"]["body"]
    url = firewall_url(example_arm, "azurefirewall", "rg1")
    with http_session(example_arm) as http:
        put_and_settle(http, url, request_body)
        body = http.get(url).json()

    assert set(body) == set(expected)
    assert set(expected["properties"]) <= set(body["properties"])
    assert set(body["properties"]) <= spec_properties("AzureFirewallPropertiesFormat")
    for kind in ("applicationRuleCollections", "natRuleCollections", "networkRuleCollections"):
        assert without_volatile(body["properties"][kind]) == without_volatile(
            expected["properties"][kind]
        )
    config = body["properties"]["ipConfigurations"][0]
    assert set(config) == set(expected["properties"]["ipConfigurations"][0])
    assert set(config["properties"]) == set(
        expected["properties"]["ipConfigurations"][0]["properties"]
    )


def test_seeded_firewall_has_spec_keys_and_links_to_seeded_network(
    arm: ArmServer, http: requests.Session
) -> None:
    body = current(http, arm)
    collection = body["properties"]["natRuleCollections"][0]
    config = body["properties"]["ipConfigurations"][0]

    assert set(body) <= spec_properties("AzureFirewall") | {"etag", "zones"}
    assert set(collection) <= spec_properties("AzureFirewallNatRuleCollection")
    assert set(collection["properties"]) <= spec_properties(
        "AzureFirewallNatRuleCollectionProperties"
    )
    assert set(config["properties"]) <= spec_properties(
        "AzureFirewallIPConfigurationPropertiesFormat"
    )
    assert config["properties"]["privateIPAddress"] == "10.1.0.4"
    assert config["properties"]["publicIPAddress"]["id"].endswith("/publicIPAddresses/pip-fw01")
    assert config["properties"]["subnet"]["id"].endswith(
        "/virtualNetworks/vnet-hub/subnets/AzureFirewallSubnet"
    )
    assert collection["id"] == f"{body['id']}/natRuleCollections/customer-dnat"


def test_policy_managed_firewall_shows_its_policy_and_no_classic_rules(
    arm: ArmServer, http: requests.Session
) -> None:
    body = current(http, arm, MANAGED)

    assert body["properties"]["firewallPolicy"]["id"].endswith("/firewallPolicies/fwpol-hub")
    assert body["properties"]["natRuleCollections"] == []
    assert body["properties"]["sku"] == {"name": "AZFW_VNet", "tier": "Premium"}


def test_firewalls_list_by_group_and_by_subscription(network: NetworkManagementClient) -> None:
    in_group = {fw.name for fw in network.azure_firewalls.list(RG, api_version=NETWORK)}
    everywhere = {fw.name for fw in network.azure_firewalls.list_all(api_version=NETWORK)}

    assert in_group == everywhere == {CLASSIC, MANAGED}


def test_sdk_default_api_version_is_accepted(network: NetworkManagementClient) -> None:
    firewall = network.azure_firewalls.get(RG, CLASSIC)

    assert firewall.properties.nat_rule_collections[0].name == "customer-dnat"


def test_missing_firewall_answers_resource_not_found(arm: ArmServer, http) -> None:
    response = http.get(firewall_url(arm, "fw-nope"))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ResourceNotFound"


def test_firewall_seed_holds_everything_of_the_default_seed() -> None:
    """firewall.json is default.json plus the firewall hub: when default.json changes, carry
    the change over to firewall.json."""
    default = json.loads(DEFAULT_SEED.read_text())
    firewall = json.loads(FIREWALL_SEED.read_text())

    for key, value in default.items():
        if key != "resourceGroups":
            assert firewall.get(key) == value, key
    for group in default["resourceGroups"]:
        extended = next(g for g in firewall["resourceGroups"] if g["name"] == group["name"])
        for key, value in group.items():
            if isinstance(value, list):
                assert [item for item in extended[key] if item in value] == value, key
            else:
                assert extended[key] == value, key


def test_firewall_seed_places_vm_app01_behind_fw_classic01(arm: ArmServer) -> None:
    resources = {r.get("name"): r for r in arm.state()["resources"]}

    assert resources["vm-app01"]["tags"]["jitbot-firewall"] == CLASSIC
    assert resources["nic-app01"]["nsgId"].endswith("/nsg-app01")
    assert resources["snet-app"]["nsgId"].endswith("/nsg-snet-app")


# ---------------------------------------------------------------------------------- writes


def test_update_answers_200_updating_then_succeeds_after_polls(
    arm: ArmServer, http: requests.Session
) -> None:
    before = current(http, arm)
    response = http.put(firewall_url(arm), json=with_nat_collection(before, nat_collection()))
    status_url = response.headers["Azure-AsyncOperation"]
    during = current(http, arm)
    statuses = [http.get(status_url).json()["status"] for _ in range(2)]
    after = current(http, arm)

    assert response.status_code == 200
    assert response.json()["properties"]["provisioningState"] == "Updating"
    assert "/providers/Microsoft.Network/locations/westeurope/operations/" in status_url
    assert during["properties"]["provisioningState"] == "Updating"
    assert statuses == ["InProgress", "Succeeded"]
    assert after["properties"]["provisioningState"] == "Succeeded"
    assert [c["name"] for c in after["properties"]["natRuleCollections"]] == [
        "customer-dnat",
        "jitbot-jit",
    ]


def test_sdk_create_or_update_follows_the_operation_to_succeeded(
    arm: ArmServer, network: NetworkManagementClient, http: requests.Session
) -> None:
    body = with_nat_collection(current(http, arm), nat_collection())
    poller = network.azure_firewalls.begin_create_or_update(RG, CLASSIC, body, api_version=NETWORK)
    result = poller.result()

    assert result.properties.provisioning_state == "Succeeded"
    assert [c.name for c in result.properties.nat_rule_collections] == [
        "customer-dnat",
        "jitbot-jit",
    ]


def test_etag_changes_on_every_write_and_a_stale_if_match_answers_412(
    arm: ArmServer, http: requests.Session
) -> None:
    first = current(http, arm)
    put_and_settle(http, firewall_url(arm), as_put_body(first))
    second = current(http, arm)
    stale = http.put(
        firewall_url(arm), json=as_put_body(second), headers={"If-Match": first["etag"]}
    )
    fresh = put_and_settle(
        http, firewall_url(arm), as_put_body(second) | {"tags": {"role": "hub", "n": "2"}}
    )

    assert second["etag"] != first["etag"]
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "PreconditionFailed"
    assert fresh.status_code == 200
    assert current(http, arm)["tags"] == {"role": "hub", "n": "2"}


def test_matching_if_match_is_accepted(arm: ArmServer, http: requests.Session) -> None:
    before = current(http, arm)
    response = http.put(
        firewall_url(arm), json=as_put_body(before), headers={"If-Match": before["etag"]}
    )

    assert response.status_code == 200


def test_write_while_an_operation_runs_answers_409_another_operation_in_progress(
    arm: ArmServer, http: requests.Session
) -> None:
    before = current(http, arm)
    first = http.put(firewall_url(arm), json=as_put_body(before))
    second = http.put(firewall_url(arm), json=as_put_body(before))
    http.get(first.headers["Azure-AsyncOperation"])
    http.get(first.headers["Azure-AsyncOperation"])
    third = http.put(firewall_url(arm), json=as_put_body(before))

    assert second.status_code == 409
    assert second.json()["error"]["code"] == "AnotherOperationInProgress"
    assert third.status_code == 200


def test_failed_operation_restores_the_firewall_under_a_new_etag(
    arm: ArmServer, http: requests.Session
) -> None:
    before = current(http, arm)
    arm.add_fault(method="PUT", path_contains="/azureFirewalls/", fail_on_poll=True, times=1)
    response = put_and_settle(
        http, firewall_url(arm), with_nat_collection(before, nat_collection())
    )
    after = current(http, arm)

    assert response.status_code == 200
    assert without_volatile(after) == without_volatile(before)
    assert after["etag"] not in (before["etag"], response.json()["etag"])


def test_private_ip_is_kept_across_writes(arm: ArmServer, http: requests.Session) -> None:
    put_and_settle(http, firewall_url(arm), as_put_body(current(http, arm)))
    config = current(http, arm)["properties"]["ipConfigurations"][0]

    assert config["properties"]["privateIPAddress"] == "10.1.0.4"


def test_unchanged_write_leaves_other_collections_exactly_as_they_were(
    arm: ArmServer, http: requests.Session
) -> None:
    before = current(http, arm)
    put_and_settle(http, firewall_url(arm), with_nat_collection(before, nat_collection()))
    after = current(http, arm)

    for kind in ("applicationRuleCollections", "networkRuleCollections"):
        assert without_volatile(after["properties"][kind]) == without_volatile(
            before["properties"][kind]
        )
    assert without_volatile(after["properties"]["natRuleCollections"][0]) == without_volatile(
        before["properties"]["natRuleCollections"][0]
    )


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("collection", "code"),
    [
        pytest.param(
            nat_collection(priority=99), "AzureFirewallRuleCollectionInvalidPriority", id="prio-99"
        ),
        pytest.param(
            nat_collection(priority=65001),
            "AzureFirewallRuleCollectionInvalidPriority",
            id="prio-65001",
        ),
        pytest.param(
            nat_collection(priority=200),
            "AzureFirewallRuleCollectionDuplicatePriority",
            id="prio-taken-by-customer-dnat",
        ),
        pytest.param(
            nat_collection(name="customer-dnat", priority=201),
            "AzureFirewallRuleCollectionDuplicateName",
            id="duplicate-collection-name",
        ),
        pytest.param(
            nat_collection(name="allow-dns", priority=201),
            "AzureFirewallRuleCollectionDuplicateName",
            id="name-of-a-network-collection",
        ),
        pytest.param(
            nat_collection(name="-bad"), "InvalidResourceName", id="collection-name-invalid"
        ),
        pytest.param(nat_collection(name="x" * 81), "InvalidResourceName", id="name-81-chars"),
        pytest.param(
            nat_collection(protocols=["ICMP"]),
            "AzureFirewallRuleInvalidProtocol",
            id="protocol-icmp",
        ),
        pytest.param(
            nat_collection(protocols=None), "AzureFirewallRuleParametersMissing", id="no-protocol"
        ),
        pytest.param(
            nat_collection(sourceAddresses=["203.0.113.300"]),
            "AzureFirewallRuleInvalidIpAddressOrRangeFormat",
            id="source-not-an-address",
        ),
        pytest.param(
            nat_collection(sourceAddresses=None),
            "AzureFirewallRuleParametersMissing",
            id="no-source",
        ),
        pytest.param(
            nat_collection(destinationAddresses=["20.60.70.81"]),
            "AzureFirewallNatRuleInvalidDestinationAddress",
            id="destination-of-another-firewall",
        ),
        pytest.param(
            nat_collection(destinationAddresses=["*"]),
            "AzureFirewallRuleInvalidIpAddressOrRangeFormat",
            id="destination-star",
        ),
        pytest.param(
            nat_collection(destinationPorts=["50022-50023"]),
            "AzureFirewallRuleInvalidDnatPortOrRangeFormat",
            id="destination-port-range",
        ),
        pytest.param(
            nat_collection(destinationPorts=["1", "2"]),
            "AzureFirewallRuleInvalidDnatPortOrRangeFormat",
            id="two-destination-ports",
        ),
        pytest.param(
            nat_collection(translatedPort="*"),
            "AzureFirewallRuleInvalidDnatPortOrRangeFormat",
            id="translated-port-star",
        ),
        pytest.param(
            nat_collection(translatedPort="70000"),
            "AzureFirewallRuleInvalidDnatPortOrRangeFormat",
            id="translated-port-too-big",
        ),
        pytest.param(
            nat_collection(translatedAddress="10.2.1.0/24"),
            "AzureFirewallRuleInvalidIpAddressOrRangeFormat",
            id="translated-prefix",
        ),
        pytest.param(
            nat_collection(translatedAddress=None),
            "AzureFirewallRuleParametersMissing",
            id="no-translation",
        ),
    ],
)
def test_invalid_nat_collections_are_refused_with_azures_code(
    arm: ArmServer, http: requests.Session, collection: dict[str, Any], code: str
) -> None:
    before = current(http, arm)
    response = http.put(firewall_url(arm), json=with_nat_collection(before, collection))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert current(http, arm)["etag"] == before["etag"]


def test_invalid_nat_action_is_refused(arm: ArmServer, http: requests.Session) -> None:
    collection = nat_collection()
    collection["properties"]["action"] = {"type": "Allow"}
    response = http.put(firewall_url(arm), json=with_nat_collection(current(http, arm), collection))

    assert response.json()["error"]["code"] == "AzureFirewallRuleCollectionInvalidAction"


def test_duplicate_rule_names_in_a_collection_are_refused(
    arm: ArmServer, http: requests.Session
) -> None:
    collection = nat_collection()
    rules = collection["properties"]["rules"]
    rules.append(copy.deepcopy(rules[0]) | {"destinationPorts": ["50023"]})
    response = http.put(firewall_url(arm), json=with_nat_collection(current(http, arm), collection))

    assert response.json()["error"]["code"] == "AzureFirewallRuleDuplicateName"


def test_same_priority_in_different_collection_types_is_allowed(
    arm: ArmServer, http: requests.Session
) -> None:
    response = put_and_settle(
        http,
        firewall_url(arm),
        with_nat_collection(current(http, arm), nat_collection(priority=300)),
    )

    assert response.status_code == 200


def test_lowercase_protocol_and_action_are_stored_canonically(
    arm: ArmServer, http: requests.Session
) -> None:
    collection = nat_collection(protocols=["tcp"])
    collection["properties"]["action"] = {"type": "dnat"}
    put_and_settle(http, firewall_url(arm), with_nat_collection(current(http, arm), collection))
    stored = current(http, arm)["properties"]["natRuleCollections"][1]["properties"]

    assert stored["action"] == {"type": "Dnat"}
    assert stored["rules"][0]["protocols"] == ["TCP"]


def test_classic_collections_on_a_policy_managed_firewall_are_refused(
    arm: ArmServer, http: requests.Session
) -> None:
    before = current(http, arm, MANAGED)
    collection = nat_collection(destinationAddresses=["20.60.70.81"])
    response = http.put(firewall_url(arm, MANAGED), json=with_nat_collection(before, collection))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "AzureFirewallPolicyAndRuleCollectionsConflict"
    assert "fwpol-hub" in error["message"]
    assert current(http, arm, MANAGED)["etag"] == before["etag"]


def test_a_missing_public_ip_is_an_invalid_resource_reference(
    arm: ArmServer, http: requests.Session
) -> None:
    body = as_put_body(current(http, arm))
    config = body["properties"]["ipConfigurations"][0]["properties"]
    config["publicIPAddress"]["id"] = config["publicIPAddress"]["id"].replace("pip-fw01", "pip-x")
    response = http.put(firewall_url(arm), json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidResourceReference"


def test_sdk_surfaces_the_validation_code(network: NetworkManagementClient, arm, http) -> None:
    body = with_nat_collection(current(http, arm), nat_collection(priority=99))

    with pytest.raises(HttpResponseError) as caught:
        network.azure_firewalls.begin_create_or_update(RG, CLASSIC, body, api_version=NETWORK)

    assert caught.value.error.code == "AzureFirewallRuleCollectionInvalidPriority"


def test_seed_with_an_invalid_nat_rule_does_not_start(tmp_path: Path) -> None:
    seed = json.loads(FIREWALL_SEED.read_text())
    group = seed["resourceGroups"][0]
    rule = group["azureFirewalls"][0]["natRuleCollections"][0]["properties"]["rules"][0]
    rule["translatedPort"] = "443-444"

    with pytest.raises(ValueError, match="fw-classic01.*AzureFirewallRuleInvalidDnatPortOrRange"):
        ArmServer(seed=seed, workdir=tmp_path)


def test_seed_with_classic_rules_and_a_policy_does_not_start(tmp_path: Path) -> None:
    seed = json.loads(FIREWALL_SEED.read_text())
    firewalls = seed["resourceGroups"][0]["azureFirewalls"]
    firewalls[0]["firewallPolicy"] = "fwpol-hub"

    with pytest.raises(ValueError, match="AzureFirewallPolicyAndRuleCollectionsConflict"):
        ArmServer(seed=seed, workdir=tmp_path)
