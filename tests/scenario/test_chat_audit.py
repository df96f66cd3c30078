"""`/jit audit` over signed HTTP: who may read which part of the audit log, and what they see."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.sandbox import SandboxStack
from jitcore.model import RequestStatus
from tests.scenario.harness import (
    APPROVER,
    OUTSIDER,
    REQUESTER,
    SECOND_APPROVER,
    Driver,
    wait_until,
    write_policy,
)

# bob (APPROVER) is an Azure admin and approves both policies; carol (SECOND_APPROVER)
# approves only web-admin and is no admin.
TWO_POLICIES = """
policies:
  - name: web-admin
    vms: [vm-web01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
  - name: db-admin
    vms: [vm-db01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    approvers: [U0APPROVR1]
    approval_channel: C0OPS12345
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxStack]:
    workdir = tmp_path_factory.mktemp("audit")
    running = SandboxStack(
        workdir,
        database_url=f"sqlite:///{workdir / 'audit.db'}",
        policy_file=write_policy(workdir, TWO_POLICIES),
    ).start()
    driver = Driver(running)
    try:
        _status, web = driver.command(
            "request vm-web01 22 2h from 203.0.113.7 because deploy <!channel> *now*"
        )
        web_id = int(web["text"].split("#", 1)[1].split()[0])
        wait_until(lambda: driver.request(web_id).approval_ts, 30, "the approval message")
        assert driver.click("jit_approve", web_id) == 200
        driver.wait_status(web_id, RequestStatus.ACTIVE, timeout=30)
        _status, db = driver.command("request vm-db01 22 1h from 198.51.100.4 because db check")
        assert "Request #" in db["text"], db
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def test_an_approver_reads_the_log_of_a_vm_of_their_policy_with_values_escaped(
    driver: Driver,
) -> None:
    _status, answer = driver.command("audit vm-web01 1d", user=SECOND_APPROVER)

    text = answer["text"]
    assert text.startswith("*Audit log* for *vm-web01* since ")
    assert "*requested* by <@U0REQ12345> · request #1 on *vm-web01*" in text
    assert "*approved* by <@U0APPROVR1>" in text
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    assert "vm-db01" not in text


def test_an_approver_without_a_vm_sees_only_the_vms_of_their_policies(driver: Driver) -> None:
    _status, answer = driver.command("audit", user=SECOND_APPROVER)

    text = answer["text"]
    assert "(only the VMs whose policies you approve)" in text
    assert "vm-web01" in text and "vm-db01" not in text


def test_an_admin_reads_everything_a_user_did_or_asked_for(driver: Driver) -> None:
    _status, answer = driver.command(f"audit <@{REQUESTER}> 7d", user=APPROVER)

    text = answer["text"]
    assert text.startswith(f"*Audit log* for <@{REQUESTER}> since ")
    assert "only the VMs" not in text
    assert "on *vm-web01*" in text and "on *vm-db01*" in text


@pytest.mark.parametrize(
    ("user", "text", "refusal"),
    [
        pytest.param(SECOND_APPROVER, "audit vm-db01", "only the approvers of policy *db-admin*"),
        pytest.param(OUTSIDER, "audit vm-web01", "only the approvers of policy *web-admin*"),
        pytest.param(REQUESTER, "audit", "you are neither"),
    ],
)
def test_someone_who_neither_approves_nor_administers_is_refused_and_it_is_audited(
    driver: Driver, stack: SandboxStack, user: str, text: str, refusal: str
) -> None:
    _status, answer = driver.command(text, user=user)

    assert answer["text"].startswith(":no_entry: You cannot read the audit log")
    assert refusal in answer["text"]
    assert stack.bot is not None
    refused = [e for e in stack.bot.store.audit_events() if e.action == "audit_refused"]
    assert any(e.actor == user for e in refused)


def test_a_bad_since_is_answered_at_once_with_what_is_allowed(driver: Driver) -> None:
    status, answer = driver.command("audit vm-web01 yesterday", user=APPROVER, follow=False)

    assert status == 200
    assert "`yesterday` is not a time to look back from" in answer["text"]
    assert "7d" in answer["text"] and "2025-01-31" in answer["text"]


def test_a_since_after_every_event_finds_none(driver: Driver) -> None:
    _status, answer = driver.command("audit vm-web01 2999-01-01", user=APPROVER)

    assert answer["text"].endswith("since 2999-01-01 00:00 UTC: no events.")


def test_an_unknown_vm_is_named_in_the_answer(driver: Driver) -> None:
    _status, answer = driver.command("audit vm-<b>nope", user=APPROVER)

    assert answer["text"].startswith(":no_entry:")
    assert "vm-&lt;b&gt;nope" in answer["text"]
