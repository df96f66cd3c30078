"""Bolt listeners: the slash command, the buttons (Approve, Deny, Extend, End now), the
deny-reason modal and the App Home tab.

Each listener acks at once (Slack gives three seconds) and leaves the slow work, posting
to approvers or writing to Azure, to a background worker: Bolt's lazy listeners for
clicks, and the bot's own executor where the work needs what the ack step created.
Every click is authorized again on the server: who clicked, whether they approve this
request, whether it is still pending.
Nothing in a payload is trusted beyond the request id it carries.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import messages
from bot.commands import (
    CommandError,
    ExtendCommand,
    HelpCommand,
    ListCommand,
    PolicyProtectCommand,
    PolicyUnprotectCommand,
    ProtectionCommand,
    RequestCommand,
    RequestFormCommand,
    RevokeCommand,
    ScanCommand,
    SourceCommand,
    parse_command,
)
from bot.gate import GATED, AccessGate, GateRefusal
from bot.home import OPEN_STATUSES, publish_home
from bot.protection import ProtectionDesk
from bot.requesting import Draft, RequestDesk
from jitcore.engine import EXTEND_BUTTON_STEP, AlreadyCounted, Engine, ExtensionTooLong
from jitcore.errors import JitError, NotAuthorized, StateConflict
from jitcore.model import AccessRequest, RequestStatus

log = logging.getLogger(__name__)


def register(
    app: App,
    engine: Engine,
    background: Executor,
    gate: AccessGate,
    desk: ProtectionDesk | None,
    request_desk: RequestDesk,
) -> None:
    def handle_command(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        try:
            command = parse_command(body.get("text") or "")
        except CommandError as exc:
            ack(response_type="ephemeral", text=messages.usage_error(exc.message, exc.usage))
            return
        if isinstance(command, RequestCommand | RequestFormCommand | SourceCommand):
            _request_command(request_desk, background, command, body, ack, respond)
            return
        # Access checks (identity, Azure RBAC): see bot.gate.
        if isinstance(command, GATED):
            ack(response_type="ephemeral", text=gate.ack_text(command))
            background.submit(
                _logged, _gated_command, engine, background, gate, command, body, respond, desk
            )
            return
        ack(response_type="ephemeral", text=_run_command(engine, background, command, body))

    app.command("/jit")(handle_command)

    def ack_click(ack: Ack) -> None:
        ack()

    def approve(body: dict[str, Any], client: WebClient) -> None:
        _decide(engine, body, client, approve=True, gate=gate)
        _refresh_home(engine, gate, client, body)

    def deny(body: dict[str, Any], client: WebClient) -> None:
        _ask_deny_reason(engine, body, client, gate)

    def deny_with_reason(body: dict[str, Any], client: WebClient) -> None:
        _deny_with_reason(engine, body, client, gate)

    def extend(body: dict[str, Any], client: WebClient) -> None:
        _extend_click(engine, body, client, gate)

    def end_now(body: dict[str, Any], client: WebClient) -> None:
        _end_now_click(engine, body, client)
        _refresh_home(engine, gate, client, body)

    def home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab") == "home" and event.get("user"):
            publish_home(engine, gate, client, str(event["user"]))

    app.action(messages.APPROVE_ACTION)(ack=ack_click, lazy=[approve])
    app.action(messages.DENY_ACTION)(ack=ack_click, lazy=[deny])
    app.view(messages.DENY_REASON_CALLBACK)(ack=ack_click, lazy=[deny_with_reason])
    app.action(messages.EXTEND_ACTION)(ack=ack_click, lazy=[extend])
    app.action(messages.END_NOW_ACTION)(ack=ack_click, lazy=[end_now])
    app.event("app_home_opened")(ack=ack_click, lazy=[home_opened])
    _register_request_form(app, background, request_desk)


# -- Requests: inline, the form, saved sources (see bot.requesting) ----------------------


def _request_command(
    desk: RequestDesk,
    background: Executor,
    command: RequestCommand | RequestFormCommand | SourceCommand,
    body: dict[str, Any],
    ack: Ack,
    respond: Respond,
) -> None:
    user_id, team_id = body["user_id"], body.get("team_id", "")
    if isinstance(command, SourceCommand):
        ack(response_type="ephemeral", text=desk.source_command(command, user_id))
        return
    if isinstance(command, RequestFormCommand):
        ack(response_type="ephemeral", text=messages.opening_form())
        background.submit(_logged, desk.open_form, body, respond)
        return
    draft = Draft.of(command)
    early = desk.early_answer(draft)
    if early is not None:
        ack(response_type="ephemeral", text=early)
        return
    names = ", ".join(draft.vms)
    ack(response_type="ephemeral", text=messages.checking_access(f"to {names}"))

    def reply(text: str, blocks: list[dict[str, Any]] | None) -> None:
        respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)

    def finish() -> None:
        try:
            desk.finish(draft, user_id, team_id, reply)
        except Exception:
            log.exception("the request of %s failed", user_id)
            reply(messages.gate_failed(), None)

    background.submit(finish)


def _register_request_form(app: App, background: Executor, desk: RequestDesk) -> None:
    def submit_form(ack: Ack, body: dict[str, Any]) -> None:
        """Checked here, within Slack's three seconds, so errors show on the form."""
        draft, errors = desk.read_form(body.get("view") or {})
        if draft is None:
            ack(response_action="errors", errors=errors)
            return
        ack()
        user_id = body["user"]["id"]
        team_id = (body.get("team") or {}).get("id", "")
        background.submit(_logged, desk.submit_form, draft, user_id, team_id)

    def link_opened(ack: Ack) -> None:
        ack()  # the button opens its URL in the browser; the page does the work

    app.view(messages.REQUEST_FORM_CALLBACK)(submit_form)
    app.action(messages.MY_IP_ACTION)(link_opened)


