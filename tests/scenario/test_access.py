"""Who may do what, over signed HTTP: each Slack user of the sandbox sends `/jit request`
and gets the answer their Entra ID identity and Azure roles call for.

The ARM stand-in serves the role assignments, role definitions (the real built-in ones
and Microsoft's least-privileged JIT role), deny assignments and Graph's directory of
``sandbox/seeds/default.json``; the answers arrive at the command's response_url.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.messages import FOLLOW_UP_MARK
from bot.sandbox import SANDBOX_ARM_TOKEN, SandboxStack
from jitcore.model import RequestStatus
from jitcore.rbac import JIT_INITIATE_ACTION, JIT_POLICY_READ_ACTION, PUBLIC_IP_READ_ACTION
from sandbox.arm.testing import client_options
from sandbox.slack import seed
from tests.scenario.harness import FAST_POLICY, Driver, wait_until, write_policy

REQUEST = "request vm-web01 22 1h from 203.0.113.7"
JIT_CHILD_READ = "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read"
VM_READ = "Microsoft.Compute/virtualMachines/read"
NIC_READ = "Microsoft.Network/networkInterfaces/*/read"
ALICE_OBJECT_ID = "a11ce000-0000-4000-8000-000000000001"


def start(directory: Path, policy: str = FAST_POLICY, **options: Any) -> SandboxStack:
    return SandboxStack(
        directory, policy_file=write_policy(directory, policy), sweep_interval=1.0, **options
    ).start()


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxStack]:
    """One stack for the checks that change nothing in Azure (SQLite)."""
    stack = start(tmp_path_factory.mktemp("access"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def driver(shared_stack: SandboxStack) -> Driver:
    return Driver(shared_stack)


def vm_scope(stack: SandboxStack) -> str:
    return (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Compute/virtualMachines/vm-web01"
    )


def request_id_of(reply: dict[str, Any]) -> int:
    assert reply["text"].startswith("Request #"), reply
    return int(reply["text"].split("#", 1)[1].split()[0])


def revoke_role(stack: SandboxStack, principal_id: str) -> None:
    """Delete the principal's role assignments, through the real SDK, as an Azure admin would."""
    from azure.mgmt.authorization import AuthorizationManagementClient

    from sandbox.arm.testing import StaticTokenCredential

    client = AuthorizationManagementClient(
        StaticTokenCredential(SANDBOX_ARM_TOKEN),
        stack.arm.subscription_id,
        api_version="2022-04-01",
        **client_options(stack.arm),
    )
    with client:
        scope = f"subscriptions/{stack.arm.subscription_id}"
        for item in client.role_assignments.list_for_scope(
            scope, filter=f"principalId eq '{principal_id}'"
        ):
            client.role_assignments.delete(item.scope.lstrip("/"), item.name)


def test_a_checked_command_is_acked_at_once_and_answered_through_the_response_url(
    driver: Driver,
) -> None:
    status, ack = driver.command(REQUEST, follow=False)

    assert status == 200 and ack["text"].startswith(FOLLOW_UP_MARK)
    assert "vm-web01" in ack["text"]


@pytest.mark.parametrize(
    "user",
    [
        pytest.param(seed.REQUESTER, id="jit-requester-role"),
        pytest.param(seed.GROUP_MEMBER_USER, id="jit-role-given-to-a-group-the-user-is-in"),
    ],
)
def test_principals_with_the_request_actions_can_request(driver: Driver, user: str) -> None:
    _status, reply = driver.command(REQUEST, user=user)

    request = driver.request(request_id_of(reply))
    assert request is not None and request.requester_id == user
    assert request.status == RequestStatus.PENDING


