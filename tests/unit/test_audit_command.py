"""`/jit audit`: its grammar, the query behind it, and the text it answers with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import messages
from bot.audit import AuditEntry, recent_events
from bot.commands import AuditCommand, CommandError, HelpCommand, parse_command
from jitcore.db import Store, create_schema, make_engine
from jitcore.model import AccessRequest, AuditEvent

NOW = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("audit", AuditCommand()),
        ("audit 7d", AuditCommand(since=timedelta(days=7))),
        ("audit vm-web01", AuditCommand(vm="vm-web01")),
        ("audit vm-web01 12h", AuditCommand(vm="vm-web01", since=timedelta(hours=12))),
        ("audit <@U0REQ12345|alice>", AuditCommand(user_id="U0REQ12345")),
        (
            "audit U0REQ12345 2025-01-31",
            AuditCommand(user_id="U0REQ12345", since=datetime(2025, 1, 31, tzinfo=UTC)),
        ),
        (
            "audit 2025-01-31T08:00:00+01:00",
            AuditCommand(since=datetime(2025, 1, 31, 7, 0, tzinfo=UTC)),
        ),
    ],
)
def test_audit_takes_an_optional_vm_or_user_then_an_optional_since(
    text: str, expected: AuditCommand
) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("audit vm-web01 yesterday", "`yesterday` is not a time to look back from"),
        ("audit vm-web01 7d extra", "at most a VM or user, then a since"),
        ("audit @alice", "not a Slack member id"),
        ("audit vm-web01 2025-13-45", "not a time to look back from"),
    ],
)
def test_a_malformed_audit_says_what_is_allowed(text: str, expected: str) -> None:
    with pytest.raises(CommandError, match=expected) as refused:
        parse_command(text)
    assert refused.value.usage is not None and "/jit audit" in refused.value.usage


def test_audit_has_a_help_topic_and_a_help_line() -> None:
    assert parse_command("help audit") == HelpCommand("audit")
    assert "`/jit audit [<vm> | <@user>] [<since>]`" in messages.HELP_TEXT


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    create_schema(engine)
    store = Store(engine)
    with store.session() as session:
        for number, vm in ((1, "vm-web01"), (2, "vm-db01")):
            session.add(
                AccessRequest(
                    id=number,
                    team_id="T0001ABCD",
                    requester_id="U0REQ12345",
                    vm_name=vm,
                    ports="22",
                    source_prefix="203.0.113.7/32",
                    duration_seconds=3600,
                    reason="",
                    policy_name="p",
                    policy_version=1,
                    created_at=NOW,
                    approval_channel="C0OPS12345",
                    status="active",
                )
            )
        session.add_all(
            [
                AuditEvent(
                    at=NOW - timedelta(days=9),
                    request_id=1,
                    actor="U0REQ12345",
                    action="old",
                    detail={},
                ),
                AuditEvent(
                    at=NOW - timedelta(hours=3),
                    request_id=1,
                    actor="U0REQ12345",
                    action="requested",
                    detail={},
                ),
                AuditEvent(
                    at=NOW - timedelta(hours=2),
                    request_id=1,
                    actor="U0APPROVR1",
                    action="approved",
                    detail={},
                ),
                AuditEvent(
                    at=NOW - timedelta(hours=1),
                    request_id=2,
                    actor="U0REQ12345",
                    action="requested",
                    detail={},
                ),
                AuditEvent(
                    at=NOW - timedelta(minutes=30),
                    request_id=None,
                    actor="cli",
                    action="protected",
                    detail={"vm": "VM-WEB01"},
                ),
                AuditEvent(
                    at=NOW - timedelta(minutes=10),
                    request_id=None,
                    actor="U0APPROVR1",
                    action="principal_mapped",
                    detail={"slack_user": "U0NOEMAIL1"},
                ),
            ]
        )
        session.commit()
    return store


def actions(entries: list[AuditEntry]) -> list[str]:
    return [entry.event.action for entry in entries]


def test_recent_events_are_newest_first_and_start_at_since(store: Store) -> None:
    entries = recent_events(store, NOW - timedelta(days=7))
    assert actions(entries) == [
        "principal_mapped",
        "protected",
        "requested",
        "approved",
        "requested",
    ]


def test_a_vm_matches_its_requests_and_events_naming_it_in_any_case(store: Store) -> None:
    entries = recent_events(store, NOW - timedelta(days=7), vm="vm-web01")
    assert actions(entries) == ["protected", "approved", "requested"]


def test_a_user_matches_as_actor_requester_or_subject(store: Store) -> None:
    assert actions(recent_events(store, NOW - timedelta(days=7), user_id="U0APPROVR1")) == [
        "principal_mapped",
        "approved",
    ]
    assert actions(recent_events(store, NOW - timedelta(days=7), user_id="U0NOEMAIL1")) == [
        "principal_mapped"
    ]


def test_visible_keeps_only_events_about_accepted_vms(store: Store) -> None:
    entries = recent_events(
        store, NOW - timedelta(days=7), visible=lambda vm: vm is not None and vm == "vm-db01"
    )
    assert actions(entries) == ["requested"]


def entry(action: str = "requested", **detail: object) -> AuditEntry:
    event = AuditEvent(id=1, at=NOW, request_id=7, actor="U0REQ12345", action=action, detail=detail)
    return AuditEntry(event, "vm-web01", "U0REQ12345")


def test_every_value_is_escaped_and_kept_on_one_line() -> None:
    text = messages.audit_text(
        [entry(reason="<!channel> go\nnow", ports=[22, 3389])], "*vm-web01*", NOW
    )
    assert "<!channel>" not in text and "&lt;!channel&gt; go now" in text
    assert "ports: [22, 3389]" in text
    assert text.count("\n") == 1


def test_the_bot_and_the_cli_are_named_not_mentioned() -> None:
    event = AuditEvent(id=1, at=NOW, request_id=None, actor="jitbot", action="swept", detail={})
    text = messages.audit_text([AuditEntry(event, None, None)], "every VM", NOW)
    assert "by jitbot" in text and "<@jitbot>" not in text


def test_a_long_log_is_capped_with_how_many_more_and_the_export_command() -> None:
    many = [entry(reason="x" * 50) for _ in range(100)]

    text = messages.audit_text(many, "every VM", NOW - timedelta(days=7))

    lines = text.split("\n")
    shown = len(lines) - 2
    assert shown <= messages.AUDIT_MAX_EVENTS
    assert len(text) <= messages.AUDIT_MAX_CHARS + 200
    assert lines[-1] == (
        f"_{100 - shown} more; use `jitbot audit export --since 2025-01-25` for all of them._"
    )


def test_an_empty_result_says_so() -> None:
    assert messages.audit_text([], "*vm-web01*", NOW).endswith("2025-02-01 12:00 UTC: no events.")
