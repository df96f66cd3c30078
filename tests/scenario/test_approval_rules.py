"""Approval rules over signed HTTP: two distinct approvers, a user group as approver,
auto-approval with its review post and daily limit, the reminder before a pending request
expires, the audit channel, and approvers racing each other."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from bot.sandbox import SandboxStack
from jitcore.model import RequestStatus
from sandbox.slack import seed
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
from tests.scenario.test_chat_requests import buttons, open_home

TIMEOUT = 30.0

POLICY = """
policies:
  - name: web-admin
    vms: [vm-web01]
    ports:
      - {{port: 22, protocol: Tcp, max_duration: 3h}}
      - {{port: 3389, protocol: Tcp, max_duration: 3h}}
    min_duration: 1s
    approval_channel: C0OPS12345
{extra}
"""


def start(directory: Path, extra: str, **options: Any) -> SandboxStack:
    policy = write_policy(directory, POLICY.format(extra=extra))
    return SandboxStack(directory, policy_file=policy, sweep_interval=0.5, **options).start()


def submit(driver: Driver, text: str = "request vm-web01 22 2h from 203.0.113.7") -> int:
    _status, reply = driver.command(text)
    return int(reply["text"].split("#", 1)[1].split()[0])


def submitted(driver: Driver, text: str = "request vm-web01 22 2h from 203.0.113.7") -> int:
    """Submit and wait until the approval message is posted."""
    request_id = submit(driver, text)
    wait_until(lambda: driver.request(request_id).approval_ts, TIMEOUT, "the approval message")
    return request_id


def allow_rules(stack: SandboxStack, request_id: int) -> list[dict[str, Any]]:
    nsg = (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/networkSecurityGroups/nsg-web01"
    )
    return [r for r in stack.arm.snapshot_nsg(nsg) if r["name"] == f"jitbot-allow-r{request_id}"]


def approval_message(stack: SandboxStack, driver: Driver, request_id: int) -> dict[str, Any]:
    """The request's message in the approval channel as it stands ({} before it is posted)."""
    ts = driver.request(request_id).approval_ts
    found = [m for m in stack.slack.messages(APPROVAL_CHANNEL) if ts and m.get("ts") == ts]
    return found[0] if found else {}


def thread_texts(stack: SandboxStack, driver: Driver, request_id: int) -> list[str]:
    ts = driver.request(request_id).approval_ts
    return [
        p["args"]["text"]
        for p in driver.posts(APPROVAL_CHANNEL)
        if p["args"].get("thread_ts") == ts
    ]


def audit_actions(stack: SandboxStack, request_id: int) -> list[tuple[str, str]]:
    assert stack.bot is not None
    return [(e.action, e.actor) for e in stack.bot.store.audit_events(request_id)]


# -- two distinct approvers --------------------------------------------------------------

TWO_APPROVERS = "    approvers: [U0APPROVR1, U0APPROVR2]\n    approvals_required: 2"


def test_the_first_of_two_approvals_does_not_open_and_the_second_distinct_one_does(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, TWO_APPROVERS)
    try:
        driver = Driver(stack)
        request_id = submitted(driver)

        assert driver.click("jit_approve", request_id, user=APPROVER) == 200
        wait_until(
            lambda: "1 of 2 approvals" in str(approval_message(stack, driver, request_id)),
            TIMEOUT,
            "the message to show the first approval",
        )
        message = approval_message(stack, driver, request_id)
        [progress] = [b for b in message["blocks"] if b.get("block_id", "").endswith("progress")]
        assert progress["elements"][0]["text"] == (
            f":hourglass: 1 of 2 approvals: approved by <@{APPROVER}>, waiting for one more"
        )
        assert message["blocks"][-1]["elements"][0]["action_id"] == "jit_approve"
        assert driver.request(request_id).status == RequestStatus.PENDING
        assert allow_rules(stack, request_id) == []

        assert driver.click("jit_approve", request_id, user=SECOND_APPROVER) == 200

        active = driver.wait_status(request_id, RequestStatus.ACTIVE, TIMEOUT)
        assert active.decided_by == SECOND_APPROVER
        assert len(allow_rules(stack, request_id)) == 1
        approvals = [a.approver_id for a in stack.bot.store.approvals(request_id)]
        assert approvals == [APPROVER, SECOND_APPROVER]
        events = stack.bot.store.audit_events(request_id)
        assert [(e.action, e.actor, e.detail.get("approvals")) for e in events][1:3] == [
            ("approval_recorded", APPROVER, "1/2"),
            ("approved", SECOND_APPROVER, "2/2"),
        ]
    finally:
        stack.stop()


