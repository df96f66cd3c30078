"""Living with a grant, over signed HTTP: `/jit status`, `/jit extend`, the expiring-soon
warning with its Extend button, App Home, and Deny with a reason."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from bot.sandbox import SandboxStack
from jitcore.model import RequestStatus
from sandbox.slack import seed, sender
from tests.scenario.harness import (
    APPROVAL_CHANNEL,
    APPROVER,
    OUTSIDER,
    REQUESTER,
    Driver,
    wait_until,
    write_policy,
)
from tests.shared import shared_dir


def start(directory: Path, **options: Any) -> SandboxStack:
    return SandboxStack(
        directory, policy_file=write_policy(directory), sweep_interval=0.5, **options
    ).start()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SandboxStack]:
    running = start(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def driver(stack: SandboxStack) -> Driver:
    return Driver(stack)


def request_and_approve(driver: Driver, text: str) -> int:
    _status, reply = driver.command(text)
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    assert driver.click("jit_approve", request_id) == 200
    driver.wait_status(request_id, RequestStatus.ACTIVE)
    return request_id


def allow_rule(stack: SandboxStack, request_id: int) -> dict[str, Any] | None:
    nsg = (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/networkSecurityGroups/nsg-web01"
    )
    rules = stack.arm.snapshot_nsg(nsg)
    return next((r for r in rules if r["name"] == f"jitbot-allow-r{request_id}"), None)


# -- /jit status --------------------------------------------------------------------------


def test_status_shows_who_has_what_open_on_the_vm_to_a_reader(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")

    _status, reply = driver.command("status VM-WEB01", user=seed.READER_USER)

    text = reply["text"]
    assert text.startswith("*vm-web01*: 1 request open now")
    assert f"• #{request_id} <@{REQUESTER}>: port 22/Tcp from `203.0.113.7/32`, active" in text
    assert "left (until <!date^" in text


def test_status_needs_the_jit_read_action_at_the_vm(driver: Driver) -> None:
    _status, reply = driver.command("status vm-web01", user=seed.VM_CONTRIBUTOR_USER)

    assert reply["text"].startswith(":no_entry: You cannot see JIT requests for *vm-web01*")


def test_status_of_a_vm_without_open_access_says_so(driver: Driver) -> None:
    _status, reply = driver.command("status vm-web01", user=seed.READER_USER)

    assert reply["text"] == "Nothing is open on *vm-web01* through jitbot right now."


# -- /jit extend --------------------------------------------------------------------------


def test_an_extended_grant_ends_at_the_new_time_and_not_before(
    tmp_path: Path, database_url: str
) -> None:
    stack = start(tmp_path, database_url=database_url)
    try:
        driver = Driver(stack)
        request_id = request_and_approve(driver, "request vm-web01 22 3s from 203.0.113.7")
        first_end = driver.request(request_id).ends_at

        _status, reply = driver.command(f"extend {request_id} 8s")

        extended = driver.request(request_id)
        assert reply["text"].startswith(f"Request #{request_id} is now open until")
        assert extended.ends_at > first_end
        rule = allow_rule(stack, request_id)
        assert rule is not None
        until = extended.ends_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert rule["properties"]["description"].startswith(f"jitbot r{request_id} until {until}")
        dms = wait_until(
            lambda: [t for t in driver.dms_to(REQUESTER) if "was extended by" in t], what="DM"
        )
        assert f"<@{REQUESTER}>" in dms[-1]
        thread = [
            p["args"]["text"]
            for p in driver.posts(APPROVAL_CHANNEL)
            if p["args"].get("thread_ts") == extended.approval_ts
        ]
        assert any("was extended by" in t for t in thread)

        wait_until(
            lambda: stack.bot.engine.clock() > first_end + (extended.ends_at - first_end) / 2,
            what="the first end to pass",
        )
        assert driver.request(request_id).status == RequestStatus.ACTIVE
        assert allow_rule(stack, request_id) is not None

        closed = driver.wait_status(request_id, RequestStatus.CLOSED, timeout=15)
        assert closed.closed_at >= extended.ends_at
        assert allow_rule(stack, request_id) is None
    finally:
        stack.stop()


def test_an_extension_past_the_policy_maximum_is_refused_with_the_limit(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")

    _status, reply = driver.command(f"extend {request_id} 3h")

    text = reply["text"]
    assert text.startswith(f":no_entry: Request #{request_id} may stay open until <!date^")
    assert "the longest extension now is 2h59m" in text or "2h58m" in text
    assert "not supported" in text


def test_someone_who_neither_requested_nor_approves_cannot_extend(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")
    ends_at = driver.request(request_id).ends_at

    _status, reply = driver.command(f"extend {request_id} 2h30m", user=OUTSIDER)

    assert reply["text"] == (
        f":no_entry: there is no request #{request_id} that you requested or approve"
    )
    assert driver.request(request_id).ends_at == ends_at


def test_an_approver_can_extend(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")

    _status, reply = driver.command(f"extend {request_id} 2h30m", user=APPROVER)

    assert reply["text"].startswith(f"Request #{request_id} is now open until")


# -- expiring-soon warning ------------------------------------------------------------------


def warning_posts(stack: SandboxStack) -> list[dict[str, Any]]:
    return [
        c
        for c in stack.slack.calls("chat.postMessage")
        if "expires in" in str(c["args"].get("text", ""))
    ]


def test_the_requester_is_warned_before_the_end_and_extend_moves_it_by_the_step(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, settings={"expiry_warning_seconds": 4.0})
    try:
        driver = Driver(stack)
        request_id = request_and_approve(driver, "request vm-web01 22 6s from 203.0.113.7")
        ends_at = driver.request(request_id).ends_at

        [warning] = wait_until(lambda: warning_posts(stack), what="the warning DM")

        args = warning["args"]
        assert args["channel"] == stack.slack.workspace.dm_channel(REQUESTER)
        assert f"request #{request_id}" in args["text"] and "expires in 1 min" in args["text"]
        [button] = args["blocks"][1]["elements"]
        assert button["action_id"] == "jit_extend"
        assert button["value"] == messages.extend_button_value(driver.request(request_id))
        assert button["text"]["text"] == "Extend by 30m"

        body = sender.block_action_body(
            "jit_extend",
            button["value"],
            user_id=REQUESTER,
            message_ts=warning["response"]["ts"],
            channel_id=args["channel"],
            message=warning["response"]["message"],
        )
        assert sender.post(driver.events_url, body, stack.signing_secret)[0] == 200

        extended = wait_until(
            lambda: (r := driver.request(request_id)).ends_at > ends_at and r, what="extension"
        )
        assert extended.ends_at - ends_at == timedelta(minutes=30)
        assert wait_until(
            lambda: [t for t in driver.dms_to(REQUESTER) if "was extended by" in t], what="DM"
        )
        edited = wait_until(
            lambda: [
                c["args"]
                for c in stack.slack.calls("chat.update")
                if c["args"].get("ts") == warning["response"]["ts"]
            ],
            what="the warning to lose its button",
        )
        assert "now open until" in edited[-1]["text"]
        assert len(warning_posts(stack)) == 1

        # The same button clicked again (a double click, or a stale copy) adds nothing.
        again = sender.block_action_body(
            "jit_extend",
            button["value"],
            user_id=REQUESTER,
            message_ts=warning["response"]["ts"],
            channel_id=args["channel"],
            message=warning["response"]["message"],
            action_ts="1700000001.000002",
        )
        assert sender.post(driver.events_url, again, stack.signing_secret)[0] == 200
        wait_until(
            lambda: (
                [t for t in driver.ephemerals_to(REQUESTER) if "already extended" in t]
                or [t for t in driver.dms_to(REQUESTER) if "already extended" in t]
            ),
            what="the second click's answer",
        )
        assert driver.request(request_id).ends_at == extended.ends_at
    finally:
        stack.stop()


def test_an_extend_click_from_someone_else_is_refused(tmp_path: Path) -> None:
    stack = start(tmp_path)
    try:
        driver = Driver(stack)
        request_id = request_and_approve(driver, "request vm-web01 22 1h from 203.0.113.7")
        ends_at = driver.request(request_id).ends_at

        body = sender.block_action_body(
            "jit_extend", str(request_id), user_id=OUTSIDER, message_ts="1700000000.000100"
        )
        assert sender.post(driver.events_url, body, stack.signing_secret)[0] == 200

        told = wait_until(lambda: driver.ephemerals_to(OUTSIDER), what="the refusal")
        assert "no request #1 that you requested or approve" in told[-1]
        assert driver.request(request_id).ends_at == ends_at
    finally:
        stack.stop()


def test_a_zero_warning_time_turns_the_warning_off(tmp_path: Path) -> None:
    stack = start(tmp_path, settings={"expiry_warning_seconds": 0})
    try:
        assert stack.bot is not None
        assert stack.bot.clock.scheduler.get_job("expiry-warning") is None
    finally:
        stack.stop()


# -- App Home -------------------------------------------------------------------------------


def open_home(driver: Driver, user: str) -> dict[str, Any]:
    """Send app_home_opened (the shared sample, for ``user``); return the published view."""
    stack = driver.stack
    event = json.loads((shared_dir() / "slack-payloads" / "app-home-opened.event.json").read_text())
    event.update(user=user, channel=stack.slack.workspace.dm_channel(user))
    before = len(home_views(stack, user))
    body = sender.event_body(event)
    assert sender.post(driver.events_url, body, stack.signing_secret)[0] == 200
    return wait_until(lambda: home_views(stack, user)[before:], what=f"the home tab of {user}")[-1]


def home_views(stack: SandboxStack, user: str) -> list[dict[str, Any]]:
    return [
        c["args"]["view"]
        for c in stack.slack.calls("views.publish")
        if c["args"].get("user_id") == user and c["ok"]
    ]


def click_in_home(driver: Driver, action_id: str, request_id: int, user: str) -> None:
    """A button click on the home tab: the container is the view, there is no channel."""
    body = sender.block_action_body(action_id, str(request_id), user_id=user, message_ts="0")
    payload = json.loads(urllib.parse.unquote(body.removeprefix("payload=")))
    for key in ("channel", "message"):
        payload.pop(key)
    payload["container"] = {"type": "view", "view_id": "V0000000001"}
    payload["view"] = {"id": "V0000000001", "type": "home", "blocks": []}
    body = sender.form_payload(payload)
    assert sender.post(driver.events_url, body, driver.stack.signing_secret)[0] == 200


def home_text(view: dict[str, Any]) -> str:
    return json.dumps(view["blocks"])


def buttons(view: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for block in view["blocks"]:
        for element in [*block.get("elements", []), block.get("accessory") or {}]:
            if element.get("type") == "button":
                found.append((element["action_id"], element["value"]))
    return found


def test_the_home_tab_lists_my_requests_and_what_waits_for_my_approval(
    driver: Driver,
) -> None:
    active = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")
    _status, reply = driver.command("request vm-web01 3389 1h from 203.0.113.7 because <!here>")
    pending = int(reply["text"].split("#", 1)[1].split()[0])

    mine = open_home(driver, REQUESTER)
    theirs = open_home(driver, APPROVER)
    outsider = open_home(driver, OUTSIDER)

    assert buttons(mine) == [("jit_end_now", str(active))]
    assert "Waiting for your approval" not in home_text(mine)
    assert buttons(theirs) == [("jit_approve", str(pending)), ("jit_deny", str(pending))]
    assert "&lt;!here&gt;" in home_text(theirs) and "<!here>" not in home_text(theirs)
    assert "You have no pending or active requests." in home_text(theirs)
    assert buttons(outsider) == []


def test_end_now_on_the_home_tab_revokes_and_refreshes_it(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")
    open_home(driver, REQUESTER)

    click_in_home(driver, "jit_end_now", request_id, REQUESTER)

    driver.wait_status(request_id, RequestStatus.REVOKED)
    refreshed = wait_until(
        lambda: [v for v in home_views(driver.stack, REQUESTER) if not buttons(v)],
        what="the refreshed home tab",
    )
    assert "You have no pending or active requests." in home_text(refreshed[-1])


def test_end_now_from_someone_else_is_refused(driver: Driver) -> None:
    request_id = request_and_approve(driver, "request vm-web01 22 2h from 203.0.113.7")

    click_in_home(driver, "jit_end_now", request_id, OUTSIDER)

    told = wait_until(lambda: driver.dms_to(OUTSIDER), what="the refusal")
    assert "no request #1 that you requested or approve" in told[-1]
    assert driver.request(request_id).status == RequestStatus.ACTIVE


def test_approve_on_the_home_tab_is_authorized_and_opens_access(driver: Driver) -> None:
    _status, reply = driver.command("request vm-web01 22 1h from 203.0.113.7")
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")

    click_in_home(driver, "jit_approve", request_id, OUTSIDER)
    click_in_home(driver, "jit_approve", request_id, REQUESTER)
    told = wait_until(lambda: driver.dms_to(OUTSIDER), what="the outsider's refusal")
    assert "only the approvers" in told[-1]
    assert driver.request(request_id).status == RequestStatus.PENDING

    click_in_home(driver, "jit_approve", request_id, APPROVER)

    driver.wait_status(request_id, RequestStatus.ACTIVE)
    assert wait_until(lambda: home_views(driver.stack, APPROVER), what="the refreshed home")


# -- Deny with a reason -----------------------------------------------------------------------


def pending_request(driver: Driver) -> int:
    _status, reply = driver.command("request vm-web01 22 1h from 203.0.113.7")
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    return request_id


def click_deny(driver: Driver, request_id: int, user: str, trigger_id: str) -> None:
    body = sender.block_action_body(
        "jit_deny",
        str(request_id),
        user_id=user,
        message_ts=driver.request(request_id).approval_ts,
        trigger_id=trigger_id,
    )
    assert sender.post(driver.events_url, body, driver.stack.signing_secret)[0] == 200


def test_deny_asks_for_a_reason_and_shows_it_escaped_to_the_requester(
    driver: Driver, stack: SandboxStack
) -> None:
    request_id = pending_request(driver)
    trigger = sender.new_trigger_id()

    click_deny(driver, request_id, APPROVER, trigger)

    [opened] = wait_until(lambda: stack.slack.calls("views.open"), what="the deny form")
    assert opened["args"]["trigger_id"] == trigger
    view = opened["args"]["view"]
    assert view["callback_id"] == "jit_deny_reason"
    assert json.loads(view["private_metadata"])["request_id"] == request_id
    assert driver.request(request_id).status == RequestStatus.PENDING

    reason = "not during the <!channel> freeze"
    metadata = view["private_metadata"]
    assert driver.submit_deny_reason(request_id, APPROVER, reason, metadata) == 200

    denied = driver.wait_status(request_id, RequestStatus.DENIED)
    assert denied.decision_note == reason
    dm = wait_until(lambda: driver.dms_to(REQUESTER), what="the denial DM")[-1]
    assert "Reason: not during the &lt;!channel&gt; freeze" in dm and "<!channel>" not in dm
    updated = wait_until(
        lambda: [
            c["args"]
            for c in stack.slack.calls("chat.update")
            if c["args"]["ts"] == denied.approval_ts and "Denied" in str(c["args"]["blocks"])
        ],
        what="the approval message update",
    )
    status_line = json.dumps(updated[-1]["blocks"])
    assert "&lt;!channel&gt;" in status_line and "<!channel>" not in status_line


def test_a_deny_form_submitted_by_someone_who_does_not_approve_changes_nothing(
    driver: Driver,
) -> None:
    request_id = pending_request(driver)

    assert driver.submit_deny_reason(request_id, OUTSIDER, "forged") == 200

    told = wait_until(lambda: driver.ephemerals_to(OUTSIDER), what="the refusal")
    assert "only the approvers" in told[-1]
    assert driver.request(request_id).status == RequestStatus.PENDING


def test_deny_from_someone_who_does_not_approve_opens_no_form(
    driver: Driver, stack: SandboxStack
) -> None:
    request_id = pending_request(driver)

    click_deny(driver, request_id, OUTSIDER, sender.new_trigger_id())

    told = wait_until(lambda: driver.ephemerals_to(OUTSIDER), what="the refusal")
    assert "only the approvers" in told[-1]
    assert stack.slack.calls("views.open") == []


def test_an_expired_trigger_denies_without_a_reason_and_says_so(
    driver: Driver, stack: SandboxStack
) -> None:
    request_id = pending_request(driver)
    stack.slack.add_fault("views.open", error="expired_trigger_id")

    click_deny(driver, request_id, APPROVER, sender.new_trigger_id())

    denied = driver.wait_status(request_id, RequestStatus.DENIED)
    assert denied.decision_note is None
    told = wait_until(lambda: driver.ephemerals_to(APPROVER), what="the explanation")
    assert f"Request #{request_id} is denied, without a reason" in told[-1]
    assert "expired" in told[-1]