def _run_command(
    engine: Engine,
    background: Executor,
    command: Any,
    body: dict[str, Any],
    desk: ProtectionDesk | None = None,
) -> str:
    user_id = body["user_id"]
    if isinstance(command, ProtectionCommand):
        return _run_protection(desk, background, command, user_id)
    if isinstance(command, HelpCommand):
        return messages.HELP_TEXT
    if isinstance(command, ListCommand):
        requests = engine.requests_of(user_id, OPEN_STATUSES)
        return messages.list_text(requests, engine.clock())
    if isinstance(command, RevokeCommand):
        return _revoke(engine, background, command.request_id, user_id)
    assert isinstance(command, ExtendCommand), type(command).__name__
    return _extend(engine, command.request_id, user_id, command.duration)


def _run_protection(
    desk: ProtectionDesk | None, background: Executor, command: Any, user_id: str
) -> str:
    if desk is None:
        return messages.error_text("protection commands are not available in this deployment")
    if isinstance(command, PolicyProtectCommand):
        return desk.protect(command.vm, user_id)
    if isinstance(command, PolicyUnprotectCommand):
        return desk.unprotect(command.vm, user_id)
    assert isinstance(command, ScanCommand)
    background.submit(_logged, desk.scan, user_id)
    return messages.scan_started()


def _extend(engine: Engine, request_id: int, user_id: str, duration: timedelta) -> str:
    """Extend now; the caller has been checked (bot.gate) and runs off the ack path."""
    try:
        return messages.extended_ack(engine.extend(request_id, user_id, duration))
    except ExtensionTooLong as exc:
        return messages.extension_too_long(exc.request_id, exc.limit, exc.longest)
    except JitError as exc:
        return messages.error_text(exc.message)


def _revoke(engine: Engine, background: Executor, request_id: int, user_id: str) -> str:
    request = engine.store.get_request(request_id)
    refusal = _revoke_refusal(engine, request, request_id, user_id)
    if refusal is not None:
        return refusal
    background.submit(_logged, engine.revoke, request_id, user_id)
    if engine.is_defender_request(request_id):
        return messages.defender_revoke_ack(request_id)
    return messages.revoked_ack(request_id)


def _revoke_refusal(
    engine: Engine, request: AccessRequest | None, request_id: int, user_id: str
) -> str | None:
    """Why ``user_id`` may not end ``request`` now (only its requester or an approver may,
    while it is active), or None."""
    if request is None or (
        user_id != request.requester_id and user_id not in engine.approvers_of(request)
    ):
        engine.store.audit("revoke_refused", user_id, request_id if request else None)
        return messages.error_text(
            f"there is no request #{request_id} that you requested or approve"
        )
    if request.status != RequestStatus.ACTIVE:
        return messages.error_text(f"request #{request_id} is {request.status}, not active")
    return None


def _end_now_click(engine: Engine, body: dict[str, Any], client: WebClient) -> None:
    """End now (App Home): a revoke, authorized like ``/jit revoke``."""
    user_id = body["user"]["id"]
    request = _clicked_request(engine, body)
    if request is None or request.id is None:
        _tell(client, None, user_id, messages.error_text("there is no such request here"))
        return
    refusal = _revoke_refusal(engine, request, request.id, user_id)
    if refusal is not None:
        _tell(client, None, user_id, refusal)
        return
    engine.revoke(request.id, user_id)


