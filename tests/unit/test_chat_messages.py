"""Block Kit and text of status, extend, the expiring-soon warning and App Home: valid for
slack_sdk's models, within Slack's limits, and escaping what users typed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot import messages
from bot.commands import CommandError, ExtendCommand, StatusCommand, parse_command
from jitcore.model import AccessRequest, RequestStatus

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
HOSTILE = "<!channel> <@U0OTHER> &"


def request(request_id: int = 7, status: str = RequestStatus.ACTIVE, **values: Any):
    fields: dict[str, Any] = {
        "id": request_id,
        "team_id": "T0001ABCD",
        "requester_id": "U0REQ12345",
        "vm_name": "vm-web01",
        "ports": "22",
        "source_prefix": "203.0.113.7/32",
        "duration_seconds": 7200,
        "reason": "deploy fix",
        "policy_name": "web-admin",
        "policy_version": 1,
        "status": status,
        "created_at": NOW,
        "opened_at": NOW,
        "ends_at": NOW + timedelta(minutes=9),
    }
    fields.update(values)
    return AccessRequest(**fields)


def assert_blocks(blocks: list[dict[str, Any]]) -> None:
    """Each block round-trips through slack_sdk's models and passes their checks."""
    assert 0 < len(blocks) <= messages.MAX_BLOCKS
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == block
        text = block.get("text") or {}
        assert len(text.get("text", "")) <= messages.MAX_SECTION_TEXT


def assert_view(view: dict[str, Any]) -> None:
    View(**view).validate_json()
    assert_blocks(view["blocks"])


def test_status_and_extend_are_parsed() -> None:
    assert parse_command("status vm-web01") == StatusCommand("vm-web01")
    assert parse_command("extend #42 1h30m") == ExtendCommand(42, timedelta(minutes=90))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("status", "`status` needs one VM", id="status-no-vm"),
        pytest.param("extend 42", "needs a request id and a duration", id="extend-no-duration"),
        pytest.param("extend x 1h", "is not a request id", id="extend-bad-id"),
        pytest.param("extend 42 1x", "not a duration", id="extend-bad-duration"),
    ],
)
def test_malformed_status_and_extend_say_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(CommandError, match=expected):
        parse_command(text)


def test_status_lists_each_open_request_with_time_left_and_escapes_the_source() -> None:
    open_now = [
        request(1, source_prefix=HOSTILE),
        request(2, status=RequestStatus.OPENING, requester_id="U0APPROVR2"),
    ]

    text = messages.status_text("vm-web01", open_now, NOW)

    assert text.startswith("*vm-web01*: 2 requests open now")
    assert "• #1 <@U0REQ12345>: port 22/Tcp from `&lt;!channel&gt; &lt;@U0OTHER&gt; &amp;`" in text
    assert "active, 9m left (until <!date^" in text
    assert "• #2 <@U0APPROVR2>: port 22/Tcp from `203.0.113.7/32`, opening" in text


def test_status_of_many_requests_is_capped_with_a_count() -> None:
    text = messages.status_text("vm-web01", [request(i) for i in range(80)], NOW)

    assert text.count("\n• #") == messages.MAX_STATUS_LINES
    assert text.endswith("…and 30 more not shown.")


def test_an_extension_refusal_names_the_limit_and_says_reapproval_is_not_supported() -> None:
    text = messages.extension_too_long(7, NOW + timedelta(hours=3), timedelta(minutes=40))

    assert text.startswith(":no_entry: Request #7 may stay open until <!date^")
    assert "the longest extension now is 40m" in text
    assert "make a new request" in text and "not supported" in text


def test_the_expiring_warning_offers_extend_while_the_policy_leaves_room() -> None:
    blocks = messages.expiring_blocks(request(), timedelta(minutes=30), NOW)

    assert_blocks(blocks)
    assert "expires in 9 min" in blocks[0]["text"]["text"]
    [button] = blocks[1]["elements"]
    ends = request().ends_at
    assert ends is not None
    assert (button["action_id"], button["value"], button["text"]["text"]) == (
        "jit_extend",
        f"7:{int(ends.timestamp()) * 1_000_000 + ends.microsecond}",
        "Extend by 30m",
    )


def test_the_expiring_warning_at_the_maximum_has_no_button() -> None:
    blocks = messages.expiring_blocks(request(vm_name=HOSTILE), timedelta(0), NOW)

    assert_blocks(blocks)
    assert blocks[1]["type"] == "context"
    assert "&lt;!channel&gt;" in blocks[0]["text"]["text"]
    assert_blocks(messages.extended_blocks(request()))


