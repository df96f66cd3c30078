"""Two ``jitbot serve`` processes on one PostgreSQL database: every click is decided once,
every expiry processed once, every notice sent once, and a replica that dies has its
deadlines taken over by the other."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitcore.model import RequestStatus
from tests.scenario.harness import REQUESTER, SECOND_APPROVER, Driver, wait_until, write_policy
from tests.scenario.processes import Endpoint, ProcessWorld

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RULE_PATH = "securityRules/jitbot-allow"


@pytest.fixture
def world(tmp_path: Path, postgres_url: str) -> Iterator[ProcessWorld]:
    from jitcore.db import make_engine
    from tests.conftest import _reset

    engine = make_engine(postgres_url)
    _reset(engine)
    engine.dispose()
    running = ProcessWorld(tmp_path, postgres_url, write_policy(tmp_path))
    try:
        yield running
    finally:
        running.close()


def submit(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200 and "Request #" in reply["text"], reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, what="the approval message")
    return request_id


def deletes_of(world: ProcessWorld, request_id: int) -> list[dict]:
    return [
        r
        for r in world.arm.requests()
        if r["method"] == "DELETE" and r["path"].endswith(f"jitbot-allow-r{request_id}")
    ]


def all_delivered(world: ProcessWorld, request_id: int) -> bool:
    """Whether every notice queued for the request has been sent."""
    notices = world.store.notifications(request_id)
    return bool(notices) and all(n.sent_at is not None for n in notices)


def test_two_replicas_decide_each_click_once_and_expire_each_grant_once(
    world: ProcessWorld,
) -> None:
    a = world.start_bot("a")
    b = world.start_bot("b")
    via_a = Driver(Endpoint(world, a))  # type: ignore[arg-type]
    via_b = Driver(Endpoint(world, b))  # type: ignore[arg-type]
    ids = [submit(via_a, f"request vm-web01 22 3s from 203.0.113.{n}") for n in (1, 2, 3)]

    clicks = []
    for request_id in ids:
        clicks.append(threading.Thread(target=via_a.click, args=("jit_approve", request_id)))
        clicks.append(
            threading.Thread(
                target=via_b.submit_deny_reason,
                args=(request_id,),
                kwargs={"user": SECOND_APPROVER},
            )
        )
    for click in clicks:
        click.start()
    for click in clicks:
        click.join()

    finals = {RequestStatus.CLOSED, RequestStatus.DENIED}
    for request_id in ids:
        wait_until(
            lambda r=request_id: world.request(r).status in finals, timeout=30, what="an ending"
        )
        # The news of a decision or a close is queued with the change and delivered just
        # after it (at least once, by whichever replica claims it): wait for that delivery.
        wait_until(
            lambda r=request_id: all_delivered(world, r),
            timeout=30,
            what=f"the notices of request {request_id} to be delivered",
        )
    for request_id in ids:
        request = world.request(request_id)
        decisions = [
            e.action
            for e in world.store.audit_events(request_id)
            if e.action in ("approved", "denied")
        ]
        assert len(decisions) == 1, decisions
        if request.status == RequestStatus.CLOSED:
            assert len([d for d in deletes_of(world, request_id) if d["status"] < 300]) == 1
            closed = [e for e in world.store.audit_events(request_id) if e.action == "closed"]
            assert len(closed) == 1
        given_up = [n.event for n in world.store.notifications(request_id) if n.last_error]
        assert given_up == [], given_up
    expired_dms = [t for t in via_a.dms_to(REQUESTER) if "expired" in t]
    closed_count = sum(world.request(r).status == RequestStatus.CLOSED for r in ids)
    assert len(expired_dms) == closed_count


def test_when_a_replica_dies_the_other_takes_over_its_deadlines(world: ProcessWorld) -> None:
    a = world.start_bot("a")
    world.start_bot("b")
    via_a = Driver(Endpoint(world, a))  # type: ignore[arg-type]
    ids = [submit(via_a, f"request vm-web01 22 2s from 198.51.100.{n}") for n in (1, 2)]
    for request_id in ids:
        via_a.click("jit_approve", request_id)
    for request_id in ids:
        wait_until(
            lambda r=request_id: world.request(r).status == RequestStatus.ACTIVE, what="active"
        )

    a.kill()

    for request_id in ids:
        wait_until(
            lambda r=request_id: world.request(r).status == RequestStatus.CLOSED,
            timeout=15,
            what="the surviving replica to close it",
        )
        assert len([d for d in deletes_of(world, request_id) if d["status"] < 300]) == 1
        wait_until(
            lambda r=request_id: all_delivered(world, r),
            timeout=30,
            what=f"the notices of request {request_id} to be delivered",
        )
    dms = [t for t in via_a.dms_to(REQUESTER) if "expired" in t]
    assert len(dms) == 2