@pytest.mark.parametrize(
    ("user", "missing", "held_by"),
    [
        pytest.param(seed.READER_USER, [JIT_INITIATE_ACTION], "Reader", id="reader"),
        pytest.param(
            seed.SECURITY_READER_USER,
            [JIT_INITIATE_ACTION, VM_READ, NIC_READ, PUBLIC_IP_READ_ACTION],
            "Security Reader",
            id="security-reader",
        ),
        pytest.param(
            seed.VM_CONTRIBUTOR_USER,
            [JIT_INITIATE_ACTION, JIT_CHILD_READ],
            "Virtual Machine Contributor",
            id="vm-contributor-lacks-the-security-actions",
        ),
    ],
)
def test_principals_without_the_request_actions_are_refused_with_what_is_missing(
    driver: Driver, shared_stack: SandboxStack, user: str, missing: list[str], held_by: str
) -> None:
    _status, reply = driver.command(REQUEST, user=user)

    text = reply["text"]
    assert reply["response_type"] == "ephemeral"
    assert text.startswith(":no_entry: You cannot request access to *vm-web01*")
    assert f"at `{vm_scope(shared_stack)}`" in text
    listed = [line[3:-1] for line in text.splitlines() if line.startswith("• `")]
    assert listed == missing
    assert held_by in text
    assert shared_stack.bot is not None
    refusal = shared_stack.bot.store.audit_events()[-1]
    assert (refusal.action, refusal.actor, refusal.detail["missing"]) == (
        "access_refused",
        user,
        missing,
    )


def test_a_deny_assignment_beats_owner(driver: Driver) -> None:
    _status, reply = driver.command(REQUEST, user=seed.DENIED_OWNER_USER)

    text = reply["text"]
    assert text.startswith(":no_entry: You cannot request access")
    assert f"`{JIT_INITIATE_ACTION}` — blocked by deny assignment" in text
    assert "Owner at" in text


@pytest.mark.parametrize(
    "user",
    [
        pytest.param(seed.READER_USER, id="reader"),
        pytest.param(seed.SECURITY_READER_USER, id="security-reader"),
    ],
)
def test_reader_and_security_reader_can_list_but_not_request(driver: Driver, user: str) -> None:
    _status, listed = driver.command("list", user=user)
    _status, requested = driver.command(REQUEST, user=user)

    assert listed["text"] == "You have no pending or active requests."
    assert requested["text"].startswith(":no_entry: You cannot request access")


@pytest.mark.parametrize(
    ("user", "expected", "how_to_map"),
    [
        pytest.param(seed.NO_EMAIL_USER, "cannot see an email address", True, id="no-email"),
        pytest.param(
            seed.UNKNOWN_EMAIL_USER,
            "No Entra ID user has `henry@contractor.example.org`",
            True,
            id="email-matches-nobody",
        ),
        pytest.param(seed.GUEST_USER, "is a guest of this workspace", False, id="guest"),
        pytest.param(seed.DELETED_USER, "is deactivated", False, id="deactivated"),
    ],
)
def test_users_jitbot_cannot_tie_to_an_entra_user_are_refused(
    driver: Driver, shared_stack: SandboxStack, user: str, expected: str, how_to_map: bool
) -> None:
    _status, reply = driver.command(REQUEST, user=user)

    assert reply["text"].startswith(":no_entry:") and expected in reply["text"]
    assert (f"/jit admin map <@{user}>" in reply["text"]) is how_to_map
    assert shared_stack.bot is not None
    assert shared_stack.bot.store.audit_events()[-1].detail["check"] == "identity"


def test_why_explains_the_principal_the_actions_the_policy_and_the_approvers(
    driver: Driver,
) -> None:
    _status, reply = driver.command("why vm-web01 22", user=seed.READER_USER)

    text = reply["text"]
    assert "`rita@example.com` (object id `4ead0000-0000-4000-8000-000000000006`)" in text
    assert "from your Slack email address" in text
    assert f"Missing: `{JIT_INITIATE_ACTION}`" in text
    assert f"`{JIT_CHILD_READ}`" in text.split("Held:", 1)[1]
    assert "Policy `web-admin` covers it" in text and "Port 22 is in that policy" in text
    assert f"<@{seed.APPROVER_1}>" in text and f"<@{seed.APPROVER_2}>" in text


def test_admin_map_needs_configure_actions_at_the_subscription(driver: Driver) -> None:
    _status, reply = driver.command(
        f"admin map <@{seed.NO_EMAIL_USER}|dave> dave@example.com", user=seed.APPROVER_2
    )

    text = reply["text"]
    assert text.startswith(":no_entry: You cannot administer jitbot")
    assert "`Microsoft.Security/locations/jitNetworkAccessPolicies/write`" in text
    assert "`Microsoft.Compute/virtualMachines/write`" in text