def test_the_same_approver_clicking_again_is_told_the_approval_is_already_counted(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, TWO_APPROVERS)
    try:
        driver = Driver(stack)
        request_id = submitted(driver)
        assert driver.click("jit_approve", request_id, user=APPROVER) == 200
        wait_until(lambda: len(stack.bot.store.approvals(request_id)) == 1, TIMEOUT, "the approval")

        assert driver.click("jit_approve", request_id, user=APPROVER) == 200

        refusal = wait_until(
            lambda: [t for t in driver.ephemerals_to(APPROVER) if "already counted" in t],
            TIMEOUT,
            "the refusal",
        )
        assert refusal == [
            f"Your approval of request #{request_id} is already counted; it needs another "
            "approver. Nothing changed."
        ]
        assert driver.request(request_id).status == RequestStatus.PENDING
        assert len(stack.bot.store.approvals(request_id)) == 1
    finally:
        stack.stop()


def test_the_requester_never_counts_as_an_approver_even_when_listed(tmp_path: Path) -> None:
    listed = "    approvers: [U0REQ12345, U0APPROVR1, U0APPROVR2]\n    approvals_required: 2"
    stack = start(tmp_path, listed)
    try:
        driver = Driver(stack)
        request_id = submitted(driver)
        assert driver.click("jit_approve", request_id, user=APPROVER) == 200
        wait_until(lambda: stack.bot.store.approvals(request_id), TIMEOUT, "the approval")

        assert driver.click("jit_approve", request_id, user=REQUESTER) == 200

        wait_until(
            lambda: [t for t in driver.ephemerals_to(REQUESTER) if "your own request" in t],
            TIMEOUT,
            "the refusal",
        )
        assert driver.request(request_id).status == RequestStatus.PENDING
        assert [a.approver_id for a in stack.bot.store.approvals(request_id)] == [APPROVER]
    finally:
        stack.stop()


def test_a_deny_after_one_of_two_approvals_denies(tmp_path: Path) -> None:
    stack = start(tmp_path, TWO_APPROVERS)
    try:
        driver = Driver(stack)
        request_id = submitted(driver)
        assert driver.click("jit_approve", request_id, user=APPROVER) == 200
        wait_until(lambda: stack.bot.store.approvals(request_id), TIMEOUT, "the approval")

        assert driver.deny(request_id, user=SECOND_APPROVER, reason="not today") == 200

        denied = driver.wait_status(request_id, RequestStatus.DENIED, TIMEOUT)
        assert denied.decided_by == SECOND_APPROVER
        assert allow_rules(stack, request_id) == []
    finally:
        stack.stop()


# -- a user group as approver -------------------------------------------------------------


def test_members_of_an_approver_user_group_are_read_from_slack_when_they_decide(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, f"    approvers: [{seed.APPROVERS_GROUP}]")
    try:
        driver = Driver(stack)
        first = submitted(driver)
        second = submitted(driver, "request vm-web01 3389 1h from 203.0.113.7")

        assert driver.click("jit_approve", first, user=OUTSIDER) == 200
        wait_until(
            lambda: [t for t in driver.ephemerals_to(OUTSIDER) if "only the approvers" in t],
            TIMEOUT,
            "the outsider's refusal",
        )
        assert driver.click("jit_approve", first, user=APPROVER) == 200
        driver.wait_status(first, RequestStatus.ACTIVE, TIMEOUT)

        stack.slack.workspace.usergroups[seed.APPROVERS_GROUP] = [SECOND_APPROVER]
        assert driver.click("jit_approve", second, user=APPROVER) == 200

        wait_until(
            lambda: [t for t in driver.ephemerals_to(APPROVER) if "only the approvers" in t],
            TIMEOUT,
            "the refusal of a former member",
        )
        assert driver.request(second).status == RequestStatus.PENDING
        lookups = stack.slack.calls("usergroups.users.list")
        assert {c["args"].get("usergroup") for c in lookups} == {seed.APPROVERS_GROUP}
        assert len(lookups) >= 3
    finally:
        stack.stop()


