"""Extending active access: who may, how far (the policy's maximum from when access
opened), what is rewritten in the NSG, and when the grant then ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, ExtensionTooLong, PolicySet
from jitcore.errors import CloudError, NotAuthorized, RequestRejected, StateConflict
from jitcore.model import AccessRequest, RequestStatus
from jitcore.policy import parse_policies
from tests.fakes import NSG, FakeCloud, RecordingNotifier

POLICY = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}, {"port": 3389, "max_duration": "2h"}],
    "min_duration": "1s",
    "approvers": ["U0APPROVR1", "U0APPROVR2"],
    "approval_channel": "C0OPS12345",
}
REQUESTER = "U0REQ12345"
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


class Notifier(RecordingNotifier):
    def request_extended(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self.events.append(("extended", request.id))
        self.extended = args

    def request_expiring(self, request: AccessRequest, args: dict[str, Any]) -> None:
        self.events.append(("expiring", request.id))
        self.expiring = args


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(database_url: str):
    store = Store(make_engine(database_url))
    create_schema(store.engine)
    cloud, notifier, clock = FakeCloud(), Notifier(), Clock()
    policies = parse_policies({"policies": [POLICY]})
    scheduled: list[datetime] = []
    engine = Engine(
        store,
        PolicySet(policies, {"web-admin": 1}),
        cloud,
        notifier,
        clock=clock,
        on_active=lambda r: scheduled.append(r.ends_at),
    )
    yield engine, cloud, notifier, clock, scheduled
    store.engine.dispose()


def open_request(engine: Engine, ports: list[int] = [22], hours: int = 2) -> AccessRequest:  # noqa: B006
    request = engine.submit(
        "T", REQUESTER, "vm-web01", ports, timedelta(hours=hours), "203.0.113.7"
    )
    engine.approve(request.id, "U0APPROVR1")
    return engine.store.get_request(request.id)


def description(cloud: FakeCloud, name: str) -> str:
    return cloud.rules[NSG][name]["properties"]["description"]


def test_extend_moves_the_end_rewrites_the_rule_and_the_grant_ends_then_and_not_before(
    world,
) -> None:
    engine, cloud, notifier, clock, scheduled = world
    request = open_request(engine)
    clock.now = T0 + timedelta(hours=1)

    extended = engine.extend(request.id, REQUESTER, timedelta(hours=2))

    new_end = T0 + timedelta(hours=3)
    assert extended.ends_at == new_end and extended.status == RequestStatus.ACTIVE
    assert scheduled[-1] == new_end
    [grant] = engine.grants_of(request.id)
    assert (
        description(cloud, grant.rule_name) == "jitbot r1 until 2026-12-04T15:00:00Z for vm-web01"
    )
    assert grant.rule["description"] == description(cloud, grant.rule_name)
    rule = cloud.rules[NSG][grant.rule_name]["properties"]
    assert rule["priority"] == 999 and rule["sourceAddressPrefix"] == "203.0.113.7/32"
    assert notifier.events[-1] == ("extended", request.id)
    assert notifier.extended["by"] == REQUESTER
    audit = [e for e in engine.store.audit_events(request.id) if e.action == "extended"]
    assert audit[0].actor == REQUESTER

    clock.now = T0 + timedelta(hours=2)
    assert not engine.expire(request.id)
    engine.sweep()
    assert engine.store.get_request(request.id).status == RequestStatus.ACTIVE
    clock.now = new_end
    assert engine.expire(request.id)
    assert engine.store.get_request(request.id).status == RequestStatus.CLOSED


def test_an_approver_may_extend_but_nobody_else(world) -> None:
    engine, *_ = world
    request = open_request(engine)

    with pytest.raises(NotAuthorized, match="no request #1 that you requested or approve"):
        engine.extend(request.id, "U0OUTSIDER", timedelta(hours=2, minutes=30))
    extended = engine.extend(request.id, "U0APPROVR2", timedelta(hours=2, minutes=30))

    assert extended.ends_at == T0 + timedelta(hours=2, minutes=30)
    refused = [e for e in engine.store.audit_events(request.id) if e.action == "extend_refused"]
    assert [e.actor for e in refused] == ["U0OUTSIDER"]


def test_an_extension_past_the_maximum_from_opening_is_refused_with_the_limit(world) -> None:
    engine, cloud, *_ = world
    request = open_request(engine, ports=[22, 3389], hours=1)
    writes = list(cloud.writes)
    engine.clock.now = T0 + timedelta(minutes=30)

    with pytest.raises(ExtensionTooLong) as refused:
        engine.extend(request.id, REQUESTER, timedelta(hours=1, minutes=31))

    assert refused.value.limit == T0 + timedelta(hours=2)  # the shorter maximum, of 3389
    assert refused.value.longest == timedelta(hours=1, minutes=30)
    assert "2026-12-04 14:00:00 UTC at most" in refused.value.message
    assert engine.store.get_request(request.id).ends_at == T0 + timedelta(hours=1)
    assert cloud.writes == writes


def test_an_end_earlier_than_the_current_one_is_refused(world) -> None:
    engine, *_ = world
    request = open_request(engine)

    with pytest.raises(RequestRejected, match="already open until 2026-12-04 14:00:00 UTC"):
        engine.extend(request.id, REQUESTER, timedelta(hours=1))


def test_only_active_access_can_be_extended(world) -> None:
    engine, *_ = world
    pending = engine.submit("T", REQUESTER, "vm-web01", [22], timedelta(hours=1), "203.0.113.7")

    with pytest.raises(StateConflict, match="is pending; only active access"):
        engine.extend(pending.id, REQUESTER, timedelta(hours=2))


def test_a_failed_rule_rewrite_keeps_the_extension_and_is_audited(world) -> None:
    engine, cloud, *_ = world
    request = open_request(engine)
    cloud.fail_next("create_rule", CloudError("busy", code="InternalServerError"))

    extended = engine.extend(request.id, REQUESTER, timedelta(hours=3))

    assert extended.ends_at == T0 + timedelta(hours=3)
    actions = [e.action for e in engine.store.audit_events(request.id)]
    assert "rule_update_failed" in actions
    [grant] = engine.grants_of(request.id)
    assert "until 2026-12-04T15:00:00Z" in grant.rule["description"]


def test_a_shared_rule_keeps_its_creators_id_and_takes_the_latest_end(world) -> None:
    engine, cloud, *_ = world
    first = open_request(engine, hours=1)
    second = open_request(engine, hours=2)
    assert [n for n in cloud.rules[NSG] if n.startswith("jitbot-allow")] == ["jitbot-allow-r1"]

    engine.extend(first.id, REQUESTER, timedelta(hours=1, minutes=30))

    assert "jitbot r1 until 2026-12-04T14:00:00Z" in description(cloud, "jitbot-allow-r1")
    engine.extend(second.id, REQUESTER, timedelta(hours=3))
    assert "jitbot r1 until 2026-12-04T15:00:00Z" in description(cloud, "jitbot-allow-r1")
    rules = {g.rule["description"] for r in (first, second) for g in engine.grants_of(r.id)}
    assert rules == {description(cloud, "jitbot-allow-r1")}


def test_the_extend_button_moves_the_end_by_its_step_capped_by_the_policy_maximum(
    world,
) -> None:
    engine, *_ = world
    request = open_request(engine, hours=2)
    step = timedelta(minutes=30)
    assert engine.extension_step(request, step) == step

    engine.clock.now = T0 + timedelta(hours=1, minutes=55)
    once = engine.extend_by_step(request.id, REQUESTER, step)
    assert once.ends_at == T0 + timedelta(hours=2, minutes=30)
    twice = engine.extend_by_step(request.id, REQUESTER, step)
    assert twice.ends_at == T0 + timedelta(hours=3)
    assert engine.extension_step(twice, step) is None

    with pytest.raises(ExtensionTooLong):
        engine.extend_by_step(request.id, REQUESTER, step)


# -- expiring-soon warnings ---------------------------------------------------------------

LEAD = timedelta(minutes=10)


def warnings(notifier: Notifier) -> int:
    return sum(1 for event, _ in notifier.events if event == "expiring")


def test_an_active_request_is_warned_once_within_the_lead_time(world) -> None:
    engine, _cloud, notifier, clock, _ = world
    request = open_request(engine, hours=2)

    clock.now = T0 + timedelta(hours=1, minutes=49)
    assert engine.warn_expiring(LEAD) == 0
    clock.now = T0 + timedelta(hours=1, minutes=51)
    assert engine.warn_expiring(LEAD) == 1
    assert engine.warn_expiring(LEAD) == 0

    assert warnings(notifier) == 1
    assert notifier.expiring == {
        "ends_at": (T0 + timedelta(hours=2)).isoformat(),
        "extend_by_seconds": 1800.0,
    }
    assert [e.action for e in engine.store.audit_events(request.id)].count("expiry_warned") == 1


def test_an_extended_request_is_warned_again_before_its_new_end(world) -> None:
    engine, _cloud, notifier, clock, _ = world
    request = open_request(engine, hours=1)
    clock.now = T0 + timedelta(minutes=55)
    engine.warn_expiring(LEAD)

    engine.extend(request.id, REQUESTER, timedelta(minutes=30))
    assert engine.warn_expiring(LEAD) == 0
    clock.now = T0 + timedelta(minutes=76)

    assert engine.warn_expiring(LEAD) == 1
    assert warnings(notifier) == 2
    assert notifier.expiring["ends_at"] == (T0 + timedelta(minutes=85)).isoformat()


def test_grants_no_longer_than_the_lead_time_are_not_warned(world) -> None:
    engine, _cloud, notifier, clock, _ = world
    request = engine.submit("T", REQUESTER, "vm-web01", [22], timedelta(minutes=8), "203.0.113.7")
    engine.approve(request.id, "U0APPROVR1")
    clock.now = T0 + timedelta(minutes=1)

    assert engine.warn_expiring(LEAD) == 0
    assert warnings(notifier) == 0


def test_a_warning_at_the_policy_maximum_offers_no_extension(world) -> None:
    engine, _cloud, notifier, clock, _ = world
    open_request(engine, hours=3)
    clock.now = T0 + timedelta(hours=2, minutes=55)

    engine.warn_expiring(LEAD)

    assert notifier.expiring["extend_by_seconds"] == 0.0
