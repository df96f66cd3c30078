"""Concurrency, throttling, injected faults and the /sandbox/ hooks of the ARM stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.mgmt.network import NetworkManagementClient

from sandbox.arm.server import ArmServer
from sandbox.arm.testing import http_session, network_client

NETWORK = "2025-05-01"
RG = "rg-jit-demo"
NSG = "nsg-web01"


def allow(priority: int, source: str = "203.0.113.7") -> dict[str, Any]:
    return {
        "properties": {
            "protocol": "Tcp",
            "sourcePortRange": "*",
            "destinationPortRange": "22",
            "sourceAddressPrefix": source,
            "destinationAddressPrefix": "10.0.1.4",
            "access": "Allow",
            "priority": priority,
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


def nsg_id(arm: ArmServer) -> str:
    group = f"/subscriptions/{arm.subscription_id}/resourceGroups/{RG}"
    return f"{group}/providers/Microsoft.Network/networkSecurityGroups/{NSG}"


def rule_url(arm: ArmServer, rule: str) -> str:
    return f"{arm.url}{nsg_id(arm)}/securityRules/{rule}?api-version={NETWORK}"


def create(network: NetworkManagementClient, name: str, body: dict[str, Any]) -> Any:
    return network.security_rules.begin_create_or_update(
        RG, NSG, name, body, api_version=NETWORK
    ).result()


def rule_names(arm: ArmServer) -> list[str]:
    return [rule["name"] for rule in arm.snapshot_nsg(nsg_id(arm))]


def test_write_while_an_operation_runs_answers_409_another_operation_in_progress(
    arm: ArmServer, network, http
) -> None:
    status_url = http.put(rule_url(arm, "first"), json=allow(900)).headers["Azure-AsyncOperation"]

    with pytest.raises(ResourceExistsError) as caught:
        create(network, "second", allow(901))
    while http.get(status_url).json()["status"] == "InProgress":
        pass
    second = create(network, "second", allow(901))

    assert caught.value.status_code == 409
    assert caught.value.error.code == "AnotherOperationInProgress"
    assert status_url in caught.value.error.message
    assert second.provisioning_state == "Succeeded"


def test_delete_while_an_operation_runs_answers_409_too(arm: ArmServer, network, http) -> None:
    http.put(rule_url(arm, "first"), json=allow(900))
    with pytest.raises(ResourceExistsError) as caught:
        network.security_rules.begin_delete(RG, NSG, "allow-https", api_version=NETWORK)
    assert caught.value.error.code == "AnotherOperationInProgress"


def test_concurrency_conflicts_can_be_switched_off(arm: ArmServer, network, http) -> None:
    arm.concurrency_conflicts = False
    http.put(rule_url(arm, "first"), json=allow(900))

    assert create(network, "second", allow(901)).provisioning_state == "Succeeded"


def test_injected_429_surfaces_then_clears(arm: ArmServer, network) -> None:
    arm.add_fault(
        method="PUT",
        path_contains="securityRules",
        status=429,
        code="SubscriptionRequestsThrottled",
        retry_after=1,
    )

    with pytest.raises(HttpResponseError) as caught:
        create(network, "jitbot-allow-1", allow(900))
    arm.clear_faults()
    rule = create(network, "jitbot-allow-1", allow(900))

    assert caught.value.status_code == 429
    assert caught.value.error.code == "SubscriptionRequestsThrottled"
    assert caught.value.response.headers["Retry-After"] == "1"
    assert rule.provisioning_state == "Succeeded"


def test_sdk_retries_a_fault_that_runs_out(arm: ArmServer) -> None:
    arm.add_fault(method="PUT", path_contains="/securityRules/", status=429, retry_after=0, times=2)
    with network_client(arm, retry_backoff_factor=0.01) as client:
        rule = create(client, "jitbot-allow-1", allow(900))

    puts = [entry["status"] for entry in arm.requests() if entry["method"] == "PUT"]
    assert puts == [429, 429, 201]
    assert rule.provisioning_state == "Succeeded"
    assert arm.faults() == []


def test_fail_on_poll_reports_failed_and_a_failed_create_leaves_no_rule(
    arm: ArmServer, network
) -> None:
    arm.add_fault(
        method="PUT",
        path_contains="jitbot-allow-1",
        fail_on_poll=True,
        code="InternalServerError",
        times=1,
    )

    with pytest.raises(HttpResponseError) as caught:
        create(network, "jitbot-allow-1", allow(900))

    assert caught.value.error.code == "InternalServerError"
    assert "jitbot-allow-1" not in rule_names(arm)
    assert create(network, "jitbot-allow-1", allow(900)).provisioning_state == "Succeeded"


def test_failed_update_and_delete_restore_the_previous_rule(arm: ArmServer, network) -> None:
    before = arm.snapshot_nsg(nsg_id(arm))
    arm.add_fault(path_contains="allow-https", fail_on_poll=True, times=2)

    with pytest.raises(HttpResponseError):
        create(network, "allow-https", allow(110, "0.0.0.0/0"))
    with pytest.raises(HttpResponseError):
        network.security_rules.begin_delete(RG, NSG, "allow-https", api_version=NETWORK).result()

    assert arm.snapshot_nsg(nsg_id(arm)) == before


def test_slow_operation_stays_in_progress_for_its_delay(arm: ArmServer, http) -> None:
    arm.add_fault(method="PUT", delay_seconds=0.5, times=1)
    started = time.monotonic()
    response = http.put(rule_url(arm, "jitbot-allow-1"), json=allow(900))
    status_url = response.headers["Azure-AsyncOperation"]

    early = [http.get(status_url) for _ in range(3)]
    time.sleep(max(0.0, 0.55 - (time.monotonic() - started)))
    late = http.get(status_url).json()["status"]

    assert response.headers["Retry-After"] == "1"
    assert [poll.json()["status"] for poll in early] == ["InProgress"] * 3
    assert early[0].headers["Retry-After"] == "1"
    assert late == "Succeeded"


def test_sdk_poller_waits_out_a_slow_operation(arm: ArmServer, network) -> None:
    arm.add_fault(method="PUT", delay_seconds=1, times=1)
    started = time.monotonic()
    rule = create(network, "jitbot-allow-1", allow(900))

    assert 1 <= time.monotonic() - started < 3
    assert rule.provisioning_state == "Succeeded"
    assert len([entry for entry in arm.requests() if "/operations/" in entry["path"]]) <= 3


def test_operation_nobody_polls_ends_after_its_timeout(tmp_path: Path) -> None:
    with ArmServer(workdir=tmp_path, lro_timeout=0.2) as arm, http_session(arm) as http:
        http.put(rule_url(arm, "jitbot-allow-1"), json=allow(900))
        time.sleep(0.25)
        state = http.get(rule_url(arm, "jitbot-allow-1")).json()["properties"]["provisioningState"]
        second = http.put(rule_url(arm, "jitbot-allow-2"), json=allow(901))

    assert state == "Succeeded"
    assert second.status_code == 201


def test_write_budget_answers_429_when_spent(tmp_path: Path) -> None:
    with ArmServer(
        workdir=tmp_path, write_burst=2, write_refill_per_second=0.5, concurrency_conflicts=False
    ) as arm:
        with http_session(arm) as http:
            statuses = [
                http.put(rule_url(arm, f"r{index}"), json=allow(900 + index)) for index in range(3)
            ]
            reads = http.get(rule_url(arm, "r0"))
            arm.throttling = False
            unthrottled = http.put(rule_url(arm, "r9"), json=allow(999))

    assert [response.status_code for response in statuses] == [201, 201, 429]
    assert statuses[1].headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"
    assert statuses[2].json()["error"]["code"] == "SubscriptionRequestsThrottled"
    assert int(statuses[2].headers["Retry-After"]) >= 1
    assert reads.status_code == 200
    assert unthrottled.status_code == 201


def test_sandbox_http_hooks_manage_faults_requests_and_state(arm: ArmServer, http) -> None:
    hooks = f"{arm.url}/sandbox"
    fault = {"method": "GET", "path_contains": "securityRules", "status": 503, "times": 1}
    added = http.post(f"{hooks}/faults", json=fault)
    listed = http.get(f"{hooks}/faults").json()
    failed = http.get(rule_url(arm, "allow-https"))
    served = http.get(rule_url(arm, "allow-https"))
    log = http.get(f"{hooks}/requests").json()
    state = http.get(f"{hooks}/state").json()
    bad = http.post(f"{hooks}/faults", json={"status": 200})
    cleared = (
        http.delete(f"{hooks}/faults").status_code,
        http.delete(f"{hooks}/requests").status_code,
    )

    assert added.status_code == 201 and listed[0]["status"] == 503
    assert (failed.status_code, failed.json()["error"]["code"]) == (503, "ServiceUnavailable")
    assert served.status_code == 200
    assert [(entry["method"], entry["status"]) for entry in log] == [("GET", 503), ("GET", 200)]
    assert {"method", "path", "query", "status", "time"} <= set(log[0])
    assert nsg_id(arm) in [resource["id"] for resource in state["resources"]]
    assert bad.status_code == 400
    assert cleared == (204, 204)
    assert arm.requests() == [] and arm.faults() == []


def test_unknown_fault_fields_are_refused(arm: ArmServer) -> None:
    with pytest.raises(ValueError, match="unknown fault fields"):
        arm.add_fault(status=500, pathcontains="typo")


def test_server_stops_cleanly_with_open_keep_alive_connections(tmp_path: Path) -> None:
    arm = ArmServer(workdir=tmp_path).start()
    session = http_session(arm)
    session.get(rule_url(arm, "allow-https"))
    started = time.monotonic()
    arm.stop()
    session.close()

    assert time.monotonic() - started < 2
