"""What one approval click reads from Azure and Microsoft Graph before it opens access.

The click re-authorizes both the approver and the requester with fresh reads, and the
opening needs the VM's network. Counted from the ARM stand-in's log (Graph is served by
the same server, under ``/v1.0/``), between the click and the request turning active.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.sandbox import SandboxStack
from jitcore.model import RequestStatus
from sandbox.slack import seed
from tests.scenario.harness import (
    APPROVER,
    FAST_POLICY,
    SECOND_APPROVER,
    Driver,
    wait_until,
    write_policy,
)
from tests.scenario.test_access import ALICE_OBJECT_ID, revoke_role

READS_BEFORE_THE_RULE = Counter(
    {
        # the VM's network, read once for the checks and the opening
        "GET virtualMachines": 1,
        "GET networkInterfaces": 1,
        "GET subnets": 1,
        "GET publicIPAddresses": 1,
        # the approver's directory entry (their first click; the identity cache keeps it,
        # as it keeps the requester's from the request)
        "GET users": 1,
        # each principal's groups and role assignments, afresh
        "GET transitiveMemberOf": 2,
        "GET roleAssignments": 2,
        # the requester's JIT Access Role and the approver's Contributor
        "GET roleDefinitions": 2,
        # the same for both principals at the VM: read once for the click
        "GET denyAssignments": 1,
        # the NSG the rule is planned in, then the rule itself
        "GET networkSecurityGroups": 1,
        "PUT securityRules": 1,
    }
)
KINDS = (
    "transitiveMemberOf",
    "/v1.0/users",
    "roleAssignments",
    "roleDefinitions",
    "denyAssignments",
    "securityRules",
    "networkSecurityGroups",
    "publicIPAddresses",
    "subnets",
    "networkInterfaces",
    "virtualMachines",
)


def kind(call: dict[str, Any]) -> str:
    path = call["path"].lower()
    name = next((k for k in KINDS if k.lower() in path), "other")
    return f"{call['method']} {name.removeprefix('/v1.0/')}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxStack]:
    directory = tmp_path_factory.mktemp("approval-reads")
    running = SandboxStack(directory, policy_file=write_policy(directory)).start()
    try:
        yield running
    finally:
        running.stop()


def reads_of_one_approval(stack: SandboxStack, source: str, approver: str) -> Counter[str]:
    """Request, click Approve as ``approver``, wait until active: the ARM and Graph calls
    made from the click up to the rule's PUT, by kind."""
    driver = Driver(stack)
    status, reply = driver.command(f"request vm-web01 22 1h from {source} because reads")
    assert status == 200, reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, 30, "the approval message")
    stack.arm.clear_requests()
    assert driver.click("jit_approve", request_id, user=approver) == 200
    driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=30)
    calls = sorted(stack.arm.requests(), key=lambda c: c["time"])
    rule = f"/securityRules/jitbot-allow-r{request_id}"
    [put] = [c for c in calls if c["method"] == "PUT" and c["path"].endswith(rule)]
    return Counter(kind(c) for c in calls if c["time"] <= put["time"])


def test_an_approval_reads_the_network_once_and_each_principals_rbac_afresh(
    stack: SandboxStack,
) -> None:
    assert reads_of_one_approval(stack, "203.0.113.7", APPROVER) == READS_BEFORE_THE_RULE


def test_the_next_approval_reads_everything_again_nothing_is_kept_from_the_last_click(
    stack: SandboxStack,
) -> None:
    reads_of_one_approval(stack, "203.0.113.8", APPROVER)

    assert reads_of_one_approval(stack, "203.0.113.9", SECOND_APPROVER) == READS_BEFORE_THE_RULE


def test_when_approver_and_requester_both_lack_access_the_approvers_refusal_is_told(
    tmp_path: Path,
) -> None:
    """The two checks run side by side; the answer is the one the approver's check,
    which used to run first, gives, and only the approver's refusal is audited."""
    policy = FAST_POLICY.replace(
        "approvers: [U0APPROVR1, U0APPROVR2]", f"approvers: [{seed.READER_USER}, U0APPROVR1]"
    )
    running = SandboxStack(tmp_path, policy_file=write_policy(tmp_path, policy)).start()
    try:
        driver = Driver(running)
        status, reply = driver.command("request vm-web01 22 1h from 203.0.113.7 because both")
        assert status == 200, reply
        request_id = int(reply["text"].split("#", 1)[1].split()[0])
        wait_until(lambda: driver.request(request_id).approval_ts, 30, "the approval message")
        revoke_role(running, ALICE_OBJECT_ID)

        driver.click("jit_approve", request_id, user=seed.READER_USER)

        told = wait_until(lambda: driver.ephemerals_to(seed.READER_USER), 30, "the refusal")
        assert told[-1].startswith(":no_entry: You cannot approve requests for *vm-web01*")
        assert driver.request(request_id).status == RequestStatus.PENDING
        assert running.bot is not None
        refusals = [
            (e.actor, e.detail.get("check"))
            for e in running.bot.store.audit_events(request_id)
            if e.action == "access_refused"
        ]
        assert refusals == [(seed.READER_USER, "approve")]
    finally:
        running.stop()