# -- auto-approval -------------------------------------------------------------------------

AUTO = """    approvers: [U0APPROVR1, U0APPROVR2]
    auto_approve:
      - {name: vpn-ssh, ports: [22], sources: [203.0.113.0/24], max_duration: 1h, max_per_day: 1}"""


def test_an_auto_approved_request_opens_at_once_and_is_posted_for_review(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, AUTO)
    try:
        driver = Driver(stack)
        _status, reply = driver.command("request vm-web01 22 30m from 203.0.113.7")
        request_id = int(reply["text"].split("#", 1)[1].split()[0])

        assert "was approved by the policy's rule `vpn-ssh`" in reply["text"]
        active = driver.wait_status(request_id, RequestStatus.ACTIVE, TIMEOUT)
        assert active.decided_by == "auto:vpn-ssh"
        assert len(allow_rules(stack, request_id)) == 1
        assert ("auto_approved", "auto:vpn-ssh") in audit_actions(stack, request_id)
        message = wait_until(
            lambda: (
                "open until" in str(approval_message(stack, driver, request_id))
                and approval_message(stack, driver, request_id)
            ),
            TIMEOUT,
            "the review post",
        )
        summary = message["blocks"][0]["text"]["text"]
        assert "*auto-approved* by rule `vpn-ssh`, for review" in summary
        [button] = message["blocks"][-1]["elements"]
        assert (button["action_id"], button["value"]) == ("jit_end_now", str(request_id))
        assert not any(
            e.get("action_id") == "jit_approve"
            for b in message["blocks"]
            for e in b.get("elements", [])
        )

        assert driver.click("jit_end_now", request_id, user=APPROVER) == 200

        driver.wait_status(request_id, RequestStatus.REVOKED, TIMEOUT)
        assert allow_rules(stack, request_id) == []
    finally:
        stack.stop()


def test_auto_approval_stops_at_the_rules_daily_limit_and_the_next_waits_for_approvers(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, AUTO)
    try:
        driver = Driver(stack)
        first = submit(driver, "request vm-web01 22 30m from 203.0.113.7")
        driver.wait_status(first, RequestStatus.ACTIVE, TIMEOUT)

        second = submitted(driver, "request vm-web01 22 30m from 203.0.113.9")

        assert driver.request(second).status == RequestStatus.PENDING
        assert ("auto_approval_limit_reached", "auto:vpn-ssh") in audit_actions(stack, second)
        assert stack.bot.store.approvals(second) == []
        message = approval_message(stack, driver, second)
        assert message["blocks"][-1]["elements"][0]["action_id"] == "jit_approve"
    finally:
        stack.stop()


def test_a_request_outside_the_rules_sources_or_duration_waits_for_approvers(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, AUTO)
    try:
        driver = Driver(stack)
        outside = submitted(driver, "request vm-web01 22 30m from 198.51.100.7")
        too_long = submitted(driver, "request vm-web01 22 2h from 203.0.113.7")
        other_port = submitted(driver, "request vm-web01 3389 30m from 203.0.113.7")

        for request_id in (outside, too_long, other_port):
            assert driver.request(request_id).status == RequestStatus.PENDING
            assert stack.bot.store.approvals(request_id) == []
    finally:
        stack.stop()


# -- reminder, then expiry -------------------------------------------------------------------

REMIND = """    approvers: [U0APPROVR1, S0APPROVRS]
    pending_timeout: 5s
    remind_after: 1s"""


def test_pending_approvers_are_reminded_once_then_the_request_expires_and_the_requester_is_told(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, REMIND)
    try:
        driver = Driver(stack)
        request_id = submitted(driver)

        [reminder] = wait_until(
            lambda: [t for t in thread_texts(stack, driver, request_id) if ":bell:" in t],
            TIMEOUT,
            "the reminder",
        )
        assert reminder.startswith(f":bell: <@{APPROVER}>, <!subteam^{seed.APPROVERS_GROUP}>:")
        assert f"request #{request_id} of <@{REQUESTER}>" in reminder
        assert driver.request(request_id).status == RequestStatus.PENDING

        driver.wait_status(request_id, RequestStatus.EXPIRED, TIMEOUT)

        wait_until(
            lambda: [t for t in driver.dms_to(REQUESTER) if "expired: nobody approved" in t],
            TIMEOUT,
            "the requester's DM",
        )
        reminders = [t for t in thread_texts(stack, driver, request_id) if ":bell:" in t]
        assert len(reminders) == 1
        actions = [a for a, _actor in audit_actions(stack, request_id)]
        assert actions.count("reminded") == 1
        assert actions[-1] == "expired_unapproved"
    finally:
        stack.stop()


