"""Driving a running sandbox stack the way Slack would: signed HTTP requests."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.messages import (
    DENY_REASON_CALLBACK,
    FOLLOW_UP_MARK,
    REASON_BLOCK,
    REASON_INPUT,
)
from bot.sandbox import SandboxStack
from jitcore.model import AccessRequest
from sandbox.slack import sender

T = TypeVar("T")
_COMMANDS = itertools.count(1)

REQUESTER = "U0REQ12345"
APPROVER = "U0APPROVR1"
SECOND_APPROVER = "U0APPROVR2"
OUTSIDER = "U0OUTSIDER"
APPROVAL_CHANNEL = "C0OPS12345"

FAST_POLICY = """
policies:
  - name: web-admin
    vms: [vm-web01]
    ports:
      - {port: 22, protocol: Tcp, max_duration: 3h}
      - {port: 3389, protocol: Tcp, max_duration: 3h}
    min_duration: 1s
    approvers: [U0APPROVR1, U0APPROVR2]
    approval_channel: C0OPS12345
"""


def wait_until(check: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Driver:
    """Sends signed Slack requests to the stack's bot and reads what happened."""

    def __init__(self, stack: SandboxStack) -> None:
        self.stack = stack

    @property
    def events_url(self) -> str:
        return self.stack.bot_url + "/slack/events"

    def deliver(self, body: str) -> tuple[int, str]:
        """Send a body the way Slack would (here: a signed HTTP request); return the
        status and the text of the answer."""
        status, _headers, text = sender.post(self.events_url, body, self.stack.signing_secret)
        return status, text

    def command(
        self, text: str, user: str = REQUESTER, follow: bool = True, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        """Send a slash command; return the HTTP status and the answer.

        A command whose checks need Azure is acked with ``FOLLOW_UP_MARK`` and answered
        through its response_url; with ``follow`` that answer is waited for and returned.
        """
        name = f"cmd-{next(_COMMANDS)}"
        body = sender.slash_command_body(
            text, user_id=user, response_url=self.stack.slack.response_url(name), **kwargs
        )
        status, reply = self.deliver(body)
        answer = json.loads(reply) if reply.startswith("{") else {"text": reply}
        if follow and str(answer.get("text", "")).startswith(FOLLOW_UP_MARK):
            answer = self.follow_up(name)
        return status, answer

    def follow_up(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The message the bot sent to the response_url called ``name``."""
        [call] = wait_until(
            lambda: [c for c in self.stack.slack.calls("response_url") if c.get("name") == name],
            timeout,
            f"the answer at response_url {name}",
        )
        return dict(call["args"])

    def click(self, action_id: str, request_id: int | str, user: str = APPROVER) -> int:
        request = self.request(int(request_id)) if str(request_id).isdigit() else None
        ts = (request.approval_ts if request else None) or "1700000000.000100"
        body = sender.block_action_body(
            action_id,
            str(request_id),
            user_id=user,
            message_ts=ts,
            response_url=self.stack.slack.response_url("click"),
        )
        status, _text = self.deliver(body)
        return status

    def deny(self, request_id: int, user: str = APPROVER, reason: str = "") -> int:
        """Click Deny, wait for the reason form it opens, and submit it; return the HTTP
        status of the submission."""
        opened = len(self.stack.slack.calls("views.open"))
        assert self.click("jit_deny", request_id, user=user) == 200
        [form] = wait_until(
            lambda: self.stack.slack.calls("views.open")[opened:], what="the deny form"
        )
        metadata = form["args"]["view"]["private_metadata"]
        return self.submit_deny_reason(request_id, user, reason, metadata)

    def submit_deny_reason(
        self, request_id: int, user: str = APPROVER, reason: str = "", metadata: str | None = None
    ) -> int:
        """Submit the deny form of ``request_id`` as ``user`` would (view_submission)."""
        metadata = metadata or json.dumps({"request_id": request_id, "channel": APPROVAL_CHANNEL})
        body = sender.view_submission_body(
            DENY_REASON_CALLBACK,
            {REASON_BLOCK: {REASON_INPUT: reason}},
            user_id=user,
            private_metadata=metadata,
        )
        status, _text = self.deliver(body)
        return status

    def request(self, request_id: int) -> AccessRequest | None:
        assert self.stack.bot is not None
        return self.stack.bot.store.get_request(request_id)

    def wait_status(self, request_id: int, status: str, timeout: float = 15.0) -> AccessRequest:
        return wait_until(
            lambda: (r := self.request(request_id)) is not None and r.status == status and r,
            timeout,
            f"request {request_id} to be {status}",
        )

    def posts(self, channel: str | None = None) -> list[dict[str, Any]]:
        calls = self.stack.slack.calls("chat.postMessage")
        return [c for c in calls if channel is None or c["args"].get("channel") == channel]

    def dms_to(self, user: str) -> list[str]:
        """Texts posted to the DM channel the stand-in opened for ``user``."""
        opened = [
            c["response"]["channel"]["id"]
            for c in self.stack.slack.calls("conversations.open")
            if c["args"].get("users") == user and c.get("ok")
        ]
        return [
            c["args"].get("text", "") for c in self.posts() if c["args"].get("channel") in opened
        ]

    def ephemerals_to(self, user: str) -> list[str]:
        return [
            c["args"].get("text", "")
            for c in self.stack.slack.calls("chat.postEphemeral")
            if c["args"].get("user") == user
        ]


def write_policy(directory: Path, text: str = FAST_POLICY) -> Path:
    path = directory / "policies.yaml"
    path.write_text(text, encoding="utf-8")
    return path


class SocketDriver(Driver):
    """Drives a stack in Socket Mode: the same requests, pushed as envelopes through the
    Slack stand-in's WebSocket; the status is 200 once the bot acked, the answer its ack."""

    def deliver(self, body: str) -> tuple[int, str]:
        status, answer = sender.push(self.stack.slack.base, body, wait=30.0)
        if status != 200:
            return status, json.dumps(answer)
        ack = answer.get("ack")
        return 200, json.dumps(ack) if ack is not None else ""
