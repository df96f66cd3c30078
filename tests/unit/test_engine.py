from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, PolicySet
from jitcore.errors import (
    CloudError,
    NotAuthorized,
    PortNotAllowed,
    RequestRejected,
    StateConflict,
)
from jitcore.model import GrantState, RequestStatus
from jitcore.policy import parse_policies
from tests.fakes import NSG, FakeCloud, RecordingNotifier

POLICY = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}],
    "min_duration": "1s",
    "approvers": ["U0APPROVR1", "U0APPROVR2"],
    "approval_channel": "C0OPS12345",
}


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(database_url: str):
    store = Store(make_engine(database_url))
    create_schema(store.engine)
    cloud = FakeCloud()
    notifier = RecordingNotifier()
    clock = ManualClock()
    policies = parse_policies({"policies": [POLICY]})
    engine = Engine(store, PolicySet(policies, {"web-admin": 1}), cloud, notifier, clock=clock)
    yield engine, cloud, notifier, clock
    store.engine.dispose()


def submit(engine: Engine, requester: str = "U0REQ12345", duration: timedelta = timedelta(hours=2)):
    request = engine.submit("T0001ABCD", requester, "vm-web01", [22], duration, "203.0.113.7")
    engine.deliver(request.id)
    return request


def test_approval_opens_one_rule_and_expiry_restores_the_nsg(world) -> None:
    engine, cloud, notifier, clock = world
    before = cloud.custom_rules(NSG)
    request = submit(engine)

    engine.approve(request.id, "U0APPROVR1")

    active = engine.store.get_request(request.id)
    assert active.status == RequestStatus.ACTIVE
    assert active.ends_at == clock.now + timedelta(hours=2)
    [grant] = engine.grants_of(request.id)
    assert grant.state == GrantState.PRESENT and grant.priority == 999
    assert (
        cloud.rules[NSG][grant.rule_name]["properties"]["sourceAddressPrefix"] == "203.0.113.7/32"
    )

    clock.now += timedelta(hours=2)
    assert engine.expire(request.id)

    assert engine.store.get_request(request.id).status == RequestStatus.CLOSED
    assert cloud.custom_rules(NSG) == before
    assert notifier.reports[-1].restored
    assert [e for e, _ in notifier.events] == ["submitted", "approved", "granted", "closed"]


def test_a_rejected_request_records_nothing(world) -> None:
    engine, *_ = world
    with pytest.raises(PortNotAllowed):
        engine.submit("T", "U0REQ12345", "vm-web01", [3389], timedelta(hours=1), "203.0.113.7")
    assert engine.store.requests_with_status(tuple(RequestStatus)) == []
    assert engine.store.audit_events() == []


def test_requester_cannot_approve_their_own_request_and_it_is_audited(world) -> None:
    engine, cloud, *_ = world
    request = submit(engine, requester="U0APPROVR1")
    with pytest.raises(NotAuthorized, match="your own request"):
        engine.approve(request.id, "U0APPROVR1")
    assert engine.store.get_request(request.id).status == RequestStatus.PENDING
    assert cloud.writes == []
    assert engine.store.audit_events(request.id)[-1].action == "decision_refused"


def test_someone_outside_the_approvers_cannot_decide(world) -> None:
    engine, cloud, *_ = world
    request = submit(engine)
    with pytest.raises(NotAuthorized, match="only the approvers"):
        engine.deny(request.id, "U0OUTSIDER")
    assert cloud.writes == []


def test_a_second_decision_is_refused_and_names_the_first_decider(world) -> None:
    engine, cloud, *_ = world
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    with pytest.raises(StateConflict) as caught:
        engine.deny(request.id, "U0APPROVR2")
    assert caught.value.decided_by == "U0APPROVR1"
    assert len(cloud.writes) == 1


def test_concurrent_approvals_open_exactly_once(world) -> None:
    engine, cloud, *_ = world
    request = submit(engine)
    outcomes: list[str] = []

    def click(user: str) -> None:
        try:
            engine.approve(request.id, user)
            outcomes.append("approved")
        except StateConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=click, args=(u,)) for u in ["U0APPROVR1", "U0APPROVR2"] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("approved") == 1
    assert [w[0] for w in cloud.writes] == ["create"]


def test_deny_touches_nothing_in_the_cloud(world) -> None:
    engine, cloud, notifier, _ = world
    request = submit(engine)
    engine.deny(request.id, "U0APPROVR1", "not today")
    assert engine.store.get_request(request.id).status == RequestStatus.DENIED
    assert cloud.writes == []
    assert ("denied", request.id) in notifier.events


def test_a_failed_create_leaves_nothing_open_and_marks_the_request_failed(world) -> None:
    engine, cloud, notifier, _ = world
    cloud.fail_next(
        "create_rule", CloudError("Azure refused", code="InternalServerError", status=500)
    )
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    failed = engine.store.get_request(request.id)
    assert failed.status == RequestStatus.FAILED
    assert "Azure refused" in failed.failure_reason
    assert [r["name"] for r in cloud.custom_rules(NSG)] == ["jitbot-deny-vm-web01"]
    assert ("failed", request.id) in notifier.events


def test_a_priority_taken_meanwhile_is_planned_again(world) -> None:
    engine, cloud, *_ = world
    cloud.fail_next("create_rule", CloudError("conflict", code="SecurityRuleConflict", status=400))
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    assert engine.store.get_request(request.id).status == RequestStatus.ACTIVE


def test_expiry_before_the_end_does_nothing(world) -> None:
    engine, cloud, _, clock = world
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    clock.now += timedelta(minutes=30)
    assert not engine.expire(request.id)
    assert engine.store.get_request(request.id).status == RequestStatus.ACTIVE


