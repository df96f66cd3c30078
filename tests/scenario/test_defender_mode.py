"""Defender for Cloud enforcement end to end: signed Slack requests to the running bot,
azure-mgmt-security against the ARM stand-in's Defender JIT policies over HTTPS, and the
Slack stand-in's record of what people were told.

The stand-in opens an initiated request after a short apply delay and revokes it at its
endTimeUtc (``Expired``) or when a newer request for the same VM and port comes
(``NewerRequestInitiated``), as Defender does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.sandbox import SANDBOX_ARM_TOKEN, SandboxStack, seed_file
from jitcore.azure.clients import AzureTarget, StaticTokenCredential
from jitcore.azure.defender import DefenderGateway
from jitcore.model import Grant, RequestStatus
from tests.scenario.harness import (
    APPROVAL_CHANNEL,
    APPROVER,
    REQUESTER,
    Driver,
    wait_until,
    write_policy,
)
from tests.scenario.processes import Endpoint, ProcessWorld

WAIT = 30.0
GROUP = "rg-jit-demo"
LOCATION = "westeurope"
EXISTING_POLICY = "ops-jit"
"""The Defender policy the resource group already has (not named ``default``)."""

DEFENDER_POLICY = """
policies:
  - name: web-defender
    vms: [vm-web01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    allowed_sources: [ALLOWED]
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
    enforcement: defender
"""


def vm_id(subscription: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/{GROUP}"
        f"/providers/Microsoft.Compute/virtualMachines/{name}"
    )


def defender_seed(sub_plan: str = "P2") -> dict[str, Any]:
    """The default subscription with Defender for Servers and a JIT policy for vm-db01."""
    seed = json.loads(seed_file("default.json").read_text())
    seed["defender"] = {
        "pricings": {"VirtualMachines": {"pricingTier": "Standard", "subPlan": sub_plan}},
        "applyDelaySeconds": 0.2,
    }
    group = next(g for g in seed["resourceGroups"] if g["name"] == GROUP)
    group["jitNetworkAccessPolicies"] = [
        {
            "name": EXISTING_POLICY,
            "virtualMachines": [
                {
                    "id": vm_id(seed["subscriptionId"], "vm-db01"),
                    "ports": [
                        {
                            "number": 1433,
                            "protocol": "TCP",
                            "allowedSourceAddressPrefix": "10.0.0.0/24",
                            "maxRequestAccessDuration": "PT1H",
                        }
                    ],
                }
            ],
        }
    ]
    return seed


def start_stack(
    tmp_path: Path, database_url: str, allowed: str = "203.0.113.7/32", sub_plan: str = "P2"
) -> SandboxStack:
    policy = DEFENDER_POLICY.replace("ALLOWED", allowed)
    return SandboxStack(
        tmp_path,
        database_url=database_url,
        policy_file=write_policy(tmp_path, policy),
        sweep_interval=0.5,
        arm_seed=defender_seed(sub_plan),
    ).start()


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[SandboxStack]:
    running = start_stack(tmp_path, database_url)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


@pytest.fixture
def defender(stack: SandboxStack) -> Iterator[DefenderGateway]:
    """The test's own view of Defender, through azure-mgmt-security like the bot's."""
    gateway = DefenderGateway(
        AzureTarget(
            subscription_id=stack.arm.subscription_id,
            credential=StaticTokenCredential(SANDBOX_ARM_TOKEN),
            base_url=stack.arm.url,
            ca_bundle=str(stack.arm.ca_path),
            polling_interval=0.05,
        )
    )
    try:
        yield gateway
    finally:
        gateway.close()


def request_and_approve(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200, reply
    assert "Request #" in reply["text"], reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, WAIT, "the approval message")
    assert driver.click("jit_approve", request_id) == 200
    return request_id


def defender_requests(defender: DefenderGateway, name: str = EXISTING_POLICY) -> list[dict]:
    policy = defender.get_policy(GROUP, LOCATION, name)
    assert policy is not None
    return policy["properties"].get("requests") or []


def port_statuses(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (port["status"], port["statusReason"])
        for vm in request["virtualMachines"]
        for port in vm["ports"]
    ]


def audit_actions(stack: SandboxStack, request_id: int) -> list[str]:
    assert stack.bot is not None
    return [e.action for e in stack.bot.store.audit_events(request_id)]


def grants(stack: SandboxStack, request_id: int) -> list[Grant]:
    assert stack.bot is not None
    return stack.bot.engine.grants_of(request_id)


def defender_allows(stack: SandboxStack, nsg: str = "nsg-web01") -> list[dict[str, Any]]:
    """The allow rules Defender wrote in an NSG on vm-web01's path."""
    nsg_id = (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/{GROUP}"
        f"/providers/Microsoft.Network/networkSecurityGroups/{nsg}"
    )
    return [
        rule
        for rule in stack.arm.snapshot_nsg(nsg_id)
        if rule["name"].startswith("SecurityCenter-JITRule")
        and rule["properties"]["access"] == "Allow"
    ]


def initiate_calls(stack: SandboxStack) -> list[dict[str, Any]]:
    return [
        call
        for call in stack.arm.requests()
        if call["method"] == "POST" and call["path"].endswith("/initiate")
    ]


# -- the full request ------------------------------------------------------------------


def test_a_request_in_defender_mode_is_opened_by_defender_and_closed_when_it_reports_revoked(
    stack: SandboxStack, driver: Driver, defender: DefenderGateway
) -> None:
    request_id = request_and_approve(
        driver, "request vm-web01 22 8s from 203.0.113.7 because deploy <!channel>"
    )

    active = driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=WAIT)

    [ours] = [r for r in defender_requests(defender) if "#" + str(request_id) in r["justification"]]
    assert port_statuses(ours) == [("Initiated", "UserRequested")]
    [port] = ours["virtualMachines"][0]["ports"]
    assert port["allowedSourceAddressPrefix"] == "203.0.113.7"
    assert REQUESTER in ours["justification"] and APPROVER in ours["justification"]
    assert ours["virtualMachines"][0]["id"].lower() == (
        vm_id(stack.arm.subscription_id, "vm-web01").lower()
    )
    assert active.ends_at is not None
    assert abs((datetime.fromisoformat(port["endTimeUtc"]) - active.ends_at).total_seconds()) < 1
    [allow] = defender_allows(stack)
    assert allow["properties"]["sourceAddressPrefix"] == "203.0.113.7"
    assert allow["properties"]["destinationPortRange"] == "22"
    granted = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "Access granted" in t], WAIT, "granted DM"
    )
    assert "Defender for Cloud reports port 22/Tcp on *vm-web01* open" in granted[0]
    assert "&lt;!channel&gt;" not in granted[0]  # the reason is not echoed there

    closed = driver.wait_status(request_id, RequestStatus.CLOSED, timeout=WAIT)

    assert closed.end_reason == "expired"
    [ours] = [r for r in defender_requests(defender) if "#" + str(request_id) in r["justification"]]
    assert port_statuses(ours) == [("Revoked", "Expired")]
    assert defender_allows(stack) == []
    text = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "is closed" in t], WAIT, "closed DM"
    )
    assert "Defender for Cloud closed it at its end time" in text[0]
    assert "reports the port Revoked" in text[0]
    actions = audit_actions(stack, request_id)
    assert actions.index("rule_intended") < actions.index("defender_initiated")
    assert "defender_closed" in actions
    thread = [p for p in driver.posts(APPROVAL_CHANNEL) if p["args"].get("thread_ts")]
    assert any("Access granted" in p["args"]["text"] for p in thread)


