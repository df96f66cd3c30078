"""The HTML the README pictures are made from: Block Kit rendered without letting any text
become markup."""

from __future__ import annotations

from datetime import UTC, datetime

from bot import messages
from jitcore.model import AccessRequest
from tools.render_slack import home_page, message_page, mrkdwn, render_blocks

USERS = {"U0REQ12345": "Alice Example", "U0APPROVR1": "Bob Example"}
CHANNELS = {"C0OPS12345": "ops-access"}


def hostile_request() -> AccessRequest:
    return AccessRequest(
        id=7,
        team_id="T0001ABCD",
        requester_id="U0REQ12345",
        vm_name="vm-web01",
        ports="22",
        source_prefix="203.0.113.7/32",
        duration_seconds=7200,
        reason='<script>alert("x")</script> & <!channel> *fix*',
        policy_name="web-admin",
        policy_version=1,
        approval_channel="C0OPS12345",
        status="pending",
        created_at=datetime(2025, 1, 31, 8, 0, tzinfo=UTC),
    )


def test_the_approval_message_renders_fields_mentions_and_buttons() -> None:
    blocks = messages.approval_blocks(hostile_request())

    page = message_page(blocks, USERS, CHANNELS, "C0OPS12345", "08:00")

    assert "# ops-access" in page
    assert '<span class="mention">@Alice Example</span>' in page
    assert '<span class="button primary">Approve</span>' in page
    assert '<span class="button danger">Deny</span>' in page
    assert "<code>203.0.113.7/32</code>" in page


def test_user_text_in_a_recorded_payload_stays_text() -> None:
    html = render_blocks(messages.approval_blocks(hostile_request()), USERS, CHANNELS)

    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;!channel&gt;" in html
    assert "<b>fix</b>" in html


def test_mrkdwn_styles_links_dates_and_emoji() -> None:
    text = (
        ":unlock: *bold* _it_ ~gone~ `a<b` <https://example.com/x?a=1&b=2|docs> "
        "<#C0OPS12345> <!date^1700000000^{date_short}|2023-11-14 22:13 UTC> <@U0NOBODY1>"
    )

    html = mrkdwn(text, USERS, CHANNELS)

    assert html.startswith("🔓 <b>bold</b> <i>it</i> <s>gone</s> <code>a&lt;b</code> ")
    assert '<a href="https://example.com/x?a=1&amp;b=2">docs</a>' in html
    assert '<span class="mention">#ops-access</span>' in html
    assert "2023-11-14 22:13 UTC" in html and "date^" not in html
    assert '<span class="mention">@U0NOBODY1</span>' in html


def test_the_home_tab_renders_an_accessory_button_and_unknown_blocks_are_named() -> None:
    view = {
        "type": "home",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Your <requests>"}},
            {"type": "divider"},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "#1 *vm-web01*"},
                "accessory": {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "End now"},
                    "style": "danger",
                },
            },
            {"type": "video"},
        ],
    }

    page = home_page(view, USERS, CHANNELS)

    assert "Your &lt;requests&gt;" in page
    assert '<hr class="divider">' in page
    assert '<span class="button danger">End now</span>' in page
    assert "(video block)" in page
