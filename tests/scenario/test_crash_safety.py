"""Kill the bot (SIGKILL) at each step of open, expire and revoke; start it again; check
that no port stays open, the requester is told once, and the audit log is complete.

The bot runs as real ``jitbot serve`` processes. The ARM stand-in holds the write being
tested (before it is applied, after it is applied but before the answer, or while its
long-running operation runs) so the kill lands exactly in that window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitcore.model import RequestStatus
from tests.scenario.harness import REQUESTER, Driver, wait_until, write_policy
from tests.scenario.processes import Endpoint, ProcessWorld

pytestmark = pytest.mark.slow

NSG = "nsg-web01"
RULE_PATH = "securityRules/jitbot-allow"


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[ProcessWorld]:
    running = ProcessWorld(tmp_path, database_url, write_policy(tmp_path))
    try:
        yield running
    finally:
        running.close()


def rule_present(world: ProcessWorld, request_id: int) -> bool:
    nsg_id = (
        f"/subscriptions/{world.arm.subscription_id}/resourceGroups/rg-jit-demo"
        f"/providers/Microsoft.Network/networkSecurityGroups/{NSG}"
    )
    return any(r["name"] == f"jitbot-allow-r{request_id}" for r in world.arm.snapshot_nsg(nsg_id))


def submit(driver: Driver, text: str) -> int:
    status, reply = driver.command(text)
    assert status == 200 and "Request #" in reply["text"], reply
    request_id = int(reply["text"].split("#", 1)[1].split()[0])
    wait_until(lambda: driver.request(request_id).approval_ts, timeout=30, what="approval")
    return request_id


def dms(driver: Driver, word: str) -> list[str]:
    return [text for text in driver.dms_to(REQUESTER) if word in text]


def actions(world: ProcessWorld, request_id: int) -> list[str]:
    return [event.action for event in world.store.audit_events(request_id)]


OPEN_STEPS = {
    "before-the-write": {"method": "PUT", "path_contains": RULE_PATH, "stall_seconds": 2},
    "after-the-write": {"method": "PUT", "path_contains": RULE_PATH, "reply_delay_seconds": 3},
    "during-the-operation": {"method": "PUT", "path_contains": RULE_PATH, "delay_seconds": 2},
}


@pytest.mark.parametrize("step", list(OPEN_STEPS))
def test_a_kill_while_opening_leaves_nothing_open_and_tells_the_requester_once(
    world: ProcessWorld, step: str
) -> None:
    first = world.start_bot("first", JITBOT_RECONCILE_INTERVAL_SECONDS="1")
    driver = Driver(Endpoint(world, first))  # type: ignore[arg-type]
    request_id = submit(driver, "request vm-web01 22 1h from 203.0.113.7")
    world.arm.add_fault(times=1, **OPEN_STEPS[step])

    driver.click("jit_approve", request_id)
    if step == "during-the-operation":
        wait_until(
            lambda: any(r["method"] == "PUT" and r["status"] == 201 for r in world.arm.requests()),
            timeout=30,
            what="the PUT to be accepted",
        )
    else:
        wait_until(lambda: world.arm.stalls_seen >= 1, timeout=30, what="the PUT to be held")
    first.kill()
    assert world.request(request_id).status == RequestStatus.OPENING

    second = world.start_bot("second", JITBOT_RECONCILE_INTERVAL_SECONDS="1")
    driver = Driver(Endpoint(world, second))  # type: ignore[arg-type]

    failed = wait_until(
        lambda: (r := world.request(request_id)).status == RequestStatus.FAILED and r,
        timeout=20,
        what="the interrupted open to be undone",
    )
    assert "restarted while opening" in failed.failure_reason
    wait_until(lambda: not rule_present(world, request_id), timeout=20, what="the rule to go")
    time.sleep(2)
    assert not rule_present(world, request_id)
    assert len(wait_until(lambda: dms(driver, "failed"), what="the failure DM")) == 1
    log = actions(world, request_id)
    assert log[:3] == ["requested", "approved", "rule_intended"]
    assert "failed" in log


EXPIRE_STEPS = {
    "before-the-delete": ("DELETE", {"stall_seconds": 2}),
    "after-the-delete": ("DELETE", {"reply_delay_seconds": 3}),
    "before-the-notification": ("chat.update", {}),
}


@pytest.mark.parametrize("step", list(EXPIRE_STEPS))
@pytest.mark.parametrize("ending", ["expiry", "revoke"])
def test_a_kill_while_closing_still_closes_and_tells_the_requester_once(
    world: ProcessWorld, step: str, ending: str
) -> None:
    first = world.start_bot("first")
    driver = Driver(Endpoint(world, first))  # type: ignore[arg-type]
    duration = "8s" if ending == "expiry" else "1h"
    request_id = submit(driver, f"request vm-web01 22 {duration} from 203.0.113.7")
    driver.click("jit_approve", request_id)
    wait_until(
        lambda: world.request(request_id).status == RequestStatus.ACTIVE, timeout=30, what="active"
    )
    wait_until(lambda: dms(driver, "Access granted"), timeout=30, what="the grant DM")
    assert rule_present(world, request_id)

    method, fault = EXPIRE_STEPS[step]
    if method == "chat.update":
        world.slack.add_delay("chat.update", seconds=4, times=1)
    else:
        world.arm.add_fault(method=method, path_contains=RULE_PATH, times=1, **fault)
    if ending == "revoke":
        driver.command(f"revoke {request_id}")
    if method == "chat.update":
        wait_until(lambda: world.slack.delays_seen >= 1, timeout=30, what="the notice to be held")
    else:
        wait_until(lambda: world.arm.stalls_seen >= 1, timeout=30, what="the DELETE to be held")
    first.kill()

    world.start_bot("second")
    final = RequestStatus.CLOSED if ending == "expiry" else RequestStatus.REVOKED
    wait_until(
        lambda: world.request(request_id).status == final, timeout=25, what=f"request {final}"
    )
    assert not rule_present(world, request_id)
    word = "expired" if ending == "expiry" else "was revoked"
    told = wait_until(lambda: dms(driver, word), timeout=15, what="the closing DM")
    # The interrupted notice is delivered again once its claim runs out; wait for that,
    # so a DM sent a second time would be seen here.
    wait_until(
        lambda: all(n.sent_at is not None for n in world.store.notifications(request_id)),
        timeout=60,
        what="every notice delivered",
    )
    assert len(dms(driver, word)) == len(told) == 1
    log = actions(world, request_id)
    assert log[0] == "requested" and log[-1] == "closed"
    assert "rule_removed" in log or "rule_already_gone" in log


def test_a_grant_ending_while_the_bot_is_down_is_closed_within_a_sweep_of_the_restart(
    world: ProcessWorld,
) -> None:
    first = world.start_bot("first")
    driver = Driver(Endpoint(world, first))  # type: ignore[arg-type]
    request_id = submit(driver, "request vm-web01 22 2s from 203.0.113.7")
    driver.click("jit_approve", request_id)
    wait_until(
        lambda: world.request(request_id).status == RequestStatus.ACTIVE, timeout=30, what="active"
    )
    first.kill()
    time.sleep(3)
    assert rule_present(world, request_id)

    started = time.monotonic()
    world.start_bot("second")
    wait_until(lambda: not rule_present(world, request_id), timeout=10, what="the rule to go")
    assert time.monotonic() - started < 10
    assert len(wait_until(lambda: dms(driver, "expired"), what="the DM")) == 1


def test_azure_failing_for_a_while_delays_the_close_but_never_loses_it(
    world: ProcessWorld,
) -> None:
    bot = world.start_bot("only")
    driver = Driver(Endpoint(world, bot))  # type: ignore[arg-type]
    request_id = submit(driver, "request vm-web01 22 2s from 203.0.113.7")
    # Armed before the approval: the grant ends 2 s after it opens, and a busy machine
    # may take longer than that to see it active; opening deletes nothing.
    world.arm.add_fault(method="DELETE", path_contains=RULE_PATH, status=503, times=12)
    driver.click("jit_approve", request_id)
    # Opened (audited); by the time a busy test looks, the grant may already be closing.
    wait_until(lambda: "opened" in actions(world, request_id), timeout=30, what="the opening")

    wait_until(
        lambda: world.request(request_id).status == RequestStatus.CLOSED, timeout=60, what="closed"
    )
    assert not rule_present(world, request_id)
    assert sum(r["status"] == 503 for r in world.arm.requests()) == 12
    # The "expired" DM is queued with the close and sent just after it.
    wait_until(
        lambda: all(n.sent_at is not None for n in world.store.notifications(request_id)),
        timeout=30,
        what="the notices of the close to be delivered",
    )
    assert len(dms(driver, "expired")) == 1