def test_a_vm_joins_the_groups_defender_policy_and_the_other_vms_entries_survive(
    stack: SandboxStack, driver: Driver, defender: DefenderGateway
) -> None:
    seeded = defender_seed()["resourceGroups"][0]["jitNetworkAccessPolicies"][0]
    [db_entry] = seeded["virtualMachines"]
    web_id = vm_id(stack.arm.subscription_id, "vm-web01").lower()

    at_start = defender.get_policy(GROUP, LOCATION, EXISTING_POLICY)
    assert at_start is not None
    assert {m["id"].lower() for m in at_start["properties"]["virtualMachines"]} == {
        db_entry["id"].lower(),
        web_id,
    }  # written when jitbot started, before any request

    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=WAIT)

    listed = defender.policies_in(GROUP, LOCATION)
    assert [p["name"] for p in listed] == [EXISTING_POLICY]  # no "default" was made
    after = defender.get_policy(GROUP, LOCATION, EXISTING_POLICY)
    assert after is not None
    machines = {m["id"].lower(): m for m in after["properties"]["virtualMachines"]}
    assert machines[db_entry["id"].lower()] == db_entry
    assert machines[web_id]["ports"] == [
        {
            "number": 22,
            "protocol": "TCP",
            "allowedSourceAddressPrefix": "203.0.113.7",
            "maxRequestAccessDuration": "PT3H",
        }
    ]
    [grant] = grants(stack, request_id)
    assert grant.kind == "defender" and grant.rule_name == EXISTING_POLICY
    assert stack.bot is not None
    writes = [e for e in stack.bot.store.audit_events() if e.action == "defender_policy_written"]
    assert len(writes) == 1 and writes[0].detail["lost_vms"] == []


