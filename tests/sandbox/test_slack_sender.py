"""Signing and request bodies of the Slack sender, pinned to Slack's docs and samples."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest
from slack_sdk.signature import SignatureVerifier

from sandbox.slack import sender
from tests.shared import shared_dir

SAMPLES = shared_dir() / "slack-payloads"

# Slack docs' worked example ("Verifying requests from Slack").
DOCS_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
DOCS_TIMESTAMP = 1531420618
DOCS_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    "&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    "&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    "%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
DOCS_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

# The shared slash-command sample (slash-command.jit-request.body.txt), as a literal so
# that it is pinned even where the shared folder is absent. Its URL is never requested.
JIT_RESPONSE_URL = (
    "https://hooks.slack.com/commands/T0001ABCD/1234567890123/AbCdEfGhIjKlMnOpQrStUvWx"
)
JIT_TRIGGER_ID = "1234567890123.1234567890.0123456789abcdef0123456789abcdef"
JIT_SLASH_BODY = (
    "token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001ABCD&team_domain=example"
    "&channel_id=C0OPS12345&channel_name=ops-access&user_id=U0REQ12345&user_name=alice"
    "&command=%2Fjit&text=request+vm-web01+22+2h&api_app_id=A0JITBOT01"
    "&is_enterprise_install=false&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    "%2FT0001ABCD%2F1234567890123%2FAbCdEfGhIjKlMnOpQrStUvWx"
    "&trigger_id=1234567890123.1234567890.0123456789abcdef0123456789abcdef"
)


class _PinnedClock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def _sample(name: str) -> Any:
    text = (SAMPLES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text.strip()


def _decode_payload(body: str) -> dict[str, Any]:
    assert body.startswith("payload=")
    return json.loads(unquote(body[len("payload=") :]))


def test_docs_test_vector_signs_to_the_documented_signature() -> None:
    headers = sender.sign(DOCS_SECRET, DOCS_BODY, timestamp=DOCS_TIMESTAMP)

    assert headers["x-slack-signature"] == DOCS_SIGNATURE
    assert headers["x-slack-request-timestamp"] == str(DOCS_TIMESTAMP)
    assert headers["content-type"] == "application/x-www-form-urlencoded"


def test_docs_test_vector_verifies_only_with_the_clock_pinned() -> None:
    headers = sender.sign(DOCS_SECRET, DOCS_BODY, timestamp=DOCS_TIMESTAMP)
    pinned = SignatureVerifier(DOCS_SECRET, clock=_PinnedClock(DOCS_TIMESTAMP))

    assert pinned.is_valid_request(DOCS_BODY, headers)
    assert not SignatureVerifier(DOCS_SECRET).is_valid_request(DOCS_BODY, headers)


def test_shared_signature_vector_file_matches_the_pinned_values() -> None:
    vector = _sample("signature-test-vector.slack-docs.json")

    assert (vector["signing_secret"], vector["raw_body"]) == (DOCS_SECRET, DOCS_BODY)
    assert vector["x_slack_signature"] == DOCS_SIGNATURE


def test_sign_uses_the_current_time_by_default() -> None:
    headers = sender.sign("secret", "{}")

    assert abs(int(headers["x-slack-request-timestamp"]) - time.time()) < 5
    assert headers["content-type"] == "application/json"
    assert SignatureVerifier("secret").is_valid_request("{}", headers)


def test_slash_command_body_reproduces_the_shared_sample_exactly() -> None:
    body = sender.slash_command_body(
        "request vm-web01 22 2h", response_url=JIT_RESPONSE_URL, trigger_id=JIT_TRIGGER_ID
    )

    assert body == JIT_SLASH_BODY


def test_slash_command_body_matches_the_shared_sample_files() -> None:
    body = sender.slash_command_body(
        "request vm-web01 22 2h", response_url=JIT_RESPONSE_URL, trigger_id=JIT_TRIGGER_ID
    )
    grid = sender.slash_command_body(
        "request vm-web01 22 2h",
        response_url=JIT_RESPONSE_URL,
        trigger_id=JIT_TRIGGER_ID,
        enterprise=("E0001ABCD", "Globular Construct Inc"),
    )

    assert body == _sample("slash-command.jit-request.body.txt")
    assert grid == _sample("slash-command.jit-request.enterprise-grid.body.txt")
    decoded = _sample("slash-command.jit-request.decoded.json")["fields"]
    assert list(parse_qsl(body)) == list(decoded.items())


def test_slash_command_body_generates_a_trigger_id_and_keeps_the_text() -> None:
    fields = dict(parse_qsl(sender.slash_command_body("status vm-web01 & <!channel>")))

    assert fields["text"] == "status vm-web01 & <!channel>"
    assert len(fields["trigger_id"].split(".")) == 3
    assert fields["response_url"].startswith("http://127.0.0.1:")


def test_block_action_body_decodes_to_the_shared_approve_sample() -> None:
    sample = _sample("block-actions.jit-approve.json")

    body = sender.block_action_body(
        "jit_approve",
        "42",
        "U0APPROVR1",
        "1700000000.000100",
        response_url=sample["response_url"],
        message=sample["message"],
        trigger_id=sample["trigger_id"],
        action_ts=sample["actions"][0]["action_ts"],
    )

    assert _decode_payload(body) == sample
    assert list(_decode_payload(body)) == list(sample)


def test_block_action_body_without_a_message_makes_up_a_matching_button() -> None:
    payload = _decode_payload(sender.block_action_body("jit_deny", "7", "U0APPROVR2", "1.000100"))

    [action] = payload["actions"]
    assert (action["action_id"], action["value"], action["type"]) == ("jit_deny", "7", "button")
    assert payload["user"]["name"] == "carol"
    assert payload["container"]["message_ts"] == payload["message"]["ts"] == "1.000100"


def test_view_submission_body_has_the_shape_of_the_shared_deny_sample() -> None:
    sample = _sample("view-submission.jit-deny-reason.json")
    metadata = sample["view"]["private_metadata"]

    payload = _decode_payload(
        sender.view_submission_body(
            "jit_deny_modal",
            {"reason_block": {"reason_input": "Not during the change freeze"}},
            "U0APPROVR1",
            private_metadata=metadata,
        )
    )

    assert list(payload) == list(sample)
    assert list(payload["view"]) == list(sample["view"])
    assert payload["view"]["state"] == sample["view"]["state"]
    for key in ("type", "team", "user", "api_app_id"):
        assert payload[key] == sample[key]
    for key in ("callback_id", "private_metadata", "type", "team_id"):
        assert payload["view"][key] == sample["view"][key]


def test_event_body_wraps_the_event_like_the_shared_envelope() -> None:
    sample = _sample("app-home-opened.event-callback.json")

    body = sender.event_body(
        sample["event"],
        team_id=sample["team_id"],
        event_id=sample["event_id"],
        api_app_id=sample["api_app_id"],
        event_time=sample["event_time"],
        token=sample["token"],
    )

    assert json.loads(body) == sample
    assert list(json.loads(body)) == list(sample)


def test_event_body_generates_an_event_id_when_none_is_given() -> None:
    envelope = json.loads(sender.event_body({"type": "app_home_opened", "user": "U0REQ12345"}))

    assert envelope["event_id"].startswith("Ev")
    assert envelope["type"] == "event_callback"


def test_post_refuses_urls_that_are_not_http() -> None:
    with pytest.raises(ValueError, match="http"):
        sender.post("file:///etc/passwd", "{}", "secret")
