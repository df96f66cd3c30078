"""Protect, grant and restore on NIC and subnet NSGs, with other writers and faults.

The ARM stand-in serves a VM behind both a subnet NSG and a NIC NSG; approvals arrive
over signed HTTP; another writer edits the NSGs with the real SDK meanwhile.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox import SANDBOX_ARM_TOKEN, SandboxStack, seed_file
from jitcore.model import RequestStatus
from jitcore.planner import comparable
from sandbox.arm.testing import network_client
from tests.scenario.harness import APPROVAL_CHANNEL, REQUESTER, Driver, wait_until, write_policy

POLICY = """
policies:
  - name: app-admin
    vms: [vm-app01, vm-bare01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
      - {port: 3389, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
"""


def network_seed() -> dict:
    """The default subscription plus vm-app01 (subnet NSG and NIC NSG, not yet protected)
    and vm-bare01 (no NSG anywhere)."""
    seed = json.loads(seed_file("default.json").read_text())
    group = seed["resourceGroups"][0]
    group["networkSecurityGroups"] += [
        {
            "name": "nsg-snet-app",
            "securityRules": [
                {
                    "name": "allow-lb-probe",
                    "properties": {
                        "protocol": "Tcp",
                        "sourcePortRange": "*",
                        "destinationPortRange": "8080",
                        "sourceAddressPrefix": "AzureLoadBalancer",
                        "destinationAddressPrefix": "*",
                        "access": "Allow",
                        "priority": 110,
                        "direction": "Inbound",
                    },
                }
            ],
        },
        {"name": "nsg-app01", "securityRules": []},
    ]
    group["virtualNetworks"][0]["subnets"] += [
        {
            "name": "snet-app",
            "addressPrefix": "10.0.3.0/24",
            "networkSecurityGroup": "nsg-snet-app",
        },
        {"name": "snet-bare", "addressPrefix": "10.0.4.0/24"},
    ]
    group["networkInterfaces"] += [
        {
            "name": "nic-app01",
            "subnet": "vnet-jit-demo/subnets/snet-app",
            "privateIPAddress": "10.0.3.4",
            "networkSecurityGroup": "nsg-app01",
        },
        {
            "name": "nic-bare01",
            "subnet": "vnet-jit-demo/subnets/snet-bare",
            "privateIPAddress": "10.0.4.4",
        },
    ]
    group["virtualMachines"] += [
        {
            "name": "vm-app01",
            "vmSize": "Standard_B2s",
            "osType": "Linux",
            "networkInterfaces": ["nic-app01"],
        },
        {
            "name": "vm-bare01",
            "vmSize": "Standard_B2s",
            "osType": "Linux",
            "networkInterfaces": ["nic-bare01"],
        },
    ]
    return seed


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[SandboxStack]:
    running = SandboxStack(
        tmp_path,
        database_url=database_url,
        policy_file=write_policy(tmp_path, POLICY),
        sweep_interval=0.5,
        arm_seed=network_seed(),
        reconcile_interval=3600,
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def nsg_id(stack: SandboxStack, name: str) -> str:
    return (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/networkSecurityGroups/{name}"
    )


def snapshots(stack: SandboxStack) -> dict[str, list]:
    return {
        name: comparable(stack.arm.snapshot_nsg(nsg_id(stack, name)))
        for name in ("nsg-snet-app", "nsg-app01")
    }


def request_and_approve(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200 and "Request #" in reply["text"], reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    assert driver.click("jit_approve", request_id) == 200
    return request_id


def test_protect_and_a_grant_cover_the_subnet_and_the_nic_nsg_and_restore_both(
    driver: Driver, stack: SandboxStack
) -> None:
    outcome = stack.bot.protector.protect("vm-app01", "test")
    assert len(outcome.created) == 2
    protected = snapshots(stack)
    for rules in protected.values():
        deny = next(r for r in rules if r["name"] == "jitbot-deny-vm-app01")
        assert deny["properties"]["access"] == "Deny"
        assert deny["properties"]["destinationAddressPrefix"] == "10.0.3.4"

    request_id = request_and_approve(driver, "request vm-app01 22 3s from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)
    grants = stack.bot.engine.grants_of(request_id)
    assert [g.nsg_id.rsplit("/", 1)[-1] for g in grants] == ["nsg-snet-app", "nsg-app01"]
    for name in ("nsg-snet-app", "nsg-app01"):
        names = [r["name"] for r in stack.arm.snapshot_nsg(nsg_id(stack, name))]
        assert f"jitbot-allow-r{request_id}" in names

    driver.wait_status(request_id, RequestStatus.CLOSED)
    assert snapshots(stack) == protected

    stack.bot.protector.unprotect("vm-app01", "test")
    assert all("jitbot" not in json.dumps(rules) for rules in snapshots(stack).values())


def test_a_vm_with_no_nsg_fails_with_the_reason_and_nothing_changes(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-bare01 22 1h from 203.0.113.7")
    failed = driver.wait_status(request_id, RequestStatus.FAILED)
    assert "no network security group" in failed.failure_reason
    dms = wait_until(lambda: driver.dms_to(REQUESTER), what="the failure DM")
    assert "Nothing is left open" in dms[-1]


def test_edits_by_other_writers_survive_and_are_reported_not_undone(
    driver: Driver, stack: SandboxStack
) -> None:
    stack.bot.protector.protect("vm-app01", "test")
    request_id = request_and_approve(driver, "request vm-app01 22 3s from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)

    other = network_client(stack.arm, token=SANDBOX_ARM_TOKEN, polling_interval=0.05)
    other.security_rules.begin_create_or_update(
        "rg-jit-demo",
        "nsg-app01",
        "allow-monitoring",
        {
            "properties": {
                "protocol": "Tcp",
                "access": "Allow",
                "direction": "Inbound",
                "priority": 3000,
                "sourceAddressPrefix": "10.9.0.0/16",
                "destinationAddressPrefix": "*",
                "destinationPortRange": "9100",
                "sourcePortRange": "*",
            }
        },
        api_version="2025-05-01",
    ).result()
    other.close()

    driver.wait_status(request_id, RequestStatus.CLOSED)
    names = [r["name"] for r in stack.arm.snapshot_nsg(nsg_id(stack, "nsg-app01"))]
    assert "allow-monitoring" in names and f"jitbot-allow-r{request_id}" not in names
    dm = wait_until(lambda: [t for t in driver.dms_to(REQUESTER) if "expired" in t], what="DM")
    assert "added allow-monitoring" in dm[-1]


def test_drift_is_repaired_and_reported_to_the_channel(driver: Driver, stack: SandboxStack) -> None:
    stack.bot.protector.protect("vm-app01", "test")
    protected = snapshots(stack)
    other = network_client(stack.arm, token=SANDBOX_ARM_TOKEN, polling_interval=0.05)
    other.security_rules.begin_delete(
        "rg-jit-demo", "nsg-app01", "jitbot-deny-vm-app01", api_version="2025-05-01"
    ).result()
    other.close()

    findings = stack.bot.protector.reconcile()

    assert [f.problem for f in findings] == ["the JIT deny rule was removed outside jitbot"]
    assert snapshots(stack) == protected
    posts = wait_until(
        lambda: [p for p in driver.posts(APPROVAL_CHANNEL) if "drifted" in p["args"]["text"]],
        what="the drift report",
    )
    assert "nsg-app01/jitbot-deny-vm-app01" in posts[-1]["args"]["text"]


def test_grants_racing_an_expiry_under_injected_faults_end_at_the_baseline(
    driver: Driver, stack: SandboxStack
) -> None:
    stack.bot.protector.protect("vm-app01", "test")
    baseline = snapshots(stack)
    stack.arm.add_fault(
        method="PUT",
        path_contains="securityRules",
        status=409,
        code="AnotherOperationInProgress",
        times=3,
    )
    stack.arm.add_fault(
        method="PUT",
        path_contains="securityRules",
        status=429,
        code="SubscriptionRequestsThrottled",
        retry_after=0,
        times=2,
    )
    stack.arm.add_fault(
        method="DELETE",
        path_contains="securityRules",
        status=500,
        code="InternalServerError",
        times=1,
    )

    first = request_and_approve(driver, "request vm-app01 22 8s from 203.0.113.7")
    driver.wait_status(first, RequestStatus.ACTIVE, timeout=30)
    sources = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    ids: list[int] = []

    def approve_one(source: str) -> None:
        ids.append(request_and_approve(driver, f"request vm-app01 3389 2s from {source}"))

    workers = [threading.Thread(target=approve_one, args=(s,)) for s in sources]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    for request_id in [first, *ids]:
        driver.wait_status(request_id, RequestStatus.CLOSED, timeout=40)
    assert snapshots(stack) == baseline
    priorities = [
        g.priority
        for r in ids
        for g in stack.bot.engine.grants_of(r)
        if g.nsg_id.endswith("nsg-app01")
    ]
    assert len(priorities) == len(set(priorities)) == 3
    statuses = {r["status"] for r in stack.arm.requests()}
    assert {409, 429, 500} <= statuses


def test_expired_allow_rules_unknown_to_the_database_are_removed(stack: SandboxStack) -> None:
    other = network_client(stack.arm, token=SANDBOX_ARM_TOKEN, polling_interval=0.05)
    other.security_rules.begin_create_or_update(
        "rg-jit-demo",
        "nsg-app01",
        "jitbot-allow-r4242",
        {
            "properties": {
                "protocol": "Tcp",
                "access": "Allow",
                "direction": "Inbound",
                "priority": 900,
                "sourceAddressPrefix": "203.0.113.9/32",
                "destinationAddressPrefix": "10.0.3.4",
                "destinationPortRange": "22",
                "sourcePortRange": "*",
                "description": "jitbot r4242 until 2020-01-01T00:00:00Z for vm-app01",
            }
        },
        api_version="2025-05-01",
    ).result()
    other.close()

    findings = stack.bot.protector.reconcile()

    assert [f.rule for f in findings] == ["jitbot-allow-r4242"]
    names = [r["name"] for r in stack.arm.snapshot_nsg(nsg_id(stack, "nsg-app01"))]
    assert "jitbot-allow-r4242" not in names


def test_scan_reports_each_vm_with_its_reason(stack: SandboxStack) -> None:
    stack.bot.protector.protect("vm-app01", "test")
    results = {r.vm_name: r for r in stack.bot.protector.scan(stack.bot.network.vm_names())}
    assert results["vm-app01"].status == "protected"
    assert results["vm-web01"].status == "protected"
    assert results["vm-bare01"].status == "not applicable"
    assert "no NSG" in results["vm-bare01"].reason