def test_ending_early_says_defender_keeps_the_port_open_until_its_end_time(
    stack: SandboxStack, driver: Driver, defender: DefenderGateway
) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 6s from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=WAIT)

    status, reply = driver.command(f"revoke {request_id}")

    assert status == 200
    assert "closes the port only at its end time" in reply["text"]
    pending = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "no way to close" in t], WAIT, "notice"
    )
    assert "stays open from `203.0.113.7/32`" in pending[0]
    assert driver.request(request_id).status == RequestStatus.CLOSING
    [ours] = [r for r in defender_requests(defender) if "#" + str(request_id) in r["justification"]]
    assert port_statuses(ours) == [("Initiated", "UserRequested")]

    closed = driver.wait_status(request_id, RequestStatus.REVOKED, timeout=WAIT)

    assert closed.end_reason == "revoked"
    text = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "is closed" in t], WAIT, "closed DM"
    )
    assert "ended in jitbot, and Defender for Cloud closed it at its end time" in text[0]


def test_a_newer_defender_request_for_the_same_port_is_reported_as_superseding(
    stack: SandboxStack, driver: Driver, defender: DefenderGateway
) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=WAIT)

    end = datetime.now(UTC) + timedelta(minutes=30)
    defender.initiate(
        GROUP,
        LOCATION,
        EXISTING_POLICY,
        {
            "virtualMachines": [
                {
                    "id": vm_id(stack.arm.subscription_id, "vm-web01"),
                    "ports": [
                        {
                            "number": 22,
                            "endTimeUtc": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            "allowedSourceAddressPrefix": "203.0.113.7",
                        }
                    ],
                }
            ],
            "justification": "opened in the Defender portal",
        },
    )

    closed = driver.wait_status(request_id, RequestStatus.CLOSED, timeout=WAIT)

    assert closed.end_reason == "superseded"
    text = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "is closed" in t], WAIT, "closed DM"
    )
    assert "replaced it with a newer JIT request" in text[0]


# -- refusals --------------------------------------------------------------------------


def test_defender_refusing_jitbots_identity_fails_the_request_with_the_missing_actions(
    stack: SandboxStack, driver: Driver
) -> None:
    stack.arm.add_fault(
        method="POST", path_contains="/initiate", status=403, code="AuthorizationFailed"
    )
    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")

    failed = driver.wait_status(request_id, RequestStatus.FAILED, timeout=WAIT)

    assert "initiate/action" in (failed.failure_reason or "")
    text = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "failed" in t], WAIT, "failure DM"
    )
    assert "refused jitbot's own Azure identity for vm-web01" in text[0]
    [grant] = grants(stack, request_id)
    assert grant.state == "removed"
    assert "defender_refused" in audit_actions(stack, request_id)


def test_an_azure_policy_refusing_the_defender_change_fails_the_request_and_says_so(
    stack: SandboxStack, driver: Driver, defender: DefenderGateway
) -> None:
    stack.arm.add_fault(
        method="POST",
        path_contains="/initiate",
        status=403,
        code="RequestDisallowedByPolicy",
        message="Resource 'ops-jit' was disallowed by policy 'deny-jit-requests'.",
    )
    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")

    failed = driver.wait_status(request_id, RequestStatus.FAILED, timeout=WAIT)

    assert "Azure Policy assignment" in (failed.failure_reason or "")
    assert "deny-jit-requests" in (failed.failure_reason or "")
    text = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "failed" in t], WAIT, "failure DM"
    )
    assert "RequestDisallowedByPolicy" in text[0]
    assert [r for r in defender_requests(defender) if f"#{request_id}:" in r["justification"]] == []


def test_defender_refusing_the_request_as_outside_its_policy_fails_it_with_defenders_words(
    stack: SandboxStack, driver: Driver
) -> None:
    stack.arm.add_fault(
        method="POST",
        path_contains="/initiate",
        status=400,
        code="JitRequestSourceAddressNotAllowed",
        message="allowedSourceAddressPrefix '203.0.113.7' is not allowed by the JIT policy.",
    )
    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")

    failed = driver.wait_status(request_id, RequestStatus.FAILED, timeout=WAIT)

    assert "outside its JIT policy" in (failed.failure_reason or "")
    assert "is not allowed by the JIT policy" in (failed.failure_reason or "")
    text = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "failed" in t], WAIT, "failure DM"
    )
    assert "Nothing is left open" in text[0]