# -- the audit channel ---------------------------------------------------------------------------


def audit_lines(driver: Driver) -> list[str]:
    """Lines Slack accepted in the audit channel (failed attempts are recorded too)."""
    return [p["args"]["text"] for p in driver.posts(seed.AUDIT_CHANNEL) if p.get("ok")]


def test_the_audit_channel_gets_one_escaped_line_per_lifecycle_event(tmp_path: Path) -> None:
    stack = start(
        tmp_path,
        "    approvers: [U0APPROVR1, U0APPROVR2]",
        settings={"audit_channel": seed.AUDIT_CHANNEL},
    )
    try:
        driver = Driver(stack)
        request_id = submitted(driver, "request vm-web01 22 2h from 203.0.113.7 because <!channel>")
        assert driver.click("jit_approve", request_id) == 200
        driver.wait_status(request_id, RequestStatus.ACTIVE, TIMEOUT)
        driver.command(f"revoke {request_id}")
        driver.wait_status(request_id, RequestStatus.REVOKED, TIMEOUT)

        lines = wait_until(
            lambda: (found := audit_lines(driver)) and "closed" in found[-1] and found,
            TIMEOUT,
            "the closing line",
        )

        what = f"vm-web01 port 22/Tcp from 203.0.113.7/32 for {REQUESTER}"
        assert lines[0] == f"#{request_id} submitted by {REQUESTER}: {what}"
        assert lines[1] == f"#{request_id} approved (1/1) by {APPROVER}: {what}"
        assert lines[2].startswith(f"#{request_id} opened by jitbot: {what}; until ")
        assert lines[3] == f"#{request_id} closed (revoked) by jitbot: {what}"
        assert len(lines) == 4
        assert not any("<!channel>" in line for line in lines)
    finally:
        stack.stop()


def test_audit_lines_are_delivered_after_slack_failed_and_never_hold_back_the_requester(
    tmp_path: Path,
) -> None:
    stack = start(
        tmp_path,
        "    approvers: [U0APPROVR1, U0APPROVR2]",
        settings={"audit_channel": seed.AUDIT_CHANNEL},
    )
    try:
        driver = Driver(stack)
        stack.slack.workspace.channels.pop(seed.AUDIT_CHANNEL)
        request_id = submitted(driver)
        assert driver.click("jit_approve", request_id) == 200
        driver.wait_status(request_id, RequestStatus.ACTIVE, TIMEOUT)
        wait_until(
            lambda: [t for t in driver.dms_to(REQUESTER) if "Access granted" in t],
            TIMEOUT,
            "the requester's DM while the audit channel fails",
        )
        assert audit_lines(driver) == []

        stack.slack.workspace.channels[seed.AUDIT_CHANNEL] = "jit-audit"

        lines = wait_until(
            lambda: len(audit_lines(driver)) >= 3 and audit_lines(driver),
            TIMEOUT,
            "the audit lines after the channel is back",
        )
        assert [line.split(" by ")[0] for line in lines] == [
            f"#{request_id} submitted",
            f"#{request_id} approved (1/1)",
            f"#{request_id} opened",
        ]
    finally:
        stack.stop()


# -- racing approvers ------------------------------------------------------------------------------


