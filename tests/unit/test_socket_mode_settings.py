"""Choosing Socket Mode by configuration, and what identifies one delivery."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from slack_sdk.socket_mode.request import SocketModeRequest

from bot.settings import Settings, problems
from bot.socket_mode import delivery_key

BASE: dict[str, Any] = {
    "slack_signing_secret": "s",
    "slack_bot_token": "xoxb-1",
    "azure_subscription_id": "00000000-0000-0000-0000-000000000000",
}


def test_without_an_app_token_the_bot_uses_http_mode() -> None:
    assert Settings(**BASE).socket_mode is False


def test_an_app_token_selects_socket_mode() -> None:
    settings = Settings(**BASE, slack_app_token="xapp-1-A0-1-secret")
    assert settings.socket_mode is True


def test_a_bot_token_given_as_the_app_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**BASE, slack_app_token="xoxb-not-an-app-token")
    [line] = problems(refused.value)
    assert line.startswith("JITBOT_SLACK_APP_TOKEN: an app-level token starts with xapp-")
    assert "xoxb-not-an-app-token" not in line


def test_the_app_token_does_not_show_in_the_settings_repr() -> None:
    settings = Settings(**BASE, slack_app_token="xapp-1-A0-1-topsecret")
    assert "topsecret" not in repr(settings)


def test_a_retried_event_is_identified_by_its_event_id_not_its_envelope() -> None:
    payload = {"type": "event_callback", "event_id": "Ev0ABC"}
    first = SocketModeRequest("events_api", "env-1", payload, retry_attempt=0)
    again = SocketModeRequest("events_api", "env-2", payload, retry_attempt=1)
    assert delivery_key(first) == delivery_key(again) == "socket-event:Ev0ABC"


def test_a_command_or_click_is_identified_by_its_envelope() -> None:
    command = SocketModeRequest("slash_commands", "env-1", {"command": "/jit"})
    click = SocketModeRequest("interactive", "env-2", {"type": "block_actions"})
    assert delivery_key(command) == "socket-envelope:env-1"
    assert delivery_key(click) == "socket-envelope:env-2"