def test_a_single_address_inside_the_allowed_range_is_refused_in_chat_before_defender(
    tmp_path: Path, database_url: str
) -> None:
    stack = start_stack(tmp_path, database_url, allowed="198.51.100.0/24")
    try:
        driver = Driver(stack)

        status, reply = driver.command("request vm-web01 22 1h from 198.51.100.7")

        assert status == 200
        assert "request `from 198.51.100.0/24` instead" in reply["text"]
        assert "Request #" not in reply["text"]
        assert stack.bot is not None
        assert stack.bot.store.requests_with_status(tuple(RequestStatus)) == []
        assert initiate_calls(stack) == []
    finally:
        stack.stop()


def test_a_subscription_without_plan_2_refuses_the_policy_at_load_and_why_says_so(
    tmp_path: Path, database_url: str
) -> None:
    stack = start_stack(tmp_path, database_url, sub_plan="P1")
    try:
        driver = Driver(stack)
        assert stack.bot is not None
        reason = stack.bot.engine.policies.refused["web-defender"]
        assert "sub-plan P1" in reason

        status, reply = driver.command("request vm-web01 22 1h from 203.0.113.7")

        assert status == 200
        assert "policy web-defender is not in force" in reply["text"]
        assert "Plan 2" in reply["text"]
        assert stack.bot.store.requests_with_status(tuple(RequestStatus)) == []
        status, why = driver.command("why vm-web01")
        assert status == 200
        assert "was refused when jitbot started" in why["text"]
        assert "sub-plan P1" in why["text"]
        events = stack.bot.store.audit_events()
        refused = [e for e in events if e.action == "policy_refused"]
        assert refused and refused[0].detail["policy"] == "web-defender"
    finally:
        stack.stop()


# -- crash safety ----------------------------------------------------------------------

INITIATE_STEPS = {
    # held before Defender handles it: the kill lands first, and the initiate arrives later
    "before-defender-has-it": {"stall_seconds": 2},
    # handled by Defender, the answer held: jitbot dies not knowing it happened
    "before-jitbot-hears-back": {"reply_delay_seconds": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize("step", list(INITIATE_STEPS))
def test_a_kill_during_initiate_is_settled_from_defenders_history_after_restart(
    tmp_path: Path, database_url: str, step: str
) -> None:
    policy = write_policy(tmp_path, DEFENDER_POLICY.replace("ALLOWED", "203.0.113.7/32"))
    world = ProcessWorld(tmp_path, database_url, policy, seed=defender_seed())
    try:
        first = world.start_bot("first")
        driver = Driver(Endpoint(world, first))  # type: ignore[arg-type]
        status, reply = driver.command("request vm-web01 22 1h from 203.0.113.7")
        assert status == 200 and "Request #" in reply["text"], reply
        request_id = int(reply["text"].split("#", 1)[1].split()[0])
        wait_until(lambda: driver.request(request_id).approval_ts, WAIT, "the approval message")
        world.arm.add_fault(
            method="POST", path_contains="/initiate", times=1, **INITIATE_STEPS[step]
        )

        driver.click("jit_approve", request_id)
        wait_until(lambda: world.arm.stalls_seen >= 1, WAIT, "the initiate to be held")
        first.kill()
        assert world.request(request_id).status == RequestStatus.OPENING
        recorded = [e.action for e in world.store.audit_events(request_id)]
        assert recorded[-1] == "rule_intended"  # the intent was stored before the call

        second = world.start_bot("second")
        driver = Driver(Endpoint(world, second))  # type: ignore[arg-type]

        active = wait_until(
            lambda: (r := world.request(request_id)).status == RequestStatus.ACTIVE and r,
            WAIT,
            "the initiate to be found in Defender's history",
        )
        assert active.id == request_id
        granted = wait_until(lambda: [t for t in driver.dms_to(REQUESTER) if "granted" in t], WAIT)
        time.sleep(1)
        assert len([t for t in driver.dms_to(REQUESTER) if "granted" in t]) == len(granted) == 1
        actions = [e.action for e in world.store.audit_events(request_id)]
        assert "defender_initiate_found" in actions
        assert "defender_initiate_absent" not in actions
    finally:
        world.close()


def test_why_names_defender_enforcement_and_extending_is_refused_with_the_reason(
    stack: SandboxStack, driver: Driver
) -> None:
    status, why = driver.command("why vm-web01 22")
    assert status == 200
    assert "Enforcement: Defender for Cloud JIT" in why["text"]
    assert "was refused" not in why["text"]
    request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=WAIT)

    status, reply = driver.command(f"extend {request_id} 2h")

    assert status == 200
    assert "Defender for Cloud, which cannot extend a JIT request" in reply["text"]
    active = driver.request(request_id)
    assert active.status == RequestStatus.ACTIVE
    assert "extend_refused" in audit_actions(stack, request_id)
