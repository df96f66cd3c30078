"""Random and hostile input over signed HTTP: no 500, no traceback, only clear errors, and
no change anywhere unless the input was a valid request from a permitted user."""

from __future__ import annotations

import json
import string
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.commands import CommandError, parse_command
from bot.sandbox import SandboxStack
from jitcore.model import AccessRequest
from sandbox.slack import sender
from tests.scenario.harness import APPROVER, Driver, write_policy

WORDS = st.sampled_from(
    [
        "request",
        "list",
        "revoke",
        "help",
        "from",
        "because",
        "vm-web01",
        "VM-WEB01",
        "vm-db01",
        "22",
        "3389",
        "22,3389",
        "2h",
        "90m",
        "1h30m",
        "0m",
        "99999999h",
        "1e9s",
        "-1h",
        "203.0.113.7",
        "0.0.0.0/0",
        "::/0",
        "*",
        "any",
        "Internet",
        "10.0.0.0/8",
        "::ffff:1.2.3.4",
        "203.0.113.7/33",
        "<!channel>",
        "<@U0APPROVR1>",
        "<https://evil|x>",
        "'; DROP TABLE access_request; --",
        "\u202e",
        "\U0001f512",
        "#1",
        "999999999999999",
    ]
)
TEXTS = st.one_of(
    st.lists(WORDS, max_size=9).map(" ".join),
    st.text(alphabet=string.printable + "äß€<>&|", max_size=300),
)


@given(TEXTS)
@settings(max_examples=500, deadline=None)
def test_the_grammar_answers_every_text_with_a_command_or_a_clear_error(text: str) -> None:
    try:
        parse_command(text)
    except CommandError as exc:
        assert exc.message and "Traceback" not in exc.message


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxStack]:
    workdir = tmp_path_factory.mktemp("hostile")
    running = SandboxStack(
        workdir,
        database_url=f"sqlite:///{workdir / 'jitbot.db'}",
        policy_file=write_policy(Path(workdir)),
    ).start()
    try:
        yield running
    finally:
        running.stop()


def request_count(stack: SandboxStack) -> int:
    from sqlmodel import func, select

    with stack.bot.store.session() as session:
        return int(session.exec(select(func.count()).select_from(AccessRequest)).one())


def arm_writes(stack: SandboxStack) -> int:
    return sum(r["method"] in ("PUT", "DELETE") for r in stack.arm.requests())


@given(TEXTS)
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_slash_command_text_gets_a_clear_answer_and_changes_nothing_unless_valid(
    stack: SandboxStack, text: str
) -> None:
    driver = Driver(stack)
    before = request_count(stack)
    writes = arm_writes(stack)

    status, reply = driver.command(text)

    assert status == 200
    assert reply.get("response_type") == "ephemeral"
    assert reply["text"] and "Traceback" not in reply["text"]
    created = request_count(stack) - before
    assert created == (1 if reply["text"].startswith("Request #") else 0)
    assert arm_writes(stack) == writes


PAYLOAD_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63).filter(lambda v: not 0 < v < 100_000),
    st.text(max_size=40).filter(
        lambda v: not (v.strip().isascii() and v.strip().isdigit() and int(v) < 100_000)
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@given(
    action_id=st.sampled_from(["jit_approve", "jit_deny", "unknown_action", ""]),
    value=PAYLOAD_VALUES,
    user=st.sampled_from([APPROVER, "U0OUTSIDER", "", "<!channel>"]),
    drop=st.sampled_from([None, "user", "actions", "team", "channel", "container"]),
)
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_malformed_clicks_never_fail_the_server_or_change_anything(
    stack: SandboxStack, action_id: str, value: object, user: str, drop: str | None
) -> None:
    body = sender.block_action_body(
        action_id or "jit_approve", "1", user_id=user or "U0X", message_ts="1700000000.000100"
    )
    payload = json.loads(urllib.parse.unquote(body.removeprefix("payload=")))
    payload["actions"][0]["action_id"] = action_id
    payload["actions"][0]["value"] = value
    if drop:
        payload.pop(drop, None)
    raw = "payload=" + urllib.parse.quote(json.dumps(payload))
    before = request_count(stack)
    writes = arm_writes(stack)

    status, _headers, text = sender.post(stack.bot_url + "/slack/events", raw, stack.signing_secret)

    assert status in (200, 404), (status, text)
    assert "Traceback" not in text
    time.sleep(0.05)
    assert request_count(stack) == before
    assert arm_writes(stack) == writes
