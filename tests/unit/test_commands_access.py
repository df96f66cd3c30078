"""The grammar of `/jit why` and `/jit admin`."""

from __future__ import annotations

import pytest

from bot.commands import (
    AdminMapCommand,
    AdminUnmapCommand,
    CommandError,
    HelpCommand,
    WhyCommand,
    parse_command,
)

OBJECT_ID = "da5e0000-0000-4000-8000-000000000005"


def test_why_takes_a_vm_and_an_optional_port() -> None:
    assert parse_command("why vm-web01") == WhyCommand("vm-web01")
    assert parse_command("why vm-web01 22") == WhyCommand("vm-web01", 22)


@pytest.mark.parametrize(
    "user",
    [
        pytest.param("<@U0NOEMAIL1>", id="escaped-mention"),
        pytest.param("<@U0NOEMAIL1|dave>", id="escaped-mention-with-name"),
        pytest.param("U0NOEMAIL1", id="member-id"),
    ],
)
def test_admin_map_accepts_a_mention_or_a_member_id(user: str) -> None:
    command = parse_command(f"admin map {user} dave@example.com")

    assert command == AdminMapCommand("U0NOEMAIL1", "dave@example.com")


def test_admin_map_accepts_an_object_id_and_unwraps_a_mailto_link() -> None:
    assert parse_command(f"admin map U0X1 {OBJECT_ID}") == AdminMapCommand("U0X1", OBJECT_ID)
    command = parse_command("admin map U0X1 <mailto:dave@example.com|dave@example.com>")
    assert command == AdminMapCommand("U0X1", "dave@example.com")


def test_admin_unmap_takes_one_user() -> None:
    assert parse_command("admin unmap <@U0X1|x>") == AdminUnmapCommand("U0X1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("why", "needs a VM", id="why-without-vm"),
        pytest.param("why vm-web01 ssh", "not a port", id="why-named-port"),
        pytest.param("admin map @dave dave@example.com", "member id", id="plain-at-name"),
        pytest.param("admin map U0X1 Dave Example", "`map <user> <principal>`", id="too-many"),
        pytest.param("admin map U0X1 dave", "neither a userPrincipalName", id="not-a-upn"),
        pytest.param("admin grant U0X1", "`map <user> <principal>`", id="unknown-action"),
    ],
)
def test_malformed_why_and_admin_commands_say_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(CommandError, match=expected):
        parse_command(text)


def test_why_and_admin_have_help_topics() -> None:
    assert parse_command("help why") == HelpCommand("why")
    assert parse_command("help admin") == HelpCommand("admin")