def test_a_failed_delete_keeps_the_request_closing_until_the_sweep_succeeds(world) -> None:
    engine, cloud, notifier, clock = world
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    clock.now += timedelta(hours=3)
    cloud.fail_next("delete_rule", CloudError("busy", code="InternalServerError", status=500))

    assert not engine.expire(request.id)
    assert engine.store.get_request(request.id).status == RequestStatus.CLOSING

    engine.sweep()
    assert engine.store.get_request(request.id).status == RequestStatus.CLOSED
    assert [r["name"] for r in cloud.custom_rules(NSG)] == ["jitbot-deny-vm-web01"]
    assert notifier.events.count(("closed", request.id)) == 1


def test_sweep_expires_overdue_grants_and_stale_pending_requests(world) -> None:
    engine, cloud, notifier, clock = world
    active = submit(engine)
    engine.approve(active.id, "U0APPROVR1")
    pending = submit(engine)
    clock.now += timedelta(hours=5)
    engine.sweep()
    assert engine.store.get_request(active.id).status == RequestStatus.CLOSED
    assert engine.store.get_request(pending.id).status == RequestStatus.EXPIRED
    assert ("expired_unapproved", pending.id) in notifier.events


def test_recover_undoes_an_open_interrupted_by_a_crash(world) -> None:
    engine, cloud, *_ = world
    request = submit(engine)
    engine.store.transition(request.id, (RequestStatus.PENDING,), RequestStatus.APPROVED)
    engine.store.transition(
        request.id,
        (RequestStatus.APPROVED,),
        RequestStatus.OPENING,
        ends_at=engine.clock() + timedelta(hours=2),
    )
    cloud.create_rule(
        NSG, "jitbot-allow-r1", {"priority": 999, "direction": "Inbound", "access": "Allow"}
    )
    from jitcore.model import Grant

    with engine.store.session() as session:
        session.add(
            Grant(
                request_id=request.id,
                nsg_id=NSG,
                rule_name="jitbot-allow-r1",
                priority=999,
                state=GrantState.CREATING,
                rule={},
                baseline=[],
                created_at=engine.clock(),
                updated_at=engine.clock(),
            )
        )
        session.commit()

    engine.recover()

    assert engine.store.get_request(request.id).status == RequestStatus.FAILED
    assert "jitbot-allow-r1" not in cloud.rules[NSG]


def test_revoke_closes_early_as_revoked(world) -> None:
    engine, cloud, *_ = world
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    assert engine.revoke(request.id, "U0REQ12345")
    assert engine.store.get_request(request.id).status == RequestStatus.REVOKED
    assert [r["name"] for r in cloud.custom_rules(NSG)] == ["jitbot-deny-vm-web01"]


def test_every_step_is_in_the_audit_log(world) -> None:
    engine, _, _, clock = world
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    clock.now += timedelta(hours=2)
    engine.expire(request.id)
    actions = [e.action for e in engine.store.audit_events(request.id)]
    assert actions == [
        "requested",
        "approved",
        "rule_intended",
        "rule_created",
        "opened",
        "closing",
        "rule_intended",
        "rule_removed",
        "closed",
    ]


class FlakyNotifier(RecordingNotifier):
    """Fails the first ``failures`` deliveries of any kind."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def request_granted(self, request, grants) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Slack is down")
        super().request_granted(request, grants)


def test_news_that_could_not_be_sent_is_sent_by_the_sweep_exactly_once(world) -> None:
    engine, *_ = world
    engine.notifier = FlakyNotifier(failures=2)
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    assert ("granted", request.id) not in engine.notifier.events

    engine.sweep()
    engine.sweep()

    assert engine.notifier.events.count(("granted", request.id)) == 1
    assert all(n.sent_at for n in engine.store.notifications(request.id))
    failures = [e for e in engine.store.audit_events(request.id) if e.action == "notify_failed"]
    assert len(failures) == 2


def test_later_news_waits_for_earlier_news_of_the_same_request(world) -> None:
    engine, _, _, clock = world
    engine.notifier = FlakyNotifier(failures=2)
    request = submit(engine)
    engine.approve(request.id, "U0APPROVR1")
    clock.now += timedelta(hours=2)
    engine.expire(request.id)
    assert ("closed", request.id) not in engine.notifier.events

    engine.sweep()

    kinds = [e for e, rid in engine.notifier.events if rid == request.id]
    assert kinds == ["submitted", "approved", "granted", "closed"]


def test_a_state_change_and_its_news_are_stored_together(world) -> None:
    engine, *_ = world
    request = submit(engine)
    engine.deny(request.id, "U0APPROVR1", "no")
    events = [n.event for n in engine.store.notifications(request.id)]
    assert events == ["request_submitted", "request_denied"]


def test_a_requester_cannot_flood_the_approvers(world) -> None:
    engine, *_ = world
    for _ in range(engine.max_pending_per_requester):
        submit(engine)
    with pytest.raises(RequestRejected, match="waiting for a decision"):
        submit(engine)


def test_an_ipv6_source_for_an_ipv4_vm_fails_clearly_and_opens_nothing(world) -> None:
    engine, cloud, *_ = world
    request = engine.submit("T", "U0REQ12345", "vm-web01", [22], timedelta(hours=1), "2001:db8::7")
    engine.approve(request.id, "U0APPROVR1")
    failed = engine.store.get_request(request.id)
    assert failed.status == RequestStatus.FAILED and "IPv6" in failed.failure_reason
    assert cloud.writes == []
