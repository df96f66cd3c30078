"""The bot in Socket Mode: Slack's requests arrive as envelopes on a WebSocket the bot
opened to the Slack stand-in (apps.connections.open with the app token), with the same
outcome as over HTTP; lost acks and dropped links are survived without double work."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import SANDBOX_STATE, main
from bot.sandbox import SANDBOX_APP_TOKEN, SandboxStack
from bot.socket_mode import SocketModeRefused
from jitcore.model import RequestStatus
from sandbox.slack import sender
from tests.scenario.harness import (
    APPROVER,
    REQUESTER,
    SocketDriver,
    wait_until,
    write_policy,
)


def _stack(tmp_path: Path, database_url: str) -> SandboxStack:
    return SandboxStack(
        tmp_path,
        database_url=database_url,
        policy_file=write_policy(tmp_path),
        sweep_interval=1.0,
        socket_mode=True,
        slack_ack_timeout=1.0,
    ).start()


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[SandboxStack]:
    running = _stack(tmp_path, database_url)
    try:
        running.slack.socket.wait_connected(timeout=30)
        yield running
    finally:
        running.stop()


@pytest.fixture
def sqlite_stack(tmp_path: Path) -> Iterator[SandboxStack]:
    running = _stack(tmp_path, f"sqlite:///{tmp_path / 'socket.db'}")
    try:
        running.slack.socket.wait_connected(timeout=30)
        yield running
    finally:
        running.stop()


def nsg_rules(stack: SandboxStack) -> list[dict]:
    nsg = (
        f"/subscriptions/{stack.arm.subscription_id}/resourceGroups/rg-jit-demo"
        "/providers/Microsoft.Network/networkSecurityGroups/nsg-web01"
    )
    return stack.arm.snapshot_nsg(nsg)


def request_id_of(reply: dict) -> int:
    return int(reply["text"].split("#", 1)[1].split()[0])


def test_request_approve_and_open_work_through_socket_mode(stack: SandboxStack) -> None:
    driver = SocketDriver(stack)
    before = {rule["name"] for rule in nsg_rules(stack)}

    status, reply = driver.command("request vm-web01 22 2h from 203.0.113.7 because fix")
    assert status == 200, reply
    request_id = request_id_of(reply)
    wait_until(lambda: driver.request(request_id).approval_ts, 30, "the approval message")
    assert driver.click("jit_approve", request_id) == 200
    active = driver.wait_status(request_id, RequestStatus.ACTIVE, timeout=30)

    [added] = [rule for rule in nsg_rules(stack) if rule["name"] not in before]
    assert added["properties"]["sourceAddressPrefix"] == "203.0.113.7/32"
    assert added["properties"]["destinationPortRange"] == "22"
    assert any(
        u["args"]["ts"] == active.approval_ts and "Approved by" in str(u["args"]["blocks"])
        for u in stack.slack.calls("chat.update")
    )
    [opened] = stack.slack.calls("apps.connections.open")
    assert opened["ok"] and opened["response"]["url"].startswith("ws://127.0.0.1:")
    envelopes = stack.slack.socket.deliveries()
    assert [e["envelope"]["type"] for e in envelopes] == ["slash_commands", "interactive"]
    assert all(e["acked"] for e in envelopes)


def test_a_deny_form_submitted_through_socket_mode_denies_and_changes_nothing(
    sqlite_stack: SandboxStack,
) -> None:
    driver = SocketDriver(sqlite_stack)
    before = nsg_rules(sqlite_stack)
    _status, reply = driver.command("request vm-web01 22 2h from 203.0.113.7")
    request_id = request_id_of(reply)
    wait_until(lambda: driver.request(request_id).approval_ts, 30, "the approval message")

    assert driver.deny(request_id, reason="not today") == 200

    denied = driver.wait_status(request_id, RequestStatus.DENIED, timeout=30)
    assert denied.decided_by == APPROVER
    assert nsg_rules(sqlite_stack) == before
    types = [e["envelope"]["type"] for e in sqlite_stack.slack.socket.deliveries()]
    assert types == ["slash_commands", "interactive", "interactive"]


def test_an_event_whose_ack_was_lost_is_delivered_again_and_handled_once(
    sqlite_stack: SandboxStack,
) -> None:
    hub = sqlite_stack.slack.socket
    hub.lose_acks(1)
    event = {"type": "app_home_opened", "user": REQUESTER, "channel": "D0REQ12345", "tab": "home"}
    first = hub.push("events_api", sender.socket_envelope(sender.event_body(event))[1])

    retried = wait_until(
        lambda: [d for d in hub.deliveries() if d["envelope"]["envelope_id"] != first],
        30,
        "the event delivered again",
    )
    retry = retried[0]["envelope"]
    hub.wait_ack(retry["envelope_id"], timeout=30)

    assert retry["retry_attempt"] == 1 and retry["retry_reason"] == "timeout"
    assert retry["payload"]["event_id"] == hub.deliveries()[0]["envelope"]["payload"]["event_id"]
    assert hub.deliveries()[0]["ack_lost"] is True
    publishes = sqlite_stack.slack.wait_for("views.publish", timeout=30)
    assert publishes[0]["args"]["user_id"] == REQUESTER
    time.sleep(2)  # the home is published after the ack: give a second handling time to show
    assert len(sqlite_stack.slack.calls("views.publish")) == 1


def test_the_bot_reconnects_after_slack_drops_the_socket(sqlite_stack: SandboxStack) -> None:
    hub = sqlite_stack.slack.socket
    driver = SocketDriver(sqlite_stack)

    assert hub.drop_connections() == 1
    hub.wait_connected(count=2, timeout=30)
    status, reply = driver.command("help")

    assert status == 200 and "/jit request" in reply["text"]
    assert len(sqlite_stack.slack.calls("apps.connections.open")) == 2


def test_in_socket_mode_http_serves_health_but_not_slack_events(
    sqlite_stack: SandboxStack,
) -> None:
    with urllib.request.urlopen(sqlite_stack.bot_url + "/healthz", timeout=10) as response:
        assert response.read() == b"ok"
    with urllib.request.urlopen(sqlite_stack.bot_url + "/readyz", timeout=10) as response:
        assert response.read() == b"ready"
    body = sender.slash_command_body("help")
    status, _headers, _text = sender.post(
        sqlite_stack.bot_url + "/slack/events", body, sqlite_stack.signing_secret
    )
    assert status == 404
    assert sqlite_stack.slack.calls("response_url") == []


def test_the_app_token_never_appears_in_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    running = _stack(tmp_path, f"sqlite:///{tmp_path / 'logs.db'}")
    try:
        running.slack.socket.wait_connected(timeout=30)
        SocketDriver(running).command("help")
        running.slack.socket.drop_connections()
        running.slack.socket.wait_connected(count=2, timeout=30)
    finally:
        running.stop()
    assert SANDBOX_APP_TOKEN not in caplog.text
    assert "Socket Mode" in caplog.text


def test_readiness_fails_while_the_socket_is_down(sqlite_stack: SandboxStack) -> None:
    assert sqlite_stack.bot is not None and sqlite_stack.bot.ready()
    # Slack answers no new link for now, so the bot stays without one until cleared.
    sqlite_stack.slack.add_fault("apps.connections.open", error="internal_error", times=None)
    sqlite_stack.slack.socket.drop_connections()
    wait_until(lambda: not sqlite_stack.bot.ready(), 30, "readiness to notice the lost link")
    sqlite_stack.slack.wait_for("apps.connections.open", count=2, timeout=30)
    assert not sqlite_stack.bot.ready()
    sqlite_stack.slack.clear_faults()
    sqlite_stack.slack.socket.wait_connected(count=2, timeout=30)
    wait_until(lambda: sqlite_stack.bot.ready(), 30, "readiness after reconnecting")


def test_jitbot_send_pushes_through_the_socket_of_a_socket_mode_sandbox(
    sqlite_stack: SandboxStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "send"
    state.mkdir()
    (state / SANDBOX_STATE).write_text(json.dumps(sqlite_stack.describe()), encoding="utf-8")

    assert (
        main(["send", "--dir", str(state), "command", "request vm-web01 22 1h from 203.0.113.9"])
        == 0
    )
    wait_until(lambda: SocketDriver(sqlite_stack).request(1), 30, "request #1")
    wait_until(lambda: SocketDriver(sqlite_stack).request(1).approval_ts, 30, "its approval post")
    assert main(["send", "--dir", str(state), "approve", "1"]) == 0

    SocketDriver(sqlite_stack).wait_status(1, RequestStatus.ACTIVE, timeout=30)
    out = capsys.readouterr().out
    assert "Request #1 for port 22 on *vm-web01* (1h) was sent to the approvers" in out
    types = [d["envelope"]["type"] for d in sqlite_stack.slack.socket.deliveries()]
    assert types == ["slash_commands", "interactive"]
    assert sqlite_stack.describe()["mode"] == "socket"


def test_a_refused_app_token_stops_the_start_with_a_clear_error_without_the_token(
    tmp_path: Path,
) -> None:
    wrong = "xapp-1-A0JITBOT01-0000000000-notthetoken"
    stack = SandboxStack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'refused.db'}",
        policy_file=write_policy(tmp_path),
        settings={"slack_app_token": wrong},
    )
    try:
        with pytest.raises(SocketModeRefused) as refused:
            stack.start()
    finally:
        stack.stop()
    assert "(invalid_auth)" in str(refused.value)
    assert "JITBOT_SLACK_APP_TOKEN" in str(refused.value)
    assert wrong not in str(refused.value)


def test_an_event_arriving_while_the_database_is_down_is_not_acked_and_handled_on_retry(
    sqlite_stack: SandboxStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sqlite_stack.bot is not None
    store = sqlite_stack.bot.store
    record = store.first_sighting
    failures = []

    def database_down_once(key: str, now: object) -> bool:
        if not failures:
            failures.append(key)
            raise OSError("database unavailable")
        return record(key, now)

    monkeypatch.setattr(store, "first_sighting", database_down_once)
    hub = sqlite_stack.slack.socket
    event = {"type": "app_home_opened", "user": REQUESTER, "channel": "D0REQ12345", "tab": "home"}
    hub.push("events_api", sender.socket_envelope(sender.event_body(event))[1])

    publishes = sqlite_stack.slack.wait_for("views.publish", timeout=30)

    first, retry = hub.deliveries()[:2]
    assert not first["acked"] and retry["acked"]
    assert retry["envelope"]["retry_attempt"] == 1
    assert failures and publishes[0]["args"]["user_id"] == REQUESTER
