"""The Slack stand-in's Socket Mode, driven by slack_sdk's own built-in client."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from sandbox.slack import seed
from sandbox.slack.server import SlackServer
from sandbox.slack.socket_mode import accept_key
from tests.shared import shared_dir


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer(ack_timeout=0.5) as server:
        yield server


def connect(slack: SlackServer, answer: bool = True) -> tuple[SocketModeClient, list]:
    """A slack_sdk client connected to the stand-in; it acks with a payload naming the
    envelope type unless ``answer`` is False."""
    seen: list[SocketModeRequest] = []
    client = SocketModeClient(
        app_token=slack.app_token,
        web_client=WebClient(base_url=slack.url, token=slack.bot_token),
        ping_interval=0.5,
    )

    def listener(client: SocketModeClient, request: SocketModeRequest) -> None:
        seen.append(request)
        if answer:
            client.send_socket_mode_response(
                SocketModeResponse(request.envelope_id, payload={"got": request.type})
            )

    client.socket_mode_request_listeners.append(listener)
    client.connect()
    slack.socket.wait_connected(timeout=30)
    return client, seen


def test_accept_key_matches_the_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (seed.DEFAULT_BOT_TOKEN, "not_allowed_token_type"),
        ("xapp-1-A0JITBOT01-0-wrong", "invalid_auth"),
    ],
)
def test_apps_connections_open_needs_the_app_token(
    slack: SlackServer, token: str, error: str
) -> None:
    with pytest.raises(SlackApiError) as refused:
        WebClient(base_url=slack.url).apps_connections_open(app_token=token)
    assert refused.value.response["error"] == error


def test_the_app_token_opens_a_single_use_websocket_url(slack: SlackServer) -> None:
    answer = WebClient(base_url=slack.url).apps_connections_open(app_token=slack.app_token)
    assert answer["url"].startswith(f"ws://127.0.0.1:{slack.port}/link/?ticket=")
    ticket = answer["url"].split("ticket=", 1)[1].split("&", 1)[0]
    assert slack.socket.redeem(ticket) is True
    assert slack.socket.redeem(ticket) is False


def test_the_app_token_is_refused_for_web_api_methods(slack: SlackServer) -> None:
    with pytest.raises(SlackApiError) as refused:
        WebClient(base_url=slack.url, token=slack.app_token).auth_test()
    assert refused.value.response["error"] == "not_allowed_token_type"


def test_an_envelope_reaches_the_client_and_its_ack_payload_comes_back(
    slack: SlackServer,
) -> None:
    client, seen = connect(slack)
    try:
        sample = json.loads(
            (
                shared_dir() / "slack-payloads" / "socket-mode-envelopes.python-slack-sdk-test.json"
            ).read_text(encoding="utf-8")
        )["envelopes"][0]
        envelope_id = slack.socket.push(sample["type"], sample["payload"])

        assert slack.socket.wait_ack(envelope_id, timeout=30) == {"got": "slash_commands"}
        [request] = seen
        assert request.payload == sample["payload"]
        assert request.accepts_response_payload is True
    finally:
        client.close()


@pytest.mark.parametrize(
    ("envelope_type", "payload", "accepts"),
    [
        ("slash_commands", {"command": "/jit"}, True),
        ("interactive", {"type": "view_submission"}, True),
        ("interactive", {"type": "block_actions"}, False),
        ("events_api", {"event_id": "Ev0NOANSWER"}, False),
    ],
)
def test_accepts_response_payload_is_set_as_slack_sets_it(
    slack: SlackServer, envelope_type: str, payload: dict, accepts: bool
) -> None:
    slack.socket.push(envelope_type, payload)
    [delivery] = slack.socket.deliveries()
    assert delivery["envelope"]["accepts_response_payload"] is accepts


def test_an_unacked_event_is_delivered_again_with_its_retry_attempt(slack: SlackServer) -> None:
    client, seen = connect(slack, answer=False)
    try:
        slack.socket.push("events_api", {"event_id": "Ev0RETRY01", "event": {"type": "x"}})
        done = threading.Event()
        for _ in range(300):
            if len(slack.socket.deliveries()) >= 2:
                done.set()
                break
            done.wait(0.1)
        assert done.is_set()
        first, second = slack.socket.deliveries()[:2]
        assert first["envelope"]["retry_attempt"] == 0
        assert second["envelope"]["retry_attempt"] == 1
        assert second["envelope"]["retry_reason"] == "timeout"
        assert second["envelope"]["payload"]["event_id"] == "Ev0RETRY01"
    finally:
        client.close()


def test_a_slash_command_is_not_delivered_again_when_unacked(slack: SlackServer) -> None:
    client, _seen = connect(slack, answer=False)
    try:
        envelope_id = slack.socket.push("slash_commands", {"command": "/jit", "text": "help"})
        with pytest.raises(TimeoutError):
            slack.socket.wait_ack(envelope_id, timeout=1.5)
        assert len(slack.socket.deliveries()) == 1
    finally:
        client.close()


def test_an_envelope_pushed_while_no_socket_is_open_waits_for_one(slack: SlackServer) -> None:
    envelope_id = slack.socket.push("interactive", {"type": "block_actions"})
    client, _seen = connect(slack)
    try:
        assert slack.socket.wait_ack(envelope_id, timeout=30) == {"got": "interactive"}
    finally:
        client.close()


def test_a_disconnect_message_makes_the_client_open_a_new_link(slack: SlackServer) -> None:
    client, _seen = connect(slack)
    try:
        assert slack.socket.request_refresh(grace=5.0) == 1

        slack.socket.wait_connected(count=2, timeout=30)
        assert len(slack.calls("apps.connections.open")) == 2
        envelope_id = slack.socket.push("interactive", {"type": "block_actions"})
        assert slack.socket.wait_ack(envelope_id, timeout=30) == {"got": "interactive"}
    finally:
        client.close()


def handshake(slack: SlackServer, ticket: str, version: str = "13") -> bytes:
    """A raw WebSocket upgrade request to the stand-in; return the start of its answer."""
    with socket.create_connection((slack.host, slack.port), timeout=10) as conn:
        conn.sendall(
            (
                f"GET /link/?ticket={ticket} HTTP/1.1\r\nHost: {slack.host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: {version}\r\n\r\n"
            ).encode()
        )
        return conn.recv(4096)


def test_the_websocket_upgrade_needs_a_live_ticket_and_version_13(slack: SlackServer) -> None:
    url = WebClient(base_url=slack.url).apps_connections_open(app_token=slack.app_token)["url"]
    ticket = url.split("ticket=", 1)[1].split("&", 1)[0]

    assert b" 401 " in handshake(slack, "not-a-ticket").split(b"\r\n", 1)[0]
    assert b" 426 " in handshake(slack, ticket, version="8").split(b"\r\n", 1)[0]
    answer = handshake(slack, ticket)
    assert b" 101 " in answer.split(b"\r\n", 1)[0]
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer
    assert b" 401 " in handshake(slack, ticket).split(b"\r\n", 1)[0]
