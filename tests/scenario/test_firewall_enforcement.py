"""Access through a classic Azure Firewall: a DNAT rule for the requester plus NSG allows
from the firewall's private address, and both put back exactly at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox import SANDBOX_ARM_TOKEN, SandboxStack, seed_file
from jitcore.model import RequestStatus
from jitcore.planner import comparable
from sandbox.arm.testing import network_client
from tests.scenario.harness import REQUESTER, Driver, wait_until, write_policy

SUBSCRIPTION = "00000000-0000-0000-0000-00000000a11c"
GROUP = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-jit-demo/providers/Microsoft.Network"


def policy(firewall: str) -> str:
    return f"""
policies:
  - name: app-via-firewall
    vms: [vm-app01]
    ports:
      - {{port: 22, protocol: Tcp, max_duration: 3h}}
    min_duration: 1s
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
    firewall: {GROUP}/azureFirewalls/{firewall}
    firewall_ports: {{22: 50022}}
"""


def start(tmp_path: Path, firewall: str) -> SandboxStack:
    return SandboxStack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'jitbot.db'}",
        policy_file=write_policy(tmp_path, policy(firewall)),
        arm_seed=seed_file("firewall.json"),
        sweep_interval=0.5,
    ).start()


@pytest.fixture
def classic(tmp_path: Path) -> Iterator[SandboxStack]:
    stack = start(tmp_path, "fw-classic01")
    try:
        yield stack
    finally:
        stack.stop()


def firewall_state(stack: SandboxStack, name: str) -> dict:
    """The firewall's classic rule collections, read with the real SDK."""
    client = network_client(stack.arm, token=SANDBOX_ARM_TOKEN)
    try:
        found = client.azure_firewalls.get("rg-jit-demo", name, api_version="2025-05-01")
    finally:
        client.close()
    props = found.as_dict()["properties"]
    kinds = ("natRuleCollections", "networkRuleCollections", "applicationRuleCollections")
    return {kind: _stable(props.get(kind) or []) for kind in kinds}


def _stable(collections: list[dict]) -> list[dict]:
    """Collections without the fields Azure sets on its own (etag, provisioning state)."""
    cleaned = []
    for collection in collections:
        props = {
            k: v for k, v in collection.get("properties", {}).items() if k != "provisioningState"
        }
        cleaned.append({"name": collection["name"], "properties": props})
    return cleaned


def nsgs(stack: SandboxStack) -> dict[str, list]:
    return {
        name: comparable(stack.arm.snapshot_nsg(f"{GROUP}/networkSecurityGroups/{name}"))
        for name in ("nsg-snet-app", "nsg-app01")
    }


def approve(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200 and "Request #" in reply["text"], reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    driver.click("jit_approve", request_id)
    return request_id


def test_access_through_a_classic_firewall_is_a_dnat_rule_and_is_fully_undone(
    classic: SandboxStack,
) -> None:
    driver = Driver(classic)
    firewall_before = firewall_state(classic, "fw-classic01")
    nsgs_before = nsgs(classic)

    request_id = approve(driver, "request vm-app01 22 3s from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)

    collections = firewall_state(classic, "fw-classic01")["natRuleCollections"]
    ours = next(c for c in collections if c["name"] == "jitbot-jit")
    [rule] = ours["properties"]["rules"]
    assert rule["sourceAddresses"] == ["203.0.113.7/32"]
    assert rule["destinationPorts"] == ["50022"]
    assert rule["translatedAddress"] == "10.2.1.4" and rule["translatedPort"] == "22"
    for rules in nsgs(classic).values():
        allow = next(r for r in rules if r["name"].startswith("jitbot-allow"))
        assert allow["properties"]["sourceAddressPrefix"] == "10.1.0.4/32"
    customer = [c for c in collections if c["name"] != "jitbot-jit"]
    assert customer == firewall_before["natRuleCollections"]

    driver.wait_status(request_id, RequestStatus.CLOSED)
    assert firewall_state(classic, "fw-classic01") == firewall_before
    assert nsgs(classic) == nsgs_before
    dm = wait_until(lambda: [t for t in driver.dms_to(REQUESTER) if "expired" in t], what="DM")
    assert "restored exactly" in dm[-1]


def test_a_firewall_managed_by_firewall_manager_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, "fw-managed01")
    try:
        driver = Driver(stack)
        nsgs_before = nsgs(stack)
        request_id = approve(driver, "request vm-app01 22 1h from 203.0.113.7")
        failed = driver.wait_status(request_id, RequestStatus.FAILED)
        assert "Azure Firewall Manager" in failed.failure_reason
        assert nsgs(stack) == nsgs_before
    finally:
        stack.stop()