def click_together(driver: Driver, request_id: int, users: list[str]) -> None:
    barrier = threading.Barrier(len(users))

    def click(user: str) -> None:
        barrier.wait()
        assert driver.click("jit_approve", request_id, user=user) == 200

    threads = [threading.Thread(target=click, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)


def test_two_approvers_racing_open_the_port_exactly_once(tmp_path: Path, database_url: str) -> None:
    stack = start(tmp_path, TWO_APPROVERS, database_url=database_url)
    try:
        driver = Driver(stack)
        for _ in range(3):
            request_id = submitted(driver)

            click_together(driver, request_id, [APPROVER, SECOND_APPROVER])

            driver.wait_status(request_id, RequestStatus.ACTIVE, TIMEOUT)
            assert len(allow_rules(stack, request_id)) == 1
            actions = [a for a, _actor in audit_actions(stack, request_id)]
            assert actions.count("approved") == 1
            assert actions.count("opened") == 1
            approvers = sorted(a.approver_id for a in stack.bot.store.approvals(request_id))
            assert approvers == [APPROVER, SECOND_APPROVER]
            driver.command(f"revoke {request_id}")
            driver.wait_status(request_id, RequestStatus.REVOKED, TIMEOUT)
    finally:
        stack.stop()


def test_of_two_approvers_racing_for_one_approval_the_loser_hears_who_won(
    tmp_path: Path, database_url: str
) -> None:
    stack = start(tmp_path, "    approvers: [U0APPROVR1, U0APPROVR2]", database_url=database_url)
    try:
        driver = Driver(stack)
        request_id = submitted(driver)

        click_together(driver, request_id, [APPROVER, SECOND_APPROVER])

        active = driver.wait_status(request_id, RequestStatus.ACTIVE, TIMEOUT)
        loser = SECOND_APPROVER if active.decided_by == APPROVER else APPROVER
        wait_until(
            lambda: [
                t
                for t in driver.ephemerals_to(loser)
                if t.startswith(f"Request #{request_id} was already approved by <@")
            ],
            TIMEOUT,
            "the loser's answer",
        )
        assert len(allow_rules(stack, request_id)) == 1
        assert [a.approver_id for a in stack.bot.store.approvals(request_id)] == [active.decided_by]
    finally:
        stack.stop()


def test_the_audit_channel_counts_two_approvals_and_names_the_auto_approval_rule(
    tmp_path: Path,
) -> None:
    extra = TWO_APPROVERS + "\n" + AUTO.split("\n", 1)[1]
    stack = start(tmp_path, extra, settings={"audit_channel": seed.AUDIT_CHANNEL})
    try:
        driver = Driver(stack)
        manual = submitted(driver, "request vm-web01 3389 1h from 203.0.113.7")
        assert driver.click("jit_approve", manual, user=APPROVER) == 200
        wait_until(lambda: stack.bot.store.approvals(manual), TIMEOUT, "the first approval")
        assert driver.click("jit_approve", manual, user=SECOND_APPROVER) == 200
        driver.wait_status(manual, RequestStatus.ACTIVE, TIMEOUT)
        auto = submit(driver, "request vm-web01 22 30m from 203.0.113.7")
        driver.wait_status(auto, RequestStatus.ACTIVE, TIMEOUT)

        def heads() -> list[str]:
            return [line.split(":", 1)[0] for line in audit_lines(driver)]

        wait_until(lambda: f"#{auto} opened by jitbot" in heads(), TIMEOUT, "the lines")
        assert [h for h in heads() if h.startswith(f"#{manual} ")] == [
            f"#{manual} submitted by {REQUESTER}",
            f"#{manual} approved (1/2) by {APPROVER}",
            f"#{manual} approved (2/2) by {SECOND_APPROVER}",
            f"#{manual} opened by jitbot",
        ]
        [auto_line] = [line for line in audit_lines(driver) if "auto-approved" in line]
        assert auto_line.startswith(f"#{auto} auto-approved by auto")
        assert auto_line.endswith("; rule vpn-ssh")
    finally:
        stack.stop()


# -- App Home ------------------------------------------------------------------------------------


def test_the_home_tab_of_a_group_approver_lists_what_waits_and_drops_what_they_approved(
    tmp_path: Path,
) -> None:
    stack = start(tmp_path, f"    approvers: [{seed.APPROVERS_GROUP}]\n    approvals_required: 2")
    try:
        driver = Driver(stack)
        request_id = submitted(driver)
        waiting = [("jit_approve", str(request_id)), ("jit_deny", str(request_id))]
        assert buttons(open_home(driver, APPROVER)) == waiting

        assert driver.click("jit_approve", request_id, user=APPROVER) == 200
        wait_until(lambda: stack.bot.store.approvals(request_id), TIMEOUT, "the approval")

        assert buttons(open_home(driver, APPROVER)) == []
        assert buttons(open_home(driver, SECOND_APPROVER)) == waiting
        assert buttons(open_home(driver, OUTSIDER)) == []
    finally:
        stack.stop()
