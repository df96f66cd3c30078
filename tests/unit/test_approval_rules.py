"""Approval rules: policy validation, auto-approval matching and its daily window, counting
approvals, user-group approvers, reminders, and the audit-channel lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot import messages
from jitcore.db import AUDIT_LINE_EVENT, Store, create_schema, make_engine
from jitcore.engine import AlreadyCounted, ApproversUnavailable, Engine, PolicySet
from jitcore.errors import NotAuthorized, RequestRejected, StateConflict
from jitcore.model import AccessRequest, RequestStatus
from jitcore.notify import NullNotifier, Posted
from jitcore.policy import PolicyError, check_request, parse_policies
from tests.fakes import FakeCloud

REQUESTER = "U0REQ12345"
BASE: dict[str, Any] = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}, {"port": 3389, "max_duration": "1h"}],
    "min_duration": "1s",
    "approvers": ["U0APPROVR1", "U0APPROVR2"],
    "approval_channel": "C0OPS12345",
}
VPN_RULE = {
    "name": "vpn-ssh",
    "ports": [22],
    "sources": ["203.0.113.0/24"],
    "max_duration": "1h",
    "max_per_day": 2,
}


def policy(**overrides: Any) -> Any:
    return parse_policies({"policies": [{**BASE, **overrides}]})[0]


def refusal(**overrides: Any) -> str:
    with pytest.raises(PolicyError) as caught:
        policy(**overrides)
    return caught.value.message


# -- policy validation -----------------------------------------------------------------------


def test_approvers_accept_user_ids_and_user_group_ids() -> None:
    assert policy(approvers=["U0APPROVR1", "W0ENTERPR1", "S0APPROVRS"]).approver_groups == [
        "S0APPROVRS"
    ]


def test_an_approver_that_is_neither_a_user_nor_a_group_is_refused_by_its_setting() -> None:
    message = refusal(approvers=["U0APPROVR1", "@bob"])
    assert "policies.0.approvers" in message
    assert "'@bob' is neither a Slack user id" in message


def test_two_approvals_need_two_possible_approvers() -> None:
    assert "approvals_required: 2 needs at least two approvers" in refusal(
        approvers=["U0APPROVR1"], approvals_required=2
    )
    assert policy(approvers=["S0APPROVRS"], approvals_required=2).approvals_required == 2


def test_approvals_required_is_one_or_two() -> None:
    message = refusal(approvals_required=3)
    assert "policies.0.approvals_required" in message


def test_remind_after_needs_a_longer_pending_timeout() -> None:
    assert "remind_after needs pending_timeout" in refusal(remind_after="5m")
    assert "remind_after must be shorter than pending_timeout" in refusal(
        pending_timeout="10m", remind_after="10m"
    )
    checked = policy(pending_timeout="1h", remind_after="15m")
    assert (checked.pending_timeout, checked.remind_after) == (
        timedelta(hours=1),
        timedelta(minutes=15),
    )


def test_a_pending_timeout_over_a_week_is_refused() -> None:
    assert "pending_timeout must be above zero and at most 7d" in refusal(pending_timeout="8d")


def test_an_auto_approval_rule_needs_a_daily_limit() -> None:
    message = refusal(auto_approve=[{"name": "vpn-ssh", "ports": [22]}])
    assert "policies.0.auto_approve.0.max_per_day" in message


def test_an_auto_approval_rule_may_only_name_the_policys_ports() -> None:
    message = refusal(auto_approve=[{**VPN_RULE, "ports": [2222]}])
    assert "auto_approve vpn-ssh: ports [2222] are not in this policy's ports" in message


def test_an_auto_approval_rule_source_must_be_a_canonical_cidr() -> None:
    message = refusal(auto_approve=[{**VPN_RULE, "sources": ["203.0.113.7/24"]}])
    assert "policies.0.auto_approve.0.sources" in message


def test_auto_approval_rule_names_are_unique_within_a_policy() -> None:
    message = refusal(auto_approve=[VPN_RULE, {**VPN_RULE, "name": "VPN-SSH"}])
    assert "each rule name may be used once" in message


# -- rule matching -----------------------------------------------------------------------------


def checked(port: int = 22, duration: str = "30m", source: str = "203.0.113.7") -> Any:
    from jitcore.durations import parse_duration

    return check_request(
        [policy(auto_approve=[VPN_RULE])], "vm-web01", [port], parse_duration(duration), source
    )


def test_a_request_meeting_every_condition_matches_the_rule() -> None:
    request = checked()
    rule = request.policy.auto_rule_for(request)
    assert rule is not None and rule.name == "vpn-ssh"


@pytest.mark.parametrize(
    ("port", "duration", "source"),
    [
        pytest.param(3389, "30m", "203.0.113.7", id="another-port"),
        pytest.param(22, "2h", "203.0.113.7", id="longer-than-the-rule"),
        pytest.param(22, "30m", "198.51.100.7", id="outside-the-sources"),
        pytest.param(22, "30m", "203.0.112.0/24", id="a-neighbouring-range"),
    ],
)
def test_a_request_missing_one_condition_does_not_match(
    port: int, duration: str, source: str
) -> None:
    request = checked(port, duration, source)
    assert request.policy.auto_rule_for(request) is None


def test_a_rule_without_conditions_but_its_limit_matches_any_allowed_request() -> None:
    open_rule = policy(auto_approve=[{"name": "any", "max_per_day": 1}]).auto_approve[0]
    assert open_rule.matches((22, 3389), "198.51.100.0/24", timedelta(hours=1))


# -- the engine ------------------------------------------------------------------------------


class Recorder(NullNotifier):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def request_submitted(self, request: AccessRequest) -> Posted | None:
        self.events.append(("submitted", request.id))
        return Posted("C0OPS12345", f"1700000000.{request.id:06d}")

    def request_auto_approved(self, request: AccessRequest, rule: str) -> Posted | None:
        self.events.append(("auto_approved", rule))
        return Posted("C0OPS12345", f"1700000000.{request.id:06d}")

    def request_partly_approved(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self.events.append(("partly_approved", args["approved_by"]))

    def request_reminded(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self.events.append(("reminded", args["approvers"]))

    def request_expired_unapproved(self, request: AccessRequest) -> None:
        self.events.append(("expired_unapproved", request.id))

    def audit_line(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self.events.append(("audit", args["action"]))


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def make_engine_for(
    database_url: str, groups: Any = None, audit_feed: bool = False, **overrides: Any
) -> tuple[Engine, Recorder, ManualClock]:
    store = Store(make_engine(database_url), audit_feed=audit_feed)
    create_schema(store.engine)
    recorder = Recorder()
    clock = ManualClock()
    policies = parse_policies({"policies": [{**BASE, **overrides}]})
    engine = Engine(
        store,
        PolicySet(policies, {"web-admin": 1}),
        FakeCloud(),
        recorder,
        clock=clock,
        group_members=groups,
    )
    return engine, recorder, clock


def submit(engine: Engine, source: str = "203.0.113.7", minutes: int = 30) -> AccessRequest:
    request = engine.submit(
        "T0001ABCD", REQUESTER, "vm-web01", [22], timedelta(minutes=minutes), source
    )
    assert request.id is not None
    engine.settle_submitted(request.id)
    return engine._require(request.id)


def test_the_daily_limit_of_a_rule_counts_a_rolling_day_per_requester(database_url: str) -> None:
    engine, _recorder, clock = make_engine_for(database_url, auto_approve=[VPN_RULE])
    try:
        first, second = submit(engine), submit(engine, "203.0.113.8")
        third = submit(engine, "203.0.113.9")
        assert [r.status for r in (first, second)] == [RequestStatus.ACTIVE] * 2
        assert third.status == RequestStatus.PENDING

        clock.now += timedelta(hours=23, minutes=59)
        assert submit(engine, "203.0.113.10").status == RequestStatus.PENDING

        clock.now += timedelta(minutes=2)
        fourth = submit(engine, "203.0.113.11")
        assert fourth.status == RequestStatus.ACTIVE
        assert fourth.decided_by == "auto:vpn-ssh"
    finally:
        engine.store.engine.dispose()


def test_an_auto_approval_interrupted_after_the_request_was_stored_is_finished_by_the_sweep(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, recorder, clock = make_engine_for(database_url, auto_approve=[VPN_RULE])
    try:
        monkeypatch.setattr(engine, "_auto_approve", lambda request_id: None)
        request = engine.submit(
            "T0001ABCD", REQUESTER, "vm-web01", [22], timedelta(minutes=30), "203.0.113.7"
        )
        assert request.id is not None
        monkeypatch.undo()
        assert engine._require(request.id).status == RequestStatus.PENDING

        engine.sweep()
        assert engine._require(request.id).status == RequestStatus.PENDING

        clock.now += timedelta(minutes=2)
        engine.sweep()
        engine.sweep()

        finished = engine._require(request.id)
        assert finished.status == RequestStatus.ACTIVE
        assert finished.decided_by == "auto:vpn-ssh"
        assert ("auto_approved", "vpn-ssh") in recorder.events
        assert ("submitted", request.id) not in recorder.events
    finally:
        engine.store.engine.dispose()


def test_two_approvals_count_distinct_approvers_and_the_second_opens(database_url: str) -> None:
    engine, recorder, _clock = make_engine_for(database_url, approvals_required=2)
    try:
        request = submit(engine)
        assert request.id is not None

        engine.approve(request.id, "U0APPROVR1")
        with pytest.raises(AlreadyCounted):
            engine.approve(request.id, "U0APPROVR1")
        assert engine._require(request.id).status == RequestStatus.PENDING
        assert ("partly_approved", ["U0APPROVR1"]) in recorder.events

        engine.approve(request.id, "U0APPROVR2")
        assert engine._require(request.id).status == RequestStatus.ACTIVE
        with pytest.raises(StateConflict) as late:
            engine.approve(request.id, "U0APPROVR1")
        assert late.value.decided_by == "U0APPROVR2"
    finally:
        engine.store.engine.dispose()


def test_a_request_two_approvers_could_never_approve_is_refused_and_not_recorded(
    database_url: str,
) -> None:
    engine, _recorder, _clock = make_engine_for(
        database_url, approvals_required=2, approvers=[REQUESTER, "U0APPROVR1"]
    )
    try:
        with pytest.raises(RequestRejected) as refused:
            submit(engine)
        assert "needs 2 approvers other than you, and has 1" in refused.value.message
        assert engine.requests_of(REQUESTER, (RequestStatus.PENDING,)) == []
    finally:
        engine.store.engine.dispose()


def test_a_group_that_cannot_be_read_does_not_refuse_the_request_up_front(
    database_url: str,
) -> None:
    def unreadable(group: str) -> list[str]:
        raise ConnectionError("Slack is unreachable")

    engine, _recorder, _clock = make_engine_for(
        database_url, groups=unreadable, approvals_required=2, approvers=["S0APPROVRS"]
    )
    try:
        assert submit(engine).status == RequestStatus.PENDING
    finally:
        engine.store.engine.dispose()


def test_group_members_are_asked_at_every_decision_and_an_unreadable_group_fails_closed(
    database_url: str,
) -> None:
    members = {"S0APPROVRS": ["U0APPROVR1"]}
    asked: list[str] = []

    def read(group: str) -> list[str]:
        asked.append(group)
        if group not in members:
            raise ConnectionError("Slack is unreachable")
        return members[group]

    engine, _recorder, _clock = make_engine_for(database_url, groups=read, approvers=["S0APPROVRS"])
    try:
        request = submit(engine)
        assert request.id is not None
        members["S0APPROVRS"] = ["U0APPROVR2"]
        with pytest.raises(NotAuthorized):
            engine.approve(request.id, "U0APPROVR1")

        members.clear()
        with pytest.raises(ApproversUnavailable) as unavailable:
            engine.approve(request.id, "U0APPROVR2")
        assert "could not read the members of the approver group S0APPROVRS" in (
            unavailable.value.message
        )
        assert engine.approvers_of(request) == []
        assert engine._require(request.id).status == RequestStatus.PENDING
        assert asked.count("S0APPROVRS") >= 3
    finally:
        engine.store.engine.dispose()


def test_the_reminder_is_sent_once_and_the_policy_timeout_expires_the_request(
    database_url: str,
) -> None:
    engine, recorder, clock = make_engine_for(
        database_url, pending_timeout="10m", remind_after="4m"
    )
    try:
        request = submit(engine, source="198.51.100.7")
        assert request.id is not None
        clock.now += timedelta(minutes=3)
        engine.sweep()
        assert not [e for e in recorder.events if e[0] == "reminded"]

        clock.now += timedelta(minutes=2)
        engine.sweep()
        engine.sweep()
        assert [e for e in recorder.events if e[0] == "reminded"] == [
            ("reminded", ["U0APPROVR1", "U0APPROVR2"])
        ]

        clock.now += timedelta(minutes=5)
        engine.sweep()
        assert engine._require(request.id).status == RequestStatus.EXPIRED
        assert ("expired_unapproved", request.id) in recorder.events
    finally:
        engine.store.engine.dispose()


def test_each_lifecycle_audit_record_queues_one_audit_line_in_the_same_transaction(
    database_url: str,
) -> None:
    engine, recorder, _clock = make_engine_for(database_url, audit_feed=True)
    try:
        request = submit(engine)
        assert request.id is not None
        engine.approve(request.id, "U0APPROVR1")

        lines = [n for n in engine.store.notifications(request.id) if n.event == AUDIT_LINE_EVENT]
        assert [n.args["action"] for n in lines] == ["requested", "approved", "opened"]
        assert [e[1] for e in recorder.events if e[0] == "audit"] == [
            "requested",
            "approved",
            "opened",
        ]
        actions = [e.action for e in engine.store.audit_events(request.id)]
        assert "rule_created" in actions
    finally:
        engine.store.engine.dispose()


# -- chat text -------------------------------------------------------------------------------


def request_row(**values: Any) -> AccessRequest:
    base: dict[str, Any] = {
        "id": 7,
        "team_id": "T0001ABCD",
        "requester_id": REQUESTER,
        "vm_name": "vm-web01",
        "ports": "22",
        "source_prefix": "203.0.113.7/32",
        "duration_seconds": 1800,
        "policy_name": "web-admin",
        "policy_version": 1,
        "status": RequestStatus.PENDING,
        "approval_channel": "C0OPS12345",
    }
    return AccessRequest(**{**base, **values})


def test_an_audit_line_escapes_what_users_typed_and_mentions_nobody() -> None:
    line = messages.audit_line(
        request_row(vm_name="vm-<!channel>"), "denied", "U0APPROVR1", {"note": "<@U0BOSS> no"}
    )
    assert line == (
        "#7 denied by U0APPROVR1: vm-&lt;!channel&gt; port 22/Tcp from 203.0.113.7/32 for "
        "U0REQ12345; reason: &lt;@U0BOSS&gt; no"
    )


def test_an_audit_line_names_the_auto_approval_rule_and_the_approval_count() -> None:
    auto = messages.audit_line(request_row(), "auto_approved", "auto:vpn-ssh", {"rule": "vpn-ssh"})
    assert auto.startswith("#7 auto-approved by auto:vpn-ssh: ")
    assert auto.endswith("; rule vpn-ssh")
    first = messages.audit_line(request_row(), "approval_recorded", "U0A", {"approvals": "1/2"})
    assert first.startswith("#7 approved (1/2) by U0A: ")


def test_user_groups_are_mentioned_as_groups_in_the_reminder() -> None:
    expires = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)
    text = messages.reminder_text(request_row(), ["U0APPROVR1", "S0APPROVRS", REQUESTER], expires)
    assert text.startswith(":bell: <@U0APPROVR1>, <!subteam^S0APPROVRS>: request #7 of ")
    assert f"<@{REQUESTER}>:" not in text


def test_partial_approval_says_who_approved_and_how_many_more_are_needed() -> None:
    blocks = messages.partly_approved_blocks(request_row(), ["U0APPROVR1"], 2)
    assert blocks[1]["elements"][0]["text"] == (
        ":hourglass: 1 of 2 approvals: approved by <@U0APPROVR1>, waiting for one more"
    )
    assert blocks[2]["elements"][0]["action_id"] == messages.APPROVE_ACTION


@pytest.mark.parametrize(
    "blocks",
    [
        messages.partly_approved_blocks(request_row(reason="<!channel>"), ["U0APPROVR1"], 2),
        messages.review_blocks(
            request_row(
                status=RequestStatus.ACTIVE,
                decided_by="auto:vpn-ssh",
                ends_at=datetime(2026, 12, 4, 13, 0, tzinfo=UTC),
            )
        ),
    ],
    ids=["partly-approved", "auto-approval-review"],
)
def test_approval_rule_messages_pass_slack_sdks_block_models(blocks: list[dict[str, Any]]) -> None:
    assert 0 < len(blocks) <= messages.MAX_BLOCKS
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == block
    assert "<!channel>" not in str(blocks)


# -- the audit channel setting ---------------------------------------------------------------


def settings_with(**values: Any) -> Any:
    from bot.settings import Settings

    return Settings(
        slack_signing_secret="8f14e45fceea167a5a36dedd4bea2543",
        slack_bot_token="xoxb-1111-2222-token",
        azure_subscription_id="00000000-0000-0000-0000-00000000a11c",
        **values,
    )  # type: ignore[call-arg]


def test_the_audit_channel_setting_takes_a_channel_id_and_names_itself_when_wrong() -> None:
    from pydantic import ValidationError

    from bot.settings import problems

    assert settings_with(audit_channel="C0AUDIT001").audit_channel == "C0AUDIT001"
    assert settings_with().audit_channel is None
    with pytest.raises(ValidationError) as caught:
        settings_with(audit_channel="#jit-audit")
    [problem] = problems(caught.value)
    assert problem.startswith("JITBOT_AUDIT_CHANNEL: a channel id like C0123ABCD")


def test_why_says_how_many_approvals_are_needed_and_what_rules_approve_at_once() -> None:
    lines = messages.approval_rule_lines(policy(approvals_required=2, auto_approve=[VPN_RULE]))
    assert lines == [
        "• Two different approvers must approve, neither of them the requester.",
        "• Rule `vpn-ssh` approves at once: port 22 from `203.0.113.0/24`, up to 1h, at most "
        "2 a day per requester.",
    ]
    assert messages.approval_rule_lines(policy()) == []
