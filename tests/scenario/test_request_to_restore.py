"""One JIT request end to end: a signed slash command, an approval click, a rule in the
NSG written through azure-mgmt-network over HTTPS, and its removal at the end.

Everything runs for real on 127.0.0.1: the bot behind waitress, the ARM stand-in
behind TLS, the Slack stand-in. Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox import SandboxStack
from jitcore.model import RequestStatus
from sandbox.slack import sender
from tests.scenario.harness import (
    APPROVAL_CHANNEL,
    APPROVER,
    OUTSIDER,
    REQUESTER,
    SECOND_APPROVER,
    Driver,
    wait_until,
    write_policy,
)


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[SandboxStack]:
    running = SandboxStack(
        tmp_path,
        database_url=database_url,
        policy_file=write_policy(tmp_path),
        sweep_interval=1.0,
    ).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def nsg_id(stack: SandboxStack, name: str = "nsg-web01") -> str:
    return (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/networkSecurityGroups/{name}"
    )


def rule_names(stack: SandboxStack, nsg: str = "nsg-web01") -> list[str]:
    return [rule["name"] for rule in stack.arm.snapshot_nsg(nsg_id(stack, nsg))]


def request_and_approve(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200, reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    assert driver.click("jit_approve", request_id) == 200
    return request_id


def test_slash_command_is_acked_and_posted_to_approvers_with_buttons(driver: Driver) -> None:
    status, reply = driver.command(
        "request vm-web01 22 2h from 203.0.113.7 because deploy <!channel>"
    )

    assert status == 200
    assert reply["response_type"] == "ephemeral"
    assert "Request #1" in reply["text"]
    [post] = wait_until(lambda: driver.posts(APPROVAL_CHANNEL), what="the approval post")
    blocks = post["args"]["blocks"]
    fields = " ".join(field["text"] for field in blocks[0]["fields"])
    assert f"<@{REQUESTER}>" in fields
    assert "vm-web01" in fields and "22/Tcp" in fields and "203.0.113.7/32" in fields
    assert "2h" in fields
    assert "deploy &lt;!channel&gt;" in fields and "<!channel>" not in fields
    buttons = {e["action_id"]: e["value"] for e in blocks[1]["elements"]}
    assert buttons == {"jit_approve": "1", "jit_deny": "1"}


def test_approval_opens_the_port_for_the_source_only_and_tells_the_requester(
    driver: Driver, stack: SandboxStack
) -> None:
    before = stack.arm.snapshot_nsg(nsg_id(stack))
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")

    active = driver.wait_status(request_id, RequestStatus.ACTIVE)
    after = stack.arm.snapshot_nsg(nsg_id(stack))
    [added] = [rule for rule in after if rule["name"] not in {r["name"] for r in before}]
    props = added["properties"]
    assert props["access"] == "Allow" and props["direction"] == "Inbound"
    assert props["sourceAddressPrefix"] == "203.0.113.7/32"
    assert props["destinationAddressPrefix"] == "10.0.1.4"
    assert props["destinationPortRange"] == "22"
    assert props["priority"] == 999
    assert props["provisioningState"] == "Succeeded"
    assert props["description"].startswith(f"jitbot r{request_id} until ")

    updates = stack.slack.calls("chat.update")
    assert any(
        u["args"]["ts"] == active.approval_ts and "Approved by" in str(u["args"]["blocks"])
        for u in updates
    )
    dms = wait_until(lambda: driver.dms_to(REQUESTER), what="the requester's DM")
    assert "Access granted" in dms[-1] and "UTC" in dms[-1] and "in 2h" in dms[-1]


def test_at_the_end_the_rule_is_removed_and_the_nsg_is_exactly_as_before(
    driver: Driver, stack: SandboxStack
) -> None:
    before = stack.arm.snapshot_nsg(nsg_id(stack))
    request_id = request_and_approve(driver, "request vm-web01 22 3s from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)
    assert len(rule_names(stack)) == len(before) + 1

    closed = driver.wait_status(request_id, RequestStatus.CLOSED, timeout=15)

    assert _comparable(stack.arm.snapshot_nsg(nsg_id(stack))) == _comparable(before)
    assert closed.closed_at >= closed.ends_at
    dm = wait_until(
        lambda: [t for t in driver.dms_to(REQUESTER) if "expired" in t], what="expiry DM"
    )
    assert "restored exactly as they were" in dm[-1]
    assert "not cut" in dm[-1]
    thread = [
        p
        for p in driver.posts(APPROVAL_CHANNEL)
        if p["args"].get("thread_ts") == closed.approval_ts
    ]
    assert any("expired" in p["args"]["text"] for p in thread)


def test_deny_changes_nothing_and_tells_the_requester(driver: Driver, stack: SandboxStack) -> None:
    before = stack.arm.snapshot_nsg(nsg_id(stack))
    status, reply = driver.command("request vm-web01 22 2h from 203.0.113.7")
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="approval message")

    assert driver.deny(request_id) == 200

    driver.wait_status(request_id, RequestStatus.DENIED)
    dms = wait_until(lambda: driver.dms_to(REQUESTER), what="the denial DM")
    assert "denied" in dms[-1]
    assert stack.arm.snapshot_nsg(nsg_id(stack)) == before
    writes = [r for r in stack.arm.requests() if r["method"] in ("PUT", "DELETE")]
    assert writes == []


def test_the_requester_cannot_approve_their_own_request(
    driver: Driver, stack: SandboxStack
) -> None:
    status, reply = driver.command("request vm-web01 22 2h from 203.0.113.7", user=APPROVER)
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="approval message")

    assert driver.click("jit_approve", request_id, user=APPROVER) == 200

    told = wait_until(lambda: driver.ephemerals_to(APPROVER), what="the refusal")
    assert "your own request" in told[-1]
    assert driver.request(request_id).status == RequestStatus.PENDING


def test_a_click_from_someone_who_is_not_an_approver_is_refused(driver: Driver) -> None:
    status, reply = driver.command("request vm-web01 22 2h from 203.0.113.7")
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="approval message")

    driver.click("jit_approve", request_id, user=OUTSIDER)

    told = wait_until(lambda: driver.ephemerals_to(OUTSIDER), what="the refusal")
    assert "only the approvers" in told[-1]
    assert driver.request(request_id).status == RequestStatus.PENDING


def test_a_second_click_on_a_decided_request_is_answered_and_changes_nothing(
    driver: Driver, stack: SandboxStack
) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)
    writes_before = len([r for r in stack.arm.requests() if r["method"] == "PUT"])

    driver.click("jit_deny", request_id, user=SECOND_APPROVER)

    told = wait_until(lambda: driver.ephemerals_to(SECOND_APPROVER), what="the late-click answer")
    assert "already approved" in told[-1] and "(now active)" in told[-1]
    assert f"<@{APPROVER}>" in told[-1]
    assert driver.request(request_id).status == RequestStatus.ACTIVE
    assert len([r for r in stack.arm.requests() if r["method"] == "PUT"]) == writes_before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "request vm-nope 22 2h from 203.0.113.7", "no JIT policy covers", id="unknown-vm"
        ),
        pytest.param("request vm-web01 2222 2h from 203.0.113.7", "allowed: 22, 3389", id="port"),
        pytest.param("request vm-web01 22 4h from 203.0.113.7", "allowed: 1s to 3h", id="too-long"),
        pytest.param("request vm-web01 22 2x from 203.0.113.7", "not a duration", id="malformed"),
        pytest.param("request vm-web01 22 2h from 0.0.0.0/0", "any address", id="any-v4"),
        pytest.param("request vm-web01 22 2h from *", "any address", id="star"),
        pytest.param("request vm-web01 22 2h from Internet", "service tag", id="internet"),
        pytest.param("request vm-web01 22 2h from any", "any address", id="any-word"),
        pytest.param("request vm-web01 22 2h from 203.0.113.7/24", "host bits", id="host-bits"),
        pytest.param("request vm-web01 22 2h", "where you will connect from", id="no-source"),
    ],
)
def test_bad_input_gets_a_clear_ephemeral_error_and_changes_nothing(
    driver: Driver, stack: SandboxStack, text: str, expected: str
) -> None:
    status, reply = driver.command(text)

    assert status == 200
    assert reply["response_type"] == "ephemeral"
    assert expected in reply["text"]
    time.sleep(0.2)
    assert driver.request(1) is None
    assert driver.posts() == []
    assert [r for r in stack.arm.requests() if r["method"] in ("PUT", "DELETE")] == []


def test_unsigned_stale_and_tampered_requests_get_401(driver: Driver, stack: SandboxStack) -> None:
    body = sender.slash_command_body("request vm-web01 22 2h from 203.0.113.7")
    stale = int(time.time()) - 301
    assert sender.post(driver.events_url, body, stack.signing_secret, timestamp=stale)[0] == 401
    assert sender.post(driver.events_url, body, "not-the-secret")[0] == 401
    headers = sender.sign(stack.signing_secret, body)
    tampered = body.replace("203.0.113.7", "0.0.0.0%2F0")
    assert _raw_post(driver.events_url, tampered, headers) == 401
    assert _raw_post(driver.events_url, body, {"content-type": headers["content-type"]}) == 401
    assert driver.request(1) is None


def test_a_grant_still_expires_on_time_after_a_restart(driver: Driver, stack: SandboxStack) -> None:
    before = stack.arm.snapshot_nsg(nsg_id(stack))
    request_id = request_and_approve(driver, "request vm-web01 22 4s from 203.0.113.7")
    active = driver.wait_status(request_id, RequestStatus.ACTIVE)

    stack.stop_bot()
    stack.start_bot()

    closed = driver.wait_status(request_id, RequestStatus.CLOSED, timeout=15)
    lateness = (closed.closed_at - active.ends_at).total_seconds()
    assert 0 <= lateness < 3, lateness
    assert _comparable(stack.arm.snapshot_nsg(nsg_id(stack))) == _comparable(before)


def test_a_grant_whose_end_passed_while_the_bot_was_down_is_closed_at_start(
    driver: Driver, stack: SandboxStack
) -> None:
    before = stack.arm.snapshot_nsg(nsg_id(stack))
    request_id = request_and_approve(driver, "request vm-web01 22 2s from 203.0.113.7")
    driver.wait_status(request_id, RequestStatus.ACTIVE)
    stack.stop_bot()
    time.sleep(3)
    assert len(stack.arm.snapshot_nsg(nsg_id(stack))) == len(before) + 1

    stack.start_bot()

    driver.wait_status(request_id, RequestStatus.CLOSED, timeout=10)
    assert _comparable(stack.arm.snapshot_nsg(nsg_id(stack))) == _comparable(before)
    assert wait_until(lambda: [t for t in driver.dms_to(REQUESTER) if "expired" in t], what="DM")


def _comparable(rules: list[dict]) -> list[dict]:
    from jitcore.planner import comparable

    return comparable(rules)


def _raw_post(url: str, body: str, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_replayed_request_is_refused_and_creates_nothing_twice(
    driver: Driver, stack: SandboxStack
) -> None:
    body = sender.slash_command_body(
        "request vm-web01 22 2h from 203.0.113.7", response_url=stack.slack.response_url("r")
    )
    headers = sender.sign(stack.signing_secret, body)
    assert _raw_post(driver.events_url, body, headers) == 200
    assert _raw_post(driver.events_url, body, headers) == 401
    wait_until(lambda: driver.request(1), what="the first request")
    time.sleep(0.5)
    assert driver.request(2) is None


def test_broken_or_oversized_bodies_get_4xx_never_500(driver: Driver, stack: SandboxStack) -> None:
    url = driver.events_url
    broken = "payload=%7Bnot-json"
    assert _raw_post(url, broken, {"content-type": "application/x-www-form-urlencoded"}) == 401
    assert _raw_post(url, '{"x', {"content-type": "application/json"}) == 401
    headers = sender.sign(stack.signing_secret, broken)
    assert _raw_post(url, broken, headers) == 400
    odd = {**sender.sign(stack.signing_secret, "x"), "x-slack-request-timestamp": "abc"}
    assert _raw_post(url, "x", odd) == 401
    huge = "text=" + "a" * (2 * 1024 * 1024)
    assert _raw_post(url, huge, sender.sign(stack.signing_secret, huge)) == 413


def test_a_click_from_another_workspace_is_refused_and_audited(
    driver: Driver, stack: SandboxStack
) -> None:
    request_id = submit_and_wait(driver)
    body = sender.block_action_body(
        "jit_approve",
        str(request_id),
        user_id=APPROVER,
        message_ts=driver.request(request_id).approval_ts,
        team_id="T0OTHERORG",
        response_url=stack.slack.response_url("other"),
    )
    assert sender.post(driver.events_url, body, stack.signing_secret)[0] == 200

    told = wait_until(lambda: driver.ephemerals_to(APPROVER), what="the refusal")
    assert f"there is no request #{request_id} here" in told[-1]
    assert driver.request(request_id).status == RequestStatus.PENDING
    refusals = [
        e for e in stack.bot.store.audit_events(request_id) if e.action == "decision_refused"
    ]
    assert refusals and refusals[-1].detail["team"] == "T0OTHERORG"


def test_ssl_check_requests_are_refused_unless_signed(driver: Driver, stack: SandboxStack) -> None:
    body = "ssl_check=1&token=gIkuvaNzQIHg97ATvDxqgjtO"
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert _raw_post(driver.events_url, body, form) == 401
    forged = {**sender.sign("not-the-secret", body)}
    assert _raw_post(driver.events_url, body, forged) == 401


def submit_and_wait(driver: Driver) -> int:
    status, reply = driver.command("request vm-web01 22 2h from 203.0.113.7")
    assert status == 200, reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    return request_id