def test_the_expiring_warning_in_defender_mode_says_defender_cannot_extend() -> None:
    blocks = messages.expiring_blocks(request(), timedelta(minutes=30), NOW, defender=True)

    assert_blocks(blocks)
    assert [b["type"] for b in blocks] == ["section", "context"]
    assert "Defender for Cloud cannot move the end" in blocks[1]["elements"][0]["text"]


def test_the_list_shows_a_closing_request_with_the_latest_time_it_may_stay_open() -> None:
    closing = request(4, status=RequestStatus.CLOSING)
    assert closing.ends_at is not None and closing.ends_at > NOW

    text = messages.list_text([closing], NOW)

    assert "#4" in text and "closing" in text and "at the latest" in text


def test_the_home_view_shows_end_now_on_active_requests_and_decisions_for_approvers() -> None:
    mine = [request(1), request(2, status=RequestStatus.PENDING)]
    waiting = [request(3, status=RequestStatus.PENDING, reason=HOSTILE, requester_id="U0X1")]

    view = messages.home_view(mine, waiting, NOW)

    assert_view(view)
    accessories = [b.get("accessory", {}).get("action_id") for b in view["blocks"]]
    assert accessories.count("jit_end_now") == 1
    [actions] = [b for b in view["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == ["jit_approve", "jit_deny"]
    assert "&lt;!channel&gt; &lt;@U0OTHER&gt; &amp;" in str(view)
    assert "<!channel>" not in str(view)


def test_the_home_view_stays_within_50_blocks_and_counts_what_it_leaves_out() -> None:
    mine = [request(i) for i in range(40)]
    waiting = [request(100 + i, status=RequestStatus.PENDING) for i in range(40)]

    view = messages.home_view(mine, waiting, NOW)

    assert_view(view)
    assert len(view["blocks"]) <= messages.MAX_BLOCKS
    notes = [b["elements"][0]["text"] for b in view["blocks"] if b["type"] == "context"]
    assert notes[0] == "…and 20 more; `/jit list` shows all."
    shown_waiting = sum(1 for b in view["blocks"] if b["type"] == "actions")
    assert notes[1] == f"…and {40 - shown_waiting} more in the approval channel."


def test_the_home_view_of_someone_who_approves_nothing_has_no_approval_section() -> None:
    view = messages.home_view([], None, NOW)

    assert_view(view)
    assert "Waiting for your approval" not in str(view)
    assert "You have no pending or active requests." in str(view)


def test_the_deny_form_is_a_valid_modal_with_an_optional_reason() -> None:
    view = messages.deny_reason_view(request(status=RequestStatus.PENDING, vm_name=HOSTILE), "{}")

    assert_view(view)
    assert view["callback_id"] == "jit_deny_reason" and view["private_metadata"] == "{}"
    assert len(view["title"]["text"]) <= 24
    [reason] = [b for b in view["blocks"] if b["type"] == "input"]
    assert reason["optional"] is True
    assert (reason["block_id"], reason["element"]["action_id"]) == ("reason_block", "reason_input")
    assert "&lt;!channel&gt;" in view["blocks"][0]["text"]["text"]


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param('{"request_id": 42, "channel": "C0OPS12345"}', (42, "C0OPS12345", False)),
        pytest.param('{"request_id": 42, "home": true}', (42, None, True), id="home"),
        pytest.param('{"request_id": 42, "channel": "<!here>"}', (42, None, False), id="chan"),
        pytest.param('{"request_id": "42"}', None, id="string-id"),
        pytest.param('{"request_id": true}', None, id="bool-id"),
        pytest.param('{"request_id": -1}', None, id="negative"),
        pytest.param("[42]", None, id="list"),
        pytest.param("not json", None, id="not-json"),
        pytest.param(None, None, id="missing"),
    ],
)
def test_deny_form_metadata_yields_only_a_request_id_and_a_safe_channel(
    metadata: Any, expected: Any
) -> None:
    from bot.listeners import _deny_metadata

    assert _deny_metadata(metadata) == expected


def test_a_submitted_reason_is_trimmed_and_capped() -> None:
    from bot.listeners import _submitted_reason

    value = {"type": "plain_text_input", "value": "  " + "x" * 900}
    view = {"state": {"values": {"reason_block": {"reason_input": value}}}}

    assert _submitted_reason(view) == "x" * messages.MAX_DENY_REASON
    assert _submitted_reason({"state": {"values": {}}}) == ""
    assert _submitted_reason({}) == ""
