"""The admin commands over the Protector: grammar, and the scan message within Slack's
limits."""

from __future__ import annotations

import pytest
from slack_sdk.models.blocks import Block

from bot import messages
from bot.commands import (
    CommandError,
    PolicyProtectCommand,
    PolicyUnprotectCommand,
    ScanCommand,
    parse_command,
)
from jitcore.protection import ScanResult


def test_policy_protect_unprotect_and_scan_are_parsed() -> None:
    assert parse_command("policy protect vm-web01") == PolicyProtectCommand("vm-web01")
    assert parse_command("POLICY Unprotect vm-web01") == PolicyUnprotectCommand("vm-web01")
    assert parse_command("scan") == ScanCommand()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("policy", "`policy` takes `protect <vm>`", id="no-action"),
        pytest.param("policy protect", "`policy` takes", id="no-vm"),
        pytest.param("policy edit vm-web01", "`policy` takes", id="unknown-action"),
        pytest.param("scan everything", "`scan` takes no arguments", id="scan-args"),
    ],
)
def test_malformed_protection_commands_say_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(CommandError, match=expected):
        parse_command(text)


def results(count: int, status: str = "exposed", reason: str = "port 22 open") -> list:
    return [ScanResult(f"vm-{i:05d}", status, reason) for i in range(count)]


def assert_valid_blocks(blocks: list[dict]) -> None:
    assert len(blocks) <= messages.MAX_BLOCKS
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None and parsed.to_dict() == block
        parsed.validate_json()
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= messages.MAX_SECTION_TEXT


def test_scan_blocks_group_each_classification_with_its_reason_exposed_first() -> None:
    found = [
        ScanResult("vm-web01", "protected", "JIT deny rules on every NSG on its path"),
        ScanResult("vm-bare01", "not applicable", "no NSG on its NICs or subnets"),
        ScanResult("vm-db01", "exposed", "management port(s) 22 reachable from the internet"),
        ScanResult("vm-app01", "closed", "no management port reachable; not under JIT"),
    ]

    blocks = messages.scan_blocks(found)

    assert_valid_blocks(blocks)
    texts = [b["text"]["text"] for b in blocks]
    assert "4 VMs: 1 exposed, 1 not applicable, 1 closed, 1 protected" in texts[0]
    assert [t.split("*")[1] for t in texts[1:]] == [
        "Exposed",
        "Not applicable",
        "Closed",
        "Protected",
    ]
    assert "`vm-bare01` — no NSG on its NICs or subnets" in texts[2]


def test_a_huge_scan_is_packed_into_50_blocks_and_counts_what_is_left_out() -> None:
    found = results(5000, reason="x" * 250)

    blocks = messages.scan_blocks(found)

    assert_valid_blocks(blocks)
    assert len(blocks) == messages.MAX_BLOCKS
    shown = sum(b["text"]["text"].count("\n• ") for b in blocks if b["type"] == "section")
    shown += sum(1 for b in blocks[1:] if b["type"] == "section" and b["text"]["text"][0] == "•")
    note = blocks[-1]["elements"][0]["text"]
    left_out = int(note.split()[0])
    assert shown + left_out == 5000
    assert "not shown here" in note


def test_scan_lines_escape_names_and_reasons() -> None:
    blocks = messages.scan_blocks([ScanResult("vm-<!channel>", "exposed", "<@U123> & more")])

    text = blocks[1]["text"]["text"]
    assert "&lt;!channel&gt;" in text and "&lt;@U123&gt; &amp; more" in text
    assert "<!channel>" not in text
