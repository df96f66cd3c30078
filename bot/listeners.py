"""Bolt listeners: the slash command and the approval buttons.

Each listener acks at once (Slack gives three seconds) and leaves the slow work, posting
to approvers or writing to Azure, to a background worker: Bolt's lazy listeners for
clicks, and the bot's own executor where the work needs what the ack step created.
Every click is authorized again on the server: who clicked, whether they approve this
request, whether it is still pending.
Nothing in a payload is trusted beyond the request id it carries.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot import messages
from bot.commands import (
    CommandError,
    HelpCommand,
    ListCommand,
    RequestCommand,
    RevokeCommand,
    parse_command,
)
from bot.gate import GATED, AccessGate, GateRefusal
from jitcore.engine import Engine
from jitcore.errors import JitError, NotAuthorized, StateConflict
from jitcore.model import RequestStatus

log = logging.getLogger(__name__)

OPEN_STATUSES = (
    RequestStatus.PENDING,
    RequestStatus.APPROVED,
    RequestStatus.OPENING,
    RequestStatus.ACTIVE,
)


def register(app: App, engine: Engine, background: Executor, gate: AccessGate) -> None:
    def handle_command(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        try:
            command = parse_command(body.get("text") or "")
        except CommandError as exc:
            ack(response_type="ephemeral", text=messages.usage_error(exc.message, exc.usage))
            return
        # Access checks (identity, Azure RBAC): see bot.gate.
        if isinstance(command, GATED):
            early = gate.early_answer(command)
            if early is not None:
                ack(response_type="ephemeral", text=early)
                return
            ack(response_type="ephemeral", text=gate.ack_text(command))
            background.submit(
                _logged, _gated_command, engine, background, gate, command, body, respond
            )
            return
        ack(response_type="ephemeral", text=_run_command(engine, background, command, body))

    app.command("/jit")(handle_command)

    def ack_click(ack: Ack) -> None:
        ack()

    def approve(body: dict[str, Any], client: WebClient) -> None:
        _decide(engine, body, client, approve=True, gate=gate)

    def deny(body: dict[str, Any], client: WebClient) -> None:
        _decide(engine, body, client, approve=False, gate=gate)

    app.action(messages.APPROVE_ACTION)(ack=ack_click, lazy=[approve])
    app.action(messages.DENY_ACTION)(ack=ack_click, lazy=[deny])


def _run_command(engine: Engine, background: Executor, command: Any, body: dict[str, Any]) -> str:
    user_id = body["user_id"]
    if isinstance(command, HelpCommand):
        return messages.HELP_TEXT
    if isinstance(command, ListCommand):
        requests = engine.requests_of(user_id, OPEN_STATUSES)
        return messages.list_text(requests, engine.clock())
    if isinstance(command, RevokeCommand):
        return _revoke(engine, background, command.request_id, user_id)
    assert isinstance(command, RequestCommand)
    if command.source is None:
        return messages.missing_source()
    try:
        request = engine.submit(
            team_id=body.get("team_id", ""),
            requester_id=user_id,
            vm=command.vm,
            ports=list(command.ports),
            duration=command.duration,
            source=command.source,
            reason=command.reason,
        )
    except JitError as exc:
        return messages.error_text(exc.message)
    background.submit(_logged, engine.deliver, request.id)
    return messages.submitted_ack(request)


def _revoke(engine: Engine, background: Executor, request_id: int, user_id: str) -> str:
    request = engine.store.get_request(request_id)
    if request is None or (
        user_id != request.requester_id and user_id not in engine.approvers_of(request)
    ):
        engine.store.audit("revoke_refused", user_id, request_id if request else None)
        return messages.error_text(
            f"there is no request #{request_id} that you requested or approve"
        )
    if request.status != RequestStatus.ACTIVE:
        return messages.error_text(f"request #{request_id} is {request.status}, not active")
    background.submit(_logged, engine.revoke, request_id, user_id)
    return messages.revoked_ack(request_id)


def _gated_command(
    engine: Engine,
    background: Executor,
    gate: AccessGate,
    command: Any,
    body: dict[str, Any],
    respond: Respond,
) -> None:
    """Run a command's access checks, then the command; answer through response_url."""
    try:
        text = gate.run(command, body["user_id"])
        if text is None:
            text = _run_command(engine, background, command, body)
    except Exception:
        log.exception("the checked command %s failed", type(command).__name__)
        text = messages.gate_failed()
    respond(text=text, response_type="ephemeral", replace_original=False)


def _logged(work: Any, *args: Any) -> None:
    """Run background work; its failures are logged, as no user is waiting on them."""
    try:
        work(*args)
    except Exception:
        log.exception("background work %s%s failed", getattr(work, "__name__", work), args)


def _decide(
    engine: Engine, body: dict[str, Any], client: WebClient, approve: bool, gate: AccessGate
) -> None:
    user_id = body["user"]["id"]
    channel = (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id")
    action = body["actions"][0]
    value = str(action.get("value", ""))
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        log.info("click with a malformed request id from %s ignored", user_id)
        return
    request_id = int(value)
    try:
        request = engine.store.get_request(request_id)
        if request is None or request.team_id != body.get("team", {}).get("id", request.team_id):
            raise NotAuthorized(f"there is no request #{request_id} here")
        if approve:
            gate.authorize_approval(request, user_id)
            engine.approve(request_id, user_id)
        else:
            engine.deny(request_id, user_id)
    except GateRefusal as exc:
        _tell(client, channel, user_id, exc.text)
    except StateConflict as exc:
        _tell(
            client,
            channel,
            user_id,
            messages.already_decided(request_id, exc.current_status, exc.decided_by),
        )
    except NotAuthorized as exc:
        _tell(client, channel, user_id, messages.error_text(exc.message))


def _tell(client: WebClient, channel: str | None, user_id: str, text: str) -> None:
    if channel:
        client.chat_postEphemeral(channel=channel, user=user_id, text=text)
    else:
        opened = client.conversations_open(users=user_id)
        client.chat_postMessage(channel=opened["channel"]["id"], text=text)