def _refresh_home(
    engine: Engine, gate: AccessGate, client: WebClient, body: dict[str, Any]
) -> None:
    """Publish the clicker's home tab again when the click came from it."""
    if (body.get("container") or {}).get("type") == "view":
        _publish_home_quietly(engine, gate, client, body["user"]["id"])


def _publish_home_quietly(
    engine: Engine, gate: AccessGate, client: WebClient, user_id: str
) -> None:
    try:
        publish_home(engine, gate, client, user_id)
    except Exception:
        log.exception("could not refresh the home tab of %s", user_id)


def _gated_command(
    engine: Engine,
    background: Executor,
    gate: AccessGate,
    command: Any,
    body: dict[str, Any],
    respond: Respond,
    desk: ProtectionDesk | None = None,
) -> None:
    """Run a command's access checks, then the command; answer through response_url."""
    try:
        text = gate.run(command, body["user_id"])
        if text is None:
            text = _run_command(engine, background, command, body, desk)
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
    value = str(body["actions"][0].get("value", "")).split(":", 1)[0]
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        log.info("click with a malformed request id from %s ignored", user_id)
        return
    team_id = body.get("team", {}).get("id")
    _settle(engine, client, _click_channel(body), user_id, int(value), team_id, gate, approve)


def _settle(
    engine: Engine,
    client: WebClient,
    channel: str | None,
    user_id: str,
    request_id: int,
    team_id: str | None,
    gate: AccessGate,
    approve: bool,
    note: str = "",
) -> bool:
    """Approve or deny, authorized again here; tell the clicker why not. True if done."""
    try:
        request = engine.store.get_request(request_id)
        if request is None or request.team_id != team_id:
            engine.store.audit(
                "decision_refused",
                user_id,
                request_id if request is not None else None,
                reason="no such request in the clicker's workspace",
                team=team_id,
            )
            raise NotAuthorized(f"there is no request #{request_id} here")
        if approve:
            network = gate.authorize_approval(request, user_id)
            engine.approve(request_id, user_id, network=network)
        else:
            engine.deny(request_id, user_id, note)
        return True
    except GateRefusal as exc:
        _tell(client, channel, user_id, exc.text)
    except AlreadyCounted:
        _tell(client, channel, user_id, messages.already_counted(request_id))
    except StateConflict as exc:
        _tell(
            client,
            channel,
            user_id,
            messages.already_decided(request_id, exc.current_status, exc.decided_by),
        )
    except NotAuthorized as exc:
        _tell(client, channel, user_id, messages.error_text(exc.message))
    return False


# -- Deny with a reason ------------------------------------------------------------------


def _ask_deny_reason(
    engine: Engine, body: dict[str, Any], client: WebClient, gate: AccessGate
) -> None:
    """Deny opens a modal asking for an optional reason (with the click's trigger_id).

    Only an approver of a pending request gets the modal; the submission is authorized
    again. If Slack's trigger expired before the modal opened, the request is denied
    without a reason and the clicker is told so.
    """
    user_id = body["user"]["id"]
    channel = _click_channel(body)
    request = _clicked_request(engine, body)
    if request is None or request.id is None:
        _tell(client, channel, user_id, messages.error_text("there is no such request here"))
        return
    try:
        engine.authorize_decision(request, user_id)
    except NotAuthorized as exc:
        engine.store.audit("decision_refused", user_id, request.id, reason=exc.message)
        _tell(client, channel, user_id, messages.error_text(exc.message))
        return
    if request.status != RequestStatus.PENDING:
        text = messages.already_decided(request.id, request.status, request.decided_by)
        _tell(client, channel, user_id, text)
        return
    from_home = (body.get("container") or {}).get("type") == "view"
    metadata = json.dumps({"request_id": request.id, "channel": channel, "home": from_home})
    try:
        client.views_open(
            trigger_id=str(body.get("trigger_id", "")),
            view=messages.deny_reason_view(request, metadata),
        )
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error != "expired_trigger_id":
            log.warning("could not open the deny form for request %s: %s", request.id, error)
            _tell(client, channel, user_id, messages.deny_form_failed(request.id))
            return
        log.info("deny form for request %s expired before it opened; denying", request.id)
        team_id = body.get("team", {}).get("id")
        if _settle(engine, client, channel, user_id, request.id, team_id, gate, False):
            _tell(client, channel, user_id, messages.denied_without_reason(request.id))


