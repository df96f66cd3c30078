"""Security-rule and NSG writes on the ARM stand-in: LROs, validation, ETags, via the real SDK."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.mgmt.network import NetworkManagementClient

from sandbox.arm.server import ArmServer
from sandbox.arm.testing import http_session, network_client

NETWORK = "2025-05-01"
RG = "rg-jit-demo"
NSG = "nsg-web01"

ALLOW_SSH: dict[str, Any] = {
    "properties": {
        "description": "jitbot: request 42 until 12:00Z",
        "protocol": "Tcp",
        "sourcePortRange": "*",
        "destinationPortRanges": ["22"],
        "sourceAddressPrefix": "203.0.113.7",
        "destinationAddressPrefix": "10.0.1.4",
        "access": "Allow",
        "priority": 900,
        "direction": "Inbound",
    }
}


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


def nsg_id(arm: ArmServer, name: str = NSG) -> str:
    group = f"/subscriptions/{arm.subscription_id}/resourceGroups/{RG}"
    return f"{group}/providers/Microsoft.Network/networkSecurityGroups/{name}"


def rule_url(arm: ArmServer, rule: str, nsg: str = NSG) -> str:
    return f"{arm.url}{nsg_id(arm, nsg)}/securityRules/{rule}?api-version={NETWORK}"


def with_properties(**changes: Any) -> dict[str, Any]:
    """ALLOW_SSH with properties changed; a value of None removes the property."""
    body = copy.deepcopy(ALLOW_SSH)
    for key, value in changes.items():
        if value is None:
            body["properties"].pop(key, None)
        else:
            body["properties"][key] = value
    return body


def create(network: NetworkManagementClient, name: str, body: dict[str, Any], **kwargs: Any) -> Any:
    poller = network.security_rules.begin_create_or_update(
        RG, NSG, name, body, api_version=NETWORK, **kwargs
    )
    return poller.result()


def test_create_rule_lro_result_is_the_succeeded_rule(arm: ArmServer, network) -> None:
    started = time.monotonic()
    rule = create(network, "jitbot-allow-42", ALLOW_SSH)

    assert time.monotonic() - started < 2
    assert rule.provisioning_state == "Succeeded"
    assert rule.id == f"{nsg_id(arm)}/securityRules/jitbot-allow-42"
    assert rule.etag.startswith('W/"')
    assert "jitbot-allow-42" in [item["name"] for item in arm.snapshot_nsg(nsg_id(arm))]


def test_create_answers_201_updating_with_an_async_operation_url(arm: ArmServer, http) -> None:
    response = http.put(rule_url(arm, "jitbot-allow-42"), json=ALLOW_SSH)
    status_url = response.headers["Azure-AsyncOperation"]
    during = http.get(rule_url(arm, "jitbot-allow-42")).json()
    polls = [http.get(status_url).json()["status"] for _ in range(2)]
    after = http.get(rule_url(arm, "jitbot-allow-42")).json()

    assert response.status_code == 201
    assert response.json()["properties"]["provisioningState"] == "Updating"
    assert response.headers["Retry-After"] == "0"
    assert status_url.startswith(
        f"{arm.url}/subscriptions/{arm.subscription_id}/providers/Microsoft.Network/locations/westeurope/operations/"
    )
    assert during["properties"]["provisioningState"] == "Updating"
    assert polls == ["InProgress", "Succeeded"]
    assert after["properties"]["provisioningState"] == "Succeeded"


def test_operation_polls_follow_lro_polls(tmp_path: Path) -> None:
    with ArmServer(workdir=tmp_path, lro_polls=3) as arm, http_session(arm) as http:
        status_url = http.put(rule_url(arm, "jitbot-allow-42"), json=ALLOW_SSH).headers[
            "Azure-AsyncOperation"
        ]
        statuses = [http.get(status_url).json()["status"] for _ in range(5)]

    assert statuses == ["InProgress"] * 3 + ["Succeeded"] * 2


def test_update_answers_200_and_changes_the_etag(arm: ArmServer, network) -> None:
    first = create(network, "jitbot-allow-42", ALLOW_SSH)
    second = create(
        network, "jitbot-allow-42", with_properties(sourceAddressPrefix="198.51.100.0/24")
    )

    assert second.etag != first.etag
    assert second.source_address_prefix == "198.51.100.0/24"
    assert [entry["status"] for entry in arm.requests() if entry["method"] == "PUT"] == [201, 200]


def test_delete_rule_lro_removes_it(arm: ArmServer, network, http) -> None:
    create(network, "jitbot-allow-42", ALLOW_SSH)
    network.security_rules.begin_delete(RG, NSG, "jitbot-allow-42", api_version=NETWORK).result()

    assert [rule["name"] for rule in arm.snapshot_nsg(nsg_id(arm))] == [
        "allow-https",
        "jitbot-deny-vm-web01",
    ]
    assert http.get(rule_url(arm, "jitbot-allow-42")).json()["error"]["code"] == "NotFound"


def test_delete_answers_202_with_operation_and_location_headers(arm: ArmServer, http) -> None:
    response = http.delete(rule_url(arm, "allow-https"))
    during = http.get(rule_url(arm, "allow-https")).json()
    result_url = response.headers["Location"]
    first, second = http.get(result_url), http.get(result_url)

    assert response.status_code == 202
    assert "/operations/" in response.headers["Azure-AsyncOperation"]
    assert "/operationResults/" in result_url
    assert during["properties"]["provisioningState"] == "Deleting"
    assert (first.status_code, second.status_code) == (202, 204)


def test_delete_of_a_missing_rule_answers_204(arm: ArmServer, network, http) -> None:
    assert http.delete(rule_url(arm, "never-was")).status_code == 204
    network.security_rules.begin_delete(RG, NSG, "never-was", api_version=NETWORK).result()


def test_enum_values_are_case_insensitive_and_stored_canonically(network) -> None:
    rule = create(
        network,
        "jitbot-allow-42",
        with_properties(protocol="tcp", access="allow", direction="inbound"),
    )

    assert (rule.protocol, rule.access, rule.direction) == ("Tcp", "Allow", "Inbound")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        pytest.param({"priority": 99}, "SecurityRuleInvalidPriority", id="priority-below-100"),
        pytest.param({"priority": 4097}, "SecurityRuleInvalidPriority", id="priority-above-4096"),
        pytest.param({"priority": None}, "SecurityRuleInvalidPriority", id="priority-missing"),
        pytest.param({"protocol": "Gre"}, "SecurityRuleInvalidProtocol", id="protocol-unknown"),
        pytest.param({"protocol": None}, "SecurityRuleInvalidProtocol", id="protocol-missing"),
        pytest.param({"access": "Maybe"}, "SecurityRuleInvalidAccess", id="access-unknown"),
        pytest.param({"direction": None}, "SecurityRuleInvalidDirection", id="direction-missing"),
        pytest.param(
            {"destinationPortRanges": ["70000"]}, "SecurityRuleInvalidPortRange", id="port-too-big"
        ),
        pytest.param(
            {"destinationPortRanges": ["80,81"]},
            "SecurityRuleInvalidPortRange",
            id="port-list-in-one",
        ),
        pytest.param(
            {"destinationPortRanges": ["90-80"]},
            "SecurityRuleInvalidPortRange",
            id="port-range-reversed",
        ),
        pytest.param({"sourcePortRange": "any"}, "SecurityRuleInvalidPortRange", id="port-word"),
        pytest.param(
            {"sourcePortRange": None}, "SecurityRuleParametersMissing", id="source-port-missing"
        ),
        pytest.param(
            {"destinationPortRange": "22"},
            "SecurityRuleInvalidParameters",
            id="port-range-and-ranges",
        ),
        pytest.param(
            {"sourceAddressPrefix": "10.0.0.5/24"},
            "SecurityRuleInvalidAddressPrefix",
            id="host-bits-set",
        ),
        pytest.param(
            {"sourceAddressPrefix": "10.0.0.0/33"},
            "SecurityRuleInvalidAddressPrefix",
            id="prefix-too-long",
        ),
        pytest.param(
            {"sourceAddressPrefix": "any"}, "SecurityRuleInvalidAddressPrefix", id="prefix-word"
        ),
        pytest.param(
            {"sourceAddressPrefix": "2001:db8::1/64"},
            "SecurityRuleInvalidAddressPrefix",
            id="v6-host-bits",
        ),
        pytest.param(
            {"sourceAddressPrefixes": ["10.0.0.0/8"]},
            "SecurityRuleInvalidParameters",
            id="prefix-and-prefixes",
        ),
        pytest.param(
            {"sourceAddressPrefix": None, "sourceAddressPrefixes": ["*"]},
            "SecurityRuleParameterContainsUnsupportedValue",
            id="star-in-prefixes",
        ),
        pytest.param(
            {"sourceAddressPrefix": None, "sourceAddressPrefixes": ["Internet"]},
            "SecurityRuleParameterContainsUnsupportedValue",
            id="tag-in-prefixes",
        ),
        pytest.param(
            {"sourceAddressPrefix": None}, "SecurityRuleParametersMissing", id="source-missing"
        ),
        pytest.param(
            {"description": "x" * 141}, "SecurityRuleInvalidDescription", id="description-141"
        ),
    ],
)
def test_invalid_rules_are_refused_with_azures_code(
    arm: ArmServer, network, changes: dict[str, Any], code: str
) -> None:
    with pytest.raises(HttpResponseError) as caught:
        create(network, "jitbot-allow-42", with_properties(**changes))

    assert caught.value.status_code == 400
    assert caught.value.error.code == code
    assert "jitbot-allow-42" not in [rule["name"] for rule in arm.snapshot_nsg(nsg_id(arm))]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"sourceAddressPrefix": "VirtualNetwork"}, id="service-tag"),
        pytest.param({"sourceAddressPrefix": "Storage.WestEurope"}, id="regional-tag"),
        pytest.param({"sourceAddressPrefix": "2001:db8::/32"}, id="ipv6-cidr"),
        pytest.param(
            {"sourceAddressPrefix": None, "sourceAddressPrefixes": ["10.1.0.0/16", "192.0.2.1"]},
            id="prefixes",
        ),
        pytest.param({"destinationPortRanges": ["0-65535", "*"]}, id="full-range"),
        pytest.param({"description": "x" * 140, "priority": 4096, "protocol": "Ah"}, id="limits"),
    ],
)
def test_valid_edge_cases_are_accepted(network, changes: dict[str, Any]) -> None:
    assert (
        create(network, "jitbot-allow-42", with_properties(**changes)).provisioning_state
        == "Succeeded"
    )


@pytest.mark.parametrize("name", ["-lead", "trail-", "trail.", "has space", "a" * 81, "semi;colon"])
def test_invalid_rule_names_are_refused(network, name: str) -> None:
    with pytest.raises(HttpResponseError) as caught:
        create(network, name, ALLOW_SSH)
    assert caught.value.error.code == "InvalidResourceName"


@pytest.mark.parametrize("name", ["a", "ends_", "jitbot.allow-1_x", "b" * 80])
def test_valid_rule_names_are_accepted(network, name: str) -> None:
    assert create(network, name, ALLOW_SSH).name == name


def test_priority_conflict_names_both_rules(arm: ArmServer, network) -> None:
    with pytest.raises(HttpResponseError) as caught:
        create(network, "jitbot-allow-42", with_properties(priority=100))

    assert caught.value.error.code == "SecurityRuleConflict"
    assert "allow-https" in caught.value.error.message
    assert "jitbot-allow-42" in caught.value.error.message


def test_same_priority_in_the_other_direction_is_accepted(network) -> None:
    rule = create(network, "jitbot-out", with_properties(priority=100, direction="Outbound"))
    assert rule.priority == 100


def test_updating_a_rule_keeps_its_own_priority(network) -> None:
    create(
        network, "allow-https", with_properties(priority=100, destinationPortRanges=["443", "8443"])
    )


def test_if_match_mismatch_answers_412_and_a_match_succeeds(arm: ArmServer, network) -> None:
    current = network.security_rules.get(RG, NSG, "allow-https", api_version=NETWORK)
    body = with_properties(priority=110)

    with pytest.raises(HttpResponseError) as caught:
        create(
            network,
            "allow-https",
            body,
            headers={"If-Match": 'W/"00000000-0000-0000-0000-000000000000"'},
        )
    updated = create(network, "allow-https", body, headers={"If-Match": current.etag})

    assert (caught.value.status_code, caught.value.error.code) == (412, "PreconditionFailed")
    assert updated.priority == 110


def test_if_none_match_star_refuses_to_overwrite(network) -> None:
    with pytest.raises(HttpResponseError) as caught:
        create(network, "allow-https", ALLOW_SSH, headers={"If-None-Match": "*"})
    assert caught.value.error.code == "PreconditionFailed"


def test_rule_count_is_limited_to_1000(network) -> None:
    rules = [
        {"name": f"r{index}", **with_properties(priority=100 + index, description=None)}
        for index in range(1000)
    ]
    poller = network.network_security_groups.begin_create_or_update(
        RG,
        "nsg-full",
        {"location": "westeurope", "properties": {"securityRules": rules}},
        api_version=NETWORK,
    )
    assert len(poller.result().security_rules) == 1000

    with pytest.raises(HttpResponseError) as one_more:
        poller = network.security_rules.begin_create_or_update(
            RG, "nsg-full", "r1000", with_properties(priority=4000), api_version=NETWORK
        )
    extra = rules + [{"name": "r1000", **with_properties(priority=4000)}]
    with pytest.raises(HttpResponseError) as too_many:
        network.network_security_groups.begin_create_or_update(
            RG,
            "nsg-full",
            {"location": "westeurope", "properties": {"securityRules": extra}},
            api_version=NETWORK,
        )

    assert one_more.value.error.code == too_many.value.error.code == "SecurityRuleCountLimitReached"


def test_nsg_put_replaces_rules_and_keeps_etags_of_unchanged_ones(arm: ArmServer, network) -> None:
    before = {rule["name"]: rule for rule in arm.snapshot_nsg(nsg_id(arm))}
    nsg = network.network_security_groups.get(RG, NSG, api_version=NETWORK)
    body = {
        "location": nsg.location,
        "properties": {
            "securityRules": [
                {"name": "allow-https", "properties": before["allow-https"]["properties"]},
                {"name": "jitbot-allow-42", **ALLOW_SSH},
            ]
        },
    }
    result = network.network_security_groups.begin_create_or_update(
        RG, NSG, body, api_version=NETWORK, headers={"If-Match": nsg.etag}
    ).result()
    after = {rule["name"]: rule for rule in arm.snapshot_nsg(nsg_id(arm))}

    assert set(after) == {"allow-https", "jitbot-allow-42"}
    assert after["allow-https"]["etag"] == before["allow-https"]["etag"]
    assert result.provisioning_state == "Succeeded" and result.etag != nsg.etag


def test_nsg_put_with_a_stale_etag_answers_412(network) -> None:
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG,
            NSG,
            {"location": "westeurope"},
            api_version=NETWORK,
            headers={"If-Match": 'W/"stale"'},
        )
    assert caught.value.status_code == 412


def test_nsg_put_with_conflicting_rules_names_both(network) -> None:
    rules = [{"name": "one", **ALLOW_SSH}, {"name": "two", **ALLOW_SSH}]
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG,
            "nsg-new",
            {"location": "westeurope", "properties": {"securityRules": rules}},
            api_version=NETWORK,
        )
    assert caught.value.error.code == "SecurityRuleConflict"
    assert "one" in caught.value.error.message and "two" in caught.value.error.message


def test_new_nsg_is_created_then_deleted(arm: ArmServer, network, http) -> None:
    created = network.network_security_groups.begin_create_or_update(
        RG, "nsg-new", {"location": "westeurope", "tags": {"team": "ops"}}, api_version=NETWORK
    ).result()
    network.network_security_groups.begin_delete(RG, "nsg-new", api_version=NETWORK).result()

    assert created.tags == {"team": "ops"} and len(created.default_security_rules) == 6
    assert [
        entry["status"] for entry in arm.requests() if entry["method"] in ("PUT", "DELETE")
    ] == [201, 202]
    assert http.get(f"{arm.url}{nsg_id(arm, 'nsg-new')}?api-version={NETWORK}").status_code == 404


def test_nsg_in_use_cannot_be_deleted(network) -> None:
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_delete(RG, NSG, api_version=NETWORK)
    assert caught.value.error.code == "InUseNetworkSecurityGroupCannotBeDeleted"
    assert "nic-web01" in caught.value.error.message


def test_nsg_without_location_is_refused(network) -> None:
    with pytest.raises(HttpResponseError) as caught:
        network.network_security_groups.begin_create_or_update(
            RG, "nsg-new", {"properties": {}}, api_version=NETWORK
        )
    assert caught.value.error.code == "LocationRequired"


def test_malformed_body_answers_invalid_request_format(arm: ArmServer, http) -> None:
    response = http.put(
        rule_url(arm, "jitbot-allow-42"),
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert (response.status_code, response.json()["error"]["code"]) == (400, "InvalidRequestFormat")
