"""A real Bolt app behind WSGI, fed by the sender, talking to the Slack sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient

from sandbox.slack import sender
from sandbox.slack.server import SlackServer

SECRET = "sandbox-signing-secret"
OPS = "C0OPS12345"
APPROVE_BLOCKS = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "request #42"}},
    {
        "type": "actions",
        "block_id": "jit-req-42-actions",
        "elements": [
            {
                "type": "button",
                "action_id": "jit_approve",
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": "42",
            }
        ],
    },
]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


def _build_app(slack: SlackServer) -> App:
    client = WebClient(base_url=slack.url, token=slack.bot_token)
    # process_before_response: the listener has finished when the HTTP answer arrives.
    app = App(signing_secret=SECRET, client=client, process_before_response=True)

    @app.command("/jit")
    def jit(ack: Any, command: dict[str, Any], say: Any, client: WebClient, respond: Any) -> None:
        ack("Working on it")
        say(f"<@{command['user_id']}> asked: {command['text']}")
        client.chat_postMessage(channel=OPS, text="request #42", blocks=APPROVE_BLOCKS)
        respond("Request #42 sent to the approvers")

    @app.action("jit_approve")
    def approve(ack: Any, body: dict[str, Any], client: WebClient) -> None:
        ack()
        container = body["container"]
        client.chat_update(
            channel=container["channel_id"],
            ts=container["message_ts"],
            text=f"Approved by <@{body['user']['id']}>",
            blocks=[],
        )

    @app.view("jit_deny_modal")
    def deny(ack: Any, view: dict[str, Any], client: WebClient) -> None:
        ack()
        reason = view["state"]["values"]["reason_block"]["reason_input"]["value"]
        client.chat_postMessage(channel=OPS, text=f"Denied: {reason}")

    @app.event("app_home_opened")
    def home(event: dict[str, Any], client: WebClient) -> None:
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    return app


@pytest.fixture
def bolt_url(slack: SlackServer) -> Iterator[str]:
    """The app's /slack/events URL on a WSGI server on loopback."""
    handler = SlackRequestHandler(_build_app(slack))
    httpd: WSGIServer = make_server("127.0.0.1", 0, handler, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/slack/events"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_slash_command_from_the_sender_reaches_the_listener(
    slack: SlackServer, bolt_url: str
) -> None:
    body = sender.slash_command_body(
        "request vm-web01 22 2h", response_url=slack.response_url("cmd")
    )

    status, headers, text = sender.post(bolt_url, body, SECRET)

    assert status == 200
    assert "Working on it" in text
    posted = [c["args"]["text"] for c in slack.calls("chat.postMessage")]
    assert posted == ["<@U0REQ12345> asked: request vm-web01 22 2h", "request #42"]
    [reply] = slack.calls("response_url")
    assert (reply["name"], reply["args"]["text"]) == ("cmd", "Request #42 sent to the approvers")


def test_button_click_from_the_sender_updates_the_posted_message(
    slack: SlackServer, bolt_url: str
) -> None:
    command = sender.slash_command_body("request", response_url=slack.response_url("cmd"))
    sender.post(bolt_url, command, SECRET)
    request_message = slack.messages(OPS)[-1]

    body = sender.block_action_body(
        "jit_approve",
        "42",
        "U0APPROVR1",
        request_message["ts"],
        response_url=slack.response_url("click"),
        message=request_message,
    )
    status, _, _ = sender.post(bolt_url, body, SECRET)

    assert status == 200
    assert slack.messages(OPS)[-1]["text"] == "Approved by <@U0APPROVR1>"


def test_view_submission_from_the_sender_reaches_the_view_listener(
    slack: SlackServer, bolt_url: str
) -> None:
    values = {"reason_block": {"reason_input": "change freeze"}}
    body = sender.view_submission_body("jit_deny_modal", values, "U0APPROVR1")

    status, _, _ = sender.post(bolt_url, body, SECRET)

    assert status == 200
    assert slack.messages(OPS)[-1]["text"] == "Denied: change freeze"


def test_event_from_the_sender_reaches_the_event_listener(
    slack: SlackServer, bolt_url: str
) -> None:
    event = {
        "type": "app_home_opened",
        "user": "U0REQ12345",
        "channel": "D0REQ12345",
        "tab": "home",
    }

    status, _, _ = sender.post(bolt_url, sender.event_body(event), SECRET)

    assert status == 200
    [call] = slack.calls("views.publish")
    assert call["args"]["user_id"] == "U0REQ12345"


def test_stale_timestamp_is_rejected_with_401(slack: SlackServer, bolt_url: str) -> None:
    body = sender.slash_command_body("list", response_url=slack.response_url("stale"))

    status, _, _ = sender.post(bolt_url, body, SECRET, timestamp=int(time.time()) - 301)

    assert status == 401
    assert slack.calls("chat.postMessage") == []


def test_tampered_body_is_rejected_with_401(slack: SlackServer, bolt_url: str) -> None:
    body = sender.slash_command_body("list", response_url=slack.response_url("tampered"))
    headers = sender.sign(SECRET, body)
    tampered = body.replace("text=list", "text=revoke+42")

    status, _, _ = sender.post(bolt_url, tampered, SECRET, extra_headers=headers)

    assert status == 401
    assert slack.calls("chat.postMessage") == []


def test_wrong_signing_secret_is_rejected_with_401(slack: SlackServer, bolt_url: str) -> None:
    body = sender.slash_command_body("list", response_url=slack.response_url("wrong"))

    status, _, _ = sender.post(bolt_url, body, "not-the-secret")

    assert status == 401
