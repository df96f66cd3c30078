"""Build, sign and send the HTTP requests Slack sends to a Bolt app.

Bodies follow the shapes and field order of the samples in the project's shared Slack
payloads (slash command, block_actions, view_submission, event_callback), with the
sandbox's seeded ids as defaults. Sign the exact string you send: re-encoding a body
after signing breaks the signature.

The default `response_url` points at a closed port on loopback, so a test that forgets
to pass `SlackServer.response_url(...)` fails fast and never reaches Slack.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.error import HTTPError
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from slack_sdk.signature import SignatureVerifier

from sandbox.slack import seed

DEFAULT_RESPONSE_URL = "http://127.0.0.1:9/sandbox/response/unset"
# Slack's deprecated verification token; Bolt ignores it, it is sent for realism only.
VERIFICATION_TOKEN = "gIkuvaNzQIHg97ATvDxqgjtO"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
USER_AGENT = "Slackbot 1.0 (+https://api.slack.com/robots)"


def sign(signing_secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends with `body`: content type, timestamp and v0 signature.

    The content type is JSON for a body that starts with "{" (Events API), else a form.
    """
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    content_type = JSON_CONTENT_TYPE if body.lstrip().startswith("{") else FORM_CONTENT_TYPE
    return {
        "content-type": content_type,
        "x-slack-request-timestamp": ts,
        "x-slack-signature": signature,
    }


def slash_command_body(
    text: str,
    user_id: str = seed.REQUESTER,
    user_name: str = "alice",
    channel_id: str = seed.APPROVERS_CHANNEL,
    team_id: str = seed.TEAM_ID,
    response_url: str = DEFAULT_RESPONSE_URL,
    trigger_id: str | None = None,
    command: str = "/jit",
    *,
    channel_name: str | None = None,
    team_domain: str = seed.TEAM_DOMAIN,
    enterprise: tuple[str, str] | None = None,
    api_app_id: str = seed.API_APP_ID,
) -> str:
    """A slash command body: every field Slack sends, in Slack's order.

    `enterprise` is (enterprise_id, enterprise_name) for an Enterprise Grid workspace.
    """
    fields: list[tuple[str, str]] = [
        ("token", VERIFICATION_TOKEN),
        ("team_id", team_id),
        ("team_domain", team_domain),
    ]
    if enterprise is not None:
        fields += [("enterprise_id", enterprise[0]), ("enterprise_name", enterprise[1])]
    fields += [
        ("channel_id", channel_id),
        ("channel_name", channel_name or _channel_name(channel_id)),
        ("user_id", user_id),
        ("user_name", user_name),
        ("command", command),
        ("text", text),
        ("api_app_id", api_app_id),
        ("is_enterprise_install", "false"),
        ("response_url", response_url),
        ("trigger_id", trigger_id or new_trigger_id()),
    ]
    return urlencode(fields)


def block_action_body(
    action_id: str,
    value: str,
    user_id: str,
    message_ts: str,
    channel_id: str = seed.APPROVERS_CHANNEL,
    team_id: str = seed.TEAM_ID,
    response_url: str = DEFAULT_RESPONSE_URL,
    message: Mapping[str, Any] | None = None,
    *,
    user_name: str | None = None,
    trigger_id: str | None = None,
    action_ts: str | None = None,
) -> str:
    """A block_actions body (`payload=<quoted JSON>`) for a button click on a message.

    Pass the message as the bot posted it (e.g. from `SlackServer.messages`) so that the
    action copies its block_id, text and style from the clicked button; without one, a
    message holding just that button is made up.
    """
    message = (
        dict(message)
        if message is not None
        else _button_message(action_id, value, message_ts, team_id)
    )
    user_name = user_name or _user_name(user_id)
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": seed.API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": team_id, "domain": seed.TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": _channel_name(channel_id)},
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [_action(message, action_id, value, action_ts)],
    }
    return form_payload(payload)


