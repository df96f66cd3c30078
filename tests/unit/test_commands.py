from __future__ import annotations

from datetime import timedelta

import pytest

from bot.commands import (
    CommandError,
    HelpCommand,
    ListCommand,
    RequestCommand,
    RevokeCommand,
    parse_command,
)


def test_request_with_source_and_reason_is_parsed() -> None:
    command = parse_command(
        "request vm-web01 22,3389 1h30m from 203.0.113.7 because fixing <!channel>"
    )
    assert command == RequestCommand(
        vm="vm-web01",
        ports=(22, 3389),
        duration=timedelta(minutes=90),
        source="203.0.113.7",
        reason="fixing <!channel>",
    )


def test_keywords_are_case_insensitive_and_source_is_optional() -> None:
    command = parse_command("REQUEST vm-web01 22 2h")
    assert isinstance(command, RequestCommand) and command.source is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "request vm-web01 22", "needs a VM, ports and a duration", id="missing-duration"
        ),
        pytest.param("request vm-web01 ssh 2h", "not a port list", id="named-port"),
        pytest.param("request vm-web01 70000 2h", "not a port list", id="port-out-of-range"),
        pytest.param("request vm-web01 22 forever", "not a duration", id="bad-duration"),
        pytest.param("request vm-web01 22 0m", "longer than zero", id="zero-duration"),
        pytest.param("request vm-web01 22 2h from", "exactly one IP", id="from-without-address"),
        pytest.param("request vm-web01 22 2h because", "followed by a reason", id="empty-reason"),
        pytest.param("open vm-web01", "not a /jit command", id="unknown-verb"),
        pytest.param("revoke abc", "not a request id", id="bad-id"),
        pytest.param("list everything", "takes no arguments", id="list-args"),
    ],
)
def test_malformed_commands_say_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(CommandError, match=expected):
        parse_command(text)


def test_empty_text_and_help_give_help() -> None:
    assert parse_command("") == HelpCommand()
    assert parse_command("help request") == HelpCommand("request")


def test_list_and_revoke() -> None:
    assert parse_command("list") == ListCommand()
    assert parse_command("revoke #42") == RevokeCommand(42)