def _deny_with_reason(
    engine: Engine, body: dict[str, Any], client: WebClient, gate: AccessGate
) -> None:
    """The deny modal's submission: deny with the note, authorized as for a click."""
    user_id = body["user"]["id"]
    view = body.get("view") or {}
    metadata = _deny_metadata(view.get("private_metadata"))
    if metadata is None:
        log.info("deny submission with malformed metadata from %s ignored", user_id)
        return
    request_id, channel, from_home = metadata
    team_id = body.get("team", {}).get("id")
    note = _submitted_reason(view)
    _settle(engine, client, channel, user_id, request_id, team_id, gate, False, note)
    if from_home:
        _publish_home_quietly(engine, gate, client, user_id)


_CHANNEL_ID = re.compile(r"[CDG][A-Z0-9]{2,30}")


def _deny_metadata(text: Any) -> tuple[int, str | None, bool] | None:
    """(request id, channel to answer in, whether it came from App Home) from the modal."""
    try:
        data = json.loads(str(text))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    request_id = data.get("request_id")
    if type(request_id) is not int or not 0 < request_id < 10**12:
        return None
    channel = data.get("channel")
    channel = channel if isinstance(channel, str) and _CHANNEL_ID.fullmatch(channel) else None
    return request_id, channel, data.get("home") is True


def _submitted_reason(view: dict[str, Any]) -> str:
    values = (view.get("state") or {}).get("values") or {}
    field = (values.get(messages.REASON_BLOCK) or {}).get(messages.REASON_INPUT) or {}
    reason = field.get("value") if isinstance(field, dict) else None
    return str(reason or "").strip()[: messages.MAX_DENY_REASON]


def _clicked_request(engine: Engine, body: dict[str, Any]) -> AccessRequest | None:
    """The request a button names, if it exists in the clicker's workspace; nothing else
    in the payload is trusted."""
    value = str(body["actions"][0].get("value", "")).split(":", 1)[0]
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        log.info("click with a malformed request id from %s ignored", body["user"]["id"])
        return None
    request = engine.store.get_request(int(value))
    if request is None or request.team_id != body.get("team", {}).get("id", request.team_id):
        return None
    return request


def _click_channel(body: dict[str, Any]) -> str | None:
    return (body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id")


def _extend_click(
    engine: Engine, body: dict[str, Any], client: WebClient, gate: AccessGate
) -> None:
    """The Extend button of an expiring-soon warning: the end moves by the button's step,
    capped at the policy's maximum; authorized like ``/jit extend``."""
    user_id = body["user"]["id"]
    channel = _click_channel(body)
    request = _clicked_request(engine, body)
    if request is None:
        _tell(client, channel, user_id, messages.error_text("there is no such request here"))
        return
    assert request.id is not None
    try:
        gate.authorize_extension(request, user_id)
        extended = engine.extend_by_step(request.id, user_id, EXTEND_BUTTON_STEP, _warned_end(body))
    except GateRefusal as exc:
        _tell(client, channel, user_id, exc.text)
        return
    except ExtensionTooLong as exc:
        _tell(
            client,
            channel,
            user_id,
            messages.extension_too_long(exc.request_id, exc.limit, exc.longest),
        )
        return
    except JitError as exc:
        _tell(client, channel, user_id, messages.error_text(exc.message))
        return
    _replace_clicked(
        client, body, messages.extended_ack(extended), messages.extended_blocks(extended)
    )


def _warned_end(body: dict[str, Any]) -> datetime | None:
    """The end an Extend button was made for (see messages.extend_button_value), if the
    button says; None for a button made before it did."""
    _, _, end = str(body["actions"][0].get("value", "")).partition(":")
    if not (end.isascii() and end.isdigit()) or len(end) > 18:
        return None
    return messages.EPOCH + timedelta(microseconds=int(end))


def _replace_clicked(
    client: WebClient, body: dict[str, Any], text: str, blocks: list[dict[str, Any]]
) -> None:
    """Edit the message whose button was clicked (best effort: it is cosmetic)."""
    container = body.get("container") or {}
    channel, ts = container.get("channel_id"), container.get("message_ts")
    if container.get("type") != "message" or not (channel and ts):
        return
    try:
        client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
    except Exception as exc:
        log.warning("could not edit the clicked message: %s", type(exc).__name__)


def _tell(client: WebClient, channel: str | None, user_id: str, text: str) -> None:
    if channel:
        client.chat_postEphemeral(channel=channel, user=user_id, text=text)
    else:
        opened = client.conversations_open(users=user_id)
        client.chat_postMessage(channel=opened["channel"]["id"], text=text)
