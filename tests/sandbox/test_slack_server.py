"""The Slack Web API stand-in, driven by the real slack_sdk WebClient."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from sandbox.slack import seed
from sandbox.slack.server import SlackServer

OPS = seed.APPROVERS_CHANNEL
BUTTONS = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*JIT access request* `#42`"}},
    {
        "type": "actions",
        "block_id": "jit-req-42-actions",
        "elements": [
            {
                "type": "button",
                "action_id": "jit_approve",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": "42",
            }
        ],
    },
]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def slack() -> Iterator[SlackServer]:
    with SlackServer() as server:
        yield server


@pytest.fixture
def client(slack: SlackServer) -> WebClient:
    return WebClient(base_url=slack.url, token=slack.bot_token)


def _local(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        with error:
            return error.code, error.read().decode()


def test_auth_test_answers_the_seeded_team_and_bot(client: WebClient) -> None:
    response = client.auth_test()

    assert response["team_id"] == "T0001ABCD"
    assert response["user_id"] == seed.BOT_USER_ID
    assert "users:read.email" in response.headers["x-oauth-scopes"]


def test_post_message_with_blocks_then_update_edits_it_in_place(
    slack: SlackServer, client: WebClient
) -> None:
    posted = client.chat_postMessage(channel=OPS, text="request #42", blocks=BUTTONS)
    updated = client.chat_update(channel=OPS, ts=posted["ts"], text="Approved by bob", blocks=[])

    assert posted["ts"] == "1700000000.000100"
    assert posted["message"]["blocks"] == BUTTONS
    assert updated["ts"] == posted["ts"]
    [message] = slack.messages(OPS)
    assert message["text"] == "Approved by bob"
    assert message["blocks"] == []
    assert "edited" in message


def test_post_message_timestamps_are_unique_and_increasing(client: WebClient) -> None:
    stamps = [client.chat_postMessage(channel=OPS, text=str(i))["ts"] for i in range(3)]

    assert stamps == sorted(stamps, key=float)
    assert len(set(stamps)) == 3


def test_update_of_an_unknown_ts_is_message_not_found(client: WebClient) -> None:
    client.chat_postMessage(channel=OPS, text="x")

    with pytest.raises(SlackApiError) as raised:
        client.chat_update(channel=OPS, ts="1600000000.000100", text="y")

    assert raised.value.response["error"] == "message_not_found"


def test_update_keeps_blocks_it_is_not_given(slack: SlackServer, client: WebClient) -> None:
    posted = client.chat_postMessage(channel=OPS, text="x", blocks=BUTTONS)

    client.chat_update(channel=OPS, ts=posted["ts"], text="y")

    assert slack.messages(OPS)[0]["blocks"] == BUTTONS


def test_thread_replies_are_kept_with_their_thread_ts(
    slack: SlackServer, client: WebClient
) -> None:
    parent = client.chat_postMessage(channel=OPS, text="request")
    client.chat_postMessage(channel=OPS, text="granted", thread_ts=parent["ts"])

    first, reply = slack.messages(OPS)
    assert reply["thread_ts"] == parent["ts"]
    assert first["reply_count"] == 1


def test_unknown_channel_is_channel_not_found(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="C0NOSUCH00", text="x")

    assert raised.value.response["error"] == "channel_not_found"


def test_more_than_fifty_blocks_is_invalid_blocks(client: WebClient) -> None:
    blocks = [{"type": "divider"}] * 51

    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel=OPS, text="x", blocks=blocks)

    assert raised.value.response["error"] == "invalid_blocks"


def test_text_over_forty_thousand_characters_is_truncated(client: WebClient) -> None:
    response = client.chat_postMessage(channel=OPS, text="a" * 40_005)

    assert len(response["message"]["text"]) == 40_000


def test_post_ephemeral_returns_a_message_ts(client: WebClient) -> None:
    response = client.chat_postEphemeral(channel=OPS, user=seed.REQUESTER, text="only you")

    assert response["message_ts"]


def test_conversations_open_gives_a_stable_dm_per_user(
    slack: SlackServer, client: WebClient
) -> None:
    first = client.conversations_open(users=seed.REQUESTER)["channel"]["id"]
    again = client.conversations_open(users=seed.REQUESTER)["channel"]["id"]
    other = client.conversations_open(users=seed.APPROVER_1)["channel"]["id"]
    client.chat_postMessage(channel=first, text="your request is pending")

    assert first == again != other
    assert first.startswith("D")
    assert slack.messages(first)[0]["text"] == "your request is pending"


def test_users_info_includes_email_only_when_the_user_has_one(client: WebClient) -> None:
    alice = client.users_info(user=seed.REQUESTER)["user"]
    dave = client.users_info(user=seed.NO_EMAIL_USER)["user"]

    assert alice["profile"]["email"] == "alice@example.com"
    assert alice["tz"] == "Europe/Berlin"
    assert "email" not in dave["profile"]


def test_users_info_marks_deleted_users_and_guests(client: WebClient) -> None:
    deleted = client.users_info(user=seed.DELETED_USER)["user"]
    guest = client.users_info(user=seed.GUEST_USER)["user"]

    assert deleted["deleted"] is True
    assert "tz" not in deleted
    assert guest["is_restricted"] is True
    assert guest["is_ultra_restricted"] is False


def test_users_info_hides_email_without_the_email_scope() -> None:
    with SlackServer(scopes="chat:write,users:read") as slack:
        client = WebClient(base_url=slack.url, token=slack.bot_token)
        user = client.users_info(user=seed.REQUESTER)["user"]

    assert "email" not in user["profile"]


def test_users_info_of_an_unknown_user_is_user_not_found(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as raised:
        client.users_info(user="U0NOBODY00")

    assert raised.value.response["error"] == "user_not_found"


def test_usergroups_users_list_returns_the_seeded_members(client: WebClient) -> None:
    response = client.usergroups_users_list(usergroup=seed.APPROVERS_GROUP)

    assert response["users"] == [seed.APPROVER_1, seed.APPROVER_2]


def test_views_open_then_update_keeps_the_view_id(client: WebClient) -> None:
    view = {
        "type": "modal",
        "callback_id": "jit_deny_modal",
        "title": {"type": "plain_text", "text": "Deny"},
        "blocks": [],
    }

    opened = client.views_open(trigger_id="123.456.abc", view=view)["view"]
    updated = client.views_update(view_id=opened["id"], hash=opened["hash"], view=view)["view"]

    assert opened["callback_id"] == "jit_deny_modal"
    assert updated["id"] == opened["id"]


def test_views_open_fails_with_an_injected_expired_trigger_id(
    slack: SlackServer, client: WebClient
) -> None:
    slack.add_fault("views.open", error="expired_trigger_id")

    with pytest.raises(SlackApiError) as raised:
        client.views_open(trigger_id="123.456.abc", view={"type": "modal", "blocks": []})

    assert raised.value.response.status_code == 200
    assert raised.value.response["error"] == "expired_trigger_id"


def test_views_publish_returns_a_home_view(client: WebClient) -> None:
    response = client.views_publish(user_id=seed.REQUESTER, view={"type": "home", "blocks": []})

    assert response["view"]["type"] == "home"
    assert response["view"]["id"]


def test_wrong_token_is_invalid_auth_and_no_token_is_not_authed(slack: SlackServer) -> None:
    with pytest.raises(SlackApiError) as wrong:
        WebClient(base_url=slack.url, token="xoxb-wrong").auth_test()
    with pytest.raises(SlackApiError) as missing:
        WebClient(base_url=slack.url).auth_test()

    assert wrong.value.response.status_code == 200
    assert wrong.value.response["error"] == "invalid_auth"
    assert missing.value.response["error"] == "not_authed"


def test_unknown_method_is_unknown_method(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as raised:
        client.api_call("chat.nosuchthing")

    assert raised.value.response["error"] == "unknown_method"


def test_token_as_a_form_field_with_blocks_as_a_json_string_is_accepted(slack: SlackServer) -> None:
    form = {"token": slack.bot_token, "channel": OPS, "text": "x", "blocks": json.dumps(BUTTONS)}
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    status, body = _local("POST", slack.url + "chat.postMessage", urlencode(form).encode(), headers)

    assert (status, body["ok"]) == (200, True)
    [call] = slack.calls("chat.postMessage")
    assert call["args"]["blocks"] == BUTTONS
    assert "token" not in call["args"]


def test_rate_limit_fault_is_retried_by_the_rate_limit_handler(slack: SlackServer) -> None:
    slack.add_fault("chat.postMessage", retry_after=0)
    client = WebClient(
        base_url=slack.url,
        token=slack.bot_token,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )

    response = client.chat_postMessage(channel=OPS, text="x")

    assert response["ok"]
    assert [c["status"] for c in slack.calls("chat.postMessage")] == [429, 200]


def test_rate_limit_fault_answers_429_with_retry_after(
    slack: SlackServer, client: WebClient
) -> None:
    slack.add_fault("chat.postMessage", retry_after=7)

    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel=OPS, text="x")

    assert raised.value.response.status_code == 429
    assert raised.value.response.headers["Retry-After"] == "7"
    assert raised.value.response["error"] == "ratelimited"


def test_calls_are_recorded_and_served_at_sandbox_calls(
    slack: SlackServer, client: WebClient
) -> None:
    client.chat_postMessage(channel=OPS, text="x")
    with pytest.raises(SlackApiError):
        client.users_info(user="U0NOBODY00")

    status, served = _local("GET", slack.base + "/sandbox/calls?method=users.info")
    cleared, _ = _local("DELETE", slack.base + "/sandbox/calls")

    assert status == 200
    assert [(c["method"], c["ok"]) for c in served] == [("users.info", False)]
    assert served[0]["response"]["error"] == "user_not_found"
    assert cleared == 200
    assert slack.calls() == []


def test_sandbox_messages_serves_the_current_channel_state(
    slack: SlackServer, client: WebClient
) -> None:
    client.chat_postMessage(channel=OPS, text="x")

    status, messages = _local("GET", slack.base + f"/sandbox/messages?channel={OPS}")

    assert status == 200
    assert [m["text"] for m in messages] == ["x"]


def test_response_url_posts_are_recorded_and_answered_ok(slack: SlackServer) -> None:
    webhook = WebhookClient(slack.response_url("approve-42"))

    response = webhook.send(text="Approved", replace_original=True)

    assert (response.status_code, response.body) == (200, "ok")
    [call] = slack.calls("response_url")
    assert call["name"] == "approve-42"
    assert call["args"]["replace_original"] is True


def test_stop_releases_the_port() -> None:
    slack = SlackServer().start()
    url = slack.url
    slack.stop()
    slack.stop()

    with pytest.raises(OSError):
        _local("GET", url.replace("/api/", "/sandbox/calls"))
