"""The database failing in the middle of a worker's turn on a request: once it is back,
the request is worked on again (by this process's sweep, not only after a restart)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import OperationalError

from jitcore.db import Store, create_schema, make_engine
from jitcore.engine import Engine, PolicySet
from jitcore.model import RequestStatus
from jitcore.policy import parse_policies
from tests.fakes import NSG, FakeCloud, RecordingNotifier

POLICY = {
    "name": "web-admin",
    "vms": ["vm-web01"],
    "ports": [{"port": 22, "max_duration": "3h"}],
    "min_duration": "1s",
    "approvers": ["U0APPROVR1"],
    "approval_channel": "C0OPS12345",
}


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class LeaseReleaseFails:
    """Stands in for ``Store.release_lease`` while the database is unreachable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.real = store.release_lease
        self.failures = 0

    def __call__(self, request_id: int, owner: str) -> None:
        self.failures += 1
        raise OperationalError("UPDATE access_request", {}, ConnectionError("server closed"))


@pytest.fixture
def world(database_url: str):
    store = Store(make_engine(database_url))
    create_schema(store.engine)
    cloud = FakeCloud()
    clock = ManualClock()
    policies = parse_policies({"policies": [POLICY]})
    engine = Engine(
        store, PolicySet(policies, {"web-admin": 1}), cloud, RecordingNotifier(), clock=clock
    )
    yield engine, cloud, clock
    store.engine.dispose()


def test_a_lease_that_cannot_be_released_does_not_keep_the_sweep_away_for_good(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, cloud, clock = world
    request = engine.submit(
        "T0001ABCD", "U0REQ12345", "vm-web01", [22], timedelta(seconds=5), "203.0.113.7"
    )
    engine.deliver(request.id)
    before = cloud.custom_rules(NSG)
    outage = LeaseReleaseFails(engine.store)
    monkeypatch.setattr(engine.store, "release_lease", outage)

    with pytest.raises(OperationalError):
        engine.approve(request.id, "U0APPROVR1")  # the database goes away as opening ends

    assert outage.failures == 1
    assert engine.store.get_request(request.id).status == RequestStatus.ACTIVE
    monkeypatch.setattr(engine.store, "release_lease", outage.real)  # the database is back
    clock.now += timedelta(seconds=6)

    engine.sweep()

    closed = engine.store.get_request(request.id)
    assert closed.status == RequestStatus.CLOSED
    assert closed.lease_owner is None
    assert cloud.custom_rules(NSG) == before


def test_a_delivery_the_database_could_not_record_is_recorded_later_and_not_sent_again(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _cloud, clock = world
    notifier = engine.notifier
    request = engine.submit(
        "T0001ABCD", "U0REQ12345", "vm-web01", [22], timedelta(seconds=5), "203.0.113.7"
    )
    engine.deliver(request.id)
    real_finish = engine.store.finish_notification
    lost: list[str] = []

    def finish_lost_for_the_grant(notification_id: int, *args, **kwargs) -> None:
        [note] = [n for n in engine.store.notifications(request.id) if n.id == notification_id]
        if note.event == "request_granted" and not lost:
            lost.append(note.event)
            raise OperationalError("UPDATE notification", {}, ConnectionError("server closed"))
        real_finish(notification_id, *args, **kwargs)

    monkeypatch.setattr(engine.store, "finish_notification", finish_lost_for_the_grant)

    with pytest.raises(OperationalError):
        engine.approve(request.id, "U0APPROVR1")  # granted DM sent, its record lost

    assert lost == ["request_granted"]
    clock.now += timedelta(seconds=6)  # well inside the claim of the granted notice
    engine.sweep()

    assert engine.store.get_request(request.id).status == RequestStatus.CLOSED
    assert [e for e, _ in notifier.events] == ["submitted", "approved", "granted", "closed"]
    assert all(n.sent_at is not None for n in engine.store.notifications(request.id))


def test_a_claim_whose_answer_was_lost_does_not_hold_back_the_requests_notices(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _cloud, clock = world
    notifier = engine.notifier
    request = engine.submit(
        "T0001ABCD", "U0REQ12345", "vm-web01", [22], timedelta(seconds=5), "203.0.113.7"
    )
    engine.deliver(request.id)
    real_claim = engine.store.claim_notification
    lost: list[str] = []

    def claim_stored_but_answer_lost(notification_id: int, *args, **kwargs) -> bool:
        [note] = [n for n in engine.store.notifications(request.id) if n.id == notification_id]
        claimed = real_claim(notification_id, *args, **kwargs)
        if note.event == "request_granted" and not lost:
            lost.append(note.event)
            raise OperationalError("COMMIT", {}, ConnectionError("server closed"))
        return claimed

    monkeypatch.setattr(engine.store, "claim_notification", claim_stored_but_answer_lost)

    with pytest.raises(OperationalError):
        engine.approve(request.id, "U0APPROVR1")

    assert lost == ["request_granted"]
    clock.now += timedelta(seconds=6)  # well inside the lost claim's minute
    engine.sweep()

    assert engine.store.get_request(request.id).status == RequestStatus.CLOSED
    assert [e for e, _ in notifier.events] == ["submitted", "approved", "granted", "closed"]
    assert all(n.sent_at is not None for n in engine.store.notifications(request.id))