def test_an_approver_without_the_request_actions_in_azure_cannot_approve(
    tmp_path: Path,
) -> None:
    policy = FAST_POLICY.replace(
        "approvers: [U0APPROVR1, U0APPROVR2]", f"approvers: [{seed.READER_USER}, U0APPROVR1]"
    )
    stack = start(tmp_path, policy)
    try:
        driver = Driver(stack)
        request_id = request_id_of(driver.command(REQUEST)[1])
        wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")

        driver.click("jit_approve", request_id, user=seed.READER_USER)

        told = wait_until(lambda: driver.ephemerals_to(seed.READER_USER), what="the refusal")
        assert told[-1].startswith(":no_entry: You cannot approve requests for *vm-web01*")
        assert JIT_INITIATE_ACTION in told[-1]
        assert driver.request(request_id).status == RequestStatus.PENDING

        driver.click("jit_approve", request_id, user=seed.APPROVER_1)
        driver.wait_status(request_id, RequestStatus.ACTIVE)
    finally:
        stack.stop()


def test_approval_reads_azure_afresh_so_a_role_revoked_meanwhile_blocks_it(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, settings={"rbac_cache_seconds": 300.0})
    try:
        driver = Driver(stack)
        pending = request_id_of(driver.command(REQUEST)[1])
        wait_until(lambda: driver.request(pending).approval_ts, what="the approval message")

        revoke_role(stack, ALICE_OBJECT_ID)
        driver.click("jit_approve", pending, user=seed.APPROVER_1)

        told = wait_until(lambda: driver.ephemerals_to(seed.APPROVER_1), what="the refusal")
        assert f"<@{seed.REQUESTER}> no longer holds" in told[-1]
        assert JIT_INITIATE_ACTION in told[-1]
        assert driver.request(pending).status == RequestStatus.PENDING
    finally:
        stack.stop()


def test_a_revoked_role_stops_new_requests_once_the_cache_time_has_passed(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, settings={"rbac_cache_seconds": 1.0})
    try:
        driver = Driver(stack)
        request_id_of(driver.command(REQUEST)[1])

        revoke_role(stack, ALICE_OBJECT_ID)
        time.sleep(1.2)

        _status, refused = driver.command(REQUEST)
        _status, listed = driver.command("list")
        assert refused["text"].startswith(":no_entry: You cannot request access")
        assert listed["text"].startswith(":no_entry: You cannot see JIT requests for *vm-web01*")
        assert f"`{JIT_POLICY_READ_ACTION}`" in listed["text"]
    finally:
        stack.stop()


def test_a_user_an_admin_maps_can_request_and_the_mapping_outlives_a_restart(
    tmp_path: Path, database_url: str
) -> None:
    stack = start(tmp_path, database_url=database_url)
    try:
        driver = Driver(stack)
        assert "cannot see an email" in driver.command(REQUEST, user=seed.NO_EMAIL_USER)[1]["text"]

        _status, mapped = driver.command(
            f"admin map <@{seed.NO_EMAIL_USER}|dave> dave@example.com", user=seed.APPROVER_1
        )
        assert mapped["text"].startswith(f":white_check_mark: <@{seed.NO_EMAIL_USER}> is now")

        stack.stop_bot()
        stack.start_bot()
        request_id_of(driver.command(REQUEST, user=seed.NO_EMAIL_USER)[1])
        assert stack.bot is not None
        actions = [e.action for e in stack.bot.store.audit_events()]
        assert "principal_mapped" in actions
    finally:
        stack.stop()


def test_the_policy_files_principals_map_a_user_without_an_email(tmp_path: Path) -> None:
    policy = FAST_POLICY + f"principals:\n  {seed.NO_EMAIL_USER}: dave@example.com\n"
    stack = start(tmp_path, policy)
    try:
        driver = Driver(stack)

        _status, why = driver.command("why vm-web01", user=seed.NO_EMAIL_USER)
        request_id_of(driver.command(REQUEST, user=seed.NO_EMAIL_USER)[1])

        assert "`dave@example.com`" in why["text"]
        assert "the policy file's `principals` map" in why["text"]
    finally:
        stack.stop()