def view_submission_body(
    callback_id: str,
    values: Mapping[str, Mapping[str, Any]],
    user_id: str,
    private_metadata: str = "",
    team_id: str = seed.TEAM_ID,
    *,
    view_id: str = "V0SANDBOX01",
    user_name: str | None = None,
    blocks: list[dict[str, Any]] | None = None,
    title: str = "Sandbox",
    submit: str = "Submit",
    trigger_id: str | None = None,
) -> str:
    """A view_submission body (`payload=<quoted JSON>`) for a modal.

    `values` is `state.values`: {block_id: {action_id: value}}, where a plain string
    value stands for a plain_text_input. Without `blocks`, one input block per value.
    """
    state = {
        block_id: {action_id: _input_value(v) for action_id, v in actions.items()}
        for block_id, actions in values.items()
    }
    user_name = user_name or _user_name(user_id)
    view = {
        "id": view_id,
        "team_id": team_id,
        "type": "modal",
        "blocks": blocks if blocks is not None else _input_blocks(state),
        "private_metadata": private_metadata,
        "callback_id": callback_id,
        "state": {"values": state},
        "hash": f"{int(time.time())}.{secrets.token_urlsafe(6)}",
        "title": _plain(title, emoji=None),
        "clear_on_close": False,
        "notify_on_close": False,
        "close": _plain("Cancel", emoji=None),
        "submit": _plain(submit, emoji=None),
        "previous_view_id": None,
        "root_view_id": view_id,
        "app_id": seed.API_APP_ID,
        "external_id": "",
        "app_installed_team_id": team_id,
        "bot_id": seed.BOT_ID,
    }
    payload = {
        "type": "view_submission",
        "team": {"id": team_id, "domain": seed.TEAM_DOMAIN},
        "user": {"id": user_id, "username": user_name, "name": user_name, "team_id": team_id},
        "api_app_id": seed.API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": view,
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return form_payload(payload)


def event_body(
    event: Mapping[str, Any],
    team_id: str = seed.TEAM_ID,
    event_id: str | None = None,
    *,
    api_app_id: str = seed.API_APP_ID,
    event_time: int | None = None,
    bot_user_id: str = seed.BOT_USER_ID,
    token: str = VERIFICATION_TOKEN,
) -> str:
    """An Events API `event_callback` envelope around `event`, as JSON text.

    Keep the returned `event_id` stable across deliveries to model Slack's retries.
    """
    event_type = str(event.get("type", ""))
    context = json.dumps({"et": event_type}, separators=(",", ":")).encode()
    envelope = {
        "token": token,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id or new_event_id(),
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-" + base64.urlsafe_b64encode(context).decode().rstrip("="),
    }
    return json.dumps(envelope)


def post(
    url: str,
    body: str,
    signing_secret: str,
    timestamp: int | None = None,
    extra_headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], str]:
    """Sign and POST `body` to a Bolt app; no retries, no proxies.

    Returns (status, headers with lower-case names, text) for any HTTP status; network
    errors raise urllib's URLError.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs can be posted to, not {url!r}")

    headers = {"user-agent": USER_AGENT, **sign(signing_secret, body, timestamp)}
    headers.update(extra_headers or {})
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    # An empty ProxyHandler: environment proxies must not see requests meant for loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, _lower(response.headers.items()), _text(response.read())
    except HTTPError as error:
        with error:
            return error.code, _lower(error.headers.items()), _text(error.read())


def socket_envelope(body: str) -> tuple[str, dict[str, Any]]:
    """The Socket Mode form of an HTTP body built here: (envelope type, payload).

    Over Socket Mode Slack sends the same fields as JSON: a slash command's form fields as
    an object, an interaction's ``payload`` JSON as it is, an event callback unchanged.
    """
    if body.startswith("{"):
        return "events_api", json.loads(body)
    fields = dict(parse_qsl(body, keep_blank_values=True))
    if set(fields) == {"payload"}:
        return "interactive", json.loads(fields["payload"])
    return "slash_commands", fields


def push(
    slack_base: str, body: str, wait: float = 30.0, timeout: float = 40.0
) -> tuple[int, dict[str, Any]]:
    """Send ``body`` through the Slack stand-in's Socket Mode link to the app.

    ``slack_base`` is the stand-in's address (``http://127.0.0.1:port``). Returns the
    HTTP status of ``/sandbox/socket/push`` and its answer: ``envelope_id`` and the app's
    ``ack`` payload, waited for up to ``wait`` seconds.
    """
    envelope_type, payload = socket_envelope(body)
    request = urllib.request.Request(
        slack_base.rstrip("/") + "/sandbox/socket/push",
        data=json.dumps({"type": envelope_type, "payload": payload, "wait": wait}).encode(),
        headers={"content-type": JSON_CONTENT_TYPE},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


def form_payload(payload: Mapping[str, Any]) -> str:
    """An interactivity body: `payload=` + the URL-quoted JSON, as Slack sends it."""
    return "payload=" + quote(json.dumps(payload))


def new_trigger_id() -> str:
    return f"{int(time.time() * 1000)}.{secrets.randbelow(10**10):010d}.{secrets.token_hex(16)}"


def new_event_id() -> str:
    return "Ev" + secrets.token_hex(5).upper()


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _channel_name(channel_id: str) -> str:
    if channel_id.startswith("D"):
        return "directmessage"
    return seed.default_channels().get(channel_id, "privategroup")


def _user_name(user_id: str) -> str:
    user = seed.default_users().get(user_id)
    return str(user["name"]) if user else user_id.lower()


def _plain(text: str, emoji: bool | None = True) -> dict[str, Any]:
    """A plain_text object; Slack echoes `emoji` on buttons but not on view titles."""
    obj: dict[str, Any] = {"type": "plain_text", "text": text}
    if emoji is not None:
        obj["emoji"] = emoji
    return obj


def _button_message(action_id: str, value: str, ts: str, team_id: str) -> dict[str, Any]:
    button = {"type": "button", "action_id": action_id, "text": _plain(action_id), "value": value}
    return {
        "user": seed.BOT_USER_ID,
        "type": "message",
        "ts": ts,
        "bot_id": seed.BOT_ID,
        "app_id": seed.API_APP_ID,
        "text": "",
        "team": team_id,
        "blocks": [{"type": "actions", "block_id": "actions", "elements": [button]}],
    }


def _find_element(message: Mapping[str, Any], action_id: str) -> tuple[str, dict[str, Any]]:
    """The (block_id, element) of the interactive element with `action_id`, if any."""
    for block in message.get("blocks") or []:
        elements = list(block.get("elements") or [])
        if block.get("accessory"):
            elements.append(block["accessory"])
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return str(block.get("block_id", "")), element
    return "actions", {"type": "button", "text": _plain(action_id)}


def _action(
    message: Mapping[str, Any], action_id: str, value: str, action_ts: str | None
) -> dict[str, Any]:
    block_id, element = _find_element(message, action_id)
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "text": element.get("text"),
        "value": value,
    }
    if "style" in element:
        action["style"] = element["style"]
    action["type"] = element.get("type", "button")
    action["action_ts"] = action_ts or f"{time.time():.6f}"
    return action


def _input_value(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    return {"type": "plain_text_input", "value": value}


def _input_blocks(state: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "input",
            "block_id": block_id,
            "label": {"type": "plain_text", "text": block_id},
            "optional": False,
            "element": {"type": value.get("type", "plain_text_input"), "action_id": action_id},
        }
        for block_id, actions in state.items()
        for action_id, value in actions.items()
    ]
